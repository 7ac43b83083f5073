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
                 "worst_class_drop", "params", "macs", "param_reduction", "mac_reduction")


def case_rows(records: Iterable) -> list[dict[str, Any]]:
    """One flat dict per evaluated case, from ``compression.accuracy`` records."""
    rows = []
    for r in records:
        if r.check_id != "compression.accuracy" or "metrics" not in r.details:
            continue
        d, m = r.details, r.details["metrics"]
        rows.append({"anchor": d.get("anchor"), "method": d.get("method"), "label": d.get("label", ""),
                     "subject": r.subject, "status": r.status.value if hasattr(r.status, "value") else r.status,
                     "claimed_tier": d.get("claimed_tier"), "config": d.get("config", {}),
                     "top1": m["acc"], "top1_ref": m["acc_ref"], **{k: m.get(k) for k in CURVE_METRICS if k in m},
                     "delta_ci95": m.get("delta_ci95"), "mcnemar_p": m.get("mcnemar_p"),
                     "worst_class": m.get("worst_class"), "best_tier": m.get("best_tier"),
                     "bytes_ref": m.get("bytes_ref"), "params_ref": m.get("params_ref"), "macs_ref": m.get("macs_ref"),
                     "description": d.get("description", ""), "smoke": d.get("smoke", False),
                     "proposal": d.get("proposal") or ""})
    return rows


def rate_curves(rows: list[dict[str, Any]]) -> list[RateCurve]:
    """One curve per (anchor, method), points sorted by bytes; ``meta.reference`` is the fp32 anchor."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["anchor"], row["method"])].append(row)
    out = []
    for (anchor, method), pts in sorted(groups.items()):
        first = min(pts, key=lambda p: p["bytes"])
        meta = {"proposal": first.get("proposal", ""),
                "reference": {"bytes": first["bytes_ref"], "top1": first["top1_ref"], "params": first["params_ref"],
                              "macs": first["macs_ref"]}}
        out.append(RateCurve.from_rows(anchor, method, pts, (*CURVE_METRICS, "label"), rate="bytes",
                                       description=first.get("description") or method, meta=meta))
    return out


def zoo_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """AIMET-model-zoo-like rows: anchor, FP32, W8A8, W4A8 top-1 (and bytes) from ``aimet-quant`` cases."""
    by_anchor: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["method"] != "aimet-quant":
            continue
        cfg = row["config"]
        by_anchor[row["anchor"]][f"W{cfg.get('param_bw')}A{cfg.get('output_bw')}"] = row
    out = []
    for anchor, points in sorted(by_anchor.items()):
        any_row = next(iter(points.values()))
        cells = [anchor, f"{any_row['top1_ref']:.2%} ({any_row['bytes_ref']} B)"]
        for key in ("W8A8", "W4A8"):
            p = points.get(key)
            cells.append(f"{p['top1']:.2%} ({p['bytes']} B)" if p else "")
        out.append(cells)
    return out
