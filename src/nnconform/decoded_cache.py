"""The decoded-image cache: a source decoded once, in parallel, into a uint8 array file on disk.

Every image of a :class:`~nnconform.imagenet.SourceIndex` is decoded (PIL, RGB) and resized and
centre-cropped by the preprocessing's geometry (:meth:`Preprocess.geometry`, the very code the
in-memory path runs) in DataLoader worker processes, which write their rows straight into one raw
``uint8 [N, C, crop, crop]`` file (``numpy.memmap``-compatible). Nothing but timings travels back
through the loader, so memory does not grow with the number of images.

An entry is keyed by (source fingerprint, geometry, decoder and resize versions). The array file is
published by one rename under a name that carries its digest (the sha256 of the sha256 of each run of
32 rows, which the workers compute as they write), and the
:class:`~nnconform.store.ContentStore` entry that points at it (sealed manifest: file, size, sha256,
shape) is published last, so a reader never sees a half-written array. Before first use in a process
the array file is re-hashed against that entry: a changed, truncated or missing file is warned about,
rebuilt and replaced, never trusted. Later evaluations read batches with ``pread`` (bounded memory)
and normalise each batch in one operation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import Preprocess
from .store import ContentStore

CACHE_VERSION = "2"
_CHUNK = 32  # rows per loader item: few messages, small enough to balance across workers


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 ``[3, H, W]`` (PIL, converted to RGB), as the in-memory loaders decode.

    The tensor keeps PIL's pixel-interleaved layout (channels-last strides): torch's antialiased resize
    has a fast kernel for it (about 1.6 ms against tens of ms per ImageNet image) with the same values
    as on a contiguous copy (a self-test compares the results with the in-memory path bit for bit)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@lru_cache(maxsize=4)
def _rows_table(source: str):
    from .imagenet import open_rows

    return open_rows(source)


def read_encoded(index, row: int) -> bytes:
    """The encoded bytes of image ``row`` of a source index (a file, or a parquet/hub row)."""
    if index.kind == "folder":
        with open(index.items[row], "rb") as f:
            return f.read()
    from .imagenet import image_bytes

    return image_bytes(_rows_table(index.source)[int(index.items[row])]["image"])


def geometry_key(preprocess: Preprocess) -> dict:
    """What of the preprocessing shapes the cached pixels (normalisation is applied per batch later)."""
    if preprocess.crop is None:
        raise ValueError(f"the decoded cache needs a fixed output size: preprocessing {preprocess.to_dict()} has no "
                         f"crop")
    from importlib.metadata import version  # not `import torchvision`: its import alone takes seconds

    return {"resize": preprocess.resize, "crop": preprocess.crop, "interpolation": preprocess.interpolation,
            "channels": preprocess.channels, "torch": torch.__version__, "torchvision": version("torchvision"),
            "pillow": version("pillow")}


class _DecodeJob(torch.utils.data.Dataset):
    """Loader items are chunks of rows; a worker decodes each row and writes it at its offset."""

    def __init__(self, index, preprocess: Preprocess, out_path: str, item_bytes: int) -> None:
        self.index, self.preprocess, self.out_path, self.item_bytes = index, preprocess, out_path, item_bytes
        self._fd: tuple[int, int] | None = None  # (pid, fd): each worker process opens its own descriptor

    def __len__(self) -> int:
        return (len(self.index) + _CHUNK - 1) // _CHUNK

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.out_path, os.O_WRONLY))
        return self._fd[1]

    def __getitem__(self, k: int) -> tuple[str, float, float, float]:
        fd = self._descriptor()
        read_s = decode_s = resize_s = 0.0
        digest = hashlib.sha256()  # of the chunk's rows as written: the entry's digest needs no second pass
        for row in range(k * _CHUNK, min(len(self.index), (k + 1) * _CHUNK)):
            t0 = time.perf_counter()
            data = read_encoded(self.index, row)
            t1 = time.perf_counter()
            img = decode_rgb(data)
            t2 = time.perf_counter()
            out = self.preprocess.geometry(img.unsqueeze(0))[0].contiguous()
            t3 = time.perf_counter()
            if out.numel() != self.item_bytes:
                raise ValueError(f"{self.index.items[row]}: geometry gave {tuple(out.shape)}, expected "
                                 f"{self.item_bytes} bytes per image")
            pixels = out.numpy().tobytes()
            if os.pwrite(fd, pixels, row * self.item_bytes) != len(pixels):
                raise OSError(f"{self.out_path}: short write at row {row} (disk full?)")
            digest.update(pixels)
            read_s, decode_s, resize_s = read_s + t1 - t0, decode_s + t2 - t1, resize_s + t3 - t2
        return digest.hexdigest(), read_s, decode_s, resize_s


@dataclass
class BuildStats:
    """What building one entry cost: wall seconds, and worker seconds summed over images."""

    images: int = 0
    workers: int = 0
    wall_s: float = 0.0
    read_s: float = 0.0
    decode_s: float = 0.0
    resize_s: float = 0.0
    hash_s: float = 0.0  # fsync and the digest of the chunk digests


@dataclass
class DecodedCache:
    """One verified entry: ``read(rows)`` gives uint8 ``[len(rows), C, crop, crop]``."""

    path: Path
    shape: tuple[int, int, int, int]
    built: BuildStats | None = None
    read_s: float = 0.0
    _fd: int | None = field(default=None, repr=False)

    @property
    def item_bytes(self) -> int:
        return int(np.prod(self.shape[1:]))

    def memmap(self) -> np.memmap:
        """The whole array, memory-mapped read-only (random access without reading the file)."""
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)

    def read(self, rows: Sequence[int]) -> torch.Tensor:
        """The cached pixels of ``rows`` (one ``pread`` for a contiguous run of rows)."""
        t0 = time.perf_counter()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        rows = list(rows)
        n, size = len(rows), self.item_bytes
        buf = bytearray(n * size)
        if rows and rows == list(range(rows[0], rows[0] + n)):
            got = os.preadv(self._fd, [buf], rows[0] * size)
            if got != len(buf):
                raise OSError(f"{self.path}: short read ({got} of {len(buf)} bytes): the file shrank")
        else:
            view = memoryview(buf)
            for j, r in enumerate(rows):
                if os.preadv(self._fd, [view[j * size:(j + 1) * size]], r * size) != size:
                    raise OSError(f"{self.path}: short read at row {r}: the file shrank")
        out = torch.frombuffer(buf, dtype=torch.uint8).view(n, *self.shape[1:]) if n else \
            torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        self.read_s += time.perf_counter() - t0
        return out


def _tree_sha256(chunk_digests: Sequence[str]) -> str:
    """The array's digest: sha256 of the hex sha256 of each run of ``_CHUNK`` rows, in order (the workers
    hash their own rows, so building needs no sequential pass over the file)."""
    return hashlib.sha256("\n".join(chunk_digests).encode()).hexdigest()


def _sha256_path(path: Path, item_bytes: int) -> str:
    """:func:`_tree_sha256` of an array file, read run by run (bounded memory)."""
    digests = []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK * item_bytes), b""):
            digests.append(hashlib.sha256(chunk).hexdigest())
    return _tree_sha256(digests)


def _build(index, preprocess: Preprocess, blobs: Path, shape: tuple, workers: int, stats: BuildStats) -> tuple[Path, str]:
    """Decode every image into a fresh array file; publish it by rename; (path, sha256)."""
    blobs.mkdir(parents=True, exist_ok=True)
    item_bytes = int(np.prod(shape[1:]))
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".tmp-", suffix=".u8")
    try:
        os.ftruncate(fd, shape[0] * item_bytes)
        os.close(fd)
        t0 = time.perf_counter()
        loader = torch.utils.data.DataLoader(_DecodeJob(index, preprocess, tmp, item_bytes), batch_size=None,
                                             num_workers=workers, shuffle=False)
        chunk_digests = []
        for chunk_digest, read_s, decode_s, resize_s in loader:  # in chunk order (the loader keeps order)
            chunk_digests.append(chunk_digest)
            stats.read_s += float(read_s)
            stats.decode_s += float(decode_s)
            stats.resize_s += float(resize_s)
        stats.wall_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = _tree_sha256(chunk_digests)
        stats.hash_s = time.perf_counter() - t1
        final = blobs / f"{digest}.u8"
        os.replace(tmp, final)  # same content, same name: another run's identical file is simply replaced
        return final, digest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_OPEN: dict[str, DecodedCache] = {}


def decoded_cache(index, preprocess: Preprocess, cache_dir: str | Path | None, workers: int = 0) -> DecodedCache:
    """The verified decoded cache of ``index`` under ``preprocess``'s geometry, built when missing or corrupt."""
    from .paths import default_cache_dir

    geometry = geometry_key(preprocess)
    spec = {"version": CACHE_VERSION, "source": index.fingerprint, "images": len(index), "geometry": geometry}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    root = Path(cache_dir or default_cache_dir()) / "decoded"
    memo = f"{root.resolve()}/{key}"
    if memo in _OPEN:
        return _OPEN[memo]
    store = ContentStore(root, "decoded image cache")
    shape = (len(index), preprocess.channels, preprocess.crop, preprocess.crop)
    entry = store.get(key)
    if entry is not None:
        meta = entry.meta or {}
        path = root / "blobs" / f"{meta.get('sha256')}.u8"
        problem = None
        if meta.get("shape") != list(shape):
            problem = f"shape {meta.get('shape')} is not {list(shape)}"
        elif not path.is_file():
            problem = f"array file {path} is missing"
        elif path.stat().st_size != meta.get("bytes"):
            problem = f"array file {path} has {path.stat().st_size} bytes, the entry says {meta.get('bytes')}"
        elif _sha256_path(path, int(np.prod(shape[1:]))) != meta.get("sha256"):
            problem = f"array file {path} does not match its sha256 (changed bytes)"
        if problem is None:
            _OPEN[memo] = DecodedCache(path, shape)
            return _OPEN[memo]
        store.report_corrupt(key, problem)
        if path.is_file():
            path.unlink(missing_ok=True)
        import shutil

        shutil.rmtree(store.path(key), ignore_errors=True)
    stats = BuildStats(images=len(index), workers=workers)
    path, digest = _build(index, preprocess, root / "blobs", shape, workers, stats)
    store.put(key, {"spec.json": json.dumps(spec, sort_keys=True).encode()},
              {"sha256": digest, "bytes": path.stat().st_size, "shape": list(shape)})
    _OPEN[memo] = DecodedCache(path, shape, built=stats)
    return _OPEN[memo]


def forget_open_caches() -> None:
    """Drop this process's verified entries, so the next use re-verifies them (self-tests, benchmarks)."""
    for cache in _OPEN.values():
        if cache._fd is not None:
            os.close(cache._fd)
    _OPEN.clear()
