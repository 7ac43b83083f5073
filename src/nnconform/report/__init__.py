"""The report: ``reports/<run-id>/results.json``, ``summary.md`` and a self-contained ``index.html``,
rendered once per run.

Criteria add their own tables, plots and curve files through :data:`SECTIONS`: a section is a
function ``(ReportContext) -> str`` returning Markdown; it may write files into
``ctx.run_dir`` (plots, curve JSON) and list them in ``ctx.artifacts``. A criterion's executive
summary (the results table a delegate came for, and its plot) is registered in :data:`SUMMARIES`
the same way; it runs after the sections, so it can show the plots they wrote.

The report is written into a fresh temporary folder beside its target and renamed into place, so
a failure (disk full, a report folder that is a file) leaves no half-written report and no
temporary files; ``latest`` is replaced atomically.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import pkgutil
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import RESULTS_SCHEMA_VERSION
from ..gates import load_tiers
from ..records import CheckRecord, Status
from ..registry import Registry

SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


@dataclass
class ReportContext:
    """What a report section sees."""

    records: list[CheckRecord]
    run_dir: Path
    session: Any
    artifacts: dict[str, str] = field(default_factory=dict)

    def records_of(self, criterion: str) -> list[CheckRecord]:
        """The records of one criterion."""
        return [r for r in self.records if r.criterion == criterion]


#: Report sections by criterion name; each renders Markdown (and may write plots/JSON).
SECTIONS: Registry[Callable[[ReportContext], str]] = Registry("report section")
#: Executive summaries by criterion name: the results table and its plot, shown first.
SUMMARIES: Registry[Callable[[ReportContext], str]] = Registry("report summary")


def _load_sections() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def fmt(value: Any) -> str:
    """A compact, exact-enough cell: floats to 6 significant digits, containers inline."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; pipes and newlines in cells are escaped."""
    def cell(v):
        return fmt(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _device(config) -> dict:
    """The run's device for the report (name; on CUDA the GPU and the deterministic settings)."""
    from ..engine.device import device_manifest

    return device_manifest(getattr(config, "device", "cpu"))


def _tiers() -> dict[str, Any]:
    """The accuracy tiers as the report shows them; an unreadable ``tiers.toml`` is shown, not raised
    (the run's gates already failed on it, and the report must say why)."""
    try:
        return {name: {"relative_margin": t.relative_margin,
                       "require_no_significant_drop": t.require_no_significant_drop,
                       "rationale": t.rationale} for name, t in load_tiers().items()}
    except (OSError, ValueError) as exc:
        return {"error": f"tiers.toml could not be read: {exc}"}


def _check_catalogue(records: list[CheckRecord]) -> dict[str, dict[str, str]]:
    """What each check id of the run means, from the kit's catalogue (ids it does not know: left out)."""
    try:
        from ..kit.checks import describe
    except ImportError:
        return {}
    out = {}
    for check_id in dict.fromkeys(r.check_id for r in records):
        try:
            info = describe(check_id)
        except Exception:  # a catalogue module that fails to import must not cost the report
            info = None
        if info is not None:
            out[check_id] = {"description": info.description, "direction": info.direction,
                             "criterion": info.criterion}
    return out


def results_dict(run, exitstatus: int, artifacts: dict[str, str]) -> dict[str, Any]:
    """The full, schema-versioned record of a run."""
    from ..session import environment_manifest

    status_counts = {s.value: 0 for s in Status}
    for r in run.records:
        status_counts[r.status.value] += 1
    verdict = run.verdict()
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "run_id": run.run_id,
        "started": run.started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "exitstatus": exitstatus,
        "verdict": verdict.to_dict(),
        "config": {"anchors": run.config.anchors, "tier": run.config.tier, "data_dir": run.config.data_dir,
                   "imagenet": run.config.imagenet, "cache_dir": str(run.config.cache_dir),
                   "device": _device(run.config), "ray": getattr(run.config, "ray", None)},
        "environment": environment_manifest(),
        "datasets": run.datasets_used,
        "anchors": run.anchors_used,
        "tiers": _tiers(),
        "summary": {"records": status_counts, "cases": verdict.counts},
        "checks": _check_catalogue(run.records),
        "records": [r.to_dict() for r in run.records],
        "cases": [{"nodeid": o.nodeid, "criterion": o.criterion, "outcome": o.outcome,
                   "duration_s": round(o.duration, 4), "message": o.message} for o in run.outcomes.values()],
        "benchmarks": run.benchmarks,
        "proposals": [p.to_dict() for p in getattr(run, "proposals", [])],
        "artifacts": artifacts,
    }


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _render(name: str, fn: Callable[[ReportContext], str], ctx: ReportContext) -> str:
    try:
        return fn(ctx)
    except Exception as exc:  # a broken section must not lose the rest of the report
        return f"({name} failed to render: {type(exc).__name__}: {exc})"


def _render_into(run, run_dir: Path, exitstatus: int) -> None:
    """Render every section and summary, then ``results.json``, ``summary.md`` and ``index.html``."""
    from .render import render_details, render_html, render_summary

    _load_sections()
    ctx = ReportContext(list(run.records), run_dir, run)
    sections: dict[str, str] = {}
    for name in SECTIONS.names():
        if ctx.records_of(name):
            sections[name] = _render(f"section {name}", SECTIONS.get(name), ctx)
    summaries: dict[str, str] = {}
    for name in SUMMARIES.names():
        if name in sections:
            summaries[name] = _render(f"summary {name}", SUMMARIES.get(name), ctx)
    results = results_dict(run, exitstatus, ctx.artifacts)
    _atomic_write(run_dir / "results.json", json.dumps(results, indent=1, sort_keys=False) + "\n")
    _atomic_write(run_dir / "summary.md", render_summary(run, results, sections, summaries))
    _atomic_write(run_dir / "details.md", render_details(run, results, sections))
    _atomic_write(run_dir / "index.html", render_html(run, results, sections, summaries, run_dir,
                                                      f"nnconform report {run.run_id}"))


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished report folder into place; an old one (``overwrite``) is moved aside first
    and removed only once the new one is in place."""
    old = None
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{target} already exists (pass --nnc-overwrite to replace it)")
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _point_latest(report_dir: Path, run_id: str) -> None:
    """``latest`` -> the run, replaced atomically (a new link under a temporary name, renamed over)."""
    tmp = report_dir / f".latest-{uuid.uuid4().hex[:8]}"
    os.symlink(run_id, tmp)
    try:
        os.replace(tmp, report_dir / "latest")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(run, exitstatus: int = 0) -> Path:
    """Write the run's report into a fresh temporary folder beside ``<report_dir>/<run_id>``, rename
    it into place and point ``latest`` at it; return the run folder.

    Raises ``OSError`` (naming the path) when the report cannot be written; nothing is left behind
    then, and an existing report of the same id stays as it was.
    """
    report_dir = Path(run.config.report_dir)
    target = report_dir / run.run_id
    if report_dir.exists() and not report_dir.is_dir():
        raise NotADirectoryError(f"the report folder {report_dir} is a file")
    report_dir.mkdir(parents=True, exist_ok=True)
    if (target.exists() or target.is_symlink()) and not run.config.overwrite:
        raise FileExistsError(f"{target} already exists (pass --nnc-overwrite to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.run_id}.", suffix=".tmp", dir=report_dir))
    try:
        _render_into(run, tmp, exitstatus)
        _publish(tmp, target, run.config.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _point_latest(report_dir, run.run_id)
    except OSError as exc:  # the report is in place; only the convenience link is stale
        run.report_notes.append(f"{report_dir / 'latest'} not updated: {exc}")
    return target
