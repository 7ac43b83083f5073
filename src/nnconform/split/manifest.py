"""``anchors/split.toml`` as typed, frozen objects; every error names the file and the field."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..paths import anchors_dir, read_toml
from .codecs import FEATURE_CODECS, FeatureCodec

SUITE_TIERS = ("quick", "default", "full")
CUT_SCOPES = ("coded", "single", "all")
_POINT_KEYS = {"id", "claim", "tier", "lossless", "description"}


class SplitManifestError(ValueError):
    """``split.toml`` is malformed; the message names the file and field."""


@dataclass(frozen=True)
class OperatingPoint:
    """One feature-codec configuration on one rate-accuracy curve (``family``)."""

    id: str
    family: str
    codec: str
    params: tuple[tuple[str, Any], ...] = ()
    claim: str | None = None
    lossless: bool = False
    tier: str = "quick"
    description: str = ""
    version: int = 1
    anchors: tuple[str, ...] | None = None  # the anchors it runs on (None: every anchor)
    proposal: str = ""  # the proposal that contributed the point ("" for split.toml's points)

    def applies_to(self, anchor: str) -> bool:
        """Whether the point is coded on ``anchor``'s cuts."""
        return self.anchors is None or anchor in self.anchors

    def __post_init__(self) -> None:
        if self.tier not in SUITE_TIERS:
            raise SplitManifestError(f"operating point {self.id!r}: tier {self.tier!r} is not one of {SUITE_TIERS}")
        if self.claim is not None:
            from ..gates import load_tiers

            if self.claim not in load_tiers():
                raise SplitManifestError(f"operating point {self.id!r}: claim {self.claim!r} is not an accuracy tier "
                                         f"({list(load_tiers())})")

    @property
    def kwargs(self) -> dict[str, Any]:
        """The codec parameters as keyword arguments."""
        return dict(self.params)

    def build(self) -> FeatureCodec:
        """Instantiate the codec from the registry (raises if the name or a parameter is invalid)."""
        return FEATURE_CODECS.get(self.codec)(**self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for records."""
        return {"id": self.id, "family": self.family, "codec": self.codec, "params": self.kwargs,
                "claim": self.claim, "lossless": self.lossless, "tier": self.tier, "version": self.version,
                "proposal": self.proposal}


@dataclass(frozen=True)
class RunSettings:
    """How much of the criterion runs in one suite tier."""

    tier: str
    samples: int | Mapping[str, int]  # evaluation samples (0 = all), or per dataset name
    stats_samples: int
    batch_size: int
    timing_rounds: int
    identity: str
    onnx: str

    def __post_init__(self) -> None:
        for key in ("identity", "onnx"):
            if getattr(self, key) not in CUT_SCOPES:
                raise SplitManifestError(f"run.{self.tier}.{key}: {getattr(self, key)!r} is not one of {CUT_SCOPES}")
        counts = self.samples.values() if isinstance(self.samples, Mapping) else [self.samples]
        if any(not isinstance(n, int) or n < 0 for n in counts) or self.stats_samples < 1 or self.batch_size < 1 \
                or self.timing_rounds < 1:
            raise SplitManifestError(f"run.{self.tier}: samples >= 0 (or a table of them per dataset), "
                                     f"stats_samples, batch_size and timing_rounds >= 1 expected, got {self}")

    def samples_for(self, dataset: str) -> int:
        """Evaluation samples for a dataset (0 = all of it)."""
        if not isinstance(self.samples, Mapping):
            return self.samples
        if dataset not in self.samples:
            raise SplitManifestError(f"run.{self.tier}.samples has no entry for dataset {dataset!r} "
                                     f"(has {sorted(self.samples)})")
        return self.samples[dataset]


@dataclass(frozen=True)
class ComputeProfile:
    """A device or server: times measured here are multiplied by ``speed_factor``."""

    name: str
    speed_factor: float
    description: str = ""

    def __post_init__(self) -> None:
        if not self.speed_factor > 0:
            raise SplitManifestError(f"profile {self.name!r}: speed_factor must be > 0, got {self.speed_factor}")


@dataclass(frozen=True)
class LinkProfile:
    """An uplink: rate in Mbit/s (10^6 bit/s) and a fixed one-way latency in ms."""

    name: str
    uplink_mbps: float
    latency_ms: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.uplink_mbps > 0 or self.latency_ms < 0:
            raise SplitManifestError(f"link {self.name!r}: uplink_mbps must be > 0 and latency_ms >= 0, "
                                     f"got {self.uplink_mbps}, {self.latency_ms}")

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
    tier: str


@dataclass(frozen=True)
class Kpi:
    """A published payload / rate / latency requirement for an uplink of intermediate data."""

    name: str
    source: str
    payload_bytes: int
    uplink_mbps: float
    max_latency_ms: float
    tier: str = "99%"

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
class SplitManifest:
    """Everything in ``split.toml``."""

    path: str
    version: int
    runs: Mapping[str, RunSettings]
    families: Mapping[str, tuple[OperatingPoint, ...]]
    anchor_family: str
    cuts: Mapping[str, Mapping[str, tuple[str, ...]]]
    resolutions: Mapping[str, tuple[int, ...]]
    devices: Mapping[str, ComputeProfile]
    servers: Mapping[str, ComputeProfile]
    links: Mapping[str, LinkProfile]
    scenarios: tuple[Scenario, ...]
    kpis: Mapping[str, Kpi]
    published: Mapping[str, PublishedSizes] = field(default_factory=dict)

    def run(self, tier: str) -> RunSettings:
        """Settings of a suite tier."""
        try:
            return self.runs[tier]
        except KeyError:
            raise SplitManifestError(f"{self.path}: no [run.{tier}] table (have {sorted(self.runs)})") from None

    @property
    def points(self) -> list[OperatingPoint]:
        """Every operating point, family by family."""
        return [p for pts in self.families.values() for p in pts]

    def point(self, point_id: str) -> OperatingPoint:
        """One operating point by id."""
        for p in self.points:
            if p.id == point_id:
                return p
        raise KeyError(f"{self.path}: no operating point {point_id!r} (have {[p.id for p in self.points]})")

    def with_points(self, points) -> "SplitManifest":
        """The manifest plus ``points`` (a proposal's), one family per codec; a taken id is refused."""
        import dataclasses

        taken = {p.id for p in self.points}
        families = {k: tuple(v) for k, v in self.families.items()}
        for p in points:
            if p.id in taken:
                raise SplitManifestError(f"{self.path}: operating point id {p.id!r} of proposal {p.proposal!r} is "
                                         f"already taken")
            taken.add(p.id)
            if p.family in self.families:
                raise SplitManifestError(f"{self.path}: proposal {p.proposal!r} family {p.family!r} is a family of "
                                         f"the manifest")
            families[p.family] = families.get(p.family, ()) + (p,)
        return dataclasses.replace(self, families=families)

    def points_for(self, tier: str, *, registered: bool = True) -> list[OperatingPoint]:
        """The operating points that run in a suite tier.

        With ``registered``, a codec in the registry (a proposal's entry point) that no family
        names runs too, once, with its default parameters.
        """
        pts = [p for p in self.points if SUITE_TIERS.index(p.tier) <= SUITE_TIERS.index(tier)]
        if registered:
            listed = {p.codec for p in self.points}
            ids = {p.id for p in self.points}
            pts += [OperatingPoint(id=name, family=name, codec=name,
                                   description="registered codec without operating points in split.toml "
                                               "(default parameters)")
                    for name in FEATURE_CODECS.names() if name not in listed and name not in ids]
        return pts

    def cuts_for(self, anchor: str, tier: str) -> tuple[str, ...] | None:
        """Coded cut names for an anchor in a tier; None means "choose from the catalogue"."""
        table = self.cuts.get(anchor)
        if table is None or tier == "full":
            return None
        for t in SUITE_TIERS[: SUITE_TIERS.index(tier) + 1][::-1]:
            if t in table:
                return table[t]
        return None


def _require(table: Mapping, key: str, where: str, kind: type | tuple[type, ...]):
    if key not in table:
        raise SplitManifestError(f"{where}: missing `{key}`")
    value = table[key]
    if not isinstance(value, kind):
        raise SplitManifestError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def parse_split_manifest(raw: Mapping[str, Any], path: str = "split.toml") -> SplitManifest:
    """Validate and convert the parsed TOML."""
    version = _require(raw, "version", path, int)
    runs = {}
    for tier, spec in raw.get("run", {}).items():
        if tier not in SUITE_TIERS:
            raise SplitManifestError(f"{path}: [run.{tier}]: tier must be one of {SUITE_TIERS}")
        try:
            runs[tier] = RunSettings(tier=tier, **spec)
        except TypeError as exc:
            raise SplitManifestError(f"{path}: [run.{tier}]: {exc}") from None
    missing = [t for t in SUITE_TIERS if t not in runs]
    if missing:
        raise SplitManifestError(f"{path}: missing [run.{missing[0]}]")

    families: dict[str, tuple[OperatingPoint, ...]] = {}
    anchors = []
    seen_ids: set[str] = set()
    for fam, spec in raw.get("families", {}).items():
        where = f"{path}: families.{fam}"
        codec = _require(spec, "codec", where, str)
        shared = dict(spec.get("params", {}))
        if spec.get("anchor"):
            anchors.append(fam)
        pts = []
        for i, p in enumerate(_require(spec, "points", where, list)):
            pid = _require(p, "id", f"{where}.points[{i}]", str)
            if pid in seen_ids:
                raise SplitManifestError(f"{where}.points[{i}]: duplicate operating point id {pid!r}")
            seen_ids.add(pid)
            params = {**shared, **{k: v for k, v in p.items() if k not in _POINT_KEYS}}
            try:
                pts.append(OperatingPoint(id=pid, family=fam, codec=codec, params=tuple(sorted(params.items())),
                                          claim=p.get("claim"), lossless=bool(p.get("lossless", False)),
                                          tier=p.get("tier", "quick"),
                                          description=p.get("description", spec.get("description", ""))))
            except SplitManifestError as exc:
                raise SplitManifestError(f"{where}.points[{i}]: {exc}") from None
        families[fam] = tuple(pts)
    if len(anchors) != 1:
        raise SplitManifestError(f"{path}: exactly one family must have `anchor = true` (the BD-rate anchor), "
                                 f"found {anchors}")

    cuts = {}
    for anchor, table in raw.get("cuts", {}).items():
        for tier, names in table.items():
            if tier not in SUITE_TIERS or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise SplitManifestError(f"{path}: cuts.{anchor}.{tier}: expected a tier name "
                                         f"({SUITE_TIERS}) with a list of cut names")
        cuts[anchor] = {t: tuple(v) for t, v in table.items()}

    def profiles(kind: str) -> dict[str, ComputeProfile]:
        out = {}
        for name, spec in raw.get("profiles", {}).get(kind, {}).items():
            try:
                out[name] = ComputeProfile(name=name, **spec)
            except TypeError as exc:
                raise SplitManifestError(f"{path}: profiles.{kind}.{name}: {exc}") from None
        return out

    devices, servers = profiles("device"), profiles("server")
    links = {}
    for name, spec in raw.get("profiles", {}).get("link", {}).items():
        try:
            links[name] = LinkProfile(name=name, **spec)
        except TypeError as exc:
            raise SplitManifestError(f"{path}: profiles.link.{name}: {exc}") from None
    scenarios = []
    for i, s in enumerate(raw.get("scenarios", [])):
        where = f"{path}: scenarios[{i}]"
        try:
            scenarios.append(Scenario(name=_require(s, "name", where, str), device=devices[s["device"]],
                                      server=servers[s["server"]], link=links[s["link"]],
                                      tier=_require(s, "tier", where, str)))
        except KeyError as exc:
            raise SplitManifestError(f"{where}: unknown profile {exc.args[0]!r} (devices {sorted(devices)}, "
                                     f"servers {sorted(servers)}, links {sorted(links)})") from None
    kpis = {}
    for name, spec in raw.get("kpi", {}).items():
        try:
            kpis[name] = Kpi(name=name, **spec)
        except TypeError as exc:
            raise SplitManifestError(f"{path}: kpi.{name}: {exc}") from None
    published = {}
    for name, spec in raw.get("published", {}).items():
        try:
            published[name] = PublishedSizes(name=name, architecture=spec["architecture"],
                                              input_shape=tuple(spec["input_shape"]), source=spec.get("source", ""),
                                              fp32_kib=dict(spec["fp32_kib"]))
        except KeyError as exc:
            raise SplitManifestError(f"{path}: published.{name}: missing `{exc.args[0]}`") from None
    resolutions = {k: tuple(int(r) for r in v) for k, v in raw.get("resolutions", {}).items()}
    return SplitManifest(path=path, version=version, runs=runs, families=families, anchor_family=anchors[0],
                         cuts=cuts, resolutions=resolutions, devices=devices, servers=servers, links=links,
                         scenarios=tuple(scenarios), kpis=kpis, published=published)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> SplitManifest:
    return parse_split_manifest(read_toml(path, SplitManifestError), str(path))


def load_split_manifest(path: str | Path | None = None) -> SplitManifest:
    """``anchors/split.toml`` (or another file), parsed once."""
    return _load(Path(path) if path else anchors_dir() / "split.toml")
