"""The operating point every criterion's points extend.

A point is one configuration a criterion evaluates: its ``label`` names it in case ids, its
``run_tier`` is the lowest run tier at which it runs, ``claimed_tier`` is the accuracy tier it
claims (None: measured, not gated), ``claimed_bytes`` a size it claims (None: none), and
``proposal`` the proposal that contributed it ("" for the reference points of the plan files).
Compression points add the anchor and the method's config, update points the codec and the pair
kinds they claim for, split points the feature codec and its rate-accuracy family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .runtier import DEFAULT_RUN_TIER, RunTierError, parse_run_tier, runs_in


class PointError(ValueError):
    """An operating point is inconsistent; the message names the point and field."""


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """Fields shared by the operating points of every criterion (keyword-only, so subclasses add their own
    positional fields in front)."""

    label: str = ""
    run_tier: str = DEFAULT_RUN_TIER
    claimed_tier: str | None = None
    claimed_bytes: int | None = None
    proposal: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        who = f"operating point {self.label!r}" + (f" of proposal {self.proposal!r}" if self.proposal else "")
        try:
            parse_run_tier(self.run_tier, f"{who}: run_tier")
        except RunTierError as exc:
            raise PointError(str(exc)) from None
        if self.claimed_tier is not None:
            from ..gates import load_tiers

            tiers = list(load_tiers())
            if self.claimed_tier not in tiers:
                raise PointError(f"{who}: claimed_tier {self.claimed_tier!r} is not an accuracy tier ({', '.join(tiers)})")
        if self.claimed_bytes is not None and (isinstance(self.claimed_bytes, bool)
                                               or not isinstance(self.claimed_bytes, int) or self.claimed_bytes < 1):
            raise PointError(f"{who}: claimed_bytes must be a positive integer, got {self.claimed_bytes!r}")

    def runs_in(self, run_tier: str) -> bool:
        """Whether the point runs in a run of ``run_tier`` (a proposal's point runs in every run tier: a claim
        outside the run's tier would otherwise pass unverified)."""
        return bool(self.proposal) or runs_in(self.run_tier, run_tier)

    @property
    def claims(self) -> dict[str, Any]:
        """What the point claims, for records: accuracy tier and size."""
        return {"claimed_tier": self.claimed_tier, "claimed_bytes": self.claimed_bytes}

    def point_dict(self) -> dict[str, Any]:
        """The shared fields as a plain dict (subclasses add theirs in ``to_dict``)."""
        return {"label": self.label, "run_tier": self.run_tier, "claimed_tier": self.claimed_tier,
                "claimed_bytes": self.claimed_bytes, "proposal": self.proposal, "description": self.description}


def unique_ids(points, *, id_of=lambda p: p.id, where: str = "") -> None:
    """Refuse two points with one case id, naming both contributors."""
    seen: dict[str, Any] = {}
    for p in points:
        key = id_of(p)
        if key in seen:
            first = seen[key]
            owners = [f"proposal {x.proposal!r}" if x.proposal else "the plan file" for x in (first, p)]
            raise PointError(f"{where}{': ' if where else ''}case id {key!r} is taken twice ({owners[0]} and {owners[1]})")
        seen[key] = p
