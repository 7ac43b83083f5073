"""Estimate what ``--nnc-ray`` with 4/16/64 workers would take for a run, from the run's own case durations.

    python benchmarks/ray_scaling.py RUN/results.json [--workers 4 16 64]

The cases whose heavy work the Ray engine turns into jobs (:mod:`nnconform.engine.jobs`: compression cases,
update accuracy cases, lineage reference evaluations, split studies) are grouped into their jobs; a job's
duration is the sum of its cases' durations in the measured run (the first case computes, the others read
the cache). Every other case stays in the test process (the serial part S). For P workers the jobs are
list-scheduled in run order (each to the first free worker) and the estimate is printed between two bounds:
``max(makespan, S)`` (the test process runs its cheap cases while the jobs run) and ``makespan + S``. The
critical path is the longest job: no number of workers makes the run shorter than it. Worker start-up (Ray,
torch import, loading each anchor once per worker) is not in the measured durations and comes on top;
``--job-factor F`` multiplies every job's duration by F (what a job costs in a worker against in-process, as
measured by comparing a ``--nnc-ray`` run's worker time with the serial run's job work).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from pathlib import Path

#: test function -> job kind (the engine's mapping, read from node ids instead of collected items)
JOB_KINDS = {"test_compressed_artifact": "compression", "test_compressed_accuracy": "compression",
             "test_update_accuracy": "updates-accuracy", "test_lineage_accuracy": "updates-reference",
             "test_split_intermediate_data": "split-study", "test_split_selection": "split-study",
             "test_split_kpi": "split-study", "test_split_codec_accuracy": "split-study",
             "test_split_bd_rate": "split-study"}


def job_of(nodeid: str, anchors: list[str]) -> str | None:
    """The job a case's duration belongs to (``kind:key``), or None for a case the test process runs itself."""
    name, _, param = nodeid.split("::")[-1].partition("[")
    kind = JOB_KINDS.get(name)
    if kind is None or not param:
        return None
    case = param.rstrip("]")
    if kind == "split-study":  # one study per anchor: the case id starts with the anchor's name
        owners = [a for a in anchors if case == a or case.startswith(a + "-")]
        case = max(owners, key=len) if owners else case
    return f"{kind}:{case}"


def makespan(durations: list[float], workers: int) -> float:
    """Finish time of list scheduling (jobs in order, each to the worker free first)."""
    free = [0.0] * workers
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def estimate(results: dict, workers: list[int], job_factor: float = 1.0) -> str:
    """The estimate as text (see the module docstring)."""
    anchors = sorted(results.get("anchors") or {})
    jobs: dict[str, float] = {}
    serial = 0.0
    for case in results["cases"]:
        seconds = float(case.get("duration_s") or 0.0)
        job = job_of(case["nodeid"], anchors)
        if job is None:
            serial += seconds
        else:
            jobs[job] = jobs.get(job, 0.0) + seconds * job_factor
    work = sum(jobs.values())
    measured = sum(float(c.get("duration_s") or 0.0) for c in results["cases"])  # the serial run: the speed-ups' base
    longest = max(jobs.items(), key=lambda kv: kv[1]) if jobs else ("-", 0.0)
    cfg = results.get("config", {})
    lines = [f"run {results.get('run_id')}: tier {cfg.get('tier')}, anchors {cfg.get('anchors')}, "
             f"{len(results['cases'])} cases, {measured:.0f} s of case time",
             f"jobs: {len(jobs)}, total work W = {work:.0f} s; critical path (longest job) = {longest[1]:.0f} s "
             f"({longest[0]}); serial part S (cases left in the test process) = {serial:.0f} s"
             + (f"; job durations x{job_factor:g}" if job_factor != 1.0 else ""),
             f"{'workers':>8} {'makespan':>9} {'estimate':>17} {'speed-up':>15} {'bound W/P':>10}"]
    for p in workers:
        m = makespan(list(jobs.values()), p)
        low, high = max(m, serial), m + serial
        lines.append(f"{p:>8} {m:>8.0f}s {low:>7.0f}s-{high:>6.0f}s {measured / high:>6.1f}x-"
                     f"{measured / low:>5.1f}x {work / p:>9.0f}s")
    lines.append(f"top jobs: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(jobs.items(), key=lambda kv: -kv[1])[:5]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the estimate for a results.json (or its run folder)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a run's results.json or its folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--job-factor", type=float, default=1.0,
                        help="multiply job durations by this (a job's cost in a worker against in-process)")
    args = parser.parse_args(argv)
    path = Path(args.results)
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{path}: cannot read a results.json ({exc})", file=sys.stderr)
        return 2
    print(estimate(results, args.workers, args.job_factor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
