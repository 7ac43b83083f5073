"""Engine overhead: nnconform's evaluation vs a bare ``torch.inference_mode()`` loop, same run.

Prints, per anchor, the median wall time of each over several repeats and their ratio (target
<= 1.10), plus the process's peak resident memory. The engine runs with its cache disabled, so
both sides do the same forward passes; the cache only makes the engine faster.

    .venv/bin/python benchmarks/bench_engine.py [--repeats 5] [--anchors fmnist-resnet8,efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from nnconform.anchors import get_anchor, select_anchors
from nnconform.data import load_dataset
from nnconform.evaluate import DEFAULT_BATCH_SIZE, Evaluator


def bare_loop(model, dataset, preprocess, batch_size):
    """The baseline: the loop anyone would write, with preprocessing done the same way."""
    outs = []
    with torch.inference_mode():
        for x, _ in dataset.batches(preprocess, batch_size):
            outs.append(model(x))
    return torch.cat(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--anchors", default="default")
    parser.add_argument("--limit", type=int, default=None, help="samples per dataset (default: all)")
    args = parser.parse_args()
    print(f"{'anchor':24} {'family':18} {'samples':>7} {'bare s':>8} {'engine s':>9} {'ratio':>6}")
    for name in select_anchors(args.anchors):
        anchor = get_anchor(name)
        try:
            model = anchor.build()
            ds = load_dataset(anchor.dataset, "test")
        except Exception:
            ds = load_dataset("imagenet-samples") if anchor.dataset == "imagenet-1k" else None
            if ds is None:
                continue
            model = anchor.build()
        if args.limit:
            ds = ds.subset(range(min(args.limit, len(ds))))
        engine = Evaluator(cache_dir=None)
        bare_t, eng_t = [], []
        bare_loop(model, ds, anchor.preprocess, DEFAULT_BATCH_SIZE)  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            t = time.perf_counter()
            ref = bare_loop(model, ds, anchor.preprocess, DEFAULT_BATCH_SIZE)
            bare_t.append(time.perf_counter() - t)
            engine._memory.clear()
            t = time.perf_counter()
            res = engine.evaluate(model, ds, anchor.preprocess)
            eng_t.append(time.perf_counter() - t)
        assert torch.equal(ref, res.logits), "engine and bare loop disagree"
        b, e = statistics.median(bare_t), statistics.median(eng_t)
        print(f"{name:24} {anchor.family:18} {len(ds):7d} {b:8.3f} {e:9.3f} {e / b:6.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
