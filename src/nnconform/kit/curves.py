"""One rate curve for every criterion, stored the way CompressAI stores rate-distortion results.

A :class:`RateCurve` is one method (codec, compressor) on one subject (an anchor, a lineage pair, a
cut), over its operating points: ``{"name", "description", "results": {metric: [one value per
point]}, "meta": {...}}``, sorted by rate. :func:`write_curves` writes one JSON file per curve,
:func:`read_curves` reads them back, :func:`plot_curves` draws any set of them (a proposal's curve
dashed with diamond markers against the reference methods').
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


def safe_name(name: str) -> str:
    """A file-name-safe version of a curve or subject name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "curve"


@dataclass(frozen=True)
class RateCurve:
    """One method on one subject over its operating points.

    ``subject`` and ``method`` place the curve (``fmnist-lenet5`` / ``nnc``, a lineage pair / a codec,
    ``fmnist-lenet5/features`` / a codec family); ``results`` holds one list per metric, all of equal
    length; ``meta`` carries what a plot or table needs besides (``proposal``, ``reference`` values).
    """

    subject: str
    method: str
    description: str = ""
    results: Mapping[str, list] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.results.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"rate curve {self.name!r}: metrics have different lengths {lengths}")

    @property
    def name(self) -> str:
        """``subject/method``."""
        return f"{self.subject}/{self.method}"

    @property
    def proposal(self) -> str:
        """The proposal the curve belongs to ("" for reference methods)."""
        return str(self.meta.get("proposal") or "")

    def __len__(self) -> int:
        return len(next(iter(self.results.values()), []))

    def to_dict(self) -> dict[str, Any]:
        """The CompressAI-style JSON object (plus ``subject``, ``method`` and ``meta``)."""
        return {"name": self.name, "subject": self.subject, "method": self.method, "description": self.description,
                "results": {k: list(v) for k, v in self.results.items()}, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RateCurve":
        """Read a curve back; a ValueError names a malformed field."""
        if not isinstance(d, Mapping) or not isinstance(d.get("results"), dict):
            raise ValueError(f"a rate curve needs a 'results' object, got {sorted(d) if isinstance(d, Mapping) else d!r}")
        subject, method = d.get("subject"), d.get("method")
        if not isinstance(subject, str) or not isinstance(method, str):
            name = d.get("name")
            if not isinstance(name, str):
                raise ValueError("a rate curve needs 'subject' and 'method' (or a 'name' subject/method)")
            subject, _, method = name.rpartition("/")
        return cls(subject, method, d.get("description", ""), {k: list(v) for k, v in d["results"].items()},
                   dict(d.get("meta", {})))

    @classmethod
    def from_rows(cls, subject: str, method: str, rows: Iterable[Mapping[str, Any]], metrics: Sequence[str], *,
                  rate: str, description: str = "", meta: Mapping[str, Any] | None = None) -> "RateCurve":
        """A curve from one row per operating point, sorted by the ``rate`` metric."""
        rows = sorted(rows, key=lambda r: r[rate])
        return cls(subject, method, description, {m: [r.get(m) for r in rows] for m in metrics}, dict(meta or {}))


def write_curves(curves: Iterable[RateCurve], folder: str | Path) -> list[Path]:
    """One JSON file per curve: ``<folder>/<subject>/<method>.json``."""
    paths = []
    for c in curves:
        path = Path(folder) / safe_name(c.subject) / f"{safe_name(c.method)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(c.to_dict(), indent=1, allow_nan=False))
        paths.append(path)
    return paths


def read_curves(folder: str | Path) -> list[RateCurve]:
    """Every curve JSON under ``folder``."""
    return [RateCurve.from_dict(json.loads(p.read_text())) for p in sorted(Path(folder).rglob("*.json"))]


def plot_curves(curves: Sequence[RateCurve], path: str | Path, *, x: str, y: str, xlabel: str, ylabel: str,
                title: str = "", logx: bool = True, reference: tuple[float, float] | None = None,
                reference_label: str = "reference", hlines: Sequence[tuple[float, str]] = (),
                vlines: Sequence[tuple[float, str]] = (), label=lambda c: c.method, size=(6.4, 4.2)) -> Path:
    """``y`` against ``x`` for each curve; a proposal's curve is dashed with diamond markers, the reference
    (uncompressed anchor, target checkpoint) a black star; ``hlines``/``vlines`` are labelled guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    for c in curves:
        xs, ys = c.results.get(x, []), c.results.get(y, [])
        if c.proposal:
            ax.plot(xs, ys, marker="D", linewidth=2.5, linestyle="--", label=f"{label(c)} (proposal {c.proposal})")
        else:
            ax.plot(xs, ys, marker="o", label=label(c))
    if reference is not None:
        ax.scatter([reference[0]], [reference[1]], marker="*", s=180, color="black", zorder=5, label=reference_label)
    for value, text in hlines:
        ax.axhline(value, color="grey", linestyle=":", linewidth=1, label=text)
    for value, text in vlines:
        ax.axvline(value, color="grey", linestyle="--", linewidth=0.8, label=text)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (folders created) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
