"""Fashion-MNIST mosaics: a detection set built offline from public data (synthetic, not COCO).

Each canvas is a ``SIZE`` x ``SIZE`` grey image holding 1-4 Fashion-MNIST items, each scaled by a random
factor (log-uniform in ``SCALE_RANGE``) and placed at a random position, composited by the pixel maximum
(items are bright on black). Placements overlapping an earlier item's box by more than ``MAX_IOU`` are
redrawn. The ground truth of an item is the tight box of its scaled pixels brighter than ``INK`` (xyxy in
pixels, the item's edges) and its Fashion-MNIST class. Training canvases use the Fashion-MNIST train split,
evaluation canvases the test split; everything is drawn from one seeded generator, so the same seed and
source give the same bytes (the fingerprint is their sha256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data import FMNIST_CLASSES, Preprocess, load_fashion_mnist
from ..hashing import arrays_sha256

MOSAIC_DATASET = "fmnist-mosaic"
SIZE = 96
SCALE_RANGE = (0.6, 2.2)
MAX_ITEMS = 4
MAX_IOU = 0.15
INK = 24  # uint8 level above which a pixel belongs to the item's box
#: canvases per split (the evaluation set: "several hundred" canvases) and their seeds
SPLITS = {"train": (6000, 20261130), "test": (500, 20261131)}
DESCRIPTION = "Fashion-MNIST mosaics (synthetic detection set built offline from Fashion-MNIST items)"


@dataclass(frozen=True)
class GroundTruth:
    """One canvas's objects: ``boxes`` float32 [k, 4] (x1, y1, x2, y2 in pixels) and ``classes`` int64 [k]."""

    boxes: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class DetectionDataset:
    """Canvases (uint8 ``[N, 1, H, W]``) with per-canvas ground truth; the evaluator's dataset interface."""

    name: str
    split: str
    images: torch.Tensor
    labels: tuple[GroundTruth, ...]
    classes: tuple[str, ...]
    source: str
    fingerprint: str
    smoke: bool = False
    indices: tuple[int, ...] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of object classes."""
        return len(self.classes)

    @property
    def task(self):
        """The detection task the evaluator scores these canvases with."""
        from ..tasks.detection import DetectionTask

        return DetectionTask(num_classes=self.num_classes)

    def subset(self, indices: Sequence[int], name_suffix: str = "") -> "DetectionDataset":
        """A fixed subset with its own fingerprint."""
        idx = [int(i) for i in indices]
        fp = arrays_sha256(np.frombuffer(self.fingerprint.encode(), np.uint8), np.asarray(idx, np.int64))
        return DetectionDataset(self.name + name_suffix, self.split, self.images[idx],
                                tuple(self.labels[i] for i in idx), self.classes, self.source, fp, self.smoke,
                                tuple(idx), self.notes)

    def batches(self, preprocess: Preprocess, batch_size: int) -> Iterator[tuple[torch.Tensor, tuple]]:
        """Yield preprocessed ``(x, ground truths)`` batches in dataset order."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield preprocess.apply(self.images[start:stop]), self.labels[start:stop]


def _scaled_item(item: np.ndarray, scale: float) -> np.ndarray:
    """A 28x28 uint8 item resized by ``scale`` (bilinear, antialiased), uint8."""
    side = max(8, int(round(28 * scale)))
    x = torch.from_numpy(item).float()[None, None]
    y = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return y[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_mosaics(items: np.ndarray, classes: np.ndarray, count: int, seed: int, size: int = SIZE
                 ) -> tuple[np.ndarray, list[GroundTruth]]:
    """``count`` canvases from ``items`` (uint8 [M, 28, 28]) and their ``classes``: uint8 [count, size, size]
    and one :class:`GroundTruth` per canvas. Deterministic in (items, classes, count, seed, size)."""
    rng = np.random.default_rng(seed)
    canvases = np.zeros((count, size, size), np.uint8)
    truths = []
    for n in range(count):
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, MAX_ITEMS + 1))):
            k = int(rng.integers(0, len(items)))
            scale = float(np.exp(rng.uniform(np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1]))))
            patch = _scaled_item(items[k], scale)
            ys, xs = np.nonzero(patch > INK)
            if len(xs) == 0:
                continue
            side = patch.shape[0]
            for _attempt in range(10):  # redraw the position while it overlaps an earlier item too much
                ox, oy = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
                box = np.array([ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1], np.float32)
                if all(_iou(box, b) <= MAX_IOU for b in boxes):
                    break
            else:
                continue
            np.maximum(canvases[n, oy:oy + side, ox:ox + side], patch, out=canvases[n, oy:oy + side, ox:ox + side])
            boxes.append(box)
            labels.append(int(classes[k]))
        truths.append(GroundTruth(np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)))
    return canvases, truths


def fingerprint(canvases: np.ndarray, truths: Sequence[GroundTruth]) -> str:
    """sha256 of the canvases' bytes, every box and class, and the object count of each canvas."""
    boxes = np.concatenate([t.boxes for t in truths]) if truths else np.zeros((0, 4), np.float32)
    labels = np.concatenate([t.classes for t in truths]) if truths else np.zeros(0, np.int64)
    counts = np.array([len(t) for t in truths], np.int64)
    return arrays_sha256(canvases, boxes, labels, counts)


_CACHE: dict[tuple, DetectionDataset] = {}


def load_mosaic_dataset(split: str = "test", data_dir=None, count: int | None = None) -> DetectionDataset:
    """The Fashion-MNIST mosaics of ``split`` (``train``: from Fashion-MNIST train; ``test``: from its test
    split), ``count`` canvases (default :data:`SPLITS`). Needs the Fashion-MNIST files (``data_dir``)."""
    if split not in SPLITS:
        raise ValueError(f"{MOSAIC_DATASET} split must be one of {sorted(SPLITS)}, got {split!r}")
    n, seed = SPLITS[split]
    n = n if count is None else int(count)
    key = (split, str(data_dir), n)
    if key not in _CACHE:
        source = load_fashion_mnist(split, data_dir)
        canvases, truths = make_mosaics(source.images[:, 0].numpy(), source.labels.numpy(), n, seed)
        _CACHE[key] = DetectionDataset(
            name=MOSAIC_DATASET, split=split, images=torch.from_numpy(canvases).unsqueeze(1), labels=tuple(truths),
            classes=FMNIST_CLASSES, source=f"{DESCRIPTION}: {n} canvases of {SIZE}x{SIZE}, seed {seed}, items from "
                                           f"Fashion-MNIST {split} ({source.source})",
            fingerprint=fingerprint(canvases, truths), notes=(f"synthetic: {DESCRIPTION}",) + tuple(source.notes))
    return _CACHE[key]
