"""Golden results: a moved figure, a missing or new record is a difference; the plugin fails the run on one."""

from __future__ import annotations

import copy
import json

import pytest

from nnconform.report import golden
from nnconform.report.golden import differences, figures, main, make_golden

RESULTS = {"config": {"tier": "quick"}, "records": [
    {"check_id": "compression.size_reported", "subject": "a/fp16", "status": "pass", "measured": 124308,
     "details": {}},
    {"check_id": "compression.artifact_consistency", "subject": "a/fp16", "status": "pass", "measured": 0.0,
     "details": {"decoded_sha256": "5012c57b", "relative_error": 0.0}},
    {"check_id": "anchor.latency", "subject": "a", "status": "info", "measured": 0.0031, "details": {}},
]}


def test_a_run_reproduces_its_own_golden_file():
    assert differences(make_golden(RESULTS), RESULTS) == []
    # timing records pin their status only: another latency is no difference
    again = copy.deepcopy(RESULTS)
    again["records"][2]["measured"] = 0.0042
    assert differences(make_golden(RESULTS), again) == []


@pytest.mark.parametrize("change,expected", [
    (lambda r: r["records"][0].update(measured=124310), "compression.size_reported|a/fp16: measured 124308 -> 124310"),
    (lambda r: r["records"][1]["details"].update(decoded_sha256="ffff"), "decoded_sha256"),
    (lambda r: r["records"][0].update(status="fail"), "status 'pass' -> 'fail'"),
    (lambda r: r["records"].pop(0), "in the golden file, not recorded by this run"),
    (lambda r: r["records"].append({"check_id": "x.y", "subject": "b", "status": "pass", "measured": 1}),
     "x.y|b: recorded by this run, not in the golden file"),
    (lambda r: r["records"][2].update(status="fail"), "anchor.latency|a: status 'info' -> 'fail'"),
])
def test_a_moved_figure_is_a_difference(change, expected):
    moved = copy.deepcopy(RESULTS)
    change(moved)
    diffs = differences(make_golden(RESULTS), moved)
    assert len(diffs) == 1 and expected in diffs[0]


def test_duplicate_records_are_pinned_in_order():
    twice = {"records": [dict(RESULTS["records"][0]), dict(RESULTS["records"][0], measured=1)]}
    assert list(figures(twice)) == ["compression.size_reported|a/fp16", "compression.size_reported|a/fp16#2"]


def test_cli_update_check_and_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(RESULTS))
    gold = tmp_path / "quick.json"
    assert main([str(run), "--update", "--file", str(gold)]) == 0
    assert main([str(run), "--check", "--file", str(gold)]) == 0
    moved = copy.deepcopy(RESULTS)
    moved["records"][0]["measured"] = 1
    (run / "results.json").write_text(json.dumps(moved))
    assert main([str(run), "--check", "--file", str(gold)]) == 1
    assert "1 difference(s)" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--check", "--file", str(gold)]) == 2
    (tmp_path / "bad.json").write_text("{")
    assert main([str(run), "--check", "--file", str(tmp_path / "bad.json")]) == 2
    assert "not a golden file" in capsys.readouterr().err


def test_the_plugin_fails_a_run_that_moves_a_golden_figure(pytester, monkeypatch):
    from test_kit_toy_criterion import toy_suite

    toy_suite(pytester, monkeypatch)
    args = ["conformance", "-p", "no:cacheprovider", "--nnc-report-dir", str(pytester.path / "reports"),
            "-k", "two-digits"]
    first = pytester.runpytest_subprocess(*args, "--nnc-run-id", "first")
    assert first.ret == 0
    results = golden.read_results(pytester.path / "reports" / "first")
    gold = make_golden(results)
    key = next(k for k in gold["figures"] if k.startswith("toy.max_error|"))
    gold["figures"][key]["measured"] = 0.123  # a figure that moved
    (pytester.path / "quick.json").write_text(json.dumps(gold))
    again = pytester.runpytest_subprocess(*args, "--nnc-run-id", "again", "--nnc-golden", str(pytester.path / "quick.json"))
    assert again.ret == 1
    again.stdout.fnmatch_lines(["golden results: 1 difference(s) from *", "*toy.max_error|two-digits: measured 0.123 -> *"])
