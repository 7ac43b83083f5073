"""Accuracy tiers (kept as data in ``anchors/tiers.toml``) and the non-inferiority gate."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .paths import anchors_dir, read_toml
from .stats import PairedComparison, paired_comparison


@dataclass(frozen=True)
class Tier:
    """An accuracy tier: a margin relative to the reference accuracy, and why it exists."""

    name: str
    relative_margin: float
    require_no_significant_drop: bool
    rationale: str

    def __post_init__(self) -> None:
        if not 0 <= self.relative_margin < 1:
            raise ValueError(f"tier {self.name!r}: relative_margin must be in [0, 1), got {self.relative_margin}")

    def margin(self, acc_ref: float) -> float:
        """The absolute accuracy drop this tier allows against a reference accuracy."""
        return self.relative_margin * acc_ref


@dataclass(frozen=True)
class GateResult:
    """The verdict of one tier on one paired comparison."""

    tier: Tier
    passed: bool
    margin: float
    comparison: PairedComparison
    reason: str

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"tier": self.tier.name, "passed": self.passed, "margin": self.margin,
                "reason": self.reason, **self.comparison.to_dict()}


@functools.lru_cache(maxsize=8)
def _load_tiers(path: Path) -> dict[str, Tier]:
    from .kit.plan import PlanError, Table

    try:
        root = Table(read_toml(path), str(path))
        tiers_table = root.table("tiers", {})
        tiers = {}
        for name in list(tiers_table.data):
            t = tiers_table.table(name)
            tiers[name] = Tier(name=name, relative_margin=t.float("relative_margin", min=0, max=1),
                               require_no_significant_drop=t.bool("require_no_significant_drop"),
                               rationale=t.str("rationale"))
            t.done()
        root.done()
    except PlanError as exc:
        raise ValueError(str(exc)) from None
    if not tiers:
        raise ValueError(f"{path}: no [tiers.*] tables")
    return tiers


def load_tiers(path: str | Path | None = None) -> dict[str, Tier]:
    """All tiers, strictest first, from ``tiers.toml``."""
    return dict(_load_tiers(Path(path) if path else anchors_dir() / "tiers.toml"))


def get_tier(name: str) -> Tier:
    """One tier by name; a KeyError listing the valid names otherwise."""
    tiers = load_tiers()
    try:
        return tiers[name]
    except KeyError:
        raise KeyError(f"unknown tier {name!r}; valid tiers: {list(tiers)}") from None


def evaluate_tier(comparison: PairedComparison, tier: Tier) -> GateResult:
    """Non-inferiority: pass when the upper end of the drop's 95% interval is within the margin."""
    margin = tier.margin(comparison.acc_ref)
    lo, hi = comparison.drop_ci95
    if hi > margin:
        return GateResult(tier, False, margin, comparison,
                          f"drop 95% CI upper end {hi:.4%} exceeds the {tier.name} margin {margin:.4%}")
    if tier.require_no_significant_drop and lo > 0:
        return GateResult(tier, False, margin, comparison,
                          f"drop of {comparison.drop:.4%} is significant at 95% (CI {lo:.4%}..{hi:.4%})")
    return GateResult(tier, True, margin, comparison,
                      f"drop {comparison.drop:.4%}, 95% CI {lo:.4%}..{hi:.4%}, within {tier.name} margin {margin:.4%}")


def non_inferiority(ref_correct, new_correct, tier: str | Tier) -> GateResult:
    """Run the tier's gate on per-sample correctness vectors."""
    tier = get_tier(tier) if isinstance(tier, str) else tier
    return evaluate_tier(paired_comparison(ref_correct, new_correct), tier)


def best_tier_met(comparison: PairedComparison) -> str | None:
    """The strictest tier the comparison meets, or None."""
    for tier in load_tiers().values():
        if evaluate_tier(comparison, tier).passed:
            return tier.name
    return None
