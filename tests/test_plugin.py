"""Drive pytest itself: the plugin's options, deselection, records and the report."""

from __future__ import annotations

import json

import jsonschema
import pytest

from nnconform.report import SCHEMA_PATH

SUITE = '''
import pytest
from nnconform.records import gate

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
    summary = (suite.path / "reports" / "r1" / "summary.md").read_text()
    assert "**Verdict: FAIL**" in summary and "## Criterion: demo" in summary
    assert "| demo.check | efficientnet-lite0 | FAIL |" in summary
    page = (suite.path / "reports" / "r1" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<td class="s-fail">FAIL</td>' in page


def test_anchor_filter_deselects(suite):
    result = _run(suite, "--nnc-anchors", "fmnist-lenet5", "-k", "gate")
    result.assert_outcomes(passed=1)
    assert result.ret == 0


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
