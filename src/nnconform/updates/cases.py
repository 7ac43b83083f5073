"""The cases of the model-update criterion: their ids, arguments and the run tier each runs from.

The conformance file turns each :class:`Case` into one ``pytest.param``. Run tiers follow the plan:
a codec case runs from the later of its pair kind's and its operating point's run tier; cases that
evaluate models on a lineage outside ``quick_eval_lineages`` run from the default tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from .. import kit
from .plan import LineagePair, UpdatePlan, lineage_pairs

QUICK, DEFAULT = kit.RUN_TIERS[0], kit.RUN_TIERS[1]


@dataclass(frozen=True)
class Case:
    """One parametrized case: its readable id, its arguments and the lowest run tier it runs in."""

    id: str
    args: tuple
    run_tier: str


def all_pairs(lineages: Mapping[str, tuple[str, ...]]) -> list[LineagePair]:
    """Every lineage pair (consecutive and span) of every lineage."""
    return [p for name, checkpoints in lineages.items() for p in lineage_pairs(name, checkpoints)]


def checkpoint_cases(plan: UpdatePlan, lineages: Mapping[str, tuple[str, ...]]) -> Iterator[Case]:
    """One case per checkpoint: the last two of a lineage from the quick tier, the others from default."""
    for anchor, checkpoints in lineages.items():
        for ck in checkpoints:
            tier = plan.eval_run_tier(anchor, QUICK if ck in checkpoints[-2:] else
                                      plan.history_run_tier(anchor, DEFAULT))
            yield Case(f"{anchor}-{ck}", (anchor, ck), tier)


def pair_cases(plan: UpdatePlan, pairs: Iterable[LineagePair]) -> Iterator[Case]:
    """One case per lineage pair: the latest pair from the quick tier, the others from default."""
    for pair in pairs:
        yield Case(pair.id, (pair.anchor, pair), plan.eval_run_tier(pair.anchor, QUICK if pair.kind == "latest"
                                                                    else plan.history_run_tier(pair.anchor, DEFAULT)))


def codec_cases(plan: UpdatePlan, pairs: Iterable[LineagePair], *, evaluates: bool) -> Iterator[Case]:
    """One case per (pair, operating point) of the pair kinds the plan runs."""
    for pair in pairs:
        pair_tier = plan.pair_run_tier(pair.kind)
        if pair_tier is None:
            continue
        for point in plan.points:
            if point.applies_to(pair.anchor):
                tier = kit.later(pair_tier, plan.point_run_tier(pair.anchor, point))
                if evaluates:
                    tier = plan.eval_run_tier(pair.anchor, tier)
                yield Case(f"{pair.id}-{point.label}", (pair.anchor, pair, point), tier)


def latest_pair_cases(plan: UpdatePlan, pairs: Iterable[LineagePair]) -> Iterator[Case]:
    """One case per operating point on the latest pair of each lineage (payload safety, timing)."""
    for pair in pairs:
        if pair.kind == "latest":
            for point in plan.points:
                if point.applies_to(pair.anchor):
                    yield Case(f"{pair.id}-{point.label}", (pair.anchor, pair, point),
                               plan.point_run_tier(pair.anchor, point))


def artifact_cases(plan: UpdatePlan, pairs: Iterable[LineagePair], artifacts) -> Iterator[Case]:
    """One case per submitted update payload, on its lineage pair (a pair the plan does not list is made)."""
    pairs = list(pairs)
    for a in artifacts:
        pair = next((p for p in pairs if (p.anchor, p.base, p.target) == (a.anchor, a.base, a.target)),
                    LineagePair(a.anchor, a.base, a.target, "submitted"))
        yield Case(a.id, (a.anchor, a, pair), plan.eval_run_tier(a.anchor, QUICK))


def nnc_lineage_cases(plan: UpdatePlan, lineages: Mapping[str, tuple[str, ...]]) -> Iterator[Case]:
    """One case per (lineage of three or more checkpoints, ``[nnc_lineage]`` point): from the default tier, from
    the quick tier on the plan's ``quick_lineages`` (never earlier than the point's own run tier)."""
    table = plan.nnc_lineage
    for anchor, checkpoints in lineages.items():
        for label in (table.points if table is not None and len(checkpoints) >= 3 else ()):
            point = plan.point(label)
            tier = kit.later(QUICK if anchor in table.quick_lineages else DEFAULT, point.run_tier)
            yield Case(f"{anchor}-{label}-lineage", (anchor, point), tier)
