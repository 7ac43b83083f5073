"""The verdict is true: interrupted or stopped runs are INCOMPLETE, embedded anchors may not skip,
user-supplied anchors may (the verdict says why), and a rerun after an interruption completes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from nnconform.paths import anchors_dir
from nnconform.records import Status, gate
from nnconform.session import ConformanceSession, Outcome, RunConfig

CASES = '''
import os, signal
import pytest
from nnconform.records import gate
from nnconform.kit import register_check
register_check("demo.case", "a demo check of the self-tests")
register_check("demo.x", "a demo check of the self-tests")


pytestmark = pytest.mark.criterion("demo")

@pytest.mark.parametrize("i", range(4))
def test_case(i, nnc_record):
    nnc_record(gate("demo.case", str(i), True, measured=i, expected=i))
    if i == 1 and os.environ.get("NNC_TEST_INTERRUPT") == "1":
        # a process started in the background inherits SIGINT ignored; Ctrl-C at a terminal is what we mean
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the run
    if i == 0 and os.environ.get("NNC_TEST_FAIL_FIRST") == "1":
        assert False, "first case fails"
'''

WEIGHTS = '''
import pytest
from nnconform.anchors import WeightsUnavailable

pytestmark = pytest.mark.criterion("demo")

@pytest.mark.parametrize("anchor_name", ["fmnist-lenet5", "tv-resnet50-v1"])
def test_weights(anchor_name, nnc_session):
    try:
        nnc_session.model(anchor_name)
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
'''


def _results(root, run_id):
    return json.loads((root / "reports" / run_id / "results.json").read_text())


def _run(pytester, run_id, *args):
    return pytester.runpytest_subprocess("conformance", "--nnc-report-dir", str(pytester.path / "reports"),
                                         "--nnc-run-id", run_id, "-p", "no:cacheprovider", *args)


@pytest.fixture
def cases(pytester):
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_cases.py").write_text(CASES)
    return pytester


def test_sigint_mid_run_is_incomplete_and_a_rerun_completes(cases, monkeypatch):
    monkeypatch.setenv("NNC_TEST_INTERRUPT", "1")
    result = _run(cases, "cut")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    verdict = _results(cases.path, "cut")["verdict"]
    assert verdict["status"] == "INCOMPLETE" and verdict["counts"]["not_run"] == 3  # case 1 cut short, 2 and 3
    assert any("interrupted" in r for r in verdict["reasons"])
    assert "**Verdict: INCOMPLETE**" in (cases.path / "reports" / "cut" / "summary.md").read_text()
    assert "nnconform verdict: INCOMPLETE" in result.stdout.str()
    monkeypatch.delenv("NNC_TEST_INTERRUPT")
    again = _run(cases, "again")
    assert again.ret == 0 and _results(cases.path, "again")["verdict"]["status"] == "PASS"
    before = {r["subject"] for r in _results(cases.path, "cut")["records"]}
    after = {r["subject"] for r in _results(cases.path, "again")["records"]}
    assert before == {"0"} and after == {"0", "1", "2", "3"}  # an interrupted case reports nothing


def test_stopping_at_the_first_failure_is_incomplete(cases, monkeypatch):
    monkeypatch.setenv("NNC_TEST_FAIL_FIRST", "1")
    result = _run(cases, "x", "-x")
    assert result.ret == 1
    verdict = _results(cases.path, "x")["verdict"]
    assert verdict["status"] == "INCOMPLETE" and verdict["counts"]["not_run"] == 3
    assert any(r.startswith("the run stopped early") for r in verdict["reasons"])


def test_a_missing_embedded_weights_file_fails_but_a_user_supplied_one_may_skip(pytester, monkeypatch, tmp_path):
    planted = tmp_path / "anchors"
    # a copy of the manifests and weights (weights as links) without fmnist-lenet5's weights file
    shutil.copytree(anchors_dir(), planted, copy_function=os.symlink)
    missing = planted / "zoo" / "fmnist-lenet5" / "epoch8.safetensors"
    missing.unlink()
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(planted))
    monkeypatch.setenv("NNCONFORM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_weights.py").write_text(WEIGHTS)
    result = _run(pytester, "w", "--nnc-anchors", "fmnist-lenet5,tv-resnet50-v1")
    result.assert_outcomes(failed=1, skipped=1)
    assert result.ret == 1
    verdict = _results(pytester.path, "w")["verdict"]
    assert verdict["status"] == "FAIL"
    [failure] = verdict["failures"]
    assert failure["case"].endswith("test_weights[fmnist-lenet5]")
    assert "embedded anchor 'fmnist-lenet5' must not skip" in failure["message"] and str(missing) in failure["message"]
    [skip] = verdict["skipped"]
    assert skip["cases"] == 1 and "resnet50" in skip["reason"]  # the user-supplied anchor skipped, and why


def _session(**outcomes) -> ConformanceSession:
    run = ConformanceSession(RunConfig(tier="quick", run_id="v"))
    run.selected = set()
    for nodeid, (outcome, message) in outcomes.items():
        run.selected.add(nodeid)
        for when in ("setup", "call", "teardown"):
            run.add_outcome(Outcome(nodeid, outcome if when == "call" else "passed", 0.1, message), when=when)
    return run


def test_verdict_groups_skips_by_reason_and_never_passes_an_empty_run():
    run = _session(a=("passed", ""), b=("skipped", "weights x missing"), c=("skipped", "weights x missing"),
                   d=("skipped", "no ImageNet"))
    v = run.verdict()
    assert v.status == "PASS" and v.skipped == (("weights x missing", 2), ("no ImageNet", 1))
    assert v.counts_line() == "1 passed, 0 failed, 0 errors, 3 skipped, 0 not run"
    assert _session(b=("skipped", "why")).verdict().status == "INCOMPLETE"  # nothing was tested
    failed = _session(a=("passed", ""), b=("failed", "E   AssertionError: too big\nE   assert 3 < 2"))
    assert failed.verdict().status == "FAIL" and failed.verdict().failures == (("b", "AssertionError: too big "
                                                                                     "assert 3 < 2"),)
    unfinished = _session(a=("passed", ""))
    unfinished.add_outcome(Outcome("b", "passed", 0.1), when="setup")  # set up, then the run stopped
    unfinished.selected |= {"b", "c"}
    v = unfinished.verdict()
    assert v.status == "INCOMPLETE" and v.counts["not_run"] == 2 and v.counts["passed"] == 1
    run.records.append(gate("demo.x", "s", True, measured=1, expected=1))
    assert run.records[0].status is Status.PASS
