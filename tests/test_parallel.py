"""`pytest conformance/ -n 2` (pytest-xdist) gives the results a serial run gives: the same records with
the same values, the same case outcomes, except the timing cases, which are skipped with a reason in the
parallel run instead of silently lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnconform.report.compare import compare_results

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("xdist", reason="pytest-xdist is not installed: pip install -e .[test]")


def _run(tmp_path: Path, run_id: str, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "pytest", str(REPO / "conformance"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
           "-q", "--nnc-tier", "quick", "--nnc-anchors", "fmnist-lenet5", "-k", "compression or updates or anchors",
           "--nnc-report-dir", str(tmp_path), "--nnc-run-id", run_id, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((tmp_path / run_id / "results.json").read_text())


def test_parallel_run_gives_the_serial_results(tmp_path):
    serial = _run(tmp_path, "serial")
    parallel = _run(tmp_path, "parallel", "-n", "2")
    assert compare_results(serial, parallel, ignore_skipped_in_b=True) == []
    skipped = [c for c in parallel["cases"] if c["outcome"] == "skipped"]
    ran = {c["nodeid"] for c in serial["cases"] if c["outcome"] == "passed"}
    assert skipped and {c["nodeid"] for c in skipped} <= ran
    assert all("pytest-benchmark does not run under pytest-xdist" in c["message"] for c in skipped), skipped
    assert all("benchmark" in c["nodeid"] or "latency" in c["nodeid"] or "_time[" in c["nodeid"] for c in skipped)
    assert len(parallel["records"]) > 50
    # and the comparison can fail: a changed value is reported
    from nnconform.report.compare import TIMED_CHECKS

    next(r for r in parallel["records"] if r["check_id"] not in TIMED_CHECKS)["measured"] = "changed"
    assert compare_results(serial, parallel, ignore_skipped_in_b=True)
    parallel["records"][-1]["status"] = "fail" if parallel["records"][-1]["status"] != "fail" else "pass"
    assert compare_results(serial, parallel, ignore_skipped_in_b=True)
