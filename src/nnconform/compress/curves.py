"""Size-accuracy curves of the compression criterion, as the kit's :class:`~nnconform.kit.RateCurve`.

A curve is one method on one anchor, its operating points ordered by artifact size:
``{"name": "<anchor>/<method>", "results": {"bytes": [...], "top1": [...], ...}, "meta": {...}}``
(``meta`` holds the proposal and the uncompressed anchor's reference values). Inputs are the
``compression.accuracy`` records of a run (their ``details`` carry the metrics); the report writes
and plots the curves with :func:`nnconform.kit.write_curves` and :func:`nnconform.kit.plot_curves`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from ..kit import RateCurve

CURVE_METRICS = ("bytes", "compression_ratio", "top1", "delta", "relative_delta", "agreement", "mean_kl",
                 "worst_class_drop", "params", "macs", "param_reduction", "mac_reduction", "mac_ratio")


def case_rows(records: Iterable) -> list[dict[str, Any]]:
    """One flat dict per evaluated case, from ``compression.accuracy`` records."""
    rows = []
    for r in records:
        if r.check_id != "compression.accuracy" or "metrics" not in r.details:
            continue
        d, m = r.details, r.details["metrics"]
        config = d.get("config", {})
        finetuned = bool(config.get("finetune_epochs"))
        rows.append({"anchor": d.get("anchor"), "method": d.get("method"), "label": d.get("label", ""),
                     # fine-tuned points are their own series: "as compressed" and "+ fine-tuned" side by side
                     "series": f"{d.get('method')} + fine-tuned" if finetuned else d.get("method"),
                     "finetune_epochs": config.get("finetune_epochs", 0), "target_ratio": config.get("target_ratio"),
                     "cost_metric": config.get("cost_metric"), "achieved_ratio": d.get("achieved_ratio"),
                     "mac_ratio": m["macs"] / m["macs_ref"] if m.get("macs_ref") else None,
                     "method_metadata": d.get("method_metadata") or {},
                     "subject": r.subject, "status": r.status.value if hasattr(r.status, "value") else r.status,
                     "claimed_tier": d.get("claimed_tier"), "config": d.get("config", {}),
                     # "top1" holds the anchor's task metric (WER for speech): metric_label says which
                     "top1": m["acc"], "top1_ref": m["acc_ref"], "metric_label": m.get("metric_label", "top-1 accuracy"),
                     "task": m.get("task", "classification"), "higher_is_better": m.get("higher_is_better", True),
                     **{k: m.get(k) for k in CURVE_METRICS if k in m},
                     "delta_ci95": m.get("delta_ci95"), "mcnemar_p": m.get("mcnemar_p"),
                     "worst_class": m.get("worst_class"), "best_tier": m.get("best_tier"),
                     "bytes_ref": m.get("bytes_ref"), "params_ref": m.get("params_ref"), "macs_ref": m.get("macs_ref"),
                     "description": d.get("description", ""), "smoke": d.get("smoke", False),
                     "proposal": d.get("proposal") or ""})
    return rows


def targets_macs(row: dict[str, Any]) -> bool:
    """Whether a case's method targets a MAC ratio (AIMET compression): it belongs on a MAC axis."""
    return row.get("target_ratio") is not None and (row.get("cost_metric") or "mac") == "mac"


def rate_curves(rows: list[dict[str, Any]], rate: str = "bytes") -> list[RateCurve]:
    """One curve per (anchor, series) -- the method, or the method "+ fine-tuned" -- points sorted by ``rate``
    (``bytes`` or ``mac_ratio``); ``meta.reference`` is the fp32 anchor."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["anchor"], row.get("series") or row["method"])].append(row)
    out = []
    for (anchor, series), pts in sorted(groups.items()):
        first = min(pts, key=lambda p: p["bytes"])
        meta = {"proposal": first.get("proposal", ""),
                "reference": {"bytes": first["bytes_ref"], "top1": first["top1_ref"], "params": first["params_ref"],
                              "macs": first["macs_ref"], "mac_ratio": 1.0}}
        out.append(RateCurve.from_rows(anchor, series, pts, (*CURVE_METRICS, "label"), rate=rate,
                                       description=first.get("description") or series, meta=meta))
    return out


def target_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows of the MAC-targeting cases: anchor, method, point, target, achieved MAC ratio, fine-tuning, top-1,
    status (a point that missed its target fails ``compression.target_reached``)."""
    out = []
    for r in rows:
        if not targets_macs(r):
            continue
        achieved = r.get("achieved_ratio") if r.get("achieved_ratio") is not None else r.get("mac_ratio")
        out.append([r["anchor"], r["method"], r["label"], f"{r['target_ratio']:g}",
                    "" if achieved is None else f"{achieved:.3f}",
                    f"{r['finetune_epochs']} epochs" if r.get("finetune_epochs") else "as compressed",
                    f"{r['top1']:.2%}", r["status"].upper()])
    return out


def quant_notes(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Per ``aimet-quant`` case: what CLE did (or that it was inert), the AdaRound recipe, and AIMET's JSON
    encodings as a separate share (not counted in the artifact unless the config ships them)."""
    out = []
    for r in rows:
        if r["method"] != "aimet-quant":
            continue
        meta = r.get("method_metadata") or {}
        ada = meta.get("adaround")
        ada_text = "" if not ada else (f"{ada['recipe']}: {ada['iterations']} iterations/layer, {ada['samples']} images"
                                       + ("" if ada["recipe"] == "aimet-default" else
                                          f" (AIMET: {ada['aimet_default_iterations']}, 2000)"))
        enc = meta.get("encodings_bytes")
        enc_text = "" if enc is None else (f"{enc} B ({meta.get('encodings_share', 0):.0%} of graph + JSON), "
                                           + ("counted" if meta.get("encodings_counted") else "not counted"))
        out.append([r["anchor"], r["label"], meta.get("cle_summary", ""), ada_text, enc_text])
    return out


def zoo_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """AIMET-model-zoo-like rows: anchor (and its metric), FP32, W8A8, W4A8 metric (and bytes) from ``aimet-quant``
    cases."""
    by_anchor: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["method"] != "aimet-quant":
            continue
        cfg = row["config"]
        key = f"W{cfg.get('param_bw')}A{cfg.get('output_bw')}"
        recipe = ((row.get("method_metadata") or {}).get("adaround") or {}).get("recipe")
        # the AdaRound recipe point, not its reduced quick-tier variant, stands for W4A8 when both ran
        if key in by_anchor[row["anchor"]] and recipe == "reduced":
            continue
        by_anchor[row["anchor"]][key] = row
    out = []
    for anchor, points in sorted(by_anchor.items()):
        any_row = next(iter(points.values()))
        label = any_row.get("metric_label") or "top-1 accuracy"  # the anchor's task metric (WER for speech)
        cells = [f"{anchor} ({'top-1' if label == 'top-1 accuracy' else label})",
                 f"{any_row['top1_ref']:.2%} ({any_row['bytes_ref']} B)"]
        for key in ("W8A8", "W4A8"):
            p = points.get(key)
            reduced = ((p or {}).get("method_metadata") or {}).get("adaround") or {}
            note = " reduced AdaRound" if reduced.get("recipe") == "reduced" else ""
            cells.append(f"{p['top1']:.2%} ({p['bytes']} B){note}" if p else "")
        out.append(cells)
    return out
