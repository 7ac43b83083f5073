"""Datasets: Fashion-MNIST, ImageNet-1k validation and an offline ImageNet smoke set.

Every dataset is an :class:`ImageDataset` with a content fingerprint (sha256 of the decoded
images and labels) that goes into every report and every cache key.

Sources, in order:
* Fashion-MNIST: the original IDX files (Debian package ``dataset-fashion-mnist`` installs them
  in ``/usr/share/datasets/fashion-mnist``), else the Hugging Face hub through ``datasets`` when
  online. ``--nnc-data-dir`` or ``NNCONFORM_FMNIST_DIR`` name the one folder to use instead (no
  fallback). Files are checked on load (IDX header, shapes, label range) and their content is
  compared with the sha256 pinned here: another copy is used but reported.
* ImageNet-1k validation: a local imagefolder, parquet shards or a hub id given by the user
  (``--nnc-imagenet``): :mod:`nnconform.imagenet` labels it through the canonical class list and
  streams it from the decoded cache (:mod:`nnconform.decoded_cache`); a source that does not load
  raises :class:`DatasetLoadError`.
* ``imagenet-samples``: the 20 labelled ImageNet JPEGs shipped in the ``foolbox`` wheel's data
  folder (the files are read; foolbox is never imported). A smoke set, not a benchmark.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .hashing import arrays_sha256

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetUnavailable(RuntimeError):
    """A dataset the user must supply is missing; the message says exactly what to do."""


class DatasetLoadError(RuntimeError):
    """A dataset the user named (``--nnc-imagenet``) could not be loaded: the cases that need it fail with
    this message; the run never falls back to another dataset."""


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 images become model input: resize, centre crop, then (x*scale - mean)/std.

    ``resize`` is the shorter side (torchvision's ``Resize(int)``); ``None`` keeps the size.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    channels: int = 3

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """Build from a manifest table; lists become tuples."""
        d = dict(d)
        for k in ("mean", "std"):
            d[k] = tuple(float(v) for v in d[k])
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain dict for reports and cache keys."""
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale, "resize": self.resize,
                "crop": self.crop, "interpolation": self.interpolation, "channels": self.channels}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (all the same size) -> float32 model input."""
        return self.normalize(self.geometry(images))

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """The resize and centre crop alone: uint8 ``[N, C, H, W]`` -> uint8 (what the decoded cache stores)."""
        from torchvision.transforms.v2 import functional as F
        from torchvision.transforms import InterpolationMode

        x = images
        if self.resize is not None:
            x = F.resize(x, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        if self.crop is not None:
            x = F.center_crop(x, [self.crop, self.crop])
        return x

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(x * scale - mean) / std`` of uint8 ``[N, C, H, W]``, elementwise, so one batch gives the same
        bits as its images one at a time. In place on one float copy: a batch of 250 ImageNet images is 150 MB
        of float32, and every temporary would be another 150 MB."""
        x = images.to(torch.float32, copy=True)
        x.mul_(self.scale)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


@dataclass(frozen=True)
class ImageDataset:
    """Labelled images. ``images`` is a uint8 ``[N, C, H, W]`` tensor when every image has the
    same size, else a list of uint8 ``[C, H, W]`` tensors (resized by the preprocessing)."""

    name: str
    split: str
    images: torch.Tensor | Sequence[torch.Tensor]
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    fingerprint: str
    smoke: bool = False  # True for sets too small to measure accuracy (reported as smoke checks)
    indices: tuple[int, ...] | None = field(default=None, repr=False)
    #: what a reader must know about the data (e.g. content differing from the pinned copy)
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int], name_suffix: str = "") -> "ImageDataset":
        """A fixed subset (for calibration lists or quick tiers) with its own fingerprint."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if isinstance(self.images, torch.Tensor):
            imgs = self.images[idx]
        else:
            imgs = [self.images[i] for i in idx.tolist()]
        labels = self.labels[idx]
        fp = arrays_sha256(np.frombuffer(self.fingerprint.encode(), np.uint8), idx.numpy())
        return ImageDataset(self.name + name_suffix, self.split, imgs, labels, self.classes, self.source, fp,
                            self.smoke, tuple(idx.tolist()), self.notes)

    def batches(self, preprocess: Preprocess, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield preprocessed ``(x, y)`` batches in dataset order."""
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if isinstance(self.images, torch.Tensor):
                x = preprocess.apply(self.images[start:stop])
            else:
                x = torch.cat([preprocess.apply(img.unsqueeze(0)) for img in self.images[start:stop]])
            yield x, self.labels[start:stop]


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


class DatasetFormatError(ValueError):
    """A data file that is not what its name says (bad IDX header, truncated, swapped, out of range)."""


class DatasetMismatchWarning(UserWarning):
    """A dataset whose content differs from the copy pinned in the project: used, and reported."""


#: sha256 of the *decompressed* IDX content of each Fashion-MNIST file (Zalando Research's release,
#: as Debian's ``dataset-fashion-mnist`` ships it). The ``.gz`` bytes depend on the compressor, the
#: content does not, so a re-compressed copy still matches.
FMNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_FMNIST_SIZES = {"train": 60_000, "test": 10_000}


def read_idx_file(path: Path) -> tuple[np.ndarray, str]:
    """An unsigned-byte IDX file (``.gz`` or plain) as an array, and the sha256 of its IDX content.

    Raises :class:`DatasetFormatError` naming the file for a truncated or corrupt archive, a wrong
    magic number, or a header that does not match the data.
    """
    import hashlib
    import zlib

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: truncated or corrupt gzip archive ({exc}); replace the file "
                                 f"(e.g. `sudo apt-get install --reinstall dataset-fashion-mnist`)") from None
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DatasetFormatError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, "
                                 f"expected 000008 followed by the number of dimensions)")
    if len(raw) < 4 + 4 * ndim:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetFormatError(f"{path}: truncated IDX file: header says {dims}, found {data.size} bytes of data")
    return data.reshape(dims), hashlib.sha256(raw).hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    return read_idx_file(path)[0]


def _idx_sha256(array: np.ndarray) -> str:
    """sha256 of the IDX file an array would be (for data that did not come as IDX files)."""
    import hashlib

    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    return hashlib.sha256(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def fmnist_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for the Fashion-MNIST IDX files, in order.

    A folder the user names (``data_dir``, else ``NNCONFORM_FMNIST_DIR``) is the only place
    searched: a run told to use a folder never falls back to another copy.
    """
    if data_dir:
        return [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    if os.environ.get("NNCONFORM_FMNIST_DIR"):
        folder = Path(os.environ["NNCONFORM_FMNIST_DIR"])
        return [folder, folder / "fashion-mnist"]
    return [FMNIST_SYSTEM_DIR]


def check_fashion_mnist(split: str, images: np.ndarray, labels: np.ndarray, img_name: str = "images",
                        lbl_name: str = "labels") -> None:
    """Shape, count and label-range checks; raises :class:`DatasetFormatError` naming the files."""
    if images.ndim == 1 and labels.ndim == 3:
        raise DatasetFormatError(f"{img_name} holds a 1-D IDX array {list(images.shape)} (labels) and "
                                 f"{lbl_name} a 3-D one {list(labels.shape)} (images): the image and label files "
                                 f"look swapped")
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetFormatError(f"{img_name}: Fashion-MNIST images must be [N, 28, 28], the file holds "
                                 f"{list(images.shape)}")
    if labels.ndim != 1:
        raise DatasetFormatError(f"{lbl_name}: Fashion-MNIST labels must be [N], the file holds {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{img_name}: {images.shape[0]} images but {lbl_name} has {labels.shape[0]} labels")
    if images.shape[0] != _FMNIST_SIZES[split]:
        raise DatasetFormatError(f"{img_name}: the Fashion-MNIST {split} split has {_FMNIST_SIZES[split]} images, "
                                 f"the file holds {images.shape[0]}")
    if labels.size and int(labels.max()) >= len(FMNIST_CLASSES):
        bad = int(np.count_nonzero(labels >= len(FMNIST_CLASSES)))
        raise DatasetFormatError(f"{lbl_name}: {bad} labels outside 0..{len(FMNIST_CLASSES) - 1} "
                                 f"(largest {int(labels.max())})")


def _pinned_mismatches(named_hashes: list[tuple[str, str, str]]) -> tuple[str, ...]:
    """One message per ``(stem, shown name, sha256)`` whose content is not the pinned copy."""
    notes = []
    for stem, shown, digest in named_hashes:
        if digest != FMNIST_SHA256[stem]:
            notes.append(f"{shown}: IDX content sha256 {digest} differs from the pinned Fashion-MNIST "
                         f"{FMNIST_SHA256[stem]} (nnconform.data.FMNIST_SHA256): results are not comparable "
                         f"with runs on the reference data")
    return tuple(notes)


_CACHE: dict[tuple, ImageDataset] = {}


def load_fashion_mnist(split: str = "test", data_dir: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) as a uint8 ``[N, 1, 28, 28]`` set.

    The files are checked on load (IDX header, shapes, counts, label range; a malformed file raises
    :class:`DatasetFormatError` naming it). A copy whose content differs from the pinned sha256
    is used but reported: a :class:`DatasetMismatchWarning` and the dataset's ``notes``.
    """
    if split not in _FMNIST_FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(_FMNIST_FILES)}, got {split!r}")
    key = ("fashion-mnist", split, str(data_dir), os.environ.get("NNCONFORM_FMNIST_DIR"))
    if key in _CACHE:
        return _CACHE[key]
    img_stem, lbl_stem = _FMNIST_FILES[split]
    if data_dir is not None and not Path(data_dir).exists():
        raise DatasetUnavailable(f"--nnc-data-dir {data_dir} does not exist")
    for folder in fmnist_dirs(data_dir):
        img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img_path and lbl_path:
            (images, img_sha), (labels, lbl_sha) = read_idx_file(img_path), read_idx_file(lbl_path)
            check_fashion_mnist(split, images, labels, str(img_path), str(lbl_path))
            notes = _pinned_mismatches([(img_stem, str(img_path), img_sha), (lbl_stem, str(lbl_path), lbl_sha)])
            source = str(img_path.parent)
            break
    else:
        if data_dir or os.environ.get("NNCONFORM_FMNIST_DIR"):
            raise DatasetUnavailable(_howto(split, data_dir) + " (a folder given by the user is the only one searched)")
        images, labels, source = _fmnist_from_hub(split, data_dir)
        check_fashion_mnist(split, images, labels, f"{source} images", f"{source} labels")
        notes = _pinned_mismatches([(img_stem, f"{source} {split} images", _idx_sha256(images)),
                                    (lbl_stem, f"{source} {split} labels", _idx_sha256(labels))])
    for note in notes:
        warnings.warn(DatasetMismatchWarning(note), stacklevel=2)
    ds = ImageDataset(
        name="fashion-mnist",
        split=split,
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=FMNIST_CLASSES,
        source=source,
        fingerprint=arrays_sha256(images, labels),
        notes=notes,
    )
    _CACHE[key] = ds
    return ds


def _howto(split: str, data_dir) -> str:
    searched = ", ".join(str(d) for d in fmnist_dirs(data_dir))
    return (f"Fashion-MNIST {split} split not found (searched {searched} for "
            f"{' and '.join(s + '[.gz]' for s in _FMNIST_FILES[split])}). Install it with "
            f"`sudo apt-get install dataset-fashion-mnist`, or put the four IDX files from "
            f"https://github.com/zalandoresearch/fashion-mnist in a folder given as --nnc-data-dir")


def _fmnist_from_hub(split: str, data_dir) -> tuple[np.ndarray, np.ndarray, str]:
    howto = _howto(split, data_dir)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("NNCONFORM_OFFLINE") == "1":
        raise DatasetUnavailable(howto)
    try:
        import datasets

        hf = datasets.load_dataset(FMNIST_HUB_ID, split=split)
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in hf["image"]])
        labels = np.asarray(hf["label"], dtype=np.uint8)
        return images, labels, f"hf://{FMNIST_HUB_ID}"
    except Exception as exc:  # no network, hub down, package missing: all end the same way
        raise DatasetUnavailable(f"{howto} (the Hugging Face hub fallback failed: {type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------------
# ImageNet


_SAMPLE_RE = re.compile(r"imagenet_(\d+)_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def foolbox_data_dir() -> Path | None:
    """The ``data`` folder of an installed foolbox wheel, found without importing foolbox."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def _decode_image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_imagenet_samples() -> ImageDataset:
    """The 20 labelled ImageNet sample images of the foolbox wheel (a smoke set)."""
    key = ("imagenet-samples",)
    if key in _CACHE:
        return _CACHE[key]
    folder = foolbox_data_dir()
    if folder is None:
        raise DatasetUnavailable("ImageNet sample images not found: `pip install --no-deps foolbox==3.3.4` "
                                 "ships them in foolbox/data/imagenet_*.jpg")
    files = sorted((p for p in folder.iterdir() if _SAMPLE_RE.search(p.name)),
                   key=lambda p: int(_SAMPLE_RE.search(p.name).group(1)))
    if not files:
        raise DatasetUnavailable(f"{folder}: no imagenet_<index>_<label>.jpg files")
    images = [_decode_image(p) for p in files]
    labels = torch.tensor([int(_SAMPLE_RE.search(p.name).group(2)) for p in files], dtype=torch.long)
    fp = arrays_sha256(*(im.numpy() for im in images), labels.numpy())
    ds = ImageDataset("imagenet-samples", "val", images, labels, tuple(str(i) for i in range(1000)),
                      str(folder), fp, smoke=True)
    _CACHE[key] = ds
    return ds


def load_imagenet_val(source: str | None, *, subset: int | None = None, cache_dir=None,
                      workers: int | None = None) -> ImageDataset:
    """ImageNet-1k validation, labelled by the canonical class list and streamed from the decoded cache
    (:func:`nnconform.imagenet.load_imagenet_val`)."""
    from . import imagenet

    return imagenet.load_imagenet_val(source, subset=subset, cache_dir=cache_dir, workers=workers)


def load_dataset(name: str, split: str = "test", *, data_dir=None, imagenet_source=None,
                 imagenet_subset: int | None = None, cache_dir=None, coco_source=None,
                 coco_subset: int | None = None) -> ImageDataset:
    """Load a dataset by the name anchors use in their manifests (ImageNet: ``imagenet_subset`` images of
    the class-balanced subset, decoded into ``cache_dir``; COCO val2017: the local folder ``coco_source``,
    else ``$NNCONFORM_COCO_DIR``, its first ``coco_subset`` images)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name == "imagenet-samples":
        return load_imagenet_samples()
    if name == "imagenet-1k":
        return load_imagenet_val(imagenet_source, subset=imagenet_subset, cache_dir=cache_dir)
    if name == "fmnist-mosaic":  # detection canvases composed from Fashion-MNIST (nnconform.detection)
        from .detection.data import load_mosaic_dataset

        return load_mosaic_dataset(split, data_dir)
    if name == "coco-val2017":  # the real detection path (nnconform.detection.coco)
        from .detection.coco import load_coco_val

        return load_coco_val(coco_source, subset=coco_subset)
    from .speech import DATASETS as SPEECH_DATASETS, load_speech_dataset

    if name in SPEECH_DATASETS:  # speech (nnconform.speech): generated or laid out into cache_dir
        return load_speech_dataset(name, split, cache_dir=cache_dir)
    raise KeyError(f"unknown dataset {name!r}; known: coco-val2017, fashion-mnist, fmnist-mosaic, imagenet-1k, "
                   "imagenet-samples, "
                   f"{', '.join(SPEECH_DATASETS)}")
