"""The compression plan: ``anchors/compression.toml`` read through the criterion kit.

The plan is data: which methods run at which operating points on which anchor, the lowest run tier
(quick/default/full) at which each point runs, the accuracy tier each point claims, and the fixed
calibration index lists. :func:`load_plan` checks every value's type, range and name at load, each
error naming the file and the dotted field; Python only builds the points.

Layout (version 2)::

    version = 2
    [calibration.<dataset>]          # split, indices, rule, index_sha256, source, evaluate_on_rest
    [[suite.<anchor>]]               # one method's points on one anchor
    method = "nnc"
    run_tier = "default"             # optional: the points' run tier unless a point names its own
    config = { ... }                 # optional: config fields shared by the points
    points = [{ label = "qp-32", run_tier = "quick", claimed_tier = "99%", qp = -32 }]

A point's other keys are fields of the method's ``Config``; ``claimed_tier`` and ``claimed_bytes``
are the point's (never the config's).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .. import kit
from ..kit import PlanError, Table
from ..kit.plan import check_type, unknown_keys_error
from .base import CompressorConfig, compressor_class
from .calibration import CalibrationSpec

CRITERION = "compression"
#: The plan layout this nnconform reads (1: claims inside method configs, run tier default "default").
PLAN_VERSION = 2
TABLES = ("calibration", "suite")
#: Keys of a point that are the point's own; every other key is a config field.
POINT_KEYS = ("label", "run_tier", "claimed_tier", "claimed_bytes")


@dataclass(frozen=True)
class CompressionPoint(kit.OperatingPoint):
    """One (anchor, method, operating point) case: the method's config plus the kit's shared fields
    (``label``, ``run_tier``, ``claimed_tier``, ``claimed_bytes``, ``proposal``, ``description``)."""

    anchor: str
    method: str
    config: CompressorConfig

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self.config, "method", self.method) != self.method:
            raise kit.PointError(f"operating point {self.id!r}: config is for method {self.config.method!r}")

    @property
    def id(self) -> str:
        """The readable case id: ``fmnist-resnet8-aimet-ssvd-0.5``."""
        return "-".join(p for p in (self.anchor, self.method, self.label) if p)

    @property
    def subject(self) -> str:
        """The record subject: ``fmnist-resnet8/aimet-ssvd/0.5``."""
        return "/".join(p for p in (self.anchor, self.method, self.label) if p)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for records and the report."""
        return {"anchor": self.anchor, "method": self.method, "config": self.config.to_dict(), **self.point_dict()}


@dataclass(frozen=True)
class CompressionPlan:
    """The parsed plan: operating points and calibration lists."""

    points: tuple[CompressionPoint, ...]
    calibration: Mapping[str, CalibrationSpec]
    path: str

    def __post_init__(self) -> None:
        kit.unique_ids(self.points, where=self.path)

    def for_anchor(self, anchor: str) -> list[CompressionPoint]:
        """The points of one anchor."""
        return [p for p in self.points if p.anchor == anchor]

    def anchors(self) -> list[str]:
        """Anchors with points, in plan order."""
        return list(dict.fromkeys(p.anchor for p in self.points))

    def with_proposals(self, points: Iterable[CompressionPoint]) -> "CompressionPlan":
        """The plan plus a proposal's points; a case id taken twice is refused naming both contributors."""
        return CompressionPlan(self.points + tuple(points), self.calibration, self.path)

    def up_to(self, run_tier: str) -> list[CompressionPoint]:
        """The points that run in a ``run_tier`` run."""
        kit.parse_run_tier(run_tier, "run tier")
        return [p for p in self.points if p.runs_in(run_tier)]


# ---------------------------------------------------------------------------------------------
# Typed method configs


def _annotation_kinds(tp) -> tuple | None:
    """The TOML kinds a config field's annotation accepts (None: not checked here)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [k for a in typing.get_args(tp) if a is not type(None) for k in (_annotation_kinds(a) or ())]
        return tuple(kinds) or None
    if origin is tuple:
        return (list,)
    return {bool: (bool,), int: (int,), float: (float,), str: (str,)}.get(tp)


def config_fields(config_cls: type, values: Mapping[str, Any], where: str, *,
                  also_valid: Iterable[str] = ()) -> dict[str, Any]:
    """``values`` type-checked against ``config_cls``'s fields (a TOML ``"no"`` is not a boolean, ``"8"`` not an
    integer); unknown names are refused with a close match. The config's ``__post_init__`` checks ranges."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = set(values) - set(names)
    if unknown:
        raise unknown_keys_error(where, unknown, set(names) | set(also_valid))
    out = {}
    for key, value in values.items():
        kinds = _annotation_kinds(hints.get(key))
        value = check_type(value, kinds, f"{where}.{key}") if kinds else value
        item = typing.get_args(hints.get(key))
        if kinds == (list,) and item and item[0] in (str, int, float, bool):
            value = [check_type(v, item[0], f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        out[key] = value
    return out


def method_config_class(method: str, where: str) -> type:
    """The ``Config`` class of a registered method; a :class:`PlanError` naming ``where`` otherwise."""
    try:
        return compressor_class(method).Config
    except (KeyError, TypeError) as exc:
        raise PlanError(f"{where}: {exc.args[0]}") from None


def build_config(method: str, values: Mapping[str, Any], where: str, *, also_valid: Iterable[str] = ()) -> CompressorConfig:
    """The method's ``Config`` from plan (or proposal) values, type-checked field by field; every problem is a
    :class:`PlanError` naming ``where`` (``also_valid``: other keys the table may hold, for the hint)."""
    config_cls = method_config_class(method, f"{where}.method")
    fields = config_fields(config_cls, values, where, also_valid=also_valid)
    try:
        return config_cls.from_dict({**fields, "method": method})
    except (TypeError, ValueError) as exc:
        raise PlanError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Loading


def _check_anchor(anchor: str, where: str) -> None:
    from ..anchors import list_anchors

    known = list_anchors()
    if anchor not in known:
        close = difflib.get_close_matches(anchor, known, n=1)
        raise PlanError(f"{where}: no anchor {anchor!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                             f" (anchors: {', '.join(known)})"))


def _points(suite: Table) -> list[CompressionPoint]:
    points = []
    for anchor in list(suite.data):
        _check_anchor(anchor, suite.at(anchor))
        for group in suite.tables(anchor):
            method = group.str("method")
            group_tier = group.run_tier("run_tier", kit.runtier.DEFAULT_RUN_TIER)
            shared = config_fields(method_config_class(method, group.at("method")),
                                   group.table("config", {}).rest(), group.at("config"), also_valid=POINT_KEYS)
            for raw in group.tables("points", [{}]):
                label = raw.str("label", "")
                run_tier = raw.run_tier("run_tier", group_tier)
                claimed_tier = raw.accuracy_tier("claimed_tier")
                claimed_bytes = raw.int("claimed_bytes", None, min=1)
                config = build_config(method, {**shared, **raw.rest()}, raw.where, also_valid=POINT_KEYS)
                raw.done()
                try:
                    points.append(CompressionPoint(anchor, method, config, label=label, run_tier=run_tier,
                                                   claimed_tier=claimed_tier, claimed_bytes=claimed_bytes))
                except kit.PointError as exc:
                    raise PlanError(f"{raw.where}: {exc}") from None
            group.done()
    return points


def _calibration(table: Table, path: str) -> dict[str, CalibrationSpec]:
    out = {}
    for dataset in list(table.data):
        t = table.table(dataset)
        try:
            spec = CalibrationSpec(dataset, t.str("split"), tuple(t.list("indices", int)), t.str("rule"),
                                   t.str("source", None), t.bool("evaluate_on_rest", False))
        except PlanError as exc:
            if str(exc).startswith(path):
                raise
            raise PlanError(f"{path}: {exc}") from None
        pinned = t.str("index_sha256", None)
        if pinned is not None and pinned != spec.index_sha256:
            raise PlanError(f"{t.at('index_sha256')}: the list hashes to {spec.index_sha256}, the plan pins "
                            f"{pinned} (the list was edited)")
        t.done()
        out[dataset] = spec
    return out


def parse_plan(root: Table) -> CompressionPlan:
    """Build the plan from its root table (read by :func:`kit.read_plan`)."""
    try:
        calibration = _calibration(root.table("calibration", {}), root.where)
        points = _points(root.table("suite", {}))
        root.done()
        return CompressionPlan(tuple(points), calibration, root.where)
    except kit.PointError as exc:
        raise PlanError(str(exc)) from None


@functools.lru_cache(maxsize=4)
def _load(path: str | None) -> CompressionPlan:
    return parse_plan(kit.read_plan(CRITERION, path, version=PLAN_VERSION, tables=TABLES))


def load_plan(path: str | Path | None = None) -> CompressionPlan:
    """The compression plan of ``anchors/compression.toml`` (or another file)."""
    return _load(str(path) if path else None)
