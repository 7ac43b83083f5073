"""The report: ``reports/<run-id>/results.json``, ``summary.md`` and a self-contained ``index.html``,
rendered once per run.

Criteria add their own tables, plots and curve files through :data:`SECTIONS`: a section is a
function ``(ReportContext) -> str`` returning Markdown; it may write files into
``ctx.run_dir`` (plots, curve JSON) and list them in ``ctx.artifacts``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import pkgutil
import sys
import tempfile
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


def results_dict(run, exitstatus: int, artifacts: dict[str, str]) -> dict[str, Any]:
    """The full, schema-versioned record of a run."""
    from ..session import environment_manifest

    status_counts = {s.value: 0 for s in Status}
    for r in run.records:
        status_counts[r.status.value] += 1
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "run_id": run.run_id,
        "started": run.started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "exitstatus": exitstatus,
        "config": {"anchors": run.config.anchors, "tier": run.config.tier, "data_dir": run.config.data_dir,
                   "imagenet": run.config.imagenet, "cache_dir": str(run.config.cache_dir)},
        "environment": environment_manifest(),
        "datasets": run.datasets_used,
        "anchors": run.anchors_used,
        "tiers": {name: {"relative_margin": t.relative_margin,
                         "require_no_significant_drop": t.require_no_significant_drop,
                         "rationale": t.rationale} for name, t in load_tiers().items()},
        "summary": {"records": status_counts, "cases": run.counts()},
        "records": [r.to_dict() for r in run.records],
        "cases": [{"nodeid": o.nodeid, "criterion": o.criterion, "outcome": o.outcome,
                   "duration_s": round(o.duration, 4), "message": o.message} for o in run.outcomes.values()],
        "benchmarks": run.benchmarks,
        "proposals": [p.to_dict() for p in getattr(run, "proposals", [])],
        "artifacts": artifacts,
    }


def _criteria(run) -> list[str]:
    seen: list[str] = []
    for r in run.records:
        if r.criterion and r.criterion not in seen:
            seen.append(r.criterion)
    for o in run.outcomes.values():
        if o.criterion not in seen:
            seen.append(o.criterion)
    return seen


def render_summary(run, results: dict, sections: dict[str, str]) -> str:
    """``summary.md``: one table per criterion, readable without running anything."""
    counts = results["summary"]["cases"]
    verdict = "PASS" if counts.get("failed", 0) == 0 and counts.get("error", 0) == 0 else "FAIL"
    env = results["environment"]
    lines = [
        f"# nnconform conformance report: run {run.run_id}",
        "",
        f"**Verdict: {verdict}**: {counts.get('passed', 0)} cases passed, {counts.get('failed', 0)} failed, "
        f"{counts.get('error', 0)} errors, {counts.get('skipped', 0)} skipped; "
        f"{len(run.records)} check records.",
        "",
        md_table(["run", "value"], [
            ["started / finished (UTC)", f"{results['started']} / {results['finished']}"],
            ["command", " ".join(results["command"])],
            ["tier", run.config.tier], ["anchors", run.config.anchors],
            ["commit", f"{env['git']['commit']}{' (uncommitted changes)' if env['git']['dirty'] else ''}"],
            ["machine", f"{env['machine']['platform']}, {env['machine']['cpu_count']} CPUs, "
                        f"torch threads {env['machine']['torch_threads']}"],
        ]),
        "",
        "## Anchors",
        "",
        md_table(["anchor", "family", "dataset", "params", "MACs", "documented top-1", "weights", "sha256"],
                 [[n, a["family"], a["dataset"], a["num_params"], a["macs"], a["metrics"].get("top1"),
                   a["weights"], a["sha256"]] for n, a in run.anchors_used.items()]),
        "",
        "## Datasets",
        "",
        md_table(["dataset", "samples", "fingerprint (sha256)", "source", "kind"],
                 [[n, d["samples"], d["fingerprint"], d["source"], "smoke set" if d["smoke"] else "evaluation"]
                  for n, d in run.datasets_used.items()]),
        "",
        "## Tiers",
        "",
        md_table(["tier", "margin (relative)", "no significant drop", "rationale"],
                 [[n, t["relative_margin"], t["require_no_significant_drop"], t["rationale"]]
                  for n, t in results["tiers"].items()]),
    ]
    for criterion in _criteria(run):
        recs = [r for r in run.records if r.criterion == criterion]
        lines += ["", f"## Criterion: {criterion or '(unnamed)'}", ""]
        if recs:
            lines.append(md_table(["check", "subject", "status", "measured", "expected", "tolerance", "message"],
                                  [[r.check_id, r.subject, r.status.value.upper(), r.measured, r.expected,
                                    r.tolerance, r.message] for r in recs]))
        if criterion in sections:
            lines += ["", sections[criterion]]
        not_ok = [o for o in run.outcomes.values() if o.criterion == criterion and o.outcome != "passed"]
        if not_ok:
            lines += ["", f"Cases of {criterion} that did not pass:", ""]
            lines.append(md_table(["case", "outcome", "reason"],
                                  [[o.nodeid, o.outcome, o.message.strip().splitlines()[-1] if o.message.strip() else ""]
                                   for o in not_ok]))
    if run.benchmarks:
        lines += ["", "## Latency (pytest-benchmark, CPU)", ""]
        lines.append(md_table(["benchmark", "median s", "mean s", "stddev s", "rounds"],
                              [[b["fullname"] or b["name"], b.get("median"), b.get("mean"), b.get("stddev"),
                                b.get("rounds")] for b in run.benchmarks]))
    lines += ["", "## Environment", "",
              md_table(["package", "version"], [[k, v or "not installed"] for k, v in env["packages"].items()]),
              "", f"Seeds: {fmt(env['seeds'])}. Python {env['python']}.", ""]
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) { background: #fafafa; }
td:nth-child(3) { white-space: nowrap; } img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f4f4f4; padding: 0 0.2em; } h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; }
"""


def render_html(summary_md: str, run_dir: Path, title: str) -> str:
    """``index.html``: the summary as one self-contained page (plots embedded as data URIs)."""
    import base64
    import html
    import re

    import markdown

    body = markdown.markdown(summary_md, extensions=["tables"], output_format="html")

    def embed(match: re.Match) -> str:
        src = match.group(2)
        path = (run_dir / src).resolve()
        if path.suffix.lower() == ".png" and path.is_file() and run_dir.resolve() in path.parents:
            data = base64.b64encode(path.read_bytes()).decode()
            return f'{match.group(1)}"data:image/png;base64,{data}"'
        return match.group(0)

    body = re.sub(r'(<img[^>]*?src=)"([^"]+)"', embed, body)
    body = re.sub(r"<td>(PASS|FAIL|ERROR|SKIP|INFO)</td>", lambda m: f'<td class="s-{m.group(1).lower()}">{m.group(1)}</td>', body)
    colours = ".s-pass{color:#1a7f37;font-weight:600}.s-fail,.s-error{color:#cf222e;font-weight:600}.s-skip{color:#9a6700}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_HTML_STYLE}{colours}</style></head><body>\n{body}\n</body></html>\n")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(run, exitstatus: int = 0) -> Path:
    """Render every section, then write ``results.json`` and ``summary.md``; return the run folder."""
    run_dir = Path(run.config.report_dir) / run.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    _load_sections()
    ctx = ReportContext(list(run.records), run_dir, run)
    sections: dict[str, str] = {}
    for name in SECTIONS.names():
        if ctx.records_of(name):
            try:
                sections[name] = SECTIONS.get(name)(ctx)
            except Exception as exc:  # a broken section must not lose the rest of the report
                sections[name] = f"(section {name} failed to render: {type(exc).__name__}: {exc})"
    results = results_dict(run, exitstatus, ctx.artifacts)
    _atomic_write(run_dir / "results.json", json.dumps(results, indent=1, sort_keys=False) + "\n")
    summary = render_summary(run, results, sections)
    _atomic_write(run_dir / "summary.md", summary)
    _atomic_write(run_dir / "index.html", render_html(summary, run_dir, f"nnconform report {run.run_id}"))
    latest = Path(run.config.report_dir) / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name)
    except OSError:
        pass
    return run_dir
