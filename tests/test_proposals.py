"""Every gate a proposal faces can fail: the suite runs against each example proposal in
``fixtures/proposals/`` and must pass the good ones and fail each bad one with its own clear message
(``fixtures/proposals/expected.toml``). One good proposal also runs with the reference methods, as a
user's CI job would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "proposals"
EXPECTED = tomllib.loads((FIXTURES / "expected.toml").read_text())


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``pytest conformance/`` in a subprocess (a proposal registers its methods in that process only)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "pytest", str(REPO / "conformance"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
           "--nnc-tier", "quick", "--nnc-report-dir", str(tmp_path), "--nnc-run-id", "run", "-q",
           "--benchmark-disable", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    results_path = tmp_path / "run" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    return proc, results


def test_every_fixture_has_an_expectation():
    folders = {p.parent.name for p in FIXTURES.glob("*/proposal.toml")}
    assert folders == set(EXPECTED), f"fixtures without expectation: {folders - set(EXPECTED)}; " \
                                     f"expectations without fixture: {set(EXPECTED) - folders}"


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if "suite" not in e))
def test_proposal_fixture(name, tmp_path):
    """The run's exit code is the gate; a bad proposal fails with its own message and nothing else fails."""
    expected = EXPECTED[name]
    proc, results = run_suite(tmp_path, "--proposal", str(FIXTURES / name), "--nnc-proposal-only")
    output = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == expected["exit"], output
    assert results, f"no results.json was written\n{output}"
    assert results["proposals"][0]["name"] and results["proposals"][0]["manifest"].endswith("proposal.toml")
    outcomes = [c["outcome"] for c in results["cases"]]
    if expected["exit"] == 0:
        bad = [r for r in results["records"] if r["status"] in ("fail", "error")]
        assert not bad, bad
        assert outcomes.count("passed") >= expected["cases"] and set(outcomes) == {"passed"}, results["cases"]
        return
    failing = [r for r in results["records"] if r["status"] in ("fail", "error") and r["check_id"] == expected["check"]]
    assert failing, f"no failing {expected['check']} record; records: " \
                    f"{[(r['check_id'], r['status']) for r in results['records']]}"
    assert any(expected["message"] in r["message"] for r in failing), [r["message"] for r in failing]
    assert expected["message"] in proc.stdout, "the failure message must reach the terminal too"
    # the failure stays in the proposal's own cases: every failing case is one of its operating points' cases
    points = [p.rsplit("/", 1)[-1] for pts in results["proposals"][0]["operating_points"].values() for p in pts]
    failed_ids = [c["nodeid"] for c in results["cases"] if c["outcome"] in ("failed", "error")]
    assert failed_ids and all("submission_manifest" in i or any(i.endswith((f"-{p}]", f"[{p}]")) for p in points)
                              for i in failed_ids), (failed_ids, points)


def test_missing_field_stops_the_run_before_any_model_loads(tmp_path):
    """A manifest with problems runs nothing but the manifest case, which lists every problem at once."""
    proc, results = run_suite(tmp_path, "--proposal", str(FIXTURES / "bad-missing-field"))
    assert proc.returncode == 1
    assert [c["nodeid"].split("::")[-1] for c in results["cases"]] == ["test_submission_manifest[bad-missing-field]"]
    problems = results["proposals"][0]["problems"]
    fields = {p["field"] for p in problems}
    assert {"proposal.contact", "proposal.anchors[1]", "compression[0].claimed_tier", "compression[0].method",
            "compression[0].claimd_bytes", "artifacts[0].files[0].sha256"} <= fields, fields
    assert all(p["file"].endswith("bad-missing-field/proposal.toml") for p in problems)
    assert results["anchors"] == {}, "no anchor may be loaded for a malformed submission"


def test_good_proposal_runs_against_the_reference_methods(tmp_path):
    """Without --nnc-proposal-only the proposal's criteria run with the reference methods of its anchors (the
    report shows both), other criteria and anchors are deselected, and the run passes."""
    proc, results = run_suite(tmp_path, "--proposal", str(FIXTURES / "good-compressor"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    methods = {r["details"].get("method") for r in results["records"] if r["check_id"] == "compression.accuracy"}
    assert "fixture-int-per-channel" in methods and len(methods) > 1, methods
    criteria = {c["criterion"] for c in results["cases"]}
    assert criteria <= {"anchors", "compression", "proposal"}, criteria
    assert set(results["anchors"]) == {"fmnist-lenet5"}
    index = tmp_path / "run" / "index.html"
    assert index.read_text().count("fixture-int-per-channel") > 0
    from nnconform.report.render_check import check_rendered_report, chromium_unavailable

    missing = chromium_unavailable()
    if missing:
        pytest.skip(missing)
    plots = [k for k in results["artifacts"] if "/plot/" in k]
    assert plots, results["artifacts"]
    assert check_rendered_report(index, min_plots=len(plots)) == []


def test_a_proposal_whose_cases_are_all_deselected_stops_the_run(tmp_path):
    """--nnc-anchors or --nnc-tier that deselect every case of a valid proposal would make the gate pass
    without testing it: the run stops with a usage error naming the proposal."""
    proc, _ = run_suite(tmp_path, "--proposal", str(FIXTURES / "good-compressor"), "--nnc-anchors", "fmnist-resnet8")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no case of proposal 'fixture-int-per-channel'" in proc.stderr + proc.stdout


TAMPER = """
import pathlib

def pytest_collection_finish(session):
    # after the checker has hashed the submitted file, change one byte of it
    path = pathlib.Path({path!r})
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
"""


def test_a_submitted_file_that_changes_after_the_check_fails_its_case(tmp_path, monkeypatch):
    """The payload is hashed again when its case runs: a file changed after the manifest check is refused."""
    import shutil

    folder = tmp_path / "proposal"
    shutil.copytree(FIXTURES / "good-artifacts", folder)
    payload = folder / "lenet5-epoch8-finetune-quant8.update"
    (tmp_path / "tamper_plugin.py").write_text(TAMPER.format(path=str(payload)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    proc, results = run_suite(tmp_path, "--proposal", str(folder), "--nnc-proposal-only", "-p", "tamper_plugin")
    assert proc.returncode == 1, proc.stdout[-3000:]
    failing = [r for r in results["records"] if r["check_id"] == "updates.submitted_file"]
    assert failing and failing[0]["status"] == "fail" and "differs from" in failing[0]["message"], failing
