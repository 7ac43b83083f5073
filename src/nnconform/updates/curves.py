"""Rate-accuracy curves of update codecs and accuracy trajectories of lineages.

A curve is stored the way CompressAI stores rate-distortion results:
``{"name", "description", "results": {metric: [one value per operating point]}}``, sorted by rate,
so one plotting function reads curves from any run or any proposal.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

#: Metrics of one operating point, in the order a curve lists them.
CURVE_METRICS = ("label", "bytes", "ratio_to_full", "top1", "agreement", "delta_vs_target")


@dataclass(frozen=True)
class RateCurve:
    """One codec on one lineage pair, over its operating points."""

    name: str
    description: str
    results: Mapping[str, list] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The CompressAI-style JSON object."""
        return {"name": self.name, "description": self.description, "results": {k: list(v) for k, v in self.results.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "RateCurve":
        """Read a curve back; a ValueError names a malformed field."""
        if not isinstance(d.get("name"), str) or not isinstance(d.get("results"), dict):
            raise ValueError(f"a rate curve needs a string 'name' and a 'results' object, got keys {sorted(d)}")
        lengths = {k: len(v) for k, v in d["results"].items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"rate curve {d['name']!r}: metrics have different lengths {lengths}")
        return cls(d["name"], d.get("description", ""), {k: list(v) for k, v in d["results"].items()})


def curves_from_points(points: Iterable[Mapping]) -> list[RateCurve]:
    """Group operating-point rows (keys ``pair``, ``codec`` and :data:`CURVE_METRICS`) into curves.

    Each curve holds one codec on one pair, its points sorted by bytes.
    """
    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for p in points:
        groups[(p["pair"], p["codec"])].append(p)
    curves = []
    for (pair, codec), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["bytes"])
        results = {m: [r.get(m) for r in rows] for m in CURVE_METRICS}
        curves.append(RateCurve(f"{pair}/{codec}", f"update codec {codec!r} on lineage pair {pair}", results))
    return curves


def write_curves(curves: Sequence[RateCurve], folder: str | Path) -> list[Path]:
    """One JSON file per curve: ``<folder>/<pair>/<codec>.json``."""
    paths = []
    for c in curves:
        pair, _, codec = c.name.partition("/")
        path = Path(folder) / pair / f"{codec or 'curve'}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(c.to_dict(), indent=2, allow_nan=False))
        paths.append(path)
    return paths


def read_curves(folder: str | Path) -> list[RateCurve]:
    """Every curve JSON under ``folder``."""
    return [RateCurve.from_dict(json.loads(p.read_text())) for p in sorted(Path(folder).rglob("*.json"))]


def plot_rate_accuracy(curves: Sequence[RateCurve], path: str | Path, *, title: str = "",
                       target_top1: float | None = None, full_bytes: int | None = None) -> Path:
    """Top-1 of the reconstructed model against update bytes (log scale), one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for c in curves:
        xs, ys = c.results.get("bytes", []), c.results.get("top1", [])
        ax.plot(xs, ys, marker="o", label=c.name.partition("/")[2] or c.name)
    if target_top1 is not None:
        ax.axhline(target_top1, color="k", lw=0.8, ls="--", label="target checkpoint")
    if full_bytes is not None:
        ax.axvline(full_bytes, color="grey", lw=0.8, ls=":", label="full checkpoint size")
    ax.set_xscale("log")
    ax.set_xlabel("update size (bytes)")
    ax.set_ylabel("top-1 of reconstructed model")
    ax.set_title(title or "rate-accuracy of update codecs", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
