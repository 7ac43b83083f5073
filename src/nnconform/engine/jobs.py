"""The heavy work of selected cases as jobs: what a job is, which cases make one, and running it.

A :class:`Job` names one engine call (a compression case, an update case, a checkpoint's
reference evaluation, an anchor's split study) and the test cases that read its result. A worker
runs it with :func:`run_job`: the SAME engine function a test body calls, on a session built from
the run's :class:`~nnconform.session.RunConfig`, so the results land in the run's content-addressed
caches (the ``--nnc-cache-dir`` every worker reaches) and the test bodies later find them there.
Nothing here imports Ray: jobs are plain data, and :func:`run_job` runs as well in-process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

#: Job kinds and the engine call each runs.
KINDS = ("compression", "updates-accuracy", "updates-reference", "split-study")


@dataclass(frozen=True)
class Job:
    """One engine call for a worker: ``kind`` (one of :data:`KINDS`), ``key`` (unique per kind), the call's
    arguments (plain picklable objects: plan points, lineage pairs, names) and its resource needs."""

    kind: str
    key: str
    args: tuple = ()
    anchor: str = ""
    cpus: float = 1
    gpus: float = 0
    #: node ids of the test cases that read this job's result (they wait for it before their body runs)
    nodeids: tuple[str, ...] = field(default=(), compare=False)

    @property
    def id(self) -> str:
        """``kind:key``, unique within a run."""
        return f"{self.kind}:{self.key}"


#: Split cases over a whole anchor that read its study (the first of them computes it in a serial run).
SPLIT_STUDY_CASES = ("test_split_intermediate_data", "test_split_selection", "test_split_kpi")


def _criterion(item) -> str | None:
    marker = item.get_closest_marker("criterion")
    return marker.args[0] if marker else None


def _own(value) -> bool:
    """A reference point (a proposal's point runs its code in the sandbox of the test body's own process)."""
    return not getattr(value, "proposal", "")


def job_of_item(item, *, gpus: float = 0) -> tuple[str, str, tuple, str] | None:
    """``(kind, key, args, anchor)`` of the job whose result a collected test case reads, or None (cheap cases,
    timing cases, proposals' points, cases of other criteria)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    params = callspec.params
    name = getattr(item, "originalname", item.name)
    criterion = _criterion(item)
    anchor = params.get("anchor_name") or ""
    if criterion == "compression" and "point" in params and _own(params["point"]) \
            and name in ("test_compressed_artifact", "test_compressed_accuracy"):
        point = params["point"]
        return "compression", point.id, (point,), point.anchor
    if criterion == "updates" and "pair" in params and "point" in params and _own(params["point"]):
        pair, point = params["pair"], params["point"]
        if name == "test_update_accuracy":
            return "updates-accuracy", f"{pair.id}/{point.label}", (pair, point), pair.anchor
    if criterion == "updates" and name == "test_lineage_accuracy" and "checkpoint" in params:
        return "updates-reference", f"{anchor}/{params['checkpoint']}", (anchor, params["checkpoint"]), anchor
    if criterion == "split" and name in SPLIT_STUDY_CASES and anchor:
        return "split-study", anchor, (anchor,), anchor
    if criterion == "split" and ("split_case" in params or "split_cut" in params):
        case = params.get("split_case")
        if case is not None and not _own(getattr(case, "point", case)):
            return None
        return "split-study", anchor, (anchor,), anchor
    return None


def jobs_for_items(items: Iterable, *, gpus: float = 0) -> list[Job]:
    """The jobs of the selected cases, one per distinct engine call, in the order their first case runs (so the
    early test bodies find their results first); ``gpus`` per job when the run's device is a GPU."""
    found: dict[str, Job] = {}
    for item in items:
        spec = job_of_item(item)
        if spec is None:
            continue
        kind, key, args, anchor = spec
        job_id = f"{kind}:{key}"
        if job_id in found:
            old = found[job_id]
            found[job_id] = Job(old.kind, old.key, old.args, old.anchor, old.cpus, old.gpus, old.nodeids + (item.nodeid,))
        else:
            found[job_id] = Job(kind, key, args, anchor, 1, gpus, (item.nodeid,))
    return list(found.values())


# -- in the worker ------------------------------------------------------------------------------

#: Per worker process: the session and criterion states of a run config (anchors and data loaded once).
_STATE: dict[Any, dict[str, Any]] = {}


def _state(config) -> dict[str, Any]:
    if config not in _STATE:
        from ..session import ConformanceSession

        _STATE.clear()  # one run at a time per worker: a new config means a new run
        _STATE[config] = {"session": ConformanceSession(config)}
    return _STATE[config]


def _setup_torch(config, threads: int) -> None:
    """What the plugin's ``activate`` sets in the test process: seed, deterministic algorithms, threads, and on
    CUDA the deterministic settings, so a job computes the bits a test body would."""
    import torch

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(max(1, int(threads)))
    if config.device != "cpu":
        from .device import cuda_deterministic

        cuda_deterministic()


def run_job(job: Job, config, threads: int = 1) -> dict[str, Any]:
    """Run ``job`` on a session of ``config`` (in a worker, or in-process); return a summary as data (kind, key,
    seconds, and what the engine call said). Raises what the engine call raises: the caller records it."""
    _setup_torch(config, threads)
    state = _state(config)
    session = state["session"]
    start = time.perf_counter()
    summary: dict[str, Any] = {"kind": job.kind, "key": job.key}
    if job.kind == "compression":
        from ..compress.plan import load_plan
        from ..compress.runs import CompressionRuns

        runs = state.setdefault("compression", CompressionRuns(session, load_plan()))
        (point,) = job.args
        out = runs.outcome(point)
        summary["failure"] = out.failure.message if out.failure else None
        summary["skip"] = out.skip_reason
    elif job.kind == "updates-accuracy":
        from ..updates.plan import load_plan
        from ..updates.runs import UpdateRuns

        runs = state.setdefault("updates", UpdateRuns(session, load_plan()))
        result = runs.accuracy(*job.args)  # encode, decode, evaluate: the evaluation lands in the cache
        summary["failure"] = result.message or None
        summary["skip"] = result.skip or None
    elif job.kind == "updates-reference":
        anchor, checkpoint = job.args
        summary["metric"] = session.reference(anchor, checkpoint).metric
    elif job.kind == "split-study":
        from ..split.plan import load_plan
        from ..split.runs import SplitRuns, torch_threads

        runs = state.setdefault("split", SplitRuns(load_plan(), config.tier))
        (anchor,) = job.args
        with torch_threads(1):  # the split cases run on one thread (conformance/test_split.py), and the key says so
            study = runs.study(session, anchor)
        summary["results"] = len(study.coded)
    else:
        raise ValueError(f"job {job.id!r}: unknown kind {job.kind!r} (known: {', '.join(KINDS)})")
    summary["seconds"] = time.perf_counter() - start
    return summary
