"""The split criterion's cases and its once-per-run work.

Which (anchor, cut, operating point) cases run in a run tier is decided from the plan
(``anchors/split.toml``) and the committed cut catalogue, without tracing anything. :class:`SplitRuns`
is the run's state (behind one session fixture): the traced graph, the study and the latencies of
each anchor, computed on first use and reused by every case of the anchor.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .. import kit
from . import catalogue
from .cuts import SplitGraph
from .features import resolution_scaling
from .plan import SplitPlan, SplitPoint
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


def auto_cuts(spatial: tuple[str, ...] | list[str], count: int) -> tuple[str, ...]:
    """``count`` evenly spaced cuts of ``spatial`` (single cuts with >= 2-D tensors, in execution order; the
    first is skipped), for anchors without a cut table."""
    spatial = list(spatial)[1:]
    if len(spatial) <= count:
        return tuple(spatial)
    step = len(spatial) / count
    return tuple(spatial[int((i + 0.5) * step)] for i in range(count))


@dataclass(frozen=True)
class CodedCase:
    """One (anchor, cut, operating point) case and the run tier it runs from."""

    anchor: str
    cut: str
    point: SplitPoint
    run_tier: str

    @property
    def id(self) -> str:
        """``fmnist-resnet8-layer2-uq8-per-channel``."""
        return f"{self.anchor}-{self.cut}-{self.point.label}"


def coded_cuts(plan: SplitPlan, anchor: str, run_tier: str,
               entry: Callable[[str], catalogue.CatalogueEntry] = catalogue.entry) -> dict[str, str]:
    """Cut -> the run tier it is first coded in, for every run tier up to ``run_tier``.

    The plan's cut table names them; the full tier (every single cut) and anchors without a table take
    them from the committed catalogue (``entry``), so no model is traced.
    """
    out: dict[str, str] = {}
    for t in kit.RUN_TIERS[: kit.RUN_TIERS.index(kit.parse_run_tier(run_tier)) + 1]:
        names = plan.cuts_for(anchor, t)
        if names is None:
            e = entry(anchor)
            names = e.single_names if t == "full" else auto_cuts(e.spatial_names, 1 if t == "quick" else 4)
        for n in names:
            out.setdefault(n, t)
    return out


def coded_cases(plan: SplitPlan, anchor: str, run_tier: str,
                entry: Callable[[str], catalogue.CatalogueEntry] = catalogue.entry) -> list[CodedCase]:
    """Every coded case of an anchor up to a run tier."""
    cases = []
    for cut, cut_tier in coded_cuts(plan, anchor, run_tier, entry).items():
        for p in plan.points_for(run_tier):
            if plan.codes(anchor, p, run_tier):
                cases.append(CodedCase(anchor, cut, p, kit.later(cut_tier, None if p.proposal else p.run_tier)))
    return cases


def cut_scope(plan: SplitPlan, graph: SplitGraph, anchor: str, run_tier: str, which: str) -> list[str]:
    """The cuts a check covers: ``all`` cuts, every ``single`` cut, or the ``coded`` ones of the run tier."""
    if which == "all":
        return [c.name for c in graph.cuts]
    if which == "single":
        return [c.name for c in graph.single_cuts]
    return list(coded_cuts(plan, anchor, run_tier))


def median_seconds(fn: Callable[[], Any], rounds: int) -> float:
    """Median wall time of ``fn()`` over ``rounds`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_latencies(model: torch.nn.Module, graph: SplitGraph, study: SplitStudy, x: torch.Tensor,
                      rounds: int) -> dict[str, float]:
    """Per-image times (seconds) selection needs, measured here: the whole model, head and tail at every coded cut,
    and encode and decode of every successful (cut, point) pair, keyed as
    :func:`nnconform.split.checks.candidates` reads them."""
    out = {}
    with torch.inference_mode():
        out["model"] = median_seconds(lambda: model(x), rounds)
        for cut in dict.fromkeys(c for c, _ in study.coded):
            head, tail = graph.head(cut), graph.tail(cut)
            mid = head(x)
            sent = first_sample(mid)
            out[f"{cut}/head"] = median_seconds(lambda: head(x), rounds)
            out[f"{cut}/tail"] = median_seconds(lambda: tail(*(mid if isinstance(mid, tuple) else (mid,))), rounds)
            for (c, pid), r in study.coded.items():
                if c != cut or not r.ok:
                    continue
                codec = r.point.build()
                payloads = [codec.encode(t) for t in sent]
                out[f"{cut}/{pid}/encode"] = median_seconds(lambda: [codec.encode(t) for t in sent], rounds)
                out[f"{cut}/{pid}/decode"] = median_seconds(lambda: [codec.decode(p) for p in payloads], rounds)
    return out


def first_sample(mid: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The tensors a head hands over for the batch's first sample, one per crossing tensor (a multi-tensor cut is
    coded per tensor, as the study codes it)."""
    return (mid[0],) if isinstance(mid, torch.Tensor) else tuple(t[0] for t in mid)


@dataclass
class SplitRuns:
    """Session state of the split criterion (see the module docstring)."""

    plan: SplitPlan
    run_tier: str
    graphs: dict[tuple[str, bool], SplitGraph] = field(default_factory=dict)
    studies: dict[str, SplitStudy | Exception] = field(default_factory=dict)
    latencies: dict[str, dict[str, float] | Exception] = field(default_factory=dict)

    @property
    def run(self):
        """This run tier's :class:`~nnconform.split.plan.RunSettings`."""
        return self.plan.run(self.run_tier)

    def graph(self, key: str, model: torch.nn.Module, input_shape, *, trained: bool = True) -> SplitGraph:
        """The traced graph of ``model`` (once per key)."""
        k = (key, trained)
        if k not in self.graphs:
            from ..onnxgraph.anchor import OnnxAnchorModule

            if isinstance(model, OnnxAnchorModule):  # an ONNX anchor: its graph's node cuts (onnxgraph.splitgraph)
                from ..onnxgraph.splitgraph import OnnxSplitGraph

                self.graphs[k] = OnnxSplitGraph.from_module(model, input_shape)
            else:
                self.graphs[k] = SplitGraph.trace(model, input_shape)
        return self.graphs[k]

    def model(self, session: Any, anchor_name: str) -> tuple[torch.nn.Module, SplitGraph, bool]:
        """``(model, graph, trained)``: the anchor's verified weights when present, else the architecture with
        random weights (cuts, shapes, identity and ONNX need no trained weights). A weights file that fails its
        sha256 (``WeightsIntegrityError``) is raised, never replaced by random weights."""
        from ..anchors import WeightsUnavailable

        anchor = session.anchor(anchor_name)
        try:
            model, trained = session.model(anchor_name), True
        except WeightsUnavailable:
            torch.manual_seed(0)
            model, trained = anchor.build_architecture().eval(), False
        return model, self.graph(anchor_name, model, anchor.input_shape, trained=trained), trained

    def cut_scope(self, graph: SplitGraph, anchor_name: str, which: str) -> list[str]:
        """The cuts a check covers in this run tier (see :func:`cut_scope`)."""
        return cut_scope(self.plan, graph, anchor_name, self.run_tier, which)

    def study(self, session: Any, anchor_name: str) -> SplitStudy:
        """The anchor's study (model, dataset and study computed once; loading errors re-raised)."""
        return self._once(self.studies, anchor_name, lambda: self._study(session, anchor_name))

    def latency_table(self, session: Any, anchor_name: str) -> dict[str, float]:
        """Per-image latencies selection needs, measured once per anchor by the case that first asks (so selection
        runs on its own, serially or under xdist)."""

        def measure() -> dict[str, float]:
            study = self.study(session, anchor_name)
            anchor = session.anchor(anchor_name)
            model = session.model(anchor_name)
            dataset = session.dataset(anchor)
            x, _ = next(dataset.subset([0]).batches(anchor.preprocess, 1))
            return measure_latencies(model, study.graph, study, x, self.run.timing_rounds)

        return self._once(self.latencies, anchor_name, measure)

    def intermediate_inputs(self, session: Any, anchor_name: str) -> dict[str, Any]:
        """What :func:`nnconform.split.checks.intermediate_data_records` documents: from the study when the
        weights and data are there, else the structure from the architecture (``missing`` says why). A corrupt
        weights file (``WeightsIntegrityError``) is raised."""
        from ..anchors import WeightsUnavailable
        from ..data import DatasetUnavailable

        anchor = session.anchor(anchor_name)
        try:
            study, missing = self.study(session, anchor_name), None
        except (WeightsUnavailable, DatasetUnavailable) as exc:
            study, missing = None, str(exc)
        if study is not None:
            graph = study.graph
            profiles, scaling, stats = study.profiles, study.resolution_numel, study.stats
        else:
            _, graph, _ = self.model(session, anchor_name)
            resolutions = self.plan.resolutions.get(anchor.dataset, (anchor.input_shape[-1],))
            profiles, scaling, stats = graph.profiles(), resolution_scaling(graph, resolutions), {}
        total_params, total_macs = graph.totals()  # an ONNX graph counts itself: torch cannot see inside onnxruntime
        return {"graph": graph, "profiles": profiles, "scaling": scaling, "stats": stats, "study": study,
                "missing": missing, "total_macs": total_macs, "total_params": total_params}

    @staticmethod
    def _once(store: dict, key: str, compute: Callable[[], Any]):
        if key not in store:
            try:
                store[key] = compute()
            except Exception as exc:  # remembered so every case of the anchor reports the same cause
                store[key] = exc
        value = store[key]
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
        plan: dict[str, list[SplitPoint]] = {}
        for case in coded_cases(self.plan, anchor_name, self.run_tier):
            plan.setdefault(case.cut, []).append(case.point)
        documented = [c.name for c in graph.single_cuts]
        per_sample = 4 * sum(graph.cut(c).numel for c in documented)
        batch = max(1, min(run.batch_size, CAPTURE_BUDGET_BYTES // max(per_sample, 1)))
        resolutions = self.plan.resolutions.get(anchor.dataset, (anchor.input_shape[-1],))
        cache = None
        device = getattr(session.config, "device", "cpu")  # the CPU adds nothing to the key (keys unchanged)
        if getattr(session.config, "cache_dir", None):
            from ..engine.device import device_key_part
            from ..hashing import module_sha256
            from .cache import SplitResultCache

            stream = {"model": module_sha256(model), "dataset": dataset.fingerprint, "samples": len(dataset),
                      "preprocess": anchor.preprocess.to_dict(), "batch": batch, "threads": torch.get_num_threads(),
                      "determinism_checks": DETERMINISM_CHECKS, **device_key_part(device)}
            cache = SplitResultCache(Path(session.config.cache_dir), stream, len(dataset))
        return run_study(
            anchor_name, graph, dataset.batches(anchor.preprocess, batch), coded=plan, stats_cuts=documented,
            stats_samples=run.stats_samples, profiles=graph.profiles(),
            resolution_numel=resolution_scaling(graph, resolutions),
            dataset=f"{dataset.name}/{dataset.split}", smoke=dataset.smoke, cache=cache,
            determinism_checks=DETERMINISM_CHECKS,
            task=getattr(dataset, "task", None) or anchor.task,  # a speech dataset carries its task (vocabulary)
            device=device,
        )


def input_numel(anchor) -> int:
    """Elements of one input image (its uint8 bytes, what the server-only bound sends)."""
    return math.prod(anchor.input_shape)
