"""Bjontegaard delta rate between two rate-accuracy curves, with monotone (PCHIP) fitting.

The classic BD-rate (VCEG-M33) fits log-rate as a cubic in quality; codec test conditions
since replaced the cubic with piecewise cubic Hermite interpolation, which cannot overshoot.
Accuracy saturates and is noisy near the top, so each curve is first reduced to its upper
envelope: points sorted by rate, keeping only those that beat every cheaper point. What is
left is strictly increasing in both rate and accuracy, which PCHIP needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class BDResult:
    """BD-rate of a test curve against an anchor curve.

    ``value`` is a fraction: -0.25 means the test codec needs 25% fewer bits than the anchor
    for the same accuracy, averaged over the accuracy range both curves cover. ``None``
    (with ``reason``) when the curves do not overlap or have too few distinct points.
    """

    value: float | None
    quality_range: tuple[float, float] | None
    anchor_points: int
    test_points: int
    reason: str = ""

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"bd_rate": self.value, "quality_range": list(self.quality_range) if self.quality_range else None,
                "anchor_points": self.anchor_points, "test_points": self.test_points, "reason": self.reason}


def upper_envelope(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """(rate, quality) points sorted by rate, keeping those better than every cheaper one.

    Non-finite or non-positive rates are dropped (log-rate is undefined for them).
    """
    pts = sorted(((float(r), float(q)) for r, q in points if math.isfinite(r) and r > 0 and math.isfinite(q)),
                 key=lambda p: (p[0], -p[1]))
    out: list[tuple[float, float]] = []
    for r, q in pts:
        if not out or q > out[-1][1]:  # the best point of each rate comes first, so rates stay distinct
            out.append((r, q))
    return out


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]],
            *, min_points: int = 2) -> BDResult:
    """Bjontegaard delta rate of ``test`` against ``anchor``; each a sequence of (rate, quality)."""
    from scipy.interpolate import PchipInterpolator

    a, t = upper_envelope(anchor), upper_envelope(test)
    if len(a) < min_points or len(t) < min_points:
        return BDResult(None, None, len(a), len(t),
                        f"need at least {min_points} points increasing in rate and accuracy on each curve "
                        f"(anchor has {len(a)}, test has {len(t)})")
    qa, ra = np.array([q for _, q in a]), np.log(np.array([r for r, _ in a]))
    qt, rt = np.array([q for _, q in t]), np.log(np.array([r for r, _ in t]))
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if not hi > lo:
        return BDResult(None, None, len(a), len(t),
                        f"accuracy ranges do not overlap (anchor {qa.min():.4f}..{qa.max():.4f}, "
                        f"test {qt.min():.4f}..{qt.max():.4f})")
    ia = PchipInterpolator(qa, ra).integrate(lo, hi)
    it = PchipInterpolator(qt, rt).integrate(lo, hi)
    value = float(np.exp((it - ia) / (hi - lo)) - 1.0)
    return BDResult(value, (float(lo), float(hi)), len(a), len(t))


def bd_quality(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float | None:
    """Bjontegaard delta quality (here accuracy): mean accuracy gain of ``test`` at equal log-rate."""
    from scipy.interpolate import PchipInterpolator

    a, t = upper_envelope(anchor), upper_envelope(test)
    if len(a) < 2 or len(t) < 2:
        return None
    ra, qa = np.log([r for r, _ in a]), np.array([q for _, q in a])
    rt, qt = np.log([r for r, _ in t]), np.array([q for _, q in t])
    lo, hi = max(ra.min(), rt.min()), min(ra.max(), rt.max())
    if not hi > lo:
        return None
    ia = PchipInterpolator(ra, qa).integrate(lo, hi)
    it = PchipInterpolator(rt, qt).integrate(lo, hi)
    return float((it - ia) / (hi - lo))
