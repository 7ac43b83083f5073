"""The split criterion's plan, ``anchors/split.toml`` (version 2), read with the criterion kit.

Every value is type-, range- and name-checked at load; an error names the file and the dotted field
(``anchors/split.toml: families.png.points[1].bits: ...``). A point's keys other than ``label``,
``claimed_tier``, ``run_tier``, ``lossless`` and ``description`` are fields of its codec's ``Config``
(merged over the family's ``params``), so a misspelt key is refused with a close match instead of
surfacing as a codec error.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import kit
from ..kit.plan import PlanError, Table, plan_path
from .codecs import KIND, FeatureCodec, make_codec

CRITERION = "split"
PLAN_VERSION = 2
#: the run tiers (kept under their former name)
SUITE_TIERS = kit.RUN_TIERS
#: which cuts the identity and ONNX checks cover: the coded ones, every single-tensor cut, or all cuts
CUT_SCOPES = ("coded", "single", "all")
#: the keys of a point that are not codec parameters
POINT_KEYS = ("label", "claimed_tier", "run_tier", "lossless", "description")
#: point keys of plan version 1 and their version-2 names (named in the error when an old key is used)
RENAMED = {"id": "label", "tier": "run_tier", "claim": "claimed_tier"}
TABLES = ("run", "resolutions", "families", "cuts", "profiles", "scenarios", "kpi", "published")

#: the former name of the plan's error
SplitManifestError = PlanError


@dataclass(frozen=True, kw_only=True)
class SplitPoint(kit.OperatingPoint):
    """One feature-codec configuration on one rate-accuracy curve (``family``); ``label`` is its id."""

    family: str
    codec: str
    params: tuple[tuple[str, Any], ...] = ()
    lossless: bool = False
    version: int = 1
    anchors: tuple[str, ...] | None = None  # the anchors it runs on (None: every anchor)

    @property
    def id(self) -> str:
        """The point's label (its part of case ids)."""
        return self.label

    def applies_to(self, anchor: str) -> bool:
        """Whether the point is coded on ``anchor``'s cuts."""
        return self.anchors is None or anchor in self.anchors

    @property
    def kwargs(self) -> dict[str, Any]:
        """The codec parameters as a dict."""
        return dict(self.params)

    def build(self) -> FeatureCodec:
        """The codec instance (``kit.make``; raises if the name or a parameter is invalid)."""
        return make_codec(self.codec, self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for records."""
        return {**self.point_dict(), "family": self.family, "codec": self.codec, "params": self.kwargs,
                "lossless": self.lossless, "version": self.version}


#: the former name of :class:`SplitPoint`
OperatingPoint = SplitPoint


@dataclass(frozen=True)
class RunSettings:
    """How much of the criterion runs in one run tier."""

    run_tier: str
    samples: int | Mapping[str, int]  # evaluation samples (0 = all), or per dataset name
    stats_samples: int
    batch_size: int
    timing_rounds: int
    identity: str
    onnx: str

    def samples_for(self, dataset: str) -> int:
        """Evaluation samples for a dataset (0 = all of it)."""
        if not isinstance(self.samples, Mapping):
            return self.samples
        if dataset not in self.samples:
            raise PlanError(f"run.{self.run_tier}.samples has no entry for dataset {dataset!r} "
                            f"(has {sorted(self.samples)})")
        return self.samples[dataset]


@dataclass(frozen=True)
class ComputeProfile:
    """A device or server: times measured here are multiplied by ``speed_factor``."""

    name: str
    speed_factor: float
    description: str = ""


@dataclass(frozen=True)
class LinkProfile:
    """An uplink: rate in Mbit/s (10^6 bit/s) and a fixed one-way latency in ms."""

    name: str
    uplink_mbps: float
    latency_ms: float = 0.0
    description: str = ""

    def transfer_s(self, payload_bytes: float) -> float:
        """Seconds to send ``payload_bytes`` over this link, latency included."""
        return payload_bytes * 8 / (self.uplink_mbps * 1e6) + self.latency_ms / 1e3


@dataclass(frozen=True)
class Scenario:
    """A (device, server, link) triple and the accuracy tier the chosen split must meet."""

    name: str
    device: ComputeProfile
    server: ComputeProfile
    link: LinkProfile
    accuracy_tier: str


@dataclass(frozen=True)
class Kpi:
    """A published payload / rate / latency requirement for an uplink of intermediate data."""

    name: str
    source: str
    payload_bytes: int
    uplink_mbps: float
    max_latency_ms: float
    accuracy_tier: str = "99%"

    def transfer_ms(self, payload_bytes: float) -> float:
        """Milliseconds to send ``payload_bytes`` at the KPI's experienced data rate."""
        return payload_bytes * 8 / (self.uplink_mbps * 1e6) * 1e3

    def met_by(self, payload_bytes: float) -> bool:
        """The payload fits the KPI's size and its transfer the latency budget (to float rounding:
        0.27 MB at 144 Mbit/s is exactly 15 ms)."""
        return (payload_bytes <= self.payload_bytes
                and self.transfer_ms(payload_bytes) <= self.max_latency_ms * (1 + 1e-9))


@dataclass(frozen=True)
class PublishedSizes:
    """Published per-cut sizes of a public architecture, to reproduce from the catalogue."""

    name: str
    architecture: str
    input_shape: tuple[int, ...]
    source: str
    fp32_kib: Mapping[str, float]

    def build_architecture(self):
        """The architecture with random weights (``module:callable``)."""
        import importlib

        module, _, attr = self.architecture.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj()


@dataclass(frozen=True)
class SplitPlan:
    """Everything in ``split.toml``."""

    path: str
    runs: Mapping[str, RunSettings]
    families: Mapping[str, tuple[SplitPoint, ...]]
    anchor_family: str
    cuts: Mapping[str, Mapping[str, tuple[str, ...]]]
    resolutions: Mapping[str, tuple[int, ...]]
    devices: Mapping[str, ComputeProfile]
    servers: Mapping[str, ComputeProfile]
    links: Mapping[str, LinkProfile]
    scenarios: tuple[Scenario, ...]
    kpis: Mapping[str, Kpi]
    published: Mapping[str, PublishedSizes] = field(default_factory=dict)
    version: int = PLAN_VERSION
    #: anchor -> the families coded on its cuts (``[cuts.<anchor>] families``); an anchor not listed codes every one
    cut_families: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def run(self, run_tier: str) -> RunSettings:
        """Settings of a run tier."""
        return self.runs[kit.parse_run_tier(run_tier, f"{self.path}: run")]

    @property
    def points(self) -> list[SplitPoint]:
        """Every operating point, family by family."""
        return [p for pts in self.families.values() for p in pts]

    def point(self, label: str) -> SplitPoint:
        """One operating point by label."""
        for p in self.points:
            if p.label == label:
                return p
        raise KeyError(f"{self.path}: no operating point {label!r} (have {[p.label for p in self.points]})")

    def with_proposals(self, points) -> "SplitPlan":
        """The plan plus ``points`` (a proposal's), one family per codec; a label taken twice is refused."""
        families = {k: tuple(v) for k, v in self.families.items()}
        for p in points:
            if p.family in self.families:
                raise kit.PointError(f"{self.path}: proposal {p.proposal!r} family {p.family!r} is a family of the "
                                     f"plan")
            families[p.family] = families.get(p.family, ()) + (p,)
        new = dataclasses.replace(self, families=families)
        kit.unique_ids(new.points, id_of=lambda p: p.label, where=self.path)
        return new

    #: the former name of :meth:`with_proposals`
    with_points = with_proposals

    def points_for(self, run_tier: str, *, registered: bool = True) -> list[SplitPoint]:
        """The operating points that run in a run tier.

        With ``registered``, a codec in the registry (a proposal's entry point) that no family
        names runs too, once, with its default parameters.
        """
        pts = [p for p in self.points if p.runs_in(run_tier)]
        if registered:
            listed = {p.codec for p in self.points}
            labels = {p.label for p in self.points}
            pts += [SplitPoint(label=name, family=name, codec=name,
                               description="registered codec without operating points in split.toml "
                                           "(default parameters)")
                    for name in kit.methods.installed_names(KIND) if name not in listed and name not in labels]
        return pts

    def codes(self, anchor: str, point: SplitPoint, run_tier: str) -> bool:
        """Whether ``point`` is coded on ``anchor``'s cuts in ``run_tier``: it applies to the anchor, and below the
        full tier its family is one the anchor's cut table lists (a proposal's point always is)."""
        if not point.applies_to(anchor):
            return False
        listed = self.cut_families.get(anchor)
        return listed is None or run_tier == "full" or bool(point.proposal) or point.family in listed

    def cuts_for(self, anchor: str, run_tier: str) -> tuple[str, ...] | None:
        """Coded cut names for an anchor in a run tier; None means "choose from the catalogue"."""
        table = self.cuts.get(anchor)
        if table is None or run_tier == "full":
            return None
        for t in kit.RUN_TIERS[: kit.RUN_TIERS.index(run_tier) + 1][::-1]:
            if t in table:
                return table[t]
        return None


# ---------------------------------------------------------------------------------------------
# Reading the file


def _positive(v) -> str | None:
    return None if v > 0 else "must be > 0"


def _run(t: Table, run_tier: str) -> RunSettings:
    if t.has("samples") and isinstance(t.data["samples"], Mapping):
        st = t.table("samples")
        samples: int | dict[str, int] = {k: st.int(k, min=0) for k in list(st.data)}
        st.done()
    else:
        samples = t.int("samples", min=0)
    out = RunSettings(run_tier=run_tier, samples=samples, stats_samples=t.int("stats_samples", min=1),
                      batch_size=t.int("batch_size", min=1), timing_rounds=t.int("timing_rounds", min=1),
                      identity=t.str("identity", choices=CUT_SCOPES), onnx=t.str("onnx", choices=CUT_SCOPES))
    t.done()
    return out


def _codec_fields(codec: str, where: str) -> set[str]:
    try:
        cls = kit.method_class(KIND, codec)
    except KeyError as exc:
        raise PlanError(f"{where}: {exc.args[0]}") from None
    return {f.name for f in dataclasses.fields(cls.Config)}


def _point(t: Table, family: str, codec: str, shared: Mapping[str, Any], fields: set[str],
           family_description: str) -> SplitPoint:
    label = t.str("label")
    claimed = t.accuracy_tier("claimed_tier")
    run_tier = t.run_tier("run_tier", kit.runtier.DEFAULT_RUN_TIER)
    lossless = t.bool("lossless", False)
    description = t.str("description", family_description)
    params = t.rest()
    unknown = sorted(set(params) - fields)
    if unknown:
        valid = sorted(set(POINT_KEYS) | fields - {"version"})
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := [RENAMED[k]] if k in RENAMED else
                                                           difflib.get_close_matches(k, valid, n=1)) else "")
                 for k in unknown]
        raise PlanError(f"{t.where}: unknown key(s) {', '.join(hints)}: neither a point key ({', '.join(POINT_KEYS)}) "
                        f"nor a field of codec {codec!r} ({', '.join(sorted(fields - {'version'}))})")
    merged = {**shared, **params}
    try:
        codec_obj = make_codec(codec, merged)
    except (kit.ConfigError, ValueError, TypeError) as exc:
        raise PlanError(f"{t.where}: {exc}") from None
    return SplitPoint(label=label, family=family, codec=codec, params=tuple(sorted(merged.items())),
                      claimed_tier=claimed, lossless=lossless, run_tier=run_tier, description=description,
                      version=codec_obj.config.version)


def _families(root: Table) -> tuple[dict[str, tuple[SplitPoint, ...]], str]:
    families: dict[str, tuple[SplitPoint, ...]] = {}
    anchors = []
    fams = root.table("families")
    for fam in list(fams.data):
        t = fams.table(fam)
        codec = t.str("codec")
        fields = _codec_fields(codec, t.at("codec"))
        params_t = t.table("params", {})
        shared = params_t.rest()
        unknown = sorted(set(shared) - fields)
        if unknown:
            raise PlanError(f"{params_t.where}: unknown field(s) {unknown} of codec {codec!r} "
                            f"(valid: {', '.join(sorted(fields - {'version'}))})")
        if t.bool("anchor", False):
            anchors.append(fam)
        description = t.str("description", "")
        pts = tuple(_point(p, fam, codec, shared, fields, description) for p in t.tables("points"))
        if not pts:
            raise PlanError(f"{t.at('points')}: a family needs at least one point")
        t.done()
        families[fam] = pts
    if len(anchors) != 1:
        raise PlanError(f"{fams.where}: exactly one family must have `anchor = true` (the BD-rate anchor), "
                        f"found {anchors}")
    try:
        kit.unique_ids([p for pts in families.values() for p in pts], id_of=lambda p: p.label, where=fams.where)
    except kit.PointError as exc:
        raise PlanError(str(exc)) from None
    return families, anchors[0]


def _cuts(root: Table, families: Mapping[str, Any]) -> tuple[dict[str, dict[str, tuple[str, ...]]],
                                                              dict[str, tuple[str, ...]]]:
    out, coded_families = {}, {}
    cuts = root.table("cuts", {})
    for anchor in list(cuts.data):
        t = cuts.table(anchor)
        table = {}
        if "families" in t.data:  # an expensive anchor codes fewer curves (each coded point costs a task gate)
            names = t.list("families", str)
            for i, name in enumerate(names):
                if name not in families:
                    raise PlanError(f"{t.at('families')}[{i}]: {name!r} is no family of the plan "
                                    f"({', '.join(sorted(families))})")
            if not names:
                raise PlanError(f"{t.at('families')}: an empty family list")
            coded_families[anchor] = tuple(names)
        for run_tier in [k for k in t.data if k != "families"]:
            if run_tier not in kit.RUN_TIERS[:-1]:
                raise PlanError(f"{t.at(run_tier)}: {run_tier!r} is not a run tier with a cut list "
                                f"({', '.join(kit.RUN_TIERS[:-1])}; the full tier codes every single cut)")
            names = t.list(run_tier, str)
            if not names:
                raise PlanError(f"{t.at(run_tier)}: an empty cut list")
            table[run_tier] = tuple(names)
        t.done()
        out[anchor] = table
    return out, coded_families


def _profiles(root: Table):
    prof = root.table("profiles", {})
    compute: dict[str, dict[str, ComputeProfile]] = {}
    for kind in ("device", "server"):
        kt = prof.table(kind, {})
        compute[kind] = {}
        for name in list(kt.data):
            t = kt.table(name)
            compute[kind][name] = ComputeProfile(name, t.float("speed_factor", min=0, min_open=True),
                                                 t.str("description", ""))
            t.done()
    links = {}
    lt = prof.table("link", {})
    for name in list(lt.data):
        t = lt.table(name)
        links[name] = LinkProfile(name, t.float("uplink_mbps", min=0, min_open=True), t.float("latency_ms", 0.0, min=0),
                                  t.str("description", ""))
        t.done()
    prof.done()
    return compute["device"], compute["server"], links


def _scenarios(root: Table, devices, servers, links) -> tuple[Scenario, ...]:
    out = []
    for t in root.tables("scenarios", []):
        s = Scenario(t.str("name"), devices[t.str("device", choices=devices)], servers[t.str("server", choices=servers)],
                     links[t.str("link", choices=links)], t.accuracy_tier("accuracy_tier", none=None) or "")
        if not s.accuracy_tier:
            raise PlanError(f"{t.where}: missing 'accuracy_tier'")
        t.done()
        out.append(s)
    return tuple(out)


def _kpis(root: Table) -> dict[str, Kpi]:
    out = {}
    kt = root.table("kpi", {})
    for name in list(kt.data):
        t = kt.table(name)
        out[name] = Kpi(name, t.str("source"), t.int("payload_bytes", min=1), t.float("uplink_mbps", min=0, min_open=True),
                        t.float("max_latency_ms", min=0, min_open=True),
                        t.accuracy_tier("accuracy_tier", "99%", none=None))
        t.done()
    return out


def _published(root: Table) -> dict[str, PublishedSizes]:
    out = {}
    pt = root.table("published", {})
    for name in list(pt.data):
        t = pt.table(name)
        shape = tuple(t.list("input_shape", int))
        if not shape or any(d < 1 for d in shape):
            raise PlanError(f"{t.at('input_shape')}: dimensions must be positive integers, got {list(shape)}")
        kib_t = t.table("fp32_kib")
        kib = {cut: kib_t.float(cut, min=0, min_open=True) for cut in list(kib_t.data)}
        out[name] = PublishedSizes(name, t.str("architecture"), shape, t.str("source", ""), kib)
        t.done()
    return out


def _resolutions(root: Table) -> dict[str, tuple[int, ...]]:
    out = {}
    rt = root.table("resolutions", {})
    for dataset in list(rt.data):
        values = rt.list(dataset, int)
        bad = [v for v in values if v < 1]
        if bad or not values:
            raise PlanError(f"{rt.at(dataset)}: resolutions must be a non-empty list of positive integers, got {values}")
        out[dataset] = tuple(values)
    return out


def parse_plan(root: Table) -> SplitPlan:
    """A :class:`SplitPlan` from the plan file's root table (see :func:`load_plan`)."""
    run_t = root.table("run")
    runs = {}
    for run_tier in list(run_t.data):
        if run_tier not in kit.RUN_TIERS:
            raise PlanError(f"{run_t.at(run_tier)}: {run_tier!r} is not a run tier; choose one of "
                            f"{', '.join(kit.RUN_TIERS)}")
        runs[run_tier] = _run(run_t.table(run_tier), run_tier)
    missing = [t for t in kit.RUN_TIERS if t not in runs]
    if missing:
        raise PlanError(f"{run_t.where}: missing [run.{missing[0]}]")
    families, anchor_family = _families(root)
    devices, servers, links = _profiles(root)
    cuts, cut_families = _cuts(root, families)
    plan = SplitPlan(path=root.where, runs=runs, families=families, anchor_family=anchor_family, cuts=cuts,
                     resolutions=_resolutions(root), devices=devices, servers=servers, links=links,
                     scenarios=_scenarios(root, devices, servers, links), kpis=_kpis(root), published=_published(root),
                     cut_families=cut_families)
    root.done()
    return plan


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> SplitPlan:
    return parse_plan(kit.read_plan(CRITERION, path, version=PLAN_VERSION, tables=TABLES))


def load_plan(path: str | Path | None = None) -> SplitPlan:
    """``anchors/split.toml`` (or another file), parsed once; a :class:`~nnconform.kit.PlanError` names the file
    and field of any bad value."""
    return _load(plan_path(CRITERION, path))


#: the former name of :func:`load_plan`
load_split_manifest = load_plan
