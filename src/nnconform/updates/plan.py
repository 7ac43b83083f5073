"""What the model-update criterion runs: lineage pairs and codec operating points.

Lineages come from the anchors' ``checkpoints`` (in manifest order); which pairs and which
operating points run in each run tier, and the accuracy tier each operating point claims, are
data in ``anchors/updates.toml``, read by :func:`load_plan` through the kit's versioned plan loader
(every field type-, range- and name-checked; an error names the file and the dotted field).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import kit
from ..gates import load_tiers
from .codec import UPDATE_CODECS, make_codec, operating_point_label

#: The plan file layout this module reads (version 1 had ``claim`` and ``tier``-less defaults).
PLAN_VERSION = 2
#: ``latest``: the newest update (last consecutive pair); ``consecutive``: the earlier consecutive
#: pairs; ``span``: the first checkpoint to the newest, when that is not already a consecutive pair.
PAIR_KINDS = ("latest", "consecutive", "span")
#: The claimed-tier value of a measured point (reported with the best tier it meets, not gated).
NO_CLAIM = "none"

PlanError = kit.PlanError


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


def lineages() -> dict[str, tuple[str, ...]]:
    """Every anchor with a lineage (two or more checkpoints): its checkpoint names in manifest order."""
    from ..anchors import all_anchors

    return {name: tuple(c.name for c in a.checkpoints) for name, a in all_anchors().items()
            if len(a.checkpoints) >= 2}


@dataclass(frozen=True)
class UpdatePoint(kit.OperatingPoint):
    """One update codec with fixed parameters.

    ``claimed_tier`` is the accuracy tier claimed on every pair kind that ``pair_claims`` does not
    name; ``pair_claims`` maps a pair kind to its own claim (None: measured there, not gated).
    ``anchors`` limits the point to some lineages (None: every lineage). The ``label`` defaults to the
    codec and its parameter values (``topk-0.01``).
    """

    codec: str
    params: Mapping[str, Any] = field(default_factory=dict)
    pair_claims: Mapping[str, str | None] = field(default_factory=dict)
    anchors: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.label:
            default = self.codec if not self.params else f"{self.codec}-{operating_point_label(self.params)}"
            object.__setattr__(self, "label", default)
        super().__post_init__()
        for kind, tier in self.pair_claims.items():
            if kind not in PAIR_KINDS:
                raise kit.PointError(f"operating point {self.label!r}: pair_claims: {kind!r} is not a pair kind "
                                     f"({', '.join(PAIR_KINDS)})")
            if tier is not None and tier not in load_tiers():
                raise kit.PointError(f"operating point {self.label!r}: pair_claims.{kind}: {tier!r} is not an "
                                     f"accuracy tier ({', '.join(load_tiers())})")

    @property
    def id(self) -> str:
        """The point's part of a case id (its label; the case adds the lineage pair)."""
        return self.label

    def claim_for(self, kind: str) -> str | None:
        """The accuracy tier this point claims on a pair of ``kind`` (None: no claim, measured only)."""
        return self.pair_claims.get(kind, self.claimed_tier)

    def applies_to(self, anchor: str) -> bool:
        """Whether the point runs on ``anchor``'s lineage."""
        return self.anchors is None or anchor in self.anchors

    def make(self):
        """A fresh codec instance."""
        return make_codec(self.codec, self.params)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for records and reports."""
        return {**self.point_dict(), "codec": self.codec, "params": dict(self.params),
                "pair_claims": dict(self.pair_claims), "anchors": list(self.anchors) if self.anchors else None}


@dataclass(frozen=True)
class UpdateArtifact(kit.OperatingPoint):
    """An update payload submitted as a file (no code runs): it must turn the anchor's ``base`` checkpoint into a
    model that meets ``claimed_tier`` against the ``target`` checkpoint, in at most ``claimed_bytes``.
    ``file`` is the manifest's :class:`~nnconform.proposal.manifest.SubmittedFile` (path and pinned sha256)."""

    anchor: str
    base: str
    target: str
    file: Any

    @property
    def id(self) -> str:
        """``acme-fmnist-lenet5-epoch8-finetune-q8``."""
        return f"{self.proposal}-{self.anchor}-{self.base}-{self.target}-{self.label}"


@dataclass(frozen=True)
class BenchmarkPlan:
    """Encode/decode timing rounds: fewer for models above ``large_model_params`` parameters."""

    rounds: int = 3
    large_model_params: int = 5_000_000
    large_model_rounds: int = 1

    def rounds_for(self, num_params: int) -> int:
        """Benchmark rounds for a model of ``num_params`` parameters."""
        return self.large_model_rounds if num_params > self.large_model_params else self.rounds


@dataclass(frozen=True)
class UpdatePlan:
    """The operating points, the pair kinds of each run tier, and the timing rounds."""

    pair_kinds: Mapping[str, tuple[str, ...]]
    points: tuple[UpdatePoint, ...]
    source: str = ""
    benchmark: BenchmarkPlan = BenchmarkPlan()
    #: lineages whose cases that evaluate models run in the quick tier; the others' from the default tier
    quick_eval_lineages: tuple[str, ...] | None = None
    #: the ``[nnc_lineage]`` table: nnc points coding whole lineages (:mod:`.lineage`)
    nnc_lineage: Any = None
    #: ``[lineage_points]``: lineage -> labels of the points coded on it below the full tier (others: full only)
    lineage_points: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def history_run_tier(self, anchor: str, run_tier: str) -> str:
        """The run tier of a case about ``anchor``'s history (an intermediate checkpoint's accuracy, a comparison of
        two checkpoints other than the latest update): ``full`` for a lineage ``[lineage_points]`` lists (it is held
        to its latest update below the full tier), else ``run_tier``."""
        return kit.RUN_TIERS[-1] if anchor in self.lineage_points else run_tier

    def point_run_tier(self, anchor: str, point: "UpdatePoint") -> str:
        """The lowest run tier of ``point`` on ``anchor``'s lineage: its own, or ``full`` when the anchor lists the
        points it codes below the full tier and this one is not among them (a proposal's point never is held back)."""
        listed = self.lineage_points.get(anchor)
        if listed is None or point.proposal or point.label in listed:
            return point.run_tier
        return kit.RUN_TIERS[-1]

    def eval_run_tier(self, anchor: str, run_tier: str) -> str:
        """The run tier of a case of ``anchor`` that evaluates models and would otherwise run from ``run_tier``."""
        quick = kit.RUN_TIERS[0]
        if run_tier == quick and self.quick_eval_lineages is not None and anchor not in self.quick_eval_lineages:
            return kit.RUN_TIERS[1]
        return run_tier

    def pair_run_tier(self, kind: str) -> str | None:
        """The lowest run tier that includes pairs of ``kind`` (None: never)."""
        return next((t for t in kit.RUN_TIERS if kind in self.pair_kinds.get(t, ())), None)

    def with_proposals(self, points=()) -> "UpdatePlan":
        """The plan plus ``points`` (a proposal's) and one default point per registered codec that neither
        lists; a label taken twice is refused, naming both contributors.

        A codec installed through the entry point ``nnconform.update_codecs`` runs without editing this
        repository's plan: with its default config, from the quick run tier, claiming the accuracy tier its
        class declares as ``claimed_tier`` (default: none, a measured point).
        """
        listed = {p.codec for p in self.points} | {p.codec for p in points}
        extra = list(points)
        for name in kit.methods.installed_names("update-codec"):
            if name not in listed:
                claimed = getattr(UPDATE_CODECS.get(name), "claimed_tier", None)
                extra.append(UpdatePoint(name, {}, label=name, run_tier=kit.RUN_TIERS[0], claimed_tier=claimed,
                                         description=f"registered codec {name!r}"))
        merged = self.points + tuple(extra)
        kit.unique_ids(merged, where=self.source)
        return dataclasses.replace(self, points=merged)

    def point(self, label: str) -> UpdatePoint:
        """An operating point by label; a KeyError listing the labels otherwise."""
        for p in self.points:
            if p.label == label:
                return p
        raise KeyError(f"no update operating point {label!r}; known: {[p.label for p in self.points]}")


def _close(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(valid)}"


def _claims(t: kit.Table) -> tuple[str | None, dict[str, str | None]]:
    """``claimed_tier``: one accuracy tier (or "none") for every pair kind, or a table per pair kind with
    ``"*"`` for the rest."""
    if not t.has("claimed_tier"):
        raise PlanError(f"{t.where}: missing 'claimed_tier' (an accuracy tier of anchors/tiers.toml, {NO_CLAIM!r} "
                        f"for a measured point, or a table per pair kind)")
    if not isinstance(t.data["claimed_tier"], Mapping):
        return t.accuracy_tier("claimed_tier", none=NO_CLAIM), {}
    sub = t.table("claimed_tier")
    star = sub.accuracy_tier("*", none=NO_CLAIM)
    per_kind = {}
    for kind in PAIR_KINDS:
        if sub.has(kind):
            per_kind[kind] = sub.accuracy_tier(kind, none=NO_CLAIM)
        else:
            sub.get(kind, default=None)  # a valid key, offered as the close match of a misspelt one
    sub.done()  # a misspelt pair kind is refused, never silently falling back to "*"
    return star, per_kind


def _parse_point(t: kit.Table) -> UpdatePoint:
    codec = t.str("codec")
    if codec not in UPDATE_CODECS:
        raise PlanError(f"{t.at('codec')}: no update codec {codec!r} is registered{_close(codec, UPDATE_CODECS.names())}")
    params = t.table("params", {}).rest()
    try:
        make_codec(codec, params)
    except (kit.ConfigError, ValueError, TypeError) as exc:
        raise PlanError(f"{t.at('params')}: {exc}") from None
    claimed, per_kind = _claims(t)
    point = dict(label=t.str("label", ""), run_tier=t.run_tier("run_tier"), description=t.str("description", ""))
    t.done()
    try:
        return UpdatePoint(codec, params, pair_claims=per_kind, claimed_tier=claimed, **point)
    except kit.PointError as exc:
        raise PlanError(f"{t.where}: {exc}") from None


def parse_plan(root: kit.Table, *, known_lineages: Mapping[str, Any] | None = None) -> UpdatePlan:
    """The plan of a checked plan file (:func:`nnconform.kit.read_plan`); ``known_lineages`` (default: the
    anchors with lineages) are the names ``pairs.quick_eval_lineages`` may use."""
    pairs = root.table("pairs")
    pair_kinds = {}
    for run_tier in kit.RUN_TIERS:
        kinds = pairs.list(run_tier, str, [])
        for i, kind in enumerate(kinds):
            if kind not in PAIR_KINDS:
                raise PlanError(f"{pairs.at(run_tier)}[{i}]: {kind!r} is not a pair kind{_close(kind, PAIR_KINDS)}")
        pair_kinds[run_tier] = tuple(kinds)
    quick_eval = pairs.list("quick_eval_lineages", str, None)
    if quick_eval is not None:
        known = lineages() if known_lineages is None else known_lineages
        for i, name in enumerate(quick_eval):
            if name not in known:
                raise PlanError(f"{pairs.at('quick_eval_lineages')}[{i}]: {name!r} is not an anchor with a lineage "
                                f"(two or more checkpoints){_close(name, known)}")
    pairs.done()
    points = tuple(_parse_point(t) for t in root.tables("points"))
    try:
        kit.unique_ids(points, where=root.where)
    except kit.PointError as exc:
        raise PlanError(str(exc)) from None
    bench = root.table("benchmark", {})
    benchmark = BenchmarkPlan(bench.int("rounds", 3, min=1), bench.int("large_model_params", 5_000_000, min=1),
                              bench.int("large_model_rounds", 1, min=1))
    bench.done()
    from .lineage import parse_lineage_plan

    nnc_lineage = parse_lineage_plan(root.table("nnc_lineage", {}), points,
                                     lineages() if known_lineages is None else known_lineages)
    lineage_points = _lineage_points(root.table("lineage_points", {}), points,
                                     lineages() if known_lineages is None else known_lineages)
    root.done()
    return UpdatePlan(pair_kinds, points, root.where, benchmark,
                      tuple(quick_eval) if quick_eval is not None else None, nnc_lineage, lineage_points)


def _lineage_points(t: kit.Table, points, known) -> dict[str, tuple[str, ...]]:
    """``[lineage_points]``: per lineage, the labels of the points coded on it below the full tier."""
    labels = {p.label for p in points}
    out = {}
    for anchor in list(t.data):
        if anchor not in known:
            raise PlanError(f"{t.at(anchor)}: {anchor!r} is not an anchor with a lineage{_close(anchor, known)}")
        names = t.list(anchor, str)
        for i, name in enumerate(names):
            if name not in labels:
                raise PlanError(f"{t.at(anchor)}[{i}]: {name!r} is not an operating point{_close(name, labels)}")
        out[anchor] = tuple(names)
    t.done()
    return out


@functools.lru_cache(maxsize=1)
def _repository_plan() -> UpdatePlan:
    return parse_plan(kit.read_plan("updates", version=PLAN_VERSION, tables=("pairs", "points", "benchmark", "nnc_lineage",
                                                                            "lineage_points")))


def load_plan(path: str | Path | None = None) -> UpdatePlan:
    """The update plan from ``anchors/updates.toml`` (read once per process), or from ``path``."""
    if path is None:
        return _repository_plan()
    return parse_plan(kit.read_plan("updates", path, version=PLAN_VERSION, tables=("pairs", "points", "benchmark", "nnc_lineage",
                                                                                 "lineage_points")))
