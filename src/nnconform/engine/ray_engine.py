"""Run a session's jobs on Ray: submitted ahead of the test bodies, waited for case by case.

``RayEngine.start(address)`` connects (``local``: a fresh instance on this machine with
``ray.init(num_cpus=...)``; ``auto`` or ``ray://host:port``/``host:port``: an existing cluster),
``submit(jobs)`` sends every job with its resource needs, ``wait_for(nodeid)`` blocks until the jobs
a test case reads are done (drawing ``jobs done/total, ETA`` on the terminal meanwhile). A job that
raises is recorded in ``failures`` and never raised: the test body then computes the case itself, as
it does without Ray, and records what goes wrong there. Ray is imported here only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..progress import Progress
from .jobs import Job, run_job


def _remote_run(job: Job, config, threads: int) -> dict[str, Any]:
    """The task body a Ray worker runs (module-level, so workers import it by name)."""
    return run_job(job, config, threads)


def _reachable(address: str, timeout: float = 10.0) -> None:
    """For a ``host:port`` (or ``ray://host:port``) address, a ``ConnectionError`` naming it when nothing answers
    there within ``timeout`` s (``ray.init`` would retry for minutes). ``auto`` is Ray's to resolve."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {hostport} ({exc.strerror or exc}); start the cluster with "
                              f"`ray start --head` there, or use --nnc-ray local") from None


@dataclass
class JobFailure:
    """A job that raised (or whose worker died): its id and the error's first line."""

    job: str
    error: str


@dataclass
class RayEngine:
    """The run's connection to Ray and the state of its jobs (see the module docstring)."""

    address: str
    config: Any  # the run's RunConfig (every worker builds its session from it)
    threads: int = 1
    jobs: dict[str, Job] = field(default_factory=dict)
    refs: dict[str, Any] = field(default_factory=dict)  # job id -> ObjectRef, until collected
    results: dict[str, dict] = field(default_factory=dict)
    failures: list[JobFailure] = field(default_factory=list)
    by_node: dict[str, list[str]] = field(default_factory=dict)
    started_here: bool = False
    progress: Progress | None = None
    _submitted_at: float = 0.0

    @classmethod
    def start(cls, address: str, config, *, num_cpus: int | None = None, threads: int = 1) -> "RayEngine":
        """Connect to Ray: ``local`` starts an instance with ``num_cpus`` (default: this machine's CPUs);
        anything else is passed to ``ray.init(address=...)`` (``auto``: the cluster this node belongs to)."""
        import ray

        if ray.is_initialized():
            started = False
        elif address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            started = True
        else:
            _reachable(address)
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            started = True
        return cls(address, config, threads=threads, started_here=started)

    def submit(self, jobs: list[Job]) -> None:
        """Send every job to the cluster with its resource needs (CPUs, GPUs), in order."""
        import ray

        remote = ray.remote(_remote_run)
        for job in jobs:
            self.jobs[job.id] = job
            self.refs[job.id] = remote.options(num_cpus=job.cpus, num_gpus=job.gpus, max_retries=0,
                                               name=job.id[:100]).remote(job, self.config, self.threads)
            for nodeid in job.nodeids:
                self.by_node.setdefault(nodeid, []).append(job.id)
        self._submitted_at = time.monotonic()
        self.progress = Progress("ray jobs", total=len(self.jobs))

    @property
    def done(self) -> int:
        """Jobs finished (succeeded or failed)."""
        return len(self.results) + len(self.failures)

    def _collect(self, ref_ids: list[str], timeout: float | None) -> None:
        """Wait (at most ``timeout`` s) for any of the pending jobs, collect those done, redraw the progress."""
        import ray

        pending = {self.refs[j]: j for j in ref_ids if j in self.refs}
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout, fetch_local=True)
        for ref in ready:
            job_id = pending[ref]
            del self.refs[job_id]
            try:
                self.results[job_id] = ray.get(ref)
            except Exception as exc:  # the job's own error (RayTaskError wraps it) or a lost worker
                cause = getattr(exc, "cause", None) or exc
                line = str(cause).strip().splitlines()
                self.failures.append(JobFailure(job_id, f"{type(cause).__name__}: {line[-1] if line else ''}"))
        if ready and self.progress is not None:
            elapsed = time.monotonic() - self._submitted_at
            left = len(self.jobs) - self.done
            eta = elapsed / self.done * left if self.done else 0.0
            self.progress.update(len(ready), note=f"ETA {eta:.0f} s" if left else "all done")

    def wait_for(self, nodeid: str) -> None:
        """Block until every job the case ``nodeid`` reads has finished (collecting the others that finish
        meanwhile, for the progress line). Never raises for a job's failure."""
        mine = [j for j in self.by_node.get(nodeid, ()) if j in self.refs]
        while mine:
            self._collect(list(self.refs), timeout=0.5)
            mine = [j for j in mine if j in self.refs]

    def wait_all(self) -> None:
        """Block until every job has finished."""
        while self.refs:
            self._collect(list(self.refs), timeout=0.5)

    def summary(self) -> str:
        """One line: jobs done, failed, and their total worker time."""
        busy = sum(r.get("seconds", 0.0) for r in self.results.values())
        return (f"ray ({self.address}): {len(self.results)}/{len(self.jobs)} jobs done, {len(self.failures)} failed "
                f"(their cases computed in the test process), {busy:.0f} s of worker time")

    def shutdown(self) -> None:
        """Cancel what is left, close the progress line, and stop the instance this engine started."""
        import ray

        for ref in self.refs.values():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing left to cancel
                pass
        if self.progress is not None:
            self.progress.close()
        if self.started_here and ray.is_initialized():
            ray.shutdown()
