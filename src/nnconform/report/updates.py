"""Report section of the model-update criterion: lineage trajectories, pair comparisons, codec curves.

Writes, under ``<run>/updates/``: one accuracy-trajectory plot per lineage, one rate-accuracy plot
per lineage pair, the curves as CompressAI-style JSON (``curves/<pair>/<codec>.json``) and the
per-layer weight changes of each pair (``layers/<pair>.json``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

from . import SECTIONS, ReportContext, md_table

SUBDIR = "updates"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _pct(x) -> str:
    return "" if x is None else f"{x:.2%}"


def _trajectories(ctx: ReportContext, recs) -> list[str]:
    from ..updates.curves import plot_trajectory

    by_anchor = defaultdict(list)
    for r in recs:
        if r.check_id == "updates.lineage_accuracy" and "checkpoint" in r.details:
            by_anchor[r.details["anchor"]].append(r)
    if not by_anchor:
        return []
    out = ["### Accuracy along each lineage", ""]
    for anchor, rows in by_anchor.items():
        rows.sort(key=lambda r: r.details.get("index", 0))
        table = [[r.details["checkpoint"], _pct(r.details["top1"]),
                  f"{r.details['ci95'][0]:.2%}..{r.details['ci95'][1]:.2%}", _pct(r.details.get("documented")),
                  r.details.get("preprocess", {}).get("resize"), r.status.value.upper()] for r in rows]
        out += [f"**{anchor}**" + (" (smoke set: not an accuracy measurement)" if rows[0].details.get("smoke") else ""),
                "", md_table(["checkpoint", "top-1", "95% CI (Wilson)", "documented", "resize", "status"], table), ""]
        path = plot_trajectory(anchor, [{"checkpoint": r.details["checkpoint"], "top1": r.details["top1"],
                                         "ci95": r.details["ci95"]} for r in rows],
                               ctx.run_dir / SUBDIR / f"trajectory-{_safe(anchor)}.png")
        rel = str(path.relative_to(ctx.run_dir))
        ctx.artifacts[f"updates/trajectory/{anchor}"] = rel
        out += [f"![{anchor} trajectory]({rel})", ""]
    return out


def _comparisons(ctx: ReportContext, recs) -> list[str]:
    rows = [r for r in recs if r.check_id == "updates.comparison"]
    if not rows:
        return []
    table = []
    for r in rows:
        d = r.details
        w = d.get("weights", {})
        lo, hi = d["delta_ci95"]
        table.append([r.subject, d.get("kind"), _pct(d["acc_ref"]), _pct(d["acc_new"]), f"{d['delta']:+.2%}",
                      f"{lo:+.2%}..{hi:+.2%}", f"{d['mcnemar_p']:.3g}", _pct(d["agreement"]),
                      ", ".join(d.get("improved", [])) or "-", ", ".join(d.get("regressed", [])) or "-",
                      f"{w.get('tensors_changed')}/{w.get('tensors')}", _pct(w.get("changed_fraction")),
                      f"{w.get('relative_l2', 0):.3g}"])
        path = ctx.run_dir / SUBDIR / "layers" / f"{_safe(r.subject)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pair": r.subject, "layers": d.get("layers", [])}, indent=1))
        ctx.artifacts[f"updates/layers/{r.subject}"] = str(path.relative_to(ctx.run_dir))
    out = ["### Checkpoint comparisons", "",
           "Paired on the same samples: delta = target - base top-1 with its bootstrap 95% CI and exact McNemar "
           "p; classes improved or regressed significantly (McNemar p < 0.05 on the class's samples); weights "
           "changed (bits differ) and the relative L2 norm of the change. Per-layer figures: `updates/layers/`.",
           "", md_table(["pair", "kind", "base top-1", "target top-1", "delta", "95% CI", "McNemar p", "agreement",
                         "improved", "regressed", "tensors changed", "weights changed", "rel. L2"], table), ""]
    # the most changed tensors of each pair, by relative L2
    for r in rows:
        layers = sorted((l for l in r.details.get("layers", []) if l.get("changed")),
                        key=lambda l: -(l.get("relative_l2") if l.get("relative_l2") not in (None, "inf") else 1e9))
        if layers:
            out += [f"<details><summary>{r.subject}: most changed tensors</summary>", "",
                    md_table(["tensor", "shape", "changed", "L2 of change", "relative L2"],
                             [[l["name"], "x".join(map(str, l["shape"])) or "scalar", _pct(l["changed_fraction"]),
                               f"{l['delta_l2']:.4g}", l["relative_l2"] if isinstance(l["relative_l2"], str)
                               else f"{l['relative_l2']:.4g}"] for l in layers[:8]]),
                    "", "</details>", ""]
    return out


def _codecs(ctx: ReportContext, recs) -> list[str]:
    from ..kit import plot_curves, write_curves
    from ..updates.curves import curves_from_points

    rows = [r for r in recs if r.check_id == "updates.accuracy" and "pair" in r.details]
    if not rows:
        return []
    exact = {r.subject: r.status.value.upper() for r in recs if r.check_id == "updates.reconstruction"}
    by_pair = defaultdict(list)
    for r in rows:
        by_pair[r.details["pair"]].append(r)
    out = ["### Update codecs", "",
           "Bytes are lengths of real payloads (container, hashes and header included) that were decoded and "
           "evaluated; the ratio is to the full checkpoint's payload. The gate is non-inferiority of the rebuilt "
           "model to the target checkpoint at the claimed tier; points without a claim are measured curve points.",
           ""]
    points = []
    for pair, prs in by_pair.items():
        prs.sort(key=lambda r: r.details["bytes"])
        table = [[r.details["label"], r.details["bytes"], f"{r.details['ratio_to_full']:.4f}", _pct(r.details["top1"]),
                  f"{r.details['delta']:+.2%}", _pct(r.details["agreement"]), r.details.get("claim") or "none",
                  r.details.get("best_tier_met") or "-", exact.get(r.subject, ""), r.status.value.upper()]
                 for r in prs]
        out += [f"**{pair}** (target top-1 {_pct(prs[0].details['target_top1'])}, full checkpoint "
                f"{prs[0].details['full_bytes']} bytes)", "",
                md_table(["point", "bytes", "ratio", "top-1", "delta vs target", "agreement", "claim",
                          "best tier met", "reconstruction", "accuracy gate"], table), ""]
        for r in prs:
            points.append({"pair": pair, "codec": r.details["codec"], "label": r.details["label"],
                           "bytes": r.details["bytes"], "ratio_to_full": r.details["ratio_to_full"],
                           "top1": r.details["top1"], "agreement": r.details["agreement"],
                           "delta_vs_target": r.details["delta"], "proposal": r.details.get("proposal", "")})
        curves = curves_from_points([p for p in points if p["pair"] == pair])
        png = plot_curves(curves, ctx.run_dir / SUBDIR / f"rate-accuracy-{_safe(pair)}.png", x="bytes", y="top1",
                          xlabel="update size (bytes)", ylabel="top-1 of reconstructed model", title=pair,
                          hlines=[(prs[0].details["target_top1"], "target checkpoint")],
                          vlines=[(prs[0].details["full_bytes"], "full checkpoint size")])
        rel = str(png.relative_to(ctx.run_dir))
        ctx.artifacts[f"updates/rate-accuracy/{pair}"] = rel
        out += [f"![rate-accuracy {pair}]({rel})", ""]
    for path in write_curves(curves_from_points(points), ctx.run_dir / SUBDIR / "curves"):
        ctx.artifacts[f"updates/curves/{path.parent.name}/{path.stem}"] = str(path.relative_to(ctx.run_dir))
    return out


def _nnc_lineages(recs) -> list[str]:
    """Per-update and cumulative bytes of each lineage coded whole through NNC, update tree kept vs fresh."""
    rows = [r for r in recs if r.check_id == "updates.nnc_lineage_size"]
    out = ["### NNC along each lineage", "",
           "The base checkpoint coded through NNC first, then each checkpoint as an update of the decoded "
           "predecessor: with NNCodec's update tree kept across the updates (temporal context adaptation), and with "
           "a fresh tree per update. Payload bytes (container included); cumulative = base + updates so far.",
           ""] if rows else []
    for r in rows:
        d = r.details
        inc, ind = d["incremental"], d["independent"]
        table = [[ck, "base" if i == 0 else "update", inc["payload_bytes"][i], inc["cumulative_bytes"][i],
                  ind["payload_bytes"][i], ind["cumulative_bytes"][i], f"{d['saving'][i]:+.2%}"]
                 for i, ck in enumerate(d["checkpoints"])]
        out += [f"**{r.subject}**: {r.message}", "",
                md_table(["checkpoint", "payload", "bytes (tree kept)", "cumulative", "bytes (fresh tree)",
                          "cumulative", "saved"], table), ""]
    return out


@SECTIONS.register("updates")
def render_updates(ctx: ReportContext) -> str:
    """Trajectory tables and plots per lineage, pair comparisons, codec tables and rate-accuracy curves."""
    recs = ctx.records_of("updates")
    lines = _trajectories(ctx, recs) + _comparisons(ctx, recs) + _codecs(ctx, recs) + _nnc_lineages(recs)
    return "\n".join(lines)


def summary(ctx: ReportContext) -> str:
    """Executive summary: per lineage pair and update codec point, payload bytes, ratio to the full
    checkpoint, top-1, change against the target and the accuracy tier met; then the rate-accuracy
    plots the section drew."""
    rows = [r for r in ctx.records_of("updates") if r.check_id == "updates.accuracy" and "pair" in r.details]
    if not rows:
        return ""
    rows.sort(key=lambda r: (r.details["pair"], r.details["bytes"]))
    table = [[r.details["pair"], r.details["label"], r.details["bytes"], f"{r.details['ratio_to_full']:.4f}",
              _pct(r.details["top1"]), f"{r.details['delta']:+.2%}", r.details.get("best_tier_met") or "-",
              r.details.get("claim") or "none", r.status.value.upper()] for r in rows]
    plots = [f"![rate-accuracy {key.removeprefix('updates/rate-accuracy/')}]({rel})"
             for key, rel in ctx.artifacts.items() if key.startswith("updates/rate-accuracy/")]
    return "\n".join([md_table(["pair", "point", "bytes", "ratio", "top-1", "delta vs target", "tier met",
                                "claim", "status"], table), ""] + plots)


from . import SUMMARIES  # noqa: E402  (the summary registry; added beside the section)

SUMMARIES.register("updates", summary)
