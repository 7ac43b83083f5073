"""The criterion's plan and its once-per-session work: which (cut, operating point) pairs run in
a tier, the traced graph and the study of each anchor, and the timings benchmarks measured.

The conformance file keeps one :class:`SplitRunner` per pytest session; everything heavy is
computed on first use and reused by every case of the anchor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .cuts import SplitGraph
from .features import profile_cuts, resolution_scaling
from .manifest import SUITE_TIERS, OperatingPoint, SplitManifest
from .study import SplitStudy, run_study

#: Samples per (cut, point) whose encoding is repeated to check it is deterministic.
DETERMINISM_CHECKS = 2
#: Bytes of captured tensors per batch the study may hold at once (sets the batch size).
CAPTURE_BUDGET_BYTES = 256 * 2**20


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads, then restore the previous setting.

    The criterion works one image at a time; on a shared machine more threads than free cores
    stall in OpenMP barriers (a 40 ms forward pass was seen taking minutes).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def later_tier(*tiers: str) -> str:
    """The highest of suite tiers (a case runs from the tier of its most expensive part)."""
    return max(tiers, key=SUITE_TIERS.index)


def auto_cuts(graph: SplitGraph, count: int) -> tuple[str, ...]:
    """``count`` evenly spaced single cuts with spatial (>= 2-D) tensors, for anchors without a table."""
    spatial = [c.name for c in graph.single_cuts if len(c.shapes[0]) >= 2][1:]
    if len(spatial) <= count:
        return tuple(spatial)
    step = len(spatial) / count
    return tuple(spatial[int((i + 0.5) * step)] for i in range(count))


@dataclass(frozen=True)
class CodedCase:
    """One (anchor, cut, operating point) case and the suite tier it runs from."""

    anchor: str
    cut: str
    point: OperatingPoint
    tier: str

    @property
    def id(self) -> str:
        """``fmnist-resnet8-layer2-uq8-per-channel``."""
        return f"{self.anchor}-{self.cut}-{self.point.id}"


def coded_cuts(manifest: SplitManifest, anchor: str, tier: str, graph: SplitGraph | None = None) -> dict[str, str]:
    """Cut -> the tier it is first coded in, for every tier up to ``tier``.

    ``graph`` is needed only in the full tier (every single cut) or for an anchor without a table.
    """
    out: dict[str, str] = {}
    for t in SUITE_TIERS[: SUITE_TIERS.index(tier) + 1]:
        names = manifest.cuts_for(anchor, t)
        if names is None:
            if graph is None:
                raise ValueError(f"{anchor}: tier {t!r} codes cuts chosen from the catalogue; pass the graph")
            names = tuple(c.name for c in graph.single_cuts) if t == "full" else auto_cuts(graph, 1 if t == "quick" else 4)
        for n in names:
            out.setdefault(n, t)
    return out


def coded_cases(manifest: SplitManifest, anchor: str, tier: str, graph: SplitGraph | None = None) -> list[CodedCase]:
    """Every coded case of an anchor up to a suite tier."""
    cases = []
    for cut, cut_tier in coded_cuts(manifest, anchor, tier, graph).items():
        for p in manifest.points_for(tier):
            if not p.applies_to(anchor):
                continue
            cases.append(CodedCase(anchor, cut, p, later_tier(cut_tier, p.tier)))
    return cases


@dataclass
class SplitRunner:
    """Session state of the split criterion (see the module docstring)."""

    manifest: SplitManifest
    tier: str
    graphs: dict[tuple[str, bool], SplitGraph] = field(default_factory=dict)
    studies: dict[str, SplitStudy | Exception] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def run(self):
        """This tier's :class:`~nnconform.split.manifest.RunSettings`."""
        return self.manifest.run(self.tier)

    def graph(self, key: str, model: torch.nn.Module, input_shape, *, trained: bool = True) -> SplitGraph:
        """The traced graph of ``model`` (once per key)."""
        k = (key, trained)
        if k not in self.graphs:
            self.graphs[k] = SplitGraph.trace(model, input_shape)
        return self.graphs[k]

    def study(self, session: Any, anchor_name: str) -> SplitStudy:
        """The anchor's study (model, dataset and study computed once; loading errors re-raised)."""
        if anchor_name not in self.studies:
            try:
                self.studies[anchor_name] = self._study(session, anchor_name)
            except Exception as exc:  # remembered so every case of the anchor reports the same cause
                self.studies[anchor_name] = exc
        value = self.studies[anchor_name]
        if isinstance(value, Exception):
            raise value
        return value

    def _study(self, session: Any, anchor_name: str) -> SplitStudy:
        anchor = session.anchor(anchor_name)
        model = session.model(anchor_name)
        dataset = session.dataset(anchor)
        run = self.run
        samples = run.samples_for(dataset.name)
        if samples and len(dataset) > samples:
            dataset = dataset.subset(range(samples))
        graph = self.graph(anchor_name, model, anchor.input_shape)
        plan: dict[str, list[OperatingPoint]] = {}
        for case in coded_cases(self.manifest, anchor_name, self.tier, graph):
            plan.setdefault(case.cut, []).append(case.point)
        documented = [c.name for c in graph.single_cuts]
        per_sample = 4 * sum(graph.cut(c).numel for c in documented)
        batch = max(1, min(run.batch_size, CAPTURE_BUDGET_BYTES // max(per_sample, 1)))
        resolutions = self.manifest.resolutions.get(anchor.dataset, (anchor.input_shape[-1],))
        cache = None
        if getattr(session.config, "cache_dir", None):
            from ..hashing import module_sha256
            from .cache import SplitResultCache

            stream = {"model": module_sha256(model), "dataset": dataset.fingerprint, "samples": len(dataset),
                      "preprocess": anchor.preprocess.to_dict(), "batch": batch, "threads": torch.get_num_threads(),
                      "determinism_checks": DETERMINISM_CHECKS}
            cache = SplitResultCache(Path(session.config.cache_dir), stream, len(dataset))
        return run_study(
            anchor_name, graph, dataset.batches(anchor.preprocess, batch), coded=plan, stats_cuts=documented,
            stats_samples=run.stats_samples, profiles=profile_cuts(graph),
            resolution_numel=resolution_scaling(graph, resolutions),
            dataset=f"{dataset.name}/{dataset.split}", smoke=dataset.smoke, cache=cache,
            determinism_checks=DETERMINISM_CHECKS,
        )
