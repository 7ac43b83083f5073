"""Drive pytest itself: the plugin's options, deselection, records and the report."""

from __future__ import annotations

import json

import jsonschema
import pytest

from nnconform.report import SCHEMA_PATH

SUITE = '''
import pytest
from nnconform.records import gate
from nnconform.kit import register_check
register_check("demo.check", "a demo check of the self-tests")
register_check("demo.one", "a demo check of the self-tests")
register_check("demo.two", "a demo check of the self-tests")


pytestmark = pytest.mark.criterion("demo")

@pytest.mark.parametrize("anchor_name", ["fmnist-lenet5", "efficientnet-lite0"])
def test_gate(anchor_name, nnc_record):
    rec = nnc_record(gate("demo.check", anchor_name, anchor_name != "efficientnet-lite0", measured=1, expected=0))
    assert rec.passed, rec.message

@pytest.mark.tier("full")
def test_only_in_full(nnc_record):
    assert False, "must be deselected below the full tier"

def test_skipped():
    pytest.skip("weights file x.pth is not in /some/folder")
'''


@pytest.fixture
def suite(pytester):
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_demo.py").write_text(SUITE)
    return pytester


def _run(pytester, *args):
    return pytester.runpytest_subprocess("conformance", "--nnc-report-dir", str(pytester.path / "reports"),
                                         "--nnc-run-id", "r1", "--nnc-tier", "quick", "-p", "no:cacheprovider",
                                         *args)


def test_failing_gate_fails_the_run_and_the_report_says_why(suite):
    result = _run(suite)
    result.assert_outcomes(passed=1, failed=1, skipped=1, deselected=1)
    assert result.ret == 1
    results = json.loads((suite.path / "reports" / "r1" / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_PATH.read_text()))
    statuses = {r["subject"]: r["status"] for r in results["records"]}
    assert statuses == {"fmnist-lenet5": "pass", "efficientnet-lite0": "fail"}
    skipped = [c for c in results["cases"] if c["outcome"] == "skipped"]
    assert skipped and "x.pth is not in /some/folder" in skipped[0]["message"]
    assert results["verdict"]["status"] == "FAIL"
    summary = (suite.path / "reports" / "r1" / "summary.md").read_text()
    assert "**Verdict: FAIL**" in summary and "## Check records" in summary
    assert summary.index("**Verdict: FAIL**") < summary.index("## Executive summary") < summary.index("## Check")
    assert "| demo.check | efficientnet-lite0 | FAIL |" in summary  # failing records in full
    page = (suite.path / "reports" / "r1" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<td class="s-fail">FAIL</td>' in page
    assert "<details open><summary><code>demo.check</code>" in page  # records folded, open when one failed
    # the terminal ends with the verdict, the counts, the skips and the report path
    tail = result.outlines[-8:]
    assert any("nnconform verdict: FAIL" in line for line in tail), tail
    assert any(line.startswith("cases: 1 passed, 1 failed, 0 errors, 1 skipped, 0 not run") for line in tail)
    assert any("1 x weights file x.pth is not in /some/folder" in line for line in tail)
    assert "index.html" in result.outlines[-2] and "results.json" in result.outlines[-1]


def test_anchor_filter_deselects(suite):
    result = _run(suite, "--nnc-anchors", "fmnist-lenet5", "-k", "gate")
    result.assert_outcomes(passed=1)
    assert result.ret == 0


def test_a_case_serving_several_anchors_runs_only_when_one_of_them_is_selected(pytester):
    """A case parametrized by something other than one anchor (a calibration list) carries ``anchors(...)``: with
    none of its anchors selected it is deselected (an ASR calibration corpus is not synthesized for a LeNet-5 run)."""
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_served.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('name', [pytest.param('fm', marks=pytest.mark.anchors('fmnist-lenet5', 'fmnist-resnet8')),\n"
        "                                  pytest.param('asr', marks=pytest.mark.anchors('espeak-convctc'))])\n"
        "def test_list(name):\n    assert name\n")
    result = pytester.runpytest_subprocess("conformance", "--nnc-no-report", "-p", "no:cacheprovider",
                                           "--nnc-anchors", "fmnist-resnet8", "-v")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*test_list?fm? PASSED*"])
    result = pytester.runpytest_subprocess("conformance", "--nnc-no-report", "-p", "no:cacheprovider",
                                           "--nnc-anchors", "fmnist-resnet8,espeak-convctc")
    result.assert_outcomes(passed=2)


def test_bad_option_values_are_usage_errors(suite):
    result = _run(suite, "--nnc-tier", "fast")
    assert result.ret == 4 and "choose one of quick, default, full" in result.stderr.str()
    result = _run(suite, "--nnc-anchors", "fmnist-lenet6")
    assert result.ret != 0 and "did you mean" in (result.stdout.str() + result.stderr.str())


def test_threads_option(pytester):
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_threads.py").write_text(
        "import torch\n\ndef test_threads():\n    assert torch.get_num_threads() == 1\n")
    result = pytester.runpytest_subprocess("conformance", "--nnc-no-report", "-p", "no:cacheprovider",
                                           "--nnc-threads", "1")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("conformance", "--nnc-no-report", "-p", "no:cacheprovider",
                                           "--nnc-threads", "0")
    assert result.ret == 4 and "--nnc-threads '0': give a positive number" in result.stderr.str()
    result = pytester.runpytest_subprocess("conformance", "--nnc-no-report", "-p", "no:cacheprovider",
                                           "--nnc-threads", "100000")
    assert result.ret == 4 and "--nnc-threads '100000': this machine has" in result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("run_id,why", [("..", "reserved name"), (".", "reserved name"), ("latest", "reserved name"),
                                        ("a/b", "characters '/' are not allowed"),
                                        ("x" * 300, "300 characters (at most 100)")])
def test_unsafe_run_ids_are_refused(suite, run_id, why):
    result = suite.runpytest_subprocess("conformance", "--nnc-report-dir", str(suite.path / "reports"),
                                        "--nnc-run-id", run_id, "-p", "no:cacheprovider")
    assert result.ret == 4 and why in result.stderr.str(), result.stderr.str()
    assert not (suite.path / "reports").exists()


PASSING = '''
import pytest
from nnconform.records import gate
from nnconform.kit import register_check
register_check("demo.check", "a demo check of the self-tests")
register_check("demo.one", "a demo check of the self-tests")
register_check("demo.two", "a demo check of the self-tests")


pytestmark = pytest.mark.criterion("demo")

def test_ok(nnc_record):
    assert nnc_record(gate("demo.check", "x", True, measured=1, expected=1)).passed
'''


@pytest.fixture
def passing(pytester):
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_ok.py").write_text(PASSING)
    return pytester


def test_a_reused_run_id_is_refused_unless_overwrite(passing):
    reports = passing.path / "reports"
    args = ("conformance", "--nnc-report-dir", str(reports), "--nnc-run-id", "r1", "-p", "no:cacheprovider")
    assert passing.runpytest_subprocess(*args).ret == 0
    (reports / "r1" / "stale.png").write_bytes(b"old plot")
    again = passing.runpytest_subprocess(*args)
    assert again.ret == 4 and f"{reports / 'r1'} already exists" in again.stderr.str()
    assert (reports / "r1" / "stale.png").exists()  # the old report is untouched
    assert passing.runpytest_subprocess(*args, "--nnc-overwrite").ret == 0
    assert not (reports / "r1" / "stale.png").exists()  # replaced whole: no stale plots
    assert (reports / "latest").is_symlink() and str((reports / "latest").readlink()) == "r1"
    assert [p.name for p in reports.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_an_unwritable_report_keeps_the_run(passing):
    blocker = passing.path / "reports"
    blocker.write_text("a file where the report folder should be")
    result = passing.runpytest_subprocess("conformance", "--nnc-report-dir", str(blocker), "-p", "no:cacheprovider")
    assert result.ret == 0  # pytest's exit status survives
    result.assert_outcomes(passed=1)  # and its summary
    out = result.stdout.str()
    assert f"report: NOT written to {blocker}/" in out and "is a file" in out
    assert "Traceback" not in out and "INTERNALERROR" not in out


TEARDOWN = '''
import pytest
from nnconform.records import gate
from nnconform.kit import register_check
register_check("demo.check", "a demo check of the self-tests")
register_check("demo.one", "a demo check of the self-tests")
register_check("demo.two", "a demo check of the self-tests")


pytestmark = pytest.mark.criterion("demo")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_records_once(broken_teardown, nnc_record):
    nnc_record(gate("demo.one", "a", True, measured=1, expected=1))
    nnc_record(gate("demo.two", "b", True, measured=2, expected=2))
'''


def test_a_failed_teardown_does_not_duplicate_records(pytester):
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_td.py").write_text(TEARDOWN)
    result = pytester.runpytest_subprocess("conformance", "--nnc-report-dir", str(pytester.path / "reports"),
                                           "--nnc-run-id", "td", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    results = json.loads((pytester.path / "reports" / "td" / "results.json").read_text())
    assert [r["check_id"] for r in results["records"]] == ["demo.one", "demo.two"]
    assert results["verdict"]["status"] == "INCOMPLETE"  # an errored case: its checks may not all have run


BENCH = '''
def test_timing(benchmark):
    benchmark(sum, range(10))
'''


def test_benchmark_tables_go_to_the_report_not_the_terminal(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # pytest-benchmark turns itself off under xdist
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_bench.py").write_text(BENCH)
    args = ("conformance", "--nnc-report-dir", str(pytester.path / "reports"), "-p", "no:cacheprovider",
            "--benchmark-min-rounds", "1", "--benchmark-max-time", "0.01")
    quiet = pytester.runpytest_subprocess(*args, "--nnc-run-id", "b1", "--benchmark-json", str(pytester.path / "b.json"))
    assert quiet.ret == 0 and "benchmark: 1 tests" not in quiet.stdout.str()
    assert json.loads((pytester.path / "b.json").read_text())["benchmarks"]  # --benchmark-json still written
    assert "Latency (pytest-benchmark" in (pytester.path / "reports" / "b1" / "summary.md").read_text()
    table = pytester.runpytest_subprocess(*args, "--nnc-run-id", "b2", "--nnc-benchmark-table")
    assert "benchmark: 1 tests" in table.stdout.str()
