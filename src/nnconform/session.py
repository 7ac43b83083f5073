"""The run's state: loaded anchors and datasets, collected records, the environment manifest.

One :class:`ConformanceSession` lives in ``config.stash`` for the whole pytest session. Records
reach it through test reports (``user_properties``), so a parallel run under pytest-xdist
collects exactly what a serial run does.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .anchors import Anchor, WeightsIntegrityError, WeightsUnavailable, get_anchor
from .data import DatasetUnavailable, ImageDataset, load_dataset
from .evaluate import EvalResult, Evaluator
from .paths import REPO_ROOT
from .records import CheckRecord, Status
from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

TIERS = ("quick", "default", "full")
RECORD_PROPERTY = "nnconform_record"

# The environment manifest lives in environment.py (with the lock drift); re-exported for callers.
from .environment import REPORTED_PACKAGES, environment_manifest  # noqa: E402,F401


@dataclass(frozen=True)
class RunConfig:
    """The ``--nnc-*`` options of a run."""

    anchors: str = "default"
    tier: str = "default"
    data_dir: str | None = None
    imagenet: str | None = None
    cache_dir: Path | None = None
    report_dir: Path | None = None
    run_id: str | None = None
    write_report: bool = True
    proposals: tuple[str, ...] = ()  # --nnc-proposal manifests, as given
    proposal_only: bool = False  # run only the proposals' own cases

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"--nnc-tier {self.tier!r}: choose one of {', '.join(TIERS)}")

    def tier_allows(self, min_tier: str) -> bool:
        """Whether a case marked ``tier(min_tier)`` runs in this run's tier."""
        if min_tier not in TIERS:
            raise ValueError(f"tier marker {min_tier!r}: choose one of {', '.join(TIERS)}")
        return TIERS.index(self.tier) >= TIERS.index(min_tier)


@dataclass
class Outcome:
    """What pytest reported for one test case."""

    nodeid: str
    outcome: str  # passed / failed / skipped / error
    duration: float
    message: str = ""

    @property
    def criterion(self) -> str:
        """``conformance/test_compression.py::...`` -> ``compression``."""
        return Path(self.nodeid.split("::")[0]).stem.removeprefix("test_")


@dataclass
class ConformanceSession:
    """Everything one run loads, measures and reports."""

    config: RunConfig
    started: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    records: list[CheckRecord] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    datasets_used: dict[str, dict] = field(default_factory=dict)
    anchors_used: dict[str, dict] = field(default_factory=dict)
    benchmarks: list[dict] = field(default_factory=list)
    #: checked :class:`~nnconform.proposal.Proposal` objects of ``--nnc-proposal``
    proposals: list[Any] = field(default_factory=list)
    _models: dict[tuple, Any] = field(default_factory=dict, repr=False)
    _datasets: dict[tuple, Any] = field(default_factory=dict, repr=False)
    _references: dict[tuple, EvalResult] = field(default_factory=dict, repr=False)
    _evaluator: Evaluator | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        if not self.config.run_id:
            stamp = self.started.replace(":", "").replace("-", "").replace("+0000", "Z")
            object.__setattr__(self, "config", _replace(self.config, run_id=f"{stamp}-{uuid.uuid4().hex[:6]}"))
        return self.config.run_id

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator(self.config.cache_dir)
        return self._evaluator

    # -- loading, once per session --------------------------------------------------------------

    def anchor(self, name: str) -> Anchor:
        """The anchor, recorded in the report's anchor list."""
        anchor = get_anchor(name)
        self.anchors_used.setdefault(name, anchor.to_dict())
        return anchor

    def model(self, name: str, checkpoint: str | None = None) -> torch.nn.Module:
        """The anchor's model (verified weights), loaded once. Raises the anchors module's errors."""
        key = (name, checkpoint)
        if key not in self._models:
            try:
                self._models[key] = self.anchor(name).build(checkpoint)
            except (WeightsUnavailable, WeightsIntegrityError) as exc:
                self._models[key] = exc
        value = self._models[key]
        if isinstance(value, Exception):
            raise value
        return value

    def dataset(self, anchor: Anchor | str, split: str = "test") -> ImageDataset:
        """The anchor's evaluation dataset; falls back to the offline ImageNet samples (a smoke set)."""
        anchor = self.anchor(anchor) if isinstance(anchor, str) else anchor
        key = (anchor.dataset, split)
        if key not in self._datasets:
            try:
                ds = load_dataset(anchor.dataset, split, data_dir=self.config.data_dir,
                                  imagenet_source=self.config.imagenet)
            except DatasetUnavailable as exc:
                if anchor.dataset != "imagenet-1k":
                    self._datasets[key] = exc
                    raise
                try:
                    ds = load_dataset("imagenet-samples")
                except DatasetUnavailable as exc2:
                    self._datasets[key] = DatasetUnavailable(f"{exc}; and the offline smoke set: {exc2}")
                    raise self._datasets[key] from None
            self._datasets[key] = ds
            self.datasets_used[f"{ds.name}/{ds.split}"] = {"fingerprint": ds.fingerprint, "samples": len(ds),
                                                          "source": ds.source, "smoke": ds.smoke}
        value = self._datasets[key]
        if isinstance(value, Exception):
            raise value
        return value

    def reference(self, name: str, checkpoint: str | None = None) -> EvalResult:
        """The anchor's (or checkpoint's) cached evaluation on its dataset."""
        key = (name, checkpoint)
        if key not in self._references:
            anchor = self.anchor(name)
            self._references[key] = self.evaluator.evaluate(self.model(name, checkpoint), self.dataset(anchor),
                                                           anchor.preprocess_for(checkpoint))
        return self._references[key]

    # -- collecting ---------------------------------------------------------------------------

    def add_record(self, record: CheckRecord) -> None:
        self.records.append(record)

    def add_outcome(self, outcome: Outcome) -> None:
        previous = self.outcomes.get(outcome.nodeid)
        # setup/call/teardown each report; keep the most telling one (a failure beats a pass)
        if previous is None or previous.outcome == "passed" or outcome.outcome in ("failed", "error"):
            if previous is not None:
                outcome.duration += previous.duration
            self.outcomes[outcome.nodeid] = outcome

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        for o in self.outcomes.values():
            out[o.outcome] = out.get(o.outcome, 0) + 1
        return out


def _replace(cfg: RunConfig, **changes) -> RunConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def record_to_property(record: CheckRecord) -> tuple[str, str]:
    """A record as a ``user_properties`` entry (JSON travels from xdist workers to the controller)."""
    return (RECORD_PROPERTY, json.dumps(record.to_dict()))


def record_from_property(value: str) -> CheckRecord:
    """The inverse of :func:`record_to_property`."""
    d = json.loads(value)
    d["status"] = Status(d["status"])
    return CheckRecord(**d)
