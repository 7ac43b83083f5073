"""The compression suite and calibration lists, read from ``anchors/compression.toml``.

The manifest is data: which methods run at which operating points on which anchor, the lowest
run tier (quick/default/full) at which each point runs, the accuracy tier each point claims, and
the fixed calibration index lists. Python only validates it and builds the configs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hashing import arrays_sha256
from ..paths import anchors_dir, read_toml
from .base import CalibrationSet, CompressorConfig, get_compressor

RUN_TIERS = ("quick", "default", "full")
MANIFEST = "compression.toml"


class SuiteError(ValueError):
    """``anchors/compression.toml`` is malformed; the message names the table and field."""


@dataclass(frozen=True)
class OperatingPoint:
    """One (anchor, method, operating point) case of the suite."""

    anchor: str
    method: str
    label: str
    run_tier: str
    config: CompressorConfig
    #: the proposal that contributed the point ("" for the reference methods of the manifest)
    proposal: str = ""
    #: the size the proposal claims here: the artifact must be no larger (None: no size claim)
    claimed_bytes: int | None = None

    @property
    def id(self) -> str:
        """The readable case id: ``fmnist-resnet8-aimet-ssvd-0.5``."""
        return "-".join(p for p in (self.anchor, self.method, self.label) if p)

    @property
    def subject(self) -> str:
        """The record subject: ``fmnist-resnet8/aimet-ssvd/0.5``."""
        return "/".join(p for p in (self.anchor, self.method, self.label) if p)

    def to_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "method": self.method, "label": self.label, "run_tier": self.run_tier,
                "config": self.config.to_dict(), "proposal": self.proposal, "claimed_bytes": self.claimed_bytes}


@dataclass(frozen=True)
class CalibrationSpec:
    """A fixed list of sample indices of a dataset split, and how it was drawn.

    ``dataset`` names the list (``fashion-mnist``, ``imagenet``); ``source`` is the dataset the
    indices point into when it differs (the offline ImageNet samples). ``evaluate_on_rest``: the
    list is carved out of a smoke evaluation set, so cases evaluate on the other samples only.
    """

    dataset: str
    split: str
    indices: tuple[int, ...]
    rule: str
    source: str | None = None
    evaluate_on_rest: bool = False

    def __post_init__(self) -> None:
        if len(set(self.indices)) != len(self.indices):
            raise SuiteError(f"calibration.{self.dataset}.indices: duplicate indices")
        if any(i < 0 for i in self.indices):
            raise SuiteError(f"calibration.{self.dataset}.indices: negative index")
        if self.split == "test":
            raise SuiteError(f"calibration.{self.dataset}.split: calibration must not come from the test split")

    @property
    def index_sha256(self) -> str:
        """Fingerprint of the index list itself (printed in the report)."""
        return arrays_sha256(np.asarray(self.indices, dtype=np.int64))


@dataclass(frozen=True)
class Suite:
    """The parsed manifest."""

    points: tuple[OperatingPoint, ...]
    calibration: dict[str, CalibrationSpec]
    path: str

    def for_anchor(self, anchor: str) -> list[OperatingPoint]:
        return [p for p in self.points if p.anchor == anchor]

    def anchors(self) -> list[str]:
        return list(dict.fromkeys(p.anchor for p in self.points))

    def with_points(self, points) -> "Suite":
        """The suite plus ``points`` (a proposal's); a case id already taken is refused by name."""
        taken = {p.id for p in self.points}
        for p in points:
            if p.id in taken:
                raise SuiteError(f"{self.path}: case id {p.id!r} of proposal {p.proposal!r} is already taken")
            taken.add(p.id)
        return Suite(self.points + tuple(points), self.calibration, self.path)

    def up_to(self, run_tier: str) -> list[OperatingPoint]:
        """The points that run in ``run_tier``."""
        if run_tier not in RUN_TIERS:
            raise SuiteError(f"run tier {run_tier!r}: choose one of {RUN_TIERS}")
        return [p for p in self.points if RUN_TIERS.index(p.run_tier) <= RUN_TIERS.index(run_tier)]


_POINT_KEYS = {"label", "run_tier"}
_GROUP_KEYS = {"method", "config", "points", "run_tier"}


def parse_suite(data: dict, path: str = MANIFEST) -> Suite:
    """Validate the manifest's tables and build every operating point's config."""
    points: list[OperatingPoint] = []
    seen: set[str] = set()
    for anchor, groups in data.get("suite", {}).items():
        if not isinstance(groups, list):
            raise SuiteError(f"{path}: suite.{anchor} must be an array of tables ([[suite.{anchor}]])")
        for gi, group in enumerate(groups):
            where = f"{path}: suite.{anchor}[{gi}]"
            unknown = sorted(set(group) - _GROUP_KEYS)
            if unknown:
                raise SuiteError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_GROUP_KEYS)}")
            if "method" not in group:
                raise SuiteError(f"{where}: missing 'method'")
            method = group["method"]
            try:
                handler = get_compressor(method)
            except KeyError as exc:
                raise SuiteError(f"{where}.method: {exc.args[0]}") from None
            shared = dict(group.get("config", {}))
            for pi, raw in enumerate(group.get("points", [{}])):
                pwhere = f"{where}.points[{pi}]"
                raw = dict(raw)
                label = str(raw.pop("label", ""))
                run_tier = raw.pop("run_tier", group.get("run_tier", "default"))
                if run_tier not in RUN_TIERS:
                    raise SuiteError(f"{pwhere}.run_tier: {run_tier!r} is not one of {RUN_TIERS}")
                try:
                    config = handler.config_cls.from_dict({**shared, **raw, "method": method})
                except (TypeError, ValueError) as exc:
                    raise SuiteError(f"{pwhere}: {exc}") from None
                point = OperatingPoint(anchor, method, label, run_tier, config)
                if point.id in seen:
                    raise SuiteError(f"{pwhere}: duplicate case id {point.id!r}")
                seen.add(point.id)
                points.append(point)
    calibration = {}
    for dataset, raw in data.get("calibration", {}).items():
        where = f"{path}: calibration.{dataset}"
        missing = sorted({"split", "indices", "rule"} - set(raw))
        if missing:
            raise SuiteError(f"{where}: missing {missing}")
        unknown = sorted(set(raw) - {"split", "indices", "rule", "index_sha256", "source", "evaluate_on_rest"})
        if unknown:
            raise SuiteError(f"{where}: unknown key(s) {unknown}")
        spec = CalibrationSpec(dataset, raw["split"], tuple(int(i) for i in raw["indices"]), raw["rule"],
                               raw.get("source"), bool(raw.get("evaluate_on_rest", False)))
        if "index_sha256" in raw and raw["index_sha256"] != spec.index_sha256:
            raise SuiteError(f"{where}.index_sha256: the list hashes to {spec.index_sha256}, "
                             f"the manifest pins {raw['index_sha256']} (the list was edited)")
        calibration[dataset] = spec
    return Suite(tuple(points), calibration, path)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> Suite:
    try:
        data = read_toml(path, SuiteError)
    except FileNotFoundError:
        raise SuiteError(f"{path}: the compression suite manifest is missing") from None
    return parse_suite(data, str(path))


def load_suite(path: str | Path | None = None) -> Suite:
    """The suite of ``anchors/compression.toml`` (or another manifest)."""
    return _load(Path(path) if path else anchors_dir() / MANIFEST)


# ---------------------------------------------------------------------------------------------
# Calibration data


def calibration_dataset_name(anchor_dataset: str) -> str:
    """Which calibration list an anchor uses: ImageNet anchors share the ``imagenet`` list."""
    return "imagenet" if anchor_dataset.startswith("imagenet") else anchor_dataset


def build_calibration(spec: CalibrationSpec, preprocess, *, data_dir=None, limit: int | None = None) -> CalibrationSet:
    """Load the listed training samples and preprocess them for the anchor."""
    from ..data import load_dataset

    ds = load_dataset(spec.source or spec.dataset, spec.split, data_dir=data_dir)
    if max(spec.indices) >= len(ds):
        raise SuiteError(f"calibration.{spec.dataset}: index {max(spec.indices)} is beyond the {len(ds)} samples "
                         f"of {spec.dataset}/{spec.split}")
    indices = spec.indices[:limit] if limit else spec.indices
    sub = ds.subset(indices)
    images = torch.cat([x for x, _ in sub.batches(preprocess, 500)])
    return CalibrationSet(dataset=spec.source or spec.dataset, split=spec.split, indices=tuple(indices), images=images,
                          labels=sub.labels.clone(), fingerprint=sub.fingerprint,
                          description=f"{len(indices)} {spec.source or spec.dataset}/{spec.split} samples: {spec.rule} "
                                      f"(index list sha256 {spec.index_sha256[:16]})")


def overlapping_images(calibration_images: torch.Tensor | list, eval_images: torch.Tensor | list) -> int:
    """How many calibration images are byte-identical to an evaluation image (must be 0)."""
    import hashlib

    def digests(images) -> set[str]:
        return {hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in images}

    return len(digests(calibration_images) & digests(eval_images))
