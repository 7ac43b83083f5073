"""Report writing: atomic, leaves nothing behind on failure, results first, records folded and counted."""

from __future__ import annotations

import errno
import json

import jsonschema
import pytest

import nnconform.report as report
from nnconform.records import CheckRecord, Status
from nnconform.report import SCHEMA_PATH, write_report
from nnconform.session import ConformanceSession, Outcome, RunConfig


def _run(tmp_path, run_id="u1", n_pass=3, overwrite=False) -> ConformanceSession:
    run = ConformanceSession(RunConfig(tier="quick", run_id=run_id, report_dir=tmp_path / "reports",
                                       cache_dir=tmp_path / "cache", overwrite=overwrite))
    for i in range(n_pass):
        run.records.append(CheckRecord("demo.size", f"subject-{i}", Status.PASS, measured=i, expected=i,
                                       criterion="demo"))
    run.records.append(CheckRecord("demo.size", "the-bad-one", Status.FAIL, measured=9, expected=1,
                                   message="9 bytes over the claim", criterion="demo"))
    run.selected = {"conformance/test_demo.py::test_a"}
    for when, outcome in (("setup", "passed"), ("call", "failed"), ("teardown", "passed")):
        run.add_outcome(Outcome("conformance/test_demo.py::test_a", outcome, 0.1, "E   assert 9 <= 1"), when=when)
    return run


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_report_is_valid_and_leads_with_the_verdict(tmp_path):
    run_dir = write_report(_run(tmp_path))
    results = json.loads((run_dir / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_PATH.read_text()))
    assert results["verdict"]["status"] == "FAIL"
    summary = (run_dir / "summary.md").read_text()
    assert summary.index("**Verdict: FAIL**") < summary.index("## Details") < summary.index("## Check records")
    assert (tmp_path / "reports" / "latest").resolve() == run_dir.resolve()
    assert _hidden(tmp_path / "reports") == []


def test_passing_records_are_counted_in_markdown_and_folded_in_html(tmp_path):
    run_dir = write_report(_run(tmp_path, n_pass=3000))
    summary = (run_dir / "summary.md").read_text()
    assert "| demo.size | the-bad-one | FAIL | 9 | 1 |" in summary  # failures in full
    assert "subject-17" not in summary and "| 3000 | 1 | 0 | 0 | 0 |" in summary  # passes as counts
    assert len(summary.encode()) < 20_000
    page = (run_dir / "index.html").read_text()
    assert "<details open><summary><code>demo.size</code>" in page and "subject-2999" in page


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    first = write_report(_run(tmp_path, run_id="same"))
    before = (first / "summary.md").read_text()
    calls = []

    def full_disk(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        path.write_text(text)

    monkeypatch.setattr(report, "_atomic_write", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_report(_run(tmp_path, run_id="same", overwrite=True))
    assert (first / "summary.md").read_text() == before  # the old report is as it was
    assert _hidden(tmp_path / "reports") == []  # no temporary folder or link left


def test_a_report_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"the report folder {tmp_path / 'reports'} is a file"):
        write_report(_run(tmp_path))


def test_latest_that_is_a_folder_costs_only_the_link(tmp_path):
    (tmp_path / "reports" / "latest").mkdir(parents=True)
    run = _run(tmp_path)
    run_dir = write_report(run)
    assert (run_dir / "index.html").is_file()
    assert run.report_notes and "latest not updated" in run.report_notes[0]
    assert _hidden(tmp_path / "reports") == []


def test_a_broken_tiers_file_is_reported_in_the_report(tmp_path, monkeypatch):
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "tiers.toml").write_text("[tiers.transparent\nrelative_margin = ")
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(anchors))
    run_dir = write_report(_run(tmp_path))
    results = json.loads((run_dir / "results.json").read_text())
    assert f"{anchors / 'tiers.toml'}: not valid TOML" in results["tiers"]["error"]
    assert "tiers.toml could not be read" in (run_dir / "summary.md").read_text()
