"""What the model-update criterion runs: lineage pairs and codec operating points.

Lineages come from the anchors' ``checkpoints`` (in manifest order); which pairs and which
operating points run in each run tier, and the accuracy tier each operating point claims, are
data in ``anchors/updates.toml``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..paths import anchors_dir, read_toml
from .codec import UPDATE_CODECS, make_codec, operating_point_label

RUN_TIERS = ("quick", "default", "full")
#: ``latest``: the newest update (last consecutive pair); ``consecutive``: the earlier consecutive
#: pairs; ``span``: the first checkpoint to the newest, when that is not already a consecutive pair.
PAIR_KINDS = ("latest", "consecutive", "span")
NO_CLAIM = "none"


class PlanError(ValueError):
    """``anchors/updates.toml`` is malformed; the message names the field."""


@dataclass(frozen=True)
class LineagePair:
    """Two checkpoints of one anchor: the update from ``base`` to ``target``."""

    anchor: str
    base: str
    target: str
    kind: str

    @property
    def id(self) -> str:
        """Readable id: ``fmnist-resnet8-epoch5-finetune``."""
        return f"{self.anchor}-{self.base}-{self.target}"


def lineage_pairs(anchor_name: str, checkpoints: list[str] | tuple[str, ...]) -> list[LineagePair]:
    """Consecutive pairs of a lineage plus first-to-latest (when there are three or more checkpoints)."""
    names = list(checkpoints)
    if len(set(names)) != len(names):
        raise ValueError(f"anchor {anchor_name!r}: duplicate checkpoint names in {names}")
    pairs = []
    for i, (a, b) in enumerate(zip(names, names[1:])):
        pairs.append(LineagePair(anchor_name, a, b, "latest" if i == len(names) - 2 else "consecutive"))
    if len(names) >= 3:
        pairs.append(LineagePair(anchor_name, names[0], names[-1], "span"))
    return pairs


@dataclass(frozen=True)
class OperatingPoint:
    """One codec with fixed parameters, the run tier from which it runs, and its accuracy claims."""

    codec: str
    params: Mapping[str, Any]
    claims: Mapping[str, str]  # pair kind -> accuracy tier name, or "none" (measured, not gated)
    run_tier: str = "quick"
    description: str = ""
    name: str = ""  # the manifest's ``label``, when the parameter values alone would read badly
    anchors: tuple[str, ...] | None = None  # the lineages it runs on (None: every lineage)
    proposal: str = ""  # the proposal that contributed the point ("" for the reference points)

    def applies_to(self, anchor: str) -> bool:
        """Whether the point runs on ``anchor``'s lineage."""
        return self.anchors is None or anchor in self.anchors

    @property
    def label(self) -> str:
        """Readable id: ``topk-0.01``, ``quant-4``, ``full``, ``nnc-qp38``."""
        if self.name:
            return self.name
        return self.codec if not self.params else f"{self.codec}-{operating_point_label(self.params)}"

    def claim_for(self, kind: str) -> str | None:
        """The accuracy tier this point claims on a pair of ``kind`` (None: no claim, measured only)."""
        claim = self.claims.get(kind, self.claims.get("*", NO_CLAIM))
        return None if claim == NO_CLAIM else claim

    def make(self):
        """A fresh codec instance."""
        return make_codec(self.codec, self.params)


@dataclass(frozen=True)
class UpdatePlan:
    """The operating points and the pair kinds of each run tier."""

    pair_kinds: Mapping[str, tuple[str, ...]]
    points: tuple[OperatingPoint, ...]
    source: str = ""
    benchmark: Mapping[str, Any] = field(default_factory=dict)
    #: lineages whose cases that evaluate models run in the quick tier; the others' from the default tier
    quick_eval_lineages: tuple[str, ...] | None = None

    def eval_run_tier(self, anchor: str, tier: str) -> str:
        """The run tier of a case of ``anchor`` that evaluates models and would otherwise run from ``tier``."""
        if tier == RUN_TIERS[0] and self.quick_eval_lineages is not None and anchor not in self.quick_eval_lineages:
            return RUN_TIERS[1]
        return tier

    def pair_run_tier(self, kind: str) -> str | None:
        """The lowest run tier that includes pairs of ``kind`` (None: never)."""
        for tier in RUN_TIERS:
            if kind in self.pair_kinds.get(tier, ()):
                return tier
        return None

    def points_with_proposals(self, proposed: tuple[OperatingPoint, ...] | list = ()) -> tuple[OperatingPoint, ...]:
        """The plan's points, the ``proposed`` points of ``--proposal`` manifests, and one default point per
        registered codec that neither lists.

        A codec installed through the entry point ``nnconform.update_codecs`` runs without editing this
        repository's manifest: with its default config, in every run tier, claiming the accuracy tier its
        class declares as ``claim`` (default: none, a measured point).
        """
        listed = {p.codec for p in self.points} | {p.codec for p in proposed}
        labels = {p.label for p in self.points}
        for p in proposed:
            if p.label in labels:
                raise PlanError(f"{self.source}: operating point label {p.label!r} of proposal {p.proposal!r} is "
                                f"already taken")
            labels.add(p.label)
        extra = list(proposed)
        for name in UPDATE_CODECS.names():
            if name not in listed:
                claim = getattr(UPDATE_CODECS.get(name), "claim", NO_CLAIM)
                extra.append(OperatingPoint(name, {}, {"*": claim}, "quick", f"registered codec {name!r}"))
        return self.points + tuple(extra)

    def point(self, label: str) -> OperatingPoint:
        """An operating point by label; a KeyError listing the labels otherwise."""
        for p in self.points:
            if p.label == label:
                return p
        raise KeyError(f"no update operating point {label!r}; known: {[p.label for p in self.points]}")


def higher_run_tier(a: str, b: str) -> str:
    """The later of two run tiers (a case runs from the later of its pair's and its point's tier)."""
    return max(a, b, key=RUN_TIERS.index)


def _parse_point(where: str, raw: dict, accuracy_tiers: set[str]) -> OperatingPoint:
    raw = dict(raw)
    known = {"codec", "params", "claim", "run_tier", "description", "label"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {unknown}; valid: {sorted(known)}")
    if "codec" not in raw:
        raise PlanError(f"{where}: missing field 'codec'")
    claim = raw.get("claim", NO_CLAIM)
    claims = {"*": claim} if isinstance(claim, str) else dict(claim)
    for kind, tier in claims.items():
        if kind != "*" and kind not in PAIR_KINDS:
            raise PlanError(f"{where}.claim: pair kind {kind!r} is not one of {PAIR_KINDS} (or '*')")
        if tier != NO_CLAIM and tier not in accuracy_tiers:
            raise PlanError(f"{where}.claim: {tier!r} is not an accuracy tier {sorted(accuracy_tiers)} or {NO_CLAIM!r}")
    run_tier = raw.get("run_tier", "quick")
    if run_tier not in RUN_TIERS:
        raise PlanError(f"{where}.run_tier: {run_tier!r} is not one of {RUN_TIERS}")
    point = OperatingPoint(raw["codec"], dict(raw.get("params", {})), claims, run_tier, raw.get("description", ""),
                           raw.get("label", ""))
    if point.codec in UPDATE_CODECS:  # third-party codecs may register later; validate the ones we know
        try:
            point.make()
        except ValueError as exc:
            raise PlanError(f"{where}: {exc}") from None
    return point


def parse_plan(data: dict, source: str = "", accuracy_tiers: set[str] | None = None) -> UpdatePlan:
    """Validate the TOML document of an update plan."""
    if accuracy_tiers is None:
        from ..gates import load_tiers

        accuracy_tiers = set(load_tiers())
    if data.get("version") != 1:
        raise PlanError(f"{source}: version = {data.get('version')!r}; this reader understands version 1")
    pairs = dict(data.get("pairs", {}))
    quick_eval = pairs.pop("quick_eval_lineages", None)
    if quick_eval is not None and not (isinstance(quick_eval, list) and all(isinstance(x, str) for x in quick_eval)):
        raise PlanError(f"{source}: pairs.quick_eval_lineages must be a list of anchor names, got {quick_eval!r}")
    for tier, kinds in pairs.items():
        if tier not in RUN_TIERS:
            raise PlanError(f"{source}: pairs.{tier}: not a run tier {RUN_TIERS}")
        bad = [k for k in kinds if k not in PAIR_KINDS]
        if bad:
            raise PlanError(f"{source}: pairs.{tier}: unknown pair kind(s) {bad}; valid: {PAIR_KINDS}")
    points = tuple(_parse_point(f"{source}: points[{i}]", p, accuracy_tiers)
                   for i, p in enumerate(data.get("points", [])))
    labels = [p.label for p in points]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise PlanError(f"{source}: duplicate operating point label(s) {dupes}")
    return UpdatePlan({k: tuple(v) for k, v in pairs.items()}, points, source, dict(data.get("benchmark", {})),
                      tuple(quick_eval) if quick_eval is not None else None)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> UpdatePlan:
    return parse_plan(read_toml(path, PlanError), str(path))


def load_plan(path: str | Path | None = None) -> UpdatePlan:
    """The update plan from ``anchors/updates.toml`` (or ``path``)."""
    return _load(Path(path) if path else anchors_dir() / "updates.toml")
