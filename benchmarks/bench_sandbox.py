"""Sandbox overhead per case: a proposal's encode and decode in sandboxed processes vs in-process.

The case is the example compressor's (``fixtures/proposals/good-compressor``, 8-bit per-channel
integers) on the LeNet-5 anchor's state dict: encode the state into an artifact, decode the artifact
into a state dict. In-process, both run in this process (the path before issue 11); sandboxed, each
is a fresh process (``nnconform.sandbox.run_sandboxed``), under bubblewrap and under the plain
subprocess fallback. Also timed: an empty call (the fixed cost of a process that imports nothing).

    .venv/bin/python benchmarks/bench_sandbox.py [--repeat 3]

Prints seconds per case for each path, the overhead and the ratio to in-process (target: overhead
at most 1.5 s per case). Wall-clock figures depend on how busy the machine is: the load average is
printed beside them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "fixtures" / "proposals" / "good-compressor"

# A stand-in adapter of the kind the criteria will use: data in (a state dict, artifact bytes), data out.
ADAPTER = '''
import torch
from nnconform import kit
from nnconform.compress import Artifact
from nnconform.zoo.models import LeNet5
import proposal  # registers fixture-int-per-channel

FILE = proposal.FILE

def encode(inputs, params):
    model = LeNet5().eval()
    model.load_state_dict(inputs["state"])
    compressed = kit.make("compressor", "fixture-int-per-channel", params).compress(model, None)
    return {"artifact": compressed.artifact.file(FILE)}

def decode(inputs, params):
    template = LeNet5().eval()
    with torch.no_grad():
        for p in template.parameters():
            p.fill_(float("nan"))
    artifact = Artifact({FILE: inputs["artifact"]}, "fixture-int-per-channel")
    model = kit.make("compressor", "fixture-int-per-channel", params).decode(artifact, template, None)
    return {"state": {k: v for k, v in model.state_dict().items()}}

'''
#: A call that imports nothing: the fixed cost of a sandboxed process (bwrap, interpreter, worker).
EMPTY = "def empty(inputs, params):\n    return {}\n"


def _cpu() -> float:
    # this process and every child it waited for: CPU time is far less sensitive to a busy machine than wall time
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time(fn, repeat: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process and its children) of ``fn()``."""
    fn()  # warm-up: file caches, first imports
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), _cpu()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 when the bubblewrap overhead exceeds the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target-s", type=float, default=1.5)
    args = parser.parse_args(argv)

    import torch

    from nnconform.anchors import get_anchor
    from nnconform.sandbox import bwrap, run_sandboxed

    state = get_anchor("fmnist-lenet5").state_dict()
    params = {"bits": 8}
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        folder = work / "proposal"
        folder.mkdir()
        shutil.copyfile(EXAMPLE / "proposal.py", folder / "proposal.py")
        (folder / "bench_entry.py").write_text(ADAPTER)
        (folder / "empty.py").write_text(EMPTY)
        sys.path.insert(0, str(folder))
        import bench_entry  # the same code, in this process

        def in_process():
            artifact = bench_entry.encode({"state": state}, params)["artifact"]
            decoded = bench_entry.decode({"artifact": artifact}, params)["state"]
            assert decoded.keys() == state.keys() and not any(v.isnan().any() for v in decoded.values())

        def sandboxed():
            artifact = run_sandboxed("bench_entry.py:encode", inputs={"state": state}, params=params,
                                     proposal_dir=folder, proposal="bench", call="encode").outputs["artifact"]
            decoded = run_sandboxed("bench_entry.py:decode", inputs={"artifact": artifact}, params=params,
                                    proposal_dir=folder, proposal="bench", call="decode").outputs["state"]
            assert decoded.keys() == state.keys() and not any(v.isnan().any() for v in decoded.values())

        def empty():
            run_sandboxed("empty.py:empty", proposal_dir=folder, proposal="bench", call="empty")

        rows = [("in-process", _time(in_process, args.repeat))]
        modes = []
        if bwrap.probe()[0]:
            modes.append("bubblewrap")
        modes.append("subprocess")
        for mode in modes:
            os.environ[bwrap.MODE_ENV] = mode
            bwrap.probe.cache_clear()
            rows.append((f"sandboxed ({mode})", _time(sandboxed, args.repeat)))
        load = os.getloadavg()[0]
        base, base_cpu = rows[0][1]
        print(f"sandbox overhead per case (encode + decode of fmnist-lenet5 with the good-compressor example, 8 bits; "
              f"median of {args.repeat}; load average {load:.1f} on {os.cpu_count()} cores)")
        print(f"{'path':<26} {'s/case':>8} {'overhead s':>11} {'ratio':>7} {'CPU s/case':>11} {'CPU overhead':>13}")
        for name, (seconds, cpu) in rows:
            print(f"{name:<26} {seconds:8.3f} {seconds - base:11.3f} {seconds / base:7.1f} {cpu:11.3f} "
                  f"{cpu - base_cpu:13.3f}")
        for mode in modes:
            os.environ[bwrap.MODE_ENV] = mode
            bwrap.probe.cache_clear()
            seconds, cpu = _time(empty, args.repeat)
            print(f"{'empty call (' + mode + ')':<26} {seconds:8.3f} {'':>11} {'':>7} {cpu:11.3f}")
        worst = max(seconds - base for name, (seconds, _) in rows[1:])
        verdict = "within" if worst <= args.target_s else "over"
        print(f"largest overhead {worst:.3f} s per case: {verdict} the {args.target_s} s target")
        return 0 if worst <= args.target_s else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
