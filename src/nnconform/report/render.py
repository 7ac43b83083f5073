"""The report's two documents, leading with results: ``summary.md`` and ``index.html``.

Order: the verdict (one screen: counts, reasons, failures, skips grouped by reason), the executive
summary (per criterion, its results table and plot), the details (anchors, datasets, tiers, each
criterion's section, latency), then the check records, and the environment last. ``summary.md``
lists failing records in full and passing ones as counts per check id (the full records are in
``results.json``); ``index.html`` folds every record into one collapsible block per check id.
"""

from __future__ import annotations

import base64
import html
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from . import fmt, md_table

#: Criterion names as a reader knows them.
CRITERION_TITLES = {"anchors": "Anchors", "compression": "Compression", "updates": "Model updates",
                    "split": "Split inference", "proposal": "Proposals"}


def _title(criterion: str) -> str:
    return CRITERION_TITLES.get(criterion, criterion or "(unnamed)")


def _criteria(run) -> list[str]:
    seen: list[str] = []
    for r in run.records:
        if r.criterion and r.criterion not in seen:
            seen.append(r.criterion)
    for o in run.outcomes.values():
        if o.criterion not in seen:
            seen.append(o.criterion)
    return seen


def reference_base(run, run_dir: Path | None = None) -> str | None:
    """Where the report finds the reference pages (``docs/reference/``), relative to the run's folder, or None.

    The report links each anchor, dataset, method and check id to its entry there (see
    :func:`nnconform.docs.links.reference_base`: a clone's pages, or ``NNCONFORM_DOCS_URL``).
    """
    from ..docs.links import reference_base as base_for

    if run_dir is None:
        report_dir = getattr(getattr(run, "config", None), "report_dir", None)
        if report_dir is None:
            return None
        run_dir = Path(report_dir) / str(run.run_id)
    try:
        return base_for(run_dir)
    except (OSError, ValueError):  # no common root (another drive): the report reads without links
        return None


def ref_link(text: str, base: str | None, kind: str, *parts: str) -> str:
    """``text`` as a Markdown link to its reference entry (plain ``text`` without a base)."""
    from ..docs.links import entry_href

    return f"[{text}]({entry_href(kind, *parts, base=base)})" if base else text


def verdict_lines(run, results: dict) -> list[str]:
    """The verdict block: status and counts, why it is not a pass, failures, skips by reason."""
    v = results["verdict"]
    c = v["counts"]
    lines = [f"**Verdict: {v['status']}**: {c['passed']} cases passed, {c['failed']} failed, {c['error']} errors, "
             f"{c['skipped']} skipped, {c['not_run']} not run; {len(run.records)} check records.", ""]
    lines += [f"- {reason}" for reason in v["reasons"]]
    if v["reasons"]:
        lines.append("")
    if v["failures"]:
        lines += ["Cases that did not pass:", "",
                  md_table(["case", "why"], [[f["case"], f["message"]] for f in v["failures"]]), ""]
    if v["skipped"]:
        lines += ["Skipped cases (only user-supplied anchors, or timing cases the options turned off, may skip):",
                  "", md_table(["cases", "reason"], [[s["cases"], s["reason"]] for s in v["skipped"]]), ""]
    if "error" in results["tiers"]:
        lines += [f"**{results['tiers']['error']}**", ""]
    lines += [f"Note: {n}" for n in getattr(run, "report_notes", [])]
    return lines


def run_table(run, results: dict) -> str:
    """Who ran what, when and where."""
    env = results["environment"]
    return md_table(["run", "value"], [
        ["started / finished (UTC)", f"{results['started']} / {results['finished']}"],
        ["command", " ".join(results["command"])],
        ["tier", run.config.tier], ["anchors", run.config.anchors],
        ["commit", f"{env['git']['commit']}{' (uncommitted changes)' if env['git']['dirty'] else ''}"],
        ["machine", f"{env['machine']['platform']}, {env['machine']['cpu_count']} CPUs, "
                    f"torch threads {env['machine']['torch_threads']}"],
    ])


def executive_summary(run, summaries: dict[str, str]) -> list[str]:
    """Per criterion of the run, its results table and plot."""
    lines = ["## Executive summary", ""]
    shown = [c for c in _criteria(run) if summaries.get(c, "").strip()]
    if not shown:
        return lines + ["No criterion produced results to summarise (see the verdict and the check records).", ""]
    for criterion in shown:
        lines += [f"### {_title(criterion)}", "", summaries[criterion].strip(), ""]
    return lines


def _task_metric(anchor: dict) -> tuple[str, str]:
    """The metric key and name of an anchor's task ("top1", "top-1 accuracy"; "wer", "WER")."""
    from ..tasks import TASKS

    task = TASKS.get(anchor.get("task") or "classification")
    return task.metric, task.metric_label


def detail_lines(run, results: dict, sections: dict[str, str], base: str | None = None, *,
                 full: bool = True) -> list[str]:
    """Anchors, datasets, methods and tiers, then each criterion's own section, then latency (names link to their
    reference entries when ``base`` is given). ``full=False`` (summary.md) leaves the criteria's per-anchor tables
    to ``details.md`` and shows latency per benchmark group only."""
    from ..docs.results import methods_in_records

    methods = methods_in_records(results.get("records", []))
    lines = ["## Details", "", "### Anchors", "",
             md_table(["anchor", "family", "dataset", "params", "MACs", "metric", "documented", "weights", "sha256"],
                      [[ref_link(n, base, "anchor", n), a["family"], ref_link(a["dataset"], base, "dataset", a["dataset"]),
                        a["num_params"], a["macs"], _task_metric(a)[1], a["metrics"].get(_task_metric(a)[0]),
                        a["weights"], a["sha256"]] for n, a in run.anchors_used.items()]),
             "", "### Datasets", "",
             md_table(["dataset", "samples", "fingerprint (sha256)", "source", "kind"],
                      [[ref_link(n, base, "dataset", n), d["samples"], d["fingerprint"], d["source"],
                        "smoke set" if d["smoke"] else "evaluation"] for n, d in run.datasets_used.items()]),
             ""]
    if methods:
        lines += ["### Methods", "", "What each method does, its config and its operating points: "
                  + ", ".join(ref_link(f"`{m}`", base, "method", k, m) + f" ({k})" for k, m in methods) + ".", ""]
    lines += ["### Accuracy tiers", ""]
    tiers = results["tiers"]
    if "error" in tiers:
        lines.append(tiers["error"])
    else:
        lines.append(md_table(["tier", "margin (relative)", "no significant drop", "rationale"],
                              [[n, t["relative_margin"], t["require_no_significant_drop"], t["rationale"]]
                               for n, t in tiers.items()]))
    if not full:
        shown = [c for c in _criteria(run) if sections.get(c, "").strip()]
        if shown:
            lines += ["", "The per-anchor tables and plots of each criterion (" + ", ".join(shown) + ") are in "
                      "[details.md](details.md) and in index.html; every record is in results.json."]
        return lines + latency_lines(run, full=False) + [""]
    for criterion in _criteria(run):
        if sections.get(criterion, "").strip():
            lines += ["", f"### Criterion: {criterion}", "", sections[criterion].strip()]
    return lines + latency_lines(run, full=True) + [""]


def latency_lines(run, *, full: bool) -> list[str]:
    """pytest-benchmark's timings: every benchmark (``full``), or one row per benchmark group."""
    if not run.benchmarks:
        return []
    lines = ["", "### Latency (pytest-benchmark, CPU)", ""]
    if full:
        return lines + [md_table(["benchmark", "median s", "mean s", "stddev s", "rounds"],
                                 [[b["fullname"] or b["name"], b.get("median"), b.get("mean"), b.get("stddev"),
                                   b.get("rounds")] for b in run.benchmarks])]
    groups: dict[str, list[float]] = {}
    for b in run.benchmarks:
        groups.setdefault(b.get("group") or "(no group)", []).append(b.get("median"))
    rows = []
    for name, medians in sorted(groups.items()):
        known = sorted(m for m in medians if m is not None)
        rows.append([name, len(medians), known[0] if known else None, known[len(known) // 2] if known else None,
                     known[-1] if known else None])
    return lines + ["Per benchmark group; each benchmark's figures are in details.md and results.json.", "",
                    md_table(["group", "benchmarks", "fastest median s", "middle median s", "slowest median s"], rows)]


def render_details(run, results: dict, sections: dict[str, str]) -> str:
    """``details.md``: the criteria's per-anchor tables and plots, and every benchmark's timing."""
    lines = [f"# nnconform conformance report: run {run.run_id}: details", "",
             "The verdict, the executive summary and the check records are in [summary.md](summary.md).", ""]
    for criterion in _criteria(run):
        if sections.get(criterion, "").strip():
            lines += [f"## Criterion: {criterion}", "", sections[criterion].strip(), ""]
    return "\n".join(lines + latency_lines(run, full=True) + [""])


def _groups(run) -> dict[str, dict[str, list]]:
    """Records by criterion, then by check id, in the order they were recorded."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in run.records:
        out[r.criterion or ""][r.check_id].append(r)
    return out


def _explain(check_id: str, checks: dict[str, dict[str, str]]) -> str:
    info = checks.get(check_id)
    return f"{info['description']} ({info['direction']})" if info else "(not in the check catalogue)"


_NOT_OK = ("fail", "error")


def records_markdown(run, results: dict, base: str | None = None) -> list[str]:
    """The check records for ``summary.md``: each check id explained with its counts, then every
    failing record in full (passing records are in ``results.json``)."""
    groups = _groups(run)
    checks = results.get("checks", {})
    lines = ["## Check records", "",
             "Every check id of the run, what it checks and how its records ended. The full records are in "
             "`results.json`; `index.html` lists them all.", ""]
    rows = []
    for criterion, by_id in groups.items():
        for check_id, recs in by_id.items():
            n = Counter(r.status.value for r in recs)
            rows.append([ref_link(check_id, base if check_id in checks else None, "check", check_id),
                         _explain(check_id, checks), n["pass"], n["fail"], n["error"], n["skip"], n["info"]])
    lines += [md_table(["check", "what it checks", "pass", "fail", "error", "skip", "info"], rows), ""]
    bad = [r for by_id in groups.values() for recs in by_id.values() for r in recs if r.status.value in _NOT_OK]
    if bad:
        lines += ["### Failing records", "",
                  md_table(["check", "subject", "status", "measured", "expected", "tolerance", "message"],
                           [[r.check_id, r.subject, r.status.value.upper(), r.measured, r.expected, r.tolerance,
                             r.message] for r in bad]), ""]
    return lines


def _cell(value: Any) -> str:
    return html.escape(fmt(value))


def records_html(run, results: dict, base: str | None = None) -> str:
    """Every record, one collapsible ``<details>`` per criterion and check id (open when it failed)."""
    checks = results.get("checks", {})
    out = ['<h2 id="check-records">Check records</h2>',
           "<p>Grouped by criterion and check id; a group opens by itself when one of its records failed.</p>"]
    for criterion, by_id in _groups(run).items():
        out.append(f"<h3>{html.escape(_title(criterion))}</h3>")
        for check_id, recs in by_id.items():
            n = Counter(r.status.value for r in recs)
            counts = ", ".join(f"{k} {n[k]}" for k in ("pass", "fail", "error", "skip", "info") if n[k])
            is_open = " open" if n["fail"] or n["error"] else ""
            rows = "".join(
                f'<tr><td>{_cell(r.subject)}</td><td class="s-{r.status.value}">{r.status.value.upper()}</td>'
                f"<td>{_cell(r.measured)}</td><td>{_cell(r.expected)}</td><td>{_cell(r.tolerance)}</td>"
                f"<td>{_cell(r.message)}</td></tr>" for r in recs)
            code = f"<code>{html.escape(check_id)}</code>"
            if base and check_id in checks:  # only catalogue ids have an entry to link to
                from ..docs.links import entry_href

                code += f' <a href="{html.escape(entry_href("check", check_id, base=base))}">(reference)</a>'
            out.append(f"<details{is_open}><summary>{code}: "
                       f"{html.escape(_explain(check_id, checks))} ({counts})</summary>"
                       "<table><thead><tr><th>subject</th><th>status</th><th>measured</th><th>expected</th>"
                       f"<th>tolerance</th><th>message</th></tr></thead><tbody>{rows}</tbody></table></details>")
    return "\n".join(out)


def environment_lines(results: dict) -> list[str]:
    """Versions, seeds and Python: the last section."""
    env = results["environment"]
    return ["## Environment", "",
            md_table(["package", "version"], [[k, v or "not installed"] for k, v in env["packages"].items()]),
            "", f"Seeds: {fmt(env['seeds'])}. Python {env['python']}.", ""]


def render_summary(run, results: dict, sections: dict[str, str], summaries: dict[str, str]) -> str:
    """``summary.md``: readable on its own, results first, records last."""
    base = reference_base(run)
    lines = [f"# nnconform conformance report: run {run.run_id}", ""]
    lines += verdict_lines(run, results)
    lines += [run_table(run, results), ""]
    lines += executive_summary(run, summaries)
    lines += detail_lines(run, results, sections, base, full=False)
    lines += records_markdown(run, results, base)
    lines += environment_lines(results)
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; } details { margin: 0.3em 0; } summary { cursor: pointer; }
code { background: #f4f4f4; padding: 0 0.2em; } h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; }
.s-pass{color:#1a7f37;font-weight:600}.s-fail,.s-error{color:#cf222e;font-weight:600}.s-skip{color:#9a6700}
"""


def _embed_images(body: str, run_dir: Path) -> str:
    """Plots as data URIs; a plot shown twice (summary and details) is embedded once, then linked."""
    seen: dict[str, int] = {}

    def embed(match: re.Match) -> str:
        tag = match.group(0)
        src = re.search(r'src="([^"]+)"', tag)
        if src is None:
            return tag
        path = (run_dir / src.group(1)).resolve()
        if path.suffix.lower() != ".png" or not path.is_file() or run_dir.resolve() not in path.parents:
            return tag
        if src.group(1) in seen:
            alt = re.search(r'alt="([^"]*)"', tag)
            return (f'<a href="#plot-{seen[src.group(1)]}">(plot shown above: '
                    f'{alt.group(1) if alt else src.group(1)})</a>')
        seen[src.group(1)] = len(seen)
        data = base64.b64encode(path.read_bytes()).decode()
        return tag.replace(src.group(0), f'id="plot-{seen[src.group(1)]}" src="data:image/png;base64,{data}"', 1)

    return re.sub(r"<img[^>]*>", embed, body)


def render_html(run, results: dict, sections: dict[str, str], summaries: dict[str, str], run_dir: Path,
                title: str) -> str:
    """``index.html``: one self-contained page (plots embedded), results first, records folded last."""
    import markdown

    def md(lines: list[str]) -> str:
        return markdown.markdown("\n".join(lines), extensions=["tables"], output_format="html")

    front = [f"# nnconform conformance report: run {run.run_id}", ""] + verdict_lines(run, results)
    base = reference_base(run, run_dir)
    front += [run_table(run, results), ""] + executive_summary(run, summaries) + detail_lines(run, results, sections,
                                                                                             base)
    body = "\n".join([md(front), records_html(run, results, base), md(environment_lines(results))])
    body = _embed_images(body, run_dir)
    body = re.sub(r"<td>(PASS|FAIL|ERROR|SKIP|INFO)</td>",
                  lambda m: f'<td class="s-{m.group(1).lower()}">{m.group(1)}</td>', body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")
