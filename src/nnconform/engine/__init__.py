"""Where and how the run computes: the device (``--nnc-device``) and the Ray engine (``--nnc-ray``).

``device``: parse and resolve the device, its part of cache keys, CUDA's deterministic settings.
``jobs``: the selected cases' heavy work as plain-data jobs, and :func:`~nnconform.engine.jobs.run_job`.
``ray_engine``: :class:`~nnconform.engine.ray_engine.RayEngine` submits them ahead of the test bodies.
Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from .device import DEVICE_CHOICES, DeviceUnavailable, device_key_part, parse_device, resolve_device
from .jobs import KINDS, Job, job_of_item, jobs_for_items, run_job


def start_ray(run_config, items, *, threads: int = 1):
    """Start (or connect to) Ray for ``--nnc-ray`` and submit the jobs of the selected ``items``; returns the
    :class:`~nnconform.engine.ray_engine.RayEngine`. One GPU per job when the run's device is a GPU."""
    from .ray_engine import RayEngine

    gpus = 1 if run_config.device.startswith("cuda") else 0
    engine = RayEngine.start(run_config.ray, run_config, threads=threads)
    engine.submit(jobs_for_items(items, gpus=gpus))
    return engine


__all__ = ["DEVICE_CHOICES", "DeviceUnavailable", "device_key_part", "parse_device", "resolve_device", "KINDS", "Job",
           "job_of_item", "jobs_for_items", "run_job", "start_ray"]
