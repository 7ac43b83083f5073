"""ImageNet at scale: peak memory and decode throughput of the streamed ImageNet path, in one run.

Generates an ImageNet-shaped imagefolder in a temporary folder (``val/<wnid>/ILSVRC2012_val_*.JPEG``,
about 500x375, made from the 20 foolbox sample images, each shifted and resized differently so no
two files are the same; deleted at the end, never committed), then prints:

* peak RSS (the benchmark process plus its DataLoader workers, sampled every 20 ms, and the main
  process's own ``ru_maxrss``) while every image is decoded into the decoded cache and streamed once
  through the evaluator with a cheap model (target < 3 GiB);
* decode throughput of the cache build against a bare PIL + DataLoader loop with the same workers
  doing the same decode, resize and crop (target ratio <= 1.10);
* time split: read / decode / resize+crop (worker seconds), normalise, model, cache read (seconds).

    .venv/bin/python benchmarks/bench_imagenet_stream.py [--images 50000] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from nnconform import decoded_cache as dc
from nnconform.data import Preprocess, load_imagenet_samples
from nnconform.evaluate import Evaluator
from nnconform.imagenet import decode_workers, imagenet_classes, load_imagenet_val

PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=224,
                        interpolation="bilinear")
GIB = 1 << 30


def _make_one(args) -> None:
    i, src, target = args
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        dx, dy = (i * 7) % 40, (i * 13) % 40  # a different window of the sample for every file
        size = (500, 375) if i % 3 else (375, 500)
        im.crop((dx, dy, dx + 472, dy + 472)).resize(size, Image.BILINEAR).save(target, quality=90)


def generate(root: Path, n: int, workers: int) -> Path:
    """``n`` JPEGs in ``root/val/<wnid>/``, the labels of the samples they come from."""
    from multiprocessing import Pool

    smoke = load_imagenet_samples()
    files = sorted(Path(smoke.source).glob("imagenet_*_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))
    wnids = imagenet_classes().wnids
    jobs = []
    for i in range(n):
        src = files[i % len(files)]
        folder = root / "val" / wnids[int(src.stem.split("_")[2])]
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((i, str(src), str(folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG")))
    with Pool(max(1, workers)) as pool:
        pool.map(_make_one, jobs, chunksize=64)
    return root


class PeakRSS:
    """Samples the memory of this process and its children (the DataLoader workers) in a thread: the sum
    of RSS (pages shared by the forked workers counted once per process) and of PSS (shared pages split
    between the processes that map them: the memory the tree really holds)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak, self.peak_pss, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = pss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    total, pss = total + info.rss, pss + info.pss
                except psutil.Error:
                    pass
            self.peak, self.peak_pss = max(self.peak, total), max(self.peak_pss, pss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _BareDecode(torch.utils.data.Dataset):
    def __init__(self, paths) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        return PREPROCESS.geometry(x.unsqueeze(0))[0]


def bare_loop(paths, workers: int) -> float:
    """Seconds for the loop anyone would write: PIL decode, the same resize/crop, batches of 250, workers."""
    t0 = time.perf_counter()
    for _ in torch.utils.data.DataLoader(_BareDecode(paths), batch_size=250, num_workers=workers):
        pass
    return time.perf_counter() - t0


class TimedModel(torch.nn.Module):
    """A cheap classifier (pooling + one linear layer) that records the seconds spent in forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 1000))
        self.seconds = [0.0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.net(x)
        self.seconds[0] += time.perf_counter() - t0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=decode_workers())
    parser.add_argument("--repeats", type=int, default=1,
                        help="more throughput pairs (bare, cache build into a fresh folder), alternating which runs "
                             "first; the medians are compared (a shared machine's load moves single runs)")
    parser.add_argument("--keep", default=None, help="generate into this folder and keep it (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nnc-bench-imagenet-"))
    try:
        t0 = time.perf_counter()
        root = generate(tmp / "imagenet", args.images, args.workers)
        files = sorted(str(p) for p in (root / "val").rglob("*.JPEG"))
        size = sum(os.path.getsize(p) for p in files)
        print(f"generated {len(files)} JPEGs ({size / len(files) / 1024:.0f} KiB each) in "
              f"{time.perf_counter() - t0:.1f} s; workers {args.workers}, cores {os.cpu_count()}")

        PREPROCESS.normalize(PREPROCESS.geometry(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)))  # imports, once
        with PeakRSS() as bare_rss:  # sampled too, so both sides pay the sampler's share of the CPUs
            bare_s = bare_loop(files, args.workers)
        cache_dir = tmp / "cache"
        model = TimedModel()
        with PeakRSS() as rss:
            t1 = time.perf_counter()
            ds = load_imagenet_val(str(root), cache_dir=cache_dir, workers=args.workers)
            index_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            result = Evaluator(cache_dir, batch_size=250).evaluate(model, ds, PREPROCESS)
            eval_s = time.perf_counter() - t2
        cache = dc.decoded_cache(ds.index, PREPROCESS, cache_dir, args.workers)
        built = cache.built
        stream_s = eval_s - built.wall_s - built.hash_s
        read_s = cache.read_s
        normalise_s = 0.0  # timed on its own: one more pass over the cache, normalising each batch
        for start in range(0, len(ds), 250):
            x = cache.read(range(start, min(len(ds), start + 250)))
            t = time.perf_counter()
            PREPROCESS.normalize(x)
            normalise_s += time.perf_counter() - t
        other_s = stream_s - read_s - normalise_s - model.seconds[0]
        assert result.logits.shape == (len(files), 1000)

        dc.forget_open_caches()  # a later run: verify the entry, then stream only
        model2 = TimedModel()
        t3 = time.perf_counter()
        Evaluator(None).evaluate(model2, ds, PREPROCESS)
        later_s = time.perf_counter() - t3

        ours = [built.wall_s + built.hash_s]
        bares = [bare_s]
        for r in range(1, args.repeats):
            def build_once(r=r):
                dc.forget_open_caches()
                fresh = dc.decoded_cache(ds.index, PREPROCESS, tmp / f"cache-{r}", args.workers).built
                ours.append(fresh.wall_s + fresh.hash_s)
            first, second = (build_once, lambda: bares.append(bare_loop(files, args.workers)))[::1 if r % 2 else -1]
            first()
            second()
        bare_s = statistics.median(bares)
        ratio = statistics.median(ours) / bare_s
        if args.repeats > 1:
            print(f"throughput pairs: cache build {', '.join(f'{v:.1f}' for v in ours)} s; bare "
                  f"{', '.join(f'{v:.1f}' for v in bares)} s (medians compared)")
        print(f"peak memory while decoding into the cache and streaming once (main + workers, sampled): PSS "
              f"{rss.peak_pss / GIB:.2f} GiB, RSS summed {rss.peak / GIB:.2f} GiB; main ru_maxrss "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20):.2f} GiB (target < 3 GiB); the bare loop: "
              f"PSS {bare_rss.peak_pss / GIB:.2f} GiB")
        print(f"decode into the cache (workers hash their rows): {statistics.median(ours):.1f} s = "
              f"{len(files) / statistics.median(ours):.0f} images/s (first build: {built.wall_s:.1f} s + fsync "
              f"{built.hash_s:.1f} s); bare PIL+DataLoader: {bare_s:.1f} s = "
              f"{len(files) / bare_s:.0f} images/s; ratio {ratio:.3f} (target <= 1.10)")
        print(f"source index (sha256 of every file, once per folder): {index_s:.1f} s")
        print(f"worker seconds: read {built.read_s:.1f}, decode {built.decode_s:.1f}, resize+crop {built.resize_s:.1f}")
        print(f"stream once through the evaluator: {stream_s:.1f} s (cache read {read_s:.1f}, normalise "
              f"{normalise_s:.1f}, model {model.seconds[0]:.1f}, the rest {other_s:.1f}: model fingerprint, "
              f"worker start/stop, cache entries)")
        print(f"a later evaluation (verify {os.path.getsize(cache.path) / GIB:.2f} GiB cache + stream): {later_s:.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
