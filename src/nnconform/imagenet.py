"""ImageNet-1k sources with the right labels: the canonical class list, folder and label mapping,
the class-balanced subset and the streamed dataset.

Labels are the canonical ImageNet-1k class indices (``imagenet_classes.tsv``: index, wnid, name;
the wnids are the 1000 ILSVRC2012 synsets in sorted order, the names torchvision's weights
``meta["categories"]``), never the position of a folder name in a sorted list of the folders present.

Sources (``--nnc-imagenet``):

* an imagefolder: ``<root>/<class>/<image>`` where every ``<class>`` is a wnid (``n01440764``) or an
  integer class index (``0`` .. ``999``, read as numbers); any subset of the 1000 classes keeps the
  true indices. A root holding ``val/`` (or ``validation/``) loads that folder; a root holding only
  ``train/`` is refused (never evaluated on training images silently). Images are listed in file-name
  order (``ILSVRC2012_val_00000001.JPEG`` ... is the official validation order).
* parquet shards (a file or a folder of ``*.parquet``) or a Hugging Face hub id, read through
  ``datasets`` without decoding; the label column is mapped through the same class list (integer
  indices, wnid or index strings, or a ``ClassLabel`` whose names are wnids, indices or the 1000
  canonical names in order).

Images are decoded once, in parallel, into the decoded cache (:mod:`nnconform.decoded_cache`) and
streamed from there. The source fingerprint hashes every image's encoded bytes with its label.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .data import DatasetLoadError, DatasetUnavailable, ImageDataset, Preprocess
from .hashing import sha256_file
from .store import ContentStore

#: the documented ImageNet-1k validation set: what published top-1 figures are measured on
DOCUMENTED_EVAL_SIZE = 50_000
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_WNID = re.compile(r"n\d{8}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name; anything else is a local path
INDEX_VERSION = "1"


@dataclass(frozen=True)
class ClassList:
    """The canonical ImageNet-1k classes: ``wnids[i]`` and ``names[i]`` of class index ``i``."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]

    def index_of_wnid(self, wnid: str) -> int | None:
        """The class index of a wnid, None when it is not one of the 1000."""
        return _wnid_index(self.wnids).get(wnid)


@lru_cache(maxsize=None)
def _wnid_index(wnids: tuple[str, ...]) -> dict[str, int]:
    return {w: i for i, w in enumerate(wnids)}


@lru_cache(maxsize=1)
def imagenet_classes() -> ClassList:
    """The committed class list (``nnconform/imagenet_classes.tsv``), checked on load: 1000 rows,
    indices 0..999 in order, wnids unique and sorted."""
    text = resources.files("nnconform").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line]
    wnids = tuple(r[1] for r in rows)
    if [int(r[0]) for r in rows] != list(range(1000)) or len(set(wnids)) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError("nnconform/imagenet_classes.tsv is damaged: expected 1000 rows, indices 0..999, "
                           "unique wnids in sorted order")
    return ClassList(wnids, tuple(r[2] for r in rows))


def folder_class_index(names: Sequence[str], where: str) -> dict[str, int]:
    """Class index of each class-folder name: every name a wnid, or every name an integer 0..999.

    Raises :class:`DatasetLoadError` naming ``where`` and the folders that are neither.
    """
    classes = imagenet_classes()
    if names and all(n.isdigit() for n in names):
        bad = [n for n in names if int(n) >= 1000]
        if bad:
            raise DatasetLoadError(f"{where}: class folders {bad[:5]} are not ImageNet-1k class indices (0..999)")
        return {n: int(n) for n in names}
    mapped = {n: classes.index_of_wnid(n) for n in names}
    bad = [n for n, i in mapped.items() if i is None]
    if bad:
        raise DatasetLoadError(
            f"{where}: class folders {sorted(bad)[:5]}{' ...' if len(bad) > 5 else ''} ({len(bad)} of {len(names)}) "
            f"are neither ImageNet-1k wnids (e.g. n01440764) nor class indices 0..999; name each class folder "
            f"by its wnid or its index")
    return {n: int(i) for n, i in mapped.items()}


def resolve_val_folder(root: Path) -> Path:
    """The folder of class folders to load: ``root/val`` (or ``validation``) when present; refuses a
    root that holds ``train/`` and no validation folder."""
    for name in ("val", "validation"):
        if (root / name).is_dir():
            return root / name
    if (root / "train").is_dir():
        raise DatasetLoadError(f"--nnc-imagenet {root}: holds train/ but no val/ folder; nnconform evaluates the "
                               f"validation set only: point --nnc-imagenet at the val folder")
    return root


@dataclass(frozen=True)
class SourceIndex:
    """Every image of a source in dataset order: where its bytes are, its label, and the fingerprint."""

    source: str
    kind: str  # "folder" or "rows"
    items: tuple[str, ...]  # file paths (folder) or row numbers as strings (rows)
    labels: tuple[int, ...]
    digests: tuple[str, ...]  # sha256 of each image's encoded bytes
    fingerprint: str

    def __len__(self) -> int:
        return len(self.items)


def _fingerprint(names: Sequence[str], digests: Sequence[str], labels: Sequence[int], extra: str = "") -> str:
    h = hashlib.sha256(f"imagenet-source/{INDEX_VERSION}{extra}\n".encode())
    for name, digest, label in zip(names, digests, labels):
        h.update(f"{name}\t{digest}\t{label}\n".encode())
    return h.hexdigest()


def index_folder(root: Path, cache_dir: Path | None) -> SourceIndex:
    """List an imagefolder (see the module doc), label it through the class list and fingerprint it.

    The per-file sha256 are kept in an index store keyed by the files' names, sizes and mtimes, so a
    later run lists the folder without reading every image again.
    """
    folder = resolve_val_folder(root)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DatasetLoadError(f"{folder}: images lie directly in the folder ({loose[0]}, ...); ImageNet needs "
                               f"one folder per class (<wnid or class index>/<image>)")
    if not class_dirs:
        raise DatasetLoadError(f"{folder}: no class folders (expected <wnid or class index>/<image>)")
    index_of = folder_class_index([p.name for p in class_dirs], str(folder))
    entries = []  # (file name, class folder name, path, stat)
    for d in class_dirs:
        for p in d.iterdir():
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((p.name, d.name, str(p), p.stat()))
    if not entries:
        raise DatasetLoadError(f"{folder}: the class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    entries.sort(key=lambda e: (e[0], index_of[e[1]]))
    names = [f"{e[1]}/{e[0]}" for e in entries]
    labels = [index_of[e[1]] for e in entries]
    paths = [e[2] for e in entries]
    identity = hashlib.sha256(json.dumps([str(folder.resolve()), INDEX_VERSION] + [
        [n, e[3].st_size, e[3].st_mtime_ns] for n, e in zip(names, entries)]).encode()).hexdigest()
    store = ContentStore(Path(cache_dir) / "imagenet-index", "ImageNet source index") if cache_dir else None
    entry = store.get(identity) if store else None
    digests = json.loads(entry.files["digests.json"]) if entry else None
    if not isinstance(digests, list) or len(digests) != len(paths):
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
            digests = list(pool.map(sha256_file, paths, chunksize=64))
        if store:
            store.put(identity, {"digests.json": json.dumps(digests).encode()}, {"folder": str(folder)})
    return SourceIndex(str(folder), "folder", tuple(paths), tuple(labels), tuple(digests),
                       _fingerprint(names, digests, labels))


def _label_mapper(feature, where: str):
    """A function from a label-column value to the class index (see the module doc)."""
    classes = imagenet_classes()
    names = getattr(feature, "names", None)
    if names:
        if all(str(n).isdigit() for n in names) or all(classes.index_of_wnid(str(n)) is not None for n in names):
            table = folder_class_index([str(n) for n in names], f"{where}: label names")
            return lambda v: table[names[int(v)]]
        if len(names) == 1000:  # the hub's ImageNet-1k ClassLabel: the canonical names, in class order
            return int
        raise DatasetLoadError(f"{where}: label names {list(names)[:3]} ... ({len(names)}) are neither wnids, class "
                               f"indices, nor the 1000 ImageNet-1k classes in order")

    def value(v):
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.isdigit()):
            if not 0 <= int(v) < 1000:
                raise DatasetLoadError(f"{where}: label {v!r} is not an ImageNet-1k class index (0..999)")
            return int(v)
        i = classes.index_of_wnid(str(v))
        if i is None:
            raise DatasetLoadError(f"{where}: label {v!r} is neither a wnid nor a class index 0..999")
        return i
    return value


def open_rows(source: str):
    """The ``datasets`` table of a parquet file/folder or a hub id, images left encoded."""
    import datasets

    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise DatasetLoadError(f"--nnc-imagenet {source}: no parquet shards in the folder")
        hf = datasets.load_dataset("parquet", data_files=files, split="train")
    elif path.is_file() and path.suffix == ".parquet":
        hf = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
    else:
        hf = datasets.load_dataset(source, split="validation")
    for column in ("image", "label"):
        if column not in hf.column_names:
            raise DatasetLoadError(f"--nnc-imagenet {source}: no {column!r} column (columns: {hf.column_names})")
    return hf.cast_column("image", datasets.Image(decode=False))


def image_bytes(row_image: dict) -> bytes:
    """The encoded bytes of a ``datasets`` image cell read with ``decode=False``."""
    if row_image.get("bytes"):
        return row_image["bytes"]
    with open(row_image["path"], "rb") as f:
        return f.read()


def index_rows(source: str) -> SourceIndex:
    """Label and fingerprint the rows of a parquet or hub source (one streaming pass over the bytes)."""
    hf = open_rows(source)
    mapper = _label_mapper(hf.features["label"], f"--nnc-imagenet {source}")
    labels, digests = [], []
    for start in range(0, len(hf), 1000):
        chunk = hf[start:start + 1000]
        labels += [mapper(v) for v in chunk["label"]]
        digests += [hashlib.sha256(image_bytes(im)).hexdigest() for im in chunk["image"]]
    names = [str(i) for i in range(len(hf))]
    return SourceIndex(source, "rows", tuple(names), tuple(labels), tuple(digests),
                       _fingerprint(names, digests, labels))


def balanced_subset(labels: Sequence[int], n: int) -> list[int]:
    """The documented class-balanced subset of ``n`` images: take every class's first image (in dataset
    order), then every class's second, and so on, classes in index order, until ``n``; returned in
    dataset order. Class counts differ by at most one while every class still has images."""
    if n <= 0:
        raise ValueError(f"--nnc-imagenet-subset {n}: must be a positive number of images")
    per_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        per_class.setdefault(int(label), []).append(i)
    chosen: list[int] = []
    rank = 0
    while len(chosen) < min(n, len(labels)):
        for c in sorted(per_class):
            if rank < len(per_class[c]) and len(chosen) < n:
                chosen.append(per_class[c][rank])
        rank += 1
    return sorted(chosen)


def subset_index(index: SourceIndex, n: int) -> SourceIndex:
    """``index`` restricted to :func:`balanced_subset` (its own fingerprint, which names the subset)."""
    keep = balanced_subset(index.labels, n)
    pick = lambda seq: tuple(seq[i] for i in keep)  # noqa: E731
    names = [str(i) for i in keep]
    return SourceIndex(index.source, index.kind, pick(index.items), pick(index.labels), pick(index.digests),
                       _fingerprint(names, pick(index.digests), pick(index.labels),
                                    f"/balanced-subset {n} of {len(index)} ({index.fingerprint})"))


class StreamedImages(Sequence):
    """The images of a streamed dataset, decoded at full size on access (for code that looks at a few)."""

    def __init__(self, index: SourceIndex, rows: Sequence[int]) -> None:
        self.index, self.rows = index, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from .decoded_cache import decode_rgb, read_encoded

        return decode_rgb(read_encoded(self.index, self.rows[i]))


@dataclass(frozen=True)
class StreamedImageDataset(ImageDataset):
    """An ImageNet source streamed from the decoded cache: ``batches`` decodes the source once per
    preprocessing geometry (in parallel, cached on disk) and then reads bounded batches from the cache."""

    cache_dir: Path | None = None
    workers: int = 0
    index: SourceIndex | None = None
    rows: tuple[int, ...] = ()

    def subset(self, indices: Sequence[int], name_suffix: str = "") -> "StreamedImageDataset":
        """A fixed subset, read from the same decoded cache, with its own fingerprint."""
        from .hashing import arrays_sha256

        idx = [int(i) for i in indices]
        rows = tuple(self.rows[i] for i in idx)
        fp = arrays_sha256(np.frombuffer(self.fingerprint.encode(), np.uint8), np.asarray(idx, np.int64))
        return StreamedImageDataset(self.name + name_suffix, self.split, StreamedImages(self.index, rows),
                                    self.labels[torch.as_tensor(idx, dtype=torch.long)], self.classes, self.source,
                                    fp, self.smoke, tuple(idx), self.notes, self.cache_dir, self.workers,
                                    self.index, rows)

    def batches(self, preprocess: Preprocess, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Preprocessed ``(x, y)`` batches in dataset order, streamed from the decoded cache."""
        from .decoded_cache import decoded_cache

        cache = decoded_cache(self.index, preprocess, self.cache_dir, self.workers)
        for start in range(0, len(self.rows), batch_size):
            rows = self.rows[start:start + batch_size]
            yield preprocess.normalize(cache.read(rows)), self.labels[start:start + len(rows)]


def decode_workers() -> int:
    """DataLoader workers that decode a source: ``NNCONFORM_DECODE_WORKERS``, else the machine's CPUs (max 8)."""
    value = os.environ.get("NNCONFORM_DECODE_WORKERS")
    if value is not None:
        if not value.isdigit():
            raise ValueError(f"NNCONFORM_DECODE_WORKERS={value!r}: expected a number of worker processes (0: none)")
        return int(value)
    return min(8, os.cpu_count() or 1)


def load_imagenet_val(source: str | None, *, subset: int | None = None, cache_dir: str | Path | None = None,
                      workers: int | None = None) -> StreamedImageDataset:
    """ImageNet-1k validation from a local imagefolder, parquet shards or a hub id, labelled by the
    canonical class list, optionally cut to the class-balanced ``subset``; streamed, never held in memory.

    No source: :class:`DatasetUnavailable` (the caller may use the smoke set). A source that does not
    load: :class:`DatasetLoadError` with the reason (the run's ImageNet cases fail with it).
    """
    if not source:
        raise DatasetUnavailable("ImageNet-1k validation not given: pass --nnc-imagenet with a local imagefolder "
                                 "(val/<wnid or class index>/*.JPEG), a folder/file of parquet shards, or a Hugging "
                                 "Face hub id (e.g. ILSVRC/imagenet-1k, needs access and network)")
    from .paths import default_cache_dir

    path = Path(source)
    try:
        if path.is_dir() and not any(path.rglob("*.parquet")):
            index = index_folder(path, Path(cache_dir) if cache_dir else default_cache_dir())
        elif path.exists() or _HUB_ID.fullmatch(source):
            index = index_rows(source)
        else:
            raise DatasetLoadError(f"--nnc-imagenet {source}: no such folder or parquet file, and not a hub id "
                                   f"(owner/name)")
    except DatasetLoadError:
        raise
    except Exception as exc:  # the boundary of a user-named source: its reason, never a fall-back
        raise DatasetLoadError(f"--nnc-imagenet {source}: could not load ({type(exc).__name__}: {exc})") from exc
    full = len(index)
    if subset is not None:
        index = subset_index(index, subset)
    notes = () if subset is None else (
        f"class-balanced subset of {len(index)} of the {full} images (--nnc-imagenet-subset {subset}; "
        f"nnconform.imagenet.balanced_subset)",)
    rows = tuple(range(len(index)))
    return StreamedImageDataset(
        "imagenet-1k", "val", StreamedImages(index, rows), torch.tensor(index.labels, dtype=torch.long),
        tuple(str(i) for i in range(1000)), index.source, index.fingerprint, notes=notes,
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
        workers=decode_workers() if workers is None else workers, index=index, rows=rows)
