"""Report section of the compression criterion (issue 3).

Renders the per-case table (size, accuracy change with its interval, agreement, KL, worst class,
MAC/parameter reduction, strictest tier met, claimed tier, latency), the AIMET-model-zoo-like
FP32/W8A8/W4A8 table, and writes under ``<run>/compression/``: one size-accuracy curve JSON per
(anchor, method) (``curves/<anchor>/<method>.json``, the kit's :class:`~nnconform.kit.RateCurve`)
and one plot per anchor (``size-accuracy-<anchor>.png``, :func:`~nnconform.kit.plot_curves`).
Methods that target a MAC ratio (AIMET spatial SVD, channel pruning, weight SVD) are also plotted on
a MAC axis (``mac-accuracy-<anchor>.png``, the bytes plot beside it), with a table of target vs
achieved MAC ratio; the AIMET quantization cases say what CLE did (or that it was inert), which
AdaRound recipe ran, and the size of AIMET's JSON encodings as a separate share.
"""

from __future__ import annotations

from collections import defaultdict

from . import SECTIONS, ReportContext, md_table

SUBDIR = "compression"


def _pct(x) -> str:
    return "" if x is None else f"{x:.2%}"


@SECTIONS.register("compression")
def section(ctx: ReportContext) -> str:
    from ..compress.curves import case_rows, quant_notes, rate_curves, target_table, targets_macs, zoo_table
    from ..kit import plot_curves, write_curves

    recs = ctx.records_of("compression")
    rows = case_rows(recs)
    latency = {r.subject: r.measured for r in recs if r.check_id == "compression.latency"}
    calib = [r for r in recs if r.check_id == "compression.calibration"]
    out = ["### Compressed vs uncompressed", ""]
    if calib:
        out += ["Calibration: " + "; ".join(f"{r.subject}: {r.message}" for r in calib), ""]
    if not rows:
        failed = [r for r in recs if not r.passed]
        out += [f"No case was evaluated ({len(failed)} failing or skipped records; see the check table)."]
        return "\n".join(out)
    table = []
    for r in rows:
        ci = r.get("delta_ci95") or [None, None]
        ms = latency.get(r["subject"])
        logits_only = r.get("mcnemar_p") is not None  # classification; other tasks have no McNemar/KL/class
        table.append([r["anchor"], r["method"], r["label"], r["bytes"], f"{r['compression_ratio']:.2f}x",
                      _metric(r), f"{r['delta']:+.2%} [{ci[0]:+.2%}, {ci[1]:+.2%}]",
                      f"{r['mcnemar_p']:.3g}" if logits_only else "-", _pct(r["agreement"]) if logits_only else "-",
                      f"{r['mean_kl']:.4f}" if logits_only else "-",
                      f"{r['worst_class']} {r['worst_class_drop']:+.1%}" if logits_only else "-",
                      _pct(r["mac_reduction"]), _pct(r["param_reduction"]), r["best_tier"] or "none",
                      r["claimed_tier"] or "-", r["status"].upper(), "" if ms is None else f"{ms * 1e3:.2f}"])
    out += [md_table(["anchor", "method", "point", "bytes", "ratio", "metric", "delta [95% CI]", "McNemar p",
                      "agreement", "KL", "worst class", "MAC red.", "param red.", "tier met", "claimed", "status",
                      "ms/32"], table), "",
            "Bytes are lengths of the artifacts the evaluation decoded; the ratio is to the anchor's float32 "
            "safetensors. Parameters are the nonzero parameters of the decoded model (the exported graph's for "
            "ONNX artifacts); MACs are dense.", ""]
    from .scenario1 import scenario1_tables

    out += scenario1_tables(rows)  # TR 26.847 scenario 1, per ASR anchor
    zoo = zoo_table(rows)
    if zoo:
        out += ["#### AIMET quantization (model-zoo style)", "",
                md_table(["anchor (metric)", "FP32 (bytes)", "W8A8 (bytes)", "W4A8 AdaRound (bytes)"], zoo),
                ""]
    notes = quant_notes(rows)
    if notes:
        out += [md_table(["anchor", "point", "cross-layer equalization", "AdaRound", "AIMET JSON encodings"], notes),
                "", "CLE is AIMET's BN fold, cross-layer scaling and high-bias fold; \"inert\" means it scaled no "
                "pair (ReLU6 models: AIMET >= 2.4 skips conv-ReLU6-conv). The QDQ graph holds the encodings; "
                "AIMET's JSON file repeats them and is not part of the counted bytes unless the point ships it.", ""]
    targets = target_table(rows)
    if targets:
        out += ["#### AIMET compression: MAC target vs achieved", "",
                md_table(["anchor", "method", "point", "target MAC ratio", "achieved", "fine-tuning", "top-1",
                          "status"], targets), "",
                "Achieved = MACs of the decoded model / the anchor's. A point more than 0.05 above its target fails "
                "compression.target_reached. Fine-tuned points train on the calibration list (training split).", ""]
    curve_list = rate_curves(rows)
    folder = ctx.run_dir / SUBDIR
    for path, c in zip(write_curves(curve_list, folder / "curves"), curve_list):
        ctx.artifacts[f"compression/curve/{c.name}"] = str(path.relative_to(ctx.run_dir))
    by_anchor = defaultdict(list)
    for c in curve_list:
        by_anchor[c.subject].append(c)
    for anchor, anchor_curves in by_anchor.items():
        ref = anchor_curves[0].meta["reference"]
        ylabel, bar = _axis(rows, anchor, ref["top1"])
        path = plot_curves(anchor_curves, folder / f"size-accuracy-{anchor}.png", x="bytes", y="top1",
                           xlabel="artifact size (bytes, log scale)", ylabel=ylabel,
                           title=f"{anchor}: size vs {ylabel} per compression method",
                           reference=(ref["bytes"], ref["top1"]), reference_label="fp32 anchor",
                           hlines=[bar], size=(9, 4.8))
        rel = str(path.relative_to(ctx.run_dir))
        ctx.artifacts[f"compression/plot/{anchor}"] = rel
        line = f"![{anchor} size vs accuracy]({rel})"
        mac_rows = [r for r in rows if r["anchor"] == anchor and targets_macs(r) and r.get("mac_ratio") is not None]
        if mac_rows:  # MAC-targeting methods on the axis they target, beside the bytes plot
            mac_path = plot_curves(rate_curves(mac_rows, rate="mac_ratio"), folder / f"mac-accuracy-{anchor}.png",
                                   x="mac_ratio", y="top1", xlabel="MACs / anchor MACs", ylabel=ylabel,
                                   title=f"{anchor}: MAC ratio vs accuracy (MAC-targeting methods)", logx=False,
                                   reference=(1.0, ref["top1"]), reference_label="fp32 anchor",
                                   hlines=[bar], size=(7, 4.8))
            mac_rel = str(mac_path.relative_to(ctx.run_dir))
            ctx.artifacts[f"compression/plot/{anchor}-macs"] = mac_rel
            line += f" ![{anchor} MAC ratio vs accuracy]({mac_rel})"
        out += [line, ""]
    return "\n".join(out)


def _axis(rows: list[dict], anchor: str, ref_value: float) -> tuple[str, tuple[float, str]]:
    """The y label of an anchor's plots (its task's metric) and the 99% bar: 99% of the anchor's top-1 for a
    higher-is-better metric, the 99% tier's margin above the anchor's value for a lower-is-better one (WER)."""
    row = next(r for r in rows if r["anchor"] == anchor)
    label = row.get("metric_label") or "top-1 accuracy"
    if row.get("higher_is_better", True):
        return label, (ref_value * 0.99, "99% of anchor")
    from ..gates import get_tier

    margin = get_tier("99%", row.get("task")).margin(ref_value)
    return f"{label} (lower is better)", (ref_value + margin, f"99% tier: anchor + {margin * 100:.1f} points")


def _summary_plots(ctx: ReportContext, prefix: str) -> list[str]:
    return [f"![{key.removeprefix(prefix)} plot]({rel})" for key, rel in ctx.artifacts.items()
            if key.startswith(prefix) and rel.endswith(".png")]


def _metric(row: dict) -> str:
    """A case's task metric with its name: "top-1 89.37%", "WER 4.21%"."""
    label = row.get("metric_label") or "top-1 accuracy"
    return f"{'top-1' if label == 'top-1 accuracy' else label} {_pct(row['top1'])}"


def summary(ctx: ReportContext) -> str:
    """Executive summary: per anchor and method, bytes, ratio, top-1, delta with its 95% CI and the
    accuracy tier met (beside the one claimed); then the size-accuracy plots the section drew."""
    from ..compress.curves import case_rows

    rows = case_rows(ctx.records_of("compression"))
    if not rows:
        return ""
    table = []
    for r in rows:
        ci = r.get("delta_ci95") or [None, None]
        delta = "" if r.get("delta") is None else f"{r['delta']:+.2%}"
        if ci[0] is not None:
            delta += f" [{ci[0]:+.2%}, {ci[1]:+.2%}]"
        table.append([r["anchor"], r["method"], r["label"], r.get("bytes"),
                      "" if r.get("compression_ratio") is None else f"{r['compression_ratio']:.2f}x",
                      _metric(r), delta, r["best_tier"] or "none", r["claimed_tier"] or "-",
                      r["status"].upper()])
    return "\n".join([md_table(["anchor", "method", "point", "bytes", "ratio", "metric", "delta [95% CI]",
                                "tier met", "claimed", "status"], table), ""]
                     + _summary_plots(ctx, "compression/plot/"))


from . import SUMMARIES  # noqa: E402  (the summary registry; added beside the section)

SUMMARIES.register("compression", summary)
