"""Size-accuracy curves (CompressAI-style JSON + matplotlib) and the AIMET-model-zoo-like table.

A curve is one method on one anchor, its operating points ordered by artifact size:
``{"name": ..., "description": ..., "results": {"bytes": [...], "top1": [...], ...}}``.
Inputs are the ``compression.accuracy`` records of a run (their ``details`` carry the metrics).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

CURVE_METRICS = ("bytes", "compression_ratio", "top1", "delta", "relative_delta", "agreement", "mean_kl",
                 "worst_class_drop", "params", "macs", "param_reduction", "mac_reduction")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def case_rows(records: Iterable) -> list[dict[str, Any]]:
    """One flat dict per evaluated case, from ``compression.accuracy`` records."""
    rows = []
    for r in records:
        if r.check_id != "compression.accuracy" or "metrics" not in r.details:
            continue
        d, m = r.details, r.details["metrics"]
        rows.append({"anchor": d.get("anchor"), "method": d.get("method"), "label": d.get("label", ""),
                     "subject": r.subject, "status": r.status.value if hasattr(r.status, "value") else r.status,
                     "claimed_tier": d.get("config", {}).get("claimed_tier"), "config": d.get("config", {}),
                     "top1": m["acc"], "top1_ref": m["acc_ref"], **{k: m.get(k) for k in CURVE_METRICS if k in m},
                     "delta_ci95": m.get("delta_ci95"), "mcnemar_p": m.get("mcnemar_p"),
                     "worst_class": m.get("worst_class"), "best_tier": m.get("best_tier"),
                     "bytes_ref": m.get("bytes_ref"), "params_ref": m.get("params_ref"), "macs_ref": m.get("macs_ref"),
                     "description": d.get("description", ""), "smoke": d.get("smoke", False),
                     "proposal": d.get("proposal") or ""})
    return rows


def curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CompressAI-style curve records, one per (anchor, method), points sorted by bytes."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["anchor"], row["method"])].append(row)
    out = []
    for (anchor, method), pts in sorted(groups.items()):
        pts.sort(key=lambda p: p["bytes"])
        results = {k: [p.get(k) for p in pts] for k in CURVE_METRICS}
        results["label"] = [p["label"] for p in pts]
        out.append({"name": f"{anchor}/{method}", "anchor": anchor, "method": method,
                    "proposal": pts[0].get("proposal", ""),
                    "description": pts[0].get("description") or method,
                    "reference": {"bytes": pts[0]["bytes_ref"], "top1": pts[0]["top1_ref"],
                                  "params": pts[0]["params_ref"], "macs": pts[0]["macs_ref"]},
                    "results": results})
    return out


def write_curves(curve_list: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One JSON file per curve under ``folder/<anchor>/<method>.json``."""
    paths = []
    for c in curve_list:
        path = Path(folder) / _safe(c["anchor"]) / f"{_safe(c['method'])}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(c, indent=1))
        paths.append(path)
    return paths


def plot_anchor(anchor: str, curve_list: list[dict[str, Any]], path: Path) -> Path:
    """Top-1 against artifact bytes (log scale) for every method on one anchor; the anchor is a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    ref = None
    for c in curve_list:
        if c["anchor"] != anchor:
            continue
        r = c["results"]
        if c.get("proposal"):  # a proposal's curve stands out against the reference methods'
            ax.plot(r["bytes"], r["top1"], marker="D", linewidth=2.5, linestyle="--",
                    label=f"{c['method']} (proposal {c['proposal']})")
        else:
            ax.plot(r["bytes"], r["top1"], marker="o", label=c["method"])
        ref = c["reference"]
    if ref:
        ax.scatter([ref["bytes"]], [ref["top1"]], marker="*", s=180, color="black", zorder=5, label="fp32 anchor")
        ax.axhline(ref["top1"] * 0.99, color="grey", linestyle=":", linewidth=1, label="99% of anchor")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (bytes, log scale)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{anchor}: size vs accuracy per compression method")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
