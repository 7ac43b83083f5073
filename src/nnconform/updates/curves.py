"""Rate-accuracy curves of update codecs (as the kit's :class:`~nnconform.kit.RateCurve`) and accuracy
trajectories of lineages.

One curve is one codec on one lineage pair over its operating points, sorted by bytes; the kit writes
them as CompressAI-style JSON and draws them (:func:`nnconform.kit.write_curves`,
:func:`nnconform.kit.plot_curves`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .. import kit
from ..kit.curves import save_figure

#: Metrics of one operating point, in the order a curve lists them.
CURVE_METRICS = ("label", "bytes", "ratio_to_full", "top1", "agreement", "delta_vs_target")


def curves_from_points(points: Iterable[Mapping]) -> list[kit.RateCurve]:
    """Group operating-point rows (keys ``pair``, ``codec``, optional ``proposal``, and :data:`CURVE_METRICS`)
    into curves: one per codec and pair, its points sorted by bytes."""
    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for p in points:
        groups[(p["pair"], p["codec"])].append(p)
    return [kit.RateCurve.from_rows(pair, codec, rows, CURVE_METRICS, rate="bytes",
                                    description=f"update codec {codec!r} on lineage pair {pair}",
                                    meta={"proposal": next((r.get("proposal") for r in rows if r.get("proposal")), "")})
            for (pair, codec), rows in sorted(groups.items())]


def plot_trajectory(anchor: str, rows: Sequence[Mapping], path: str | Path) -> Path:
    """Accuracy per checkpoint of a lineage (rows: ``checkpoint``, ``top1``, optional ``ci95``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    names = [r["checkpoint"] for r in rows]
    ys = [r["top1"] for r in rows]
    ax.plot(range(len(rows)), ys, marker="o")
    if all(r.get("ci95") for r in rows):
        lo = [r["top1"] - r["ci95"][0] for r in rows]
        hi = [r["ci95"][1] - r["top1"] for r in rows]
        ax.errorbar(range(len(rows)), ys, yerr=[lo, hi], fmt="none", capsize=3)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set_ylabel("top-1")
    ax.set_title(f"{anchor}: accuracy along the lineage", fontsize=10)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)
