"""Run tiers: how much of the suite a run executes (``--nnc-tier``).

A case runs in its operating point's ``run_tier`` and every larger one. This is the one place the
tiers are named; an *accuracy* tier (``anchors/tiers.toml``: transparent, 99.9%, 99%) is a different
thing and is always called ``claimed_tier`` or ``accuracy tier``.
"""

from __future__ import annotations

RUN_TIERS: tuple[str, ...] = ("quick", "default", "full")
#: The run tier of a point that names none.
DEFAULT_RUN_TIER = "quick"


class RunTierError(ValueError):
    """A value is not a run tier; the message names where it came from."""


def parse_run_tier(value: object, where: str = "run_tier") -> str:
    """``value`` if it is a run tier; a :class:`RunTierError` naming ``where`` and the valid tiers otherwise."""
    if not isinstance(value, str) or value not in RUN_TIERS:
        raise RunTierError(f"{where}: {value!r} is not a run tier; choose one of {', '.join(RUN_TIERS)}")
    return value


def runs_in(point_run_tier: str, run_tier: str) -> bool:
    """Whether something whose lowest run tier is ``point_run_tier`` runs in a ``run_tier`` run."""
    return RUN_TIERS.index(parse_run_tier(point_run_tier)) <= RUN_TIERS.index(parse_run_tier(run_tier))


def later(*tiers: str | None) -> str:
    """The largest of some run tiers (``None`` ignored): a case runs from the latest tier any of its parts need."""
    named = [parse_run_tier(t) for t in tiers if t is not None]
    return max(named, key=RUN_TIERS.index) if named else DEFAULT_RUN_TIER


def earliest(tiers) -> str:
    """The smallest of some run tiers (the tier from which *any* of them runs)."""
    named = [parse_run_tier(t) for t in tiers]
    return min(named, key=RUN_TIERS.index) if named else DEFAULT_RUN_TIER
