"""``python -m nnconform.report.compare``: exit 0 for the same results, 1 for differences, 2 with a message
naming the path for a run that is missing or malformed; ``--ignore-skipped-in-b`` leaves out only the
timing cases a parallel run skipped under pytest-xdist, never a skip for another reason."""

from __future__ import annotations

import copy
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnconform.report import compare
from nnconform.report.compare import XDIST_TIMING_SKIP, UnusableRun, compare_results, load_results, main

XDIST_REASON = f"timing case: {XDIST_TIMING_SKIP}; run without -n to measure latency"


def _record(check_id, subject, nodeid, measured=1.0, status="pass"):
    return {"check_id": check_id, "subject": subject, "status": status, "measured": measured, "expected": 0.5,
            "tolerance": None, "message": "", "nodeid": nodeid}


def _run() -> dict:
    acc, lat, data = ("conformance/test_x.py::test_acc[a]", "conformance/test_x.py::test_latency[a]",
                      "conformance/test_x.py::test_data[a]")
    return {"run_id": "r", "records": [_record("x.accuracy", "a", acc, 0.91), _record("x.latency", "a", lat, 0.01),
                                       _record("x.data", "a", data, 3)],
            "cases": [{"nodeid": n, "outcome": "passed", "message": ""} for n in (acc, lat, data)]}


def _write(folder: Path, run: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(run))
    return folder


def _skip(run: dict, fragment: str, reason: str) -> dict:
    out = copy.deepcopy(run)
    nodeid = next(c["nodeid"] for c in out["cases"] if fragment in c["nodeid"])
    out["records"] = [r for r in out["records"] if r["nodeid"] != nodeid]
    for c in out["cases"]:
        if c["nodeid"] == nodeid:
            c.update(outcome="skipped", message=reason)
    return out


def test_same_and_different_runs_exit_0_and_1(tmp_path, capsys):
    a = _write(tmp_path / "a", _run())
    assert main([str(a), str(a / "results.json")]) == 0
    assert "the same results" in capsys.readouterr().out
    changed = _run()
    changed["records"][0]["measured"] = 0.90
    b = _write(tmp_path / "b", changed)
    assert main([str(a), str(b)]) == 1
    assert "x.accuracy a: measured 0.91 (A) != 0.9 (B)" in capsys.readouterr().out


MALFORMED = {
    "missing folder": (None, "no such run folder"),
    "folder without results.json": ("", "missing"),
    "not JSON": ("{not json", "not valid JSON"),
    "truncated JSON": (json.dumps(_run())[:50], "not valid JSON"),
    "a JSON list": ("[]", "not a results.json object"),
    "no records": (json.dumps({"cases": []}), "field 'records' must be a list, got nothing"),
    "records not a list": (json.dumps({"records": {}, "cases": []}), "field 'records' must be a list, got dict"),
    "record without status": (json.dumps({**_run(), "records": [{"check_id": "c", "subject": "s"}]}),
                              "records[0] lacks status, measured, expected, tolerance"),
    "check_id not a string": (json.dumps({**_run(), "records": [{**_record("c", "s", "n"), "check_id": 3}]}),
                              "records[0].check_id must be a string"),
    "case without outcome": (json.dumps({**_run(), "cases": [{"nodeid": "n"}]}), "cases[0] lacks outcome"),
    "not UTF-8": (b"\xff\xfe\x00garbage", "cannot be read"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_missing_or_malformed_run_exits_2_naming_the_path(tmp_path, capsys, case):
    content, message = MALFORMED[case]
    good = _write(tmp_path / "good", _run())
    bad = tmp_path / "bad"
    if content is not None:
        bad.mkdir()
        if content:
            target = bad / "results.json"
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    for argv in ([str(good), str(bad)], [str(bad), str(good)]):
        assert main(argv) == 2, case
        err = capsys.readouterr().err
        assert str(bad) in err and message in err, err
    with pytest.raises(UnusableRun, match=re.escape(message)):
        load_results(bad)


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    good = _write(tmp_path / "good", _run())
    for bad in (tmp_path / "absent", _write(tmp_path / "broken", _run())):
        if bad.exists():
            (bad / "results.json").write_text("{truncated")
        proc = subprocess.run([sys.executable, "-m", "nnconform.report.compare", str(good), str(bad)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and str(bad) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_ignore_skipped_in_b_leaves_out_only_xdist_timing_skips(tmp_path, capsys):
    serial = _run()
    parallel = _skip(serial, "test_latency", XDIST_REASON)
    assert compare_results(serial, parallel) != []  # without the flag the skip is a difference
    assert compare_results(serial, parallel, ignore_skipped_in_b=True) == []
    a, b = _write(tmp_path / "a", serial), _write(tmp_path / "b", parallel)
    assert main([str(a), str(b), "--ignore-skipped-in-b"]) == 0
    assert "left out: 1 timing cases" in capsys.readouterr().out
    # a skip for any other reason is never hidden, with or without the flag
    for reason in ("Fashion-MNIST not found: apt-get install dataset-fashion-mnist",
                   "weights file resnet50.pth is not in $TORCH_HOME", ""):
        other = _skip(parallel, "test_data", reason)
        diffs = compare_results(serial, other, ignore_skipped_in_b=True)
        assert any("case conformance/test_x.py::test_data[a]: passed (A) != skipped" in d for d in diffs), diffs
        assert any("only in A: x.data a" in d for d in diffs), diffs
        assert main([str(a), str(_write(tmp_path / "other", other)), "--ignore-skipped-in-b"]) == 1
        out = capsys.readouterr().out
        assert "test_data[a]: passed (A) != skipped" in out and (reason[:20] in out)


def test_the_plugin_skips_timing_cases_with_the_reason_compare_recognises():
    from nnconform import plugin

    assert XDIST_TIMING_SKIP in inspect.getsource(plugin).replace('"\n' + " " * 52 + '"', ""), \
        "the plugin's xdist skip reason changed: update compare.XDIST_TIMING_SKIP"
    assert compare.TIMED_CHECKS  # timing records are compared by status only
