"""COCO val2017 from a local folder: the real detection path's dataset (issue 14).

The folder holds ``val2017/*.jpg`` and ``annotations/instances_val2017.json`` (the layout of
cocodataset.org's ``val2017.zip`` and ``annotations_trainval2017.zip``). It is passed with
``--nnc-coco DIR`` or ``NNCONFORM_COCO_DIR``; nothing is downloaded.

Labels live in torchvision's 91-index COCO label space (``weights.meta["categories"]``: index 0
``__background__``, the 80 categories at their COCO category ids 1..90, ``N/A`` at the 10 unused ids),
so a category id *is* the label: 'person' = 1, 'toothbrush' = 90. The loader checks every category of
the annotation file against that list by id and name and refuses a file that disagrees.

Ground truth per image: the non-crowd boxes (COCO's ``[x, y, w, h]`` turned into ``x1, y1, x2, y2``)
and classes, and apart from them the crowd regions (``iscrowd = 1``). The detection task handles crowd
regions as COCOeval does for boxes: they count as no ground truth, and a detection that matches no
regular box but overlaps a crowd region of its class by at least the IoU threshold (intersection over
the detection's area) is ignored at that threshold, neither true nor false positive. Images are in
ascending image-id order (COCOeval's ``imgIds``), images without annotations included.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data import DatasetLoadError, DatasetUnavailable, Preprocess
from ..hashing import arrays_sha256, sha256_bytes, sha256_file

COCO_DATASET = "coco-val2017"
ANNOTATIONS = Path("annotations") / "instances_val2017.json"
IMAGES = Path("val2017")
ENV_VAR = "NNCONFORM_COCO_DIR"
#: COCO val2017's image count (the documented evaluation set of torchvision's box mAP)
DOCUMENTED_EVAL_SIZE = 5000


def torchvision_categories() -> tuple[str, ...]:
    """torchvision's 91 COCO label names (index = COCO category id; ``__background__`` and ``N/A`` fill gaps)."""
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    return tuple(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"])


def coco_label(category_id: int, name: str | None = None) -> int:
    """The torchvision label of a COCO category id (the id itself, checked against torchvision's list;
    with ``name``, the name must be the one torchvision gives that id). ValueError otherwise."""
    names = torchvision_categories()
    cid = int(category_id)
    if not 1 <= cid < len(names) or names[cid] in ("__background__", "N/A"):
        raise ValueError(f"COCO category id {category_id!r} is not one of torchvision's 80 COCO categories "
                         f"(ids 1..90 without {[i for i, n in enumerate(names) if n == 'N/A']})")
    if name is not None and names[cid] != name:
        raise ValueError(f"COCO category id {cid} is {name!r} here but {names[cid]!r} in torchvision's label list")
    return cid


@dataclass(frozen=True)
class CocoGroundTruth:
    """One image's objects: regular ``boxes`` float32 [k, 4] (xyxy pixels) and ``classes`` int64 [k]; crowd
    regions ``crowd_boxes`` [m, 4] and ``crowd_classes`` [m] apart (ignored as COCOeval ignores them)."""

    boxes: np.ndarray
    classes: np.ndarray
    crowd_boxes: np.ndarray
    crowd_classes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)


class ImageBatch:
    """A batch of images of different sizes, preprocessed lazily in chunks (a batch of 250 COCO images is
    about 1 GB as float32; the detector wrapper reads a few at a time). ``.to(device)`` as a tensor has it."""

    def __init__(self, images: Sequence[torch.Tensor], preprocess: Preprocess, device: str = "cpu") -> None:
        self.images = list(images)
        self.preprocess = preprocess
        self.device = device

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device) -> "ImageBatch":
        """The same images, produced on ``device``."""
        return ImageBatch(self.images, self.preprocess, str(device))

    def chunks(self, size: int) -> Iterator[list[torch.Tensor]]:
        """Lists of at most ``size`` float images [3, H, W] (the preprocessing applied to each alone)."""
        for start in range(0, len(self.images), size):
            yield [self.preprocess.apply(im[None])[0].to(self.device) for im in self.images[start:start + size]]


def _decode(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB (COCO holds a few greyscale JPEGs)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)


@dataclass(frozen=True)
class CocoDataset:
    """COCO val2017 images (decoded per batch) with their ground truth; the evaluator's dataset interface."""

    name: str
    split: str
    root: Path
    files: tuple[str, ...]
    image_ids: tuple[int, ...]
    labels: tuple[CocoGroundTruth, ...]
    classes: tuple[str, ...]
    source: str
    fingerprint: str
    smoke: bool = False
    notes: tuple[str, ...] = ()
    indices: tuple[int, ...] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Label space size (torchvision's 91 indices)."""
        return len(self.classes)

    @property
    def task(self):
        """The detection task reading torchvision detectors' decoded outputs (nnconform.detection.torchvision_det)."""
        from .torchvision_det import TorchvisionDetectionTask

        return TorchvisionDetectionTask(num_classes=self.num_classes)

    def subset(self, indices: Sequence[int], name_suffix: str = "") -> "CocoDataset":
        """A fixed subset with its own fingerprint."""
        idx = [int(i) for i in indices]
        fp = arrays_sha256(np.frombuffer(self.fingerprint.encode(), np.uint8), np.asarray(idx, np.int64))
        return CocoDataset(self.name + name_suffix, self.split, self.root, tuple(self.files[i] for i in idx),
                           tuple(self.image_ids[i] for i in idx), tuple(self.labels[i] for i in idx), self.classes,
                           self.source, fp, self.smoke, self.notes, tuple(idx))

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` decoded: uint8 [3, H, W]."""
        return _decode(self.root / IMAGES / self.files[i])

    def batches(self, preprocess: Preprocess, batch_size: int) -> Iterator[tuple[ImageBatch, tuple]]:
        """``(ImageBatch, ground truths)`` in dataset order; images decoded per batch."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield ImageBatch([self.image(i) for i in range(start, stop)], preprocess), self.labels[start:stop]


def _fail(path: Path, why: str) -> DatasetLoadError:
    return DatasetLoadError(f"COCO val2017 {path}: {why} (expected {IMAGES}/*.jpg and {ANNOTATIONS} under the "
                            f"folder given by --nnc-coco or ${ENV_VAR})")


def _read_annotations(path: Path) -> dict:
    if not path.is_file():
        raise _fail(path, "annotation file missing")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(path, f"not a readable JSON file: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                     "categories")):
        raise _fail(path, "not a COCO instances file: needs the lists 'images', 'annotations' and 'categories'")
    return data


def _ground_truth(path: Path, data: dict) -> tuple[list[dict], dict[int, CocoGroundTruth]]:
    """Images sorted by id and each image's ground truth; errors name the file and the record."""
    try:
        for c in data["categories"]:
            coco_label(c["id"], c.get("name"))
        known = {int(c["id"]) for c in data["categories"]}
        images = sorted(data["images"], key=lambda im: int(im["id"]))
        per_image: dict[int, list] = {int(im["id"]): [] for im in images}
        for a in data["annotations"]:
            if int(a["category_id"]) not in known:
                raise ValueError(f"annotation {a.get('id')!r}: category_id {a['category_id']!r} is not in 'categories'")
            if int(a["image_id"]) not in per_image:
                raise ValueError(f"annotation {a.get('id')!r}: image_id {a['image_id']!r} is not in 'images'")
            x, y, w, h = (float(v) for v in a["bbox"])
            if not (w >= 0 and h >= 0):
                raise ValueError(f"annotation {a.get('id')!r}: bbox {a['bbox']} has a negative size")
            crowd = bool(a.get("iscrowd", 0))
            per_image[int(a["image_id"])].append(([x, y, x + w, y + h], int(a["category_id"]), crowd))
        for im in images:
            if not isinstance(im.get("file_name"), str) or os.sep in im["file_name"] or im["file_name"].startswith("."):
                raise ValueError(f"image {im.get('id')!r}: file_name {im.get('file_name')!r} is not a plain file name")
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"{type(exc).__name__}: {exc}") from None
    truths = {}
    for image_id, objs in per_image.items():
        regular = [o for o in objs if not o[2]]
        crowd = [o for o in objs if o[2]]
        truths[image_id] = CocoGroundTruth(
            np.array([o[0] for o in regular], np.float32).reshape(-1, 4), np.array([o[1] for o in regular], np.int64),
            np.array([o[0] for o in crowd], np.float32).reshape(-1, 4), np.array([o[1] for o in crowd], np.int64))
    return images, truths


def coco_source(source: str | os.PathLike | None = None) -> str | None:
    """The COCO folder of a run: ``source`` (``--nnc-coco``), else ``$NNCONFORM_COCO_DIR``, else None."""
    return str(source) if source else (os.environ.get(ENV_VAR) or None)


def load_coco_val(source: str | os.PathLike | None = None, *, subset: int | None = None) -> CocoDataset:
    """COCO val2017 from a local folder (``source``, else ``$NNCONFORM_COCO_DIR``): every image in id order, or
    the first ``subset`` of them (fewer than val2017's 5,000 images: a smoke set). No folder given: :class:`DatasetUnavailable` (the cases skip). A folder that
    does not load (annotation file missing or invalid, an image missing): :class:`DatasetLoadError` naming the
    file (its cases fail; nothing else is used instead)."""
    folder = coco_source(source)
    if folder is None:
        raise DatasetUnavailable(f"COCO val2017 not given: pass --nnc-coco DIR (or set ${ENV_VAR}) to a folder "
                                 f"holding {IMAGES}/*.jpg and {ANNOTATIONS} (cocodataset.org val2017.zip and "
                                 f"annotations_trainval2017.zip)")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise _fail(root, "not a folder (only a local COCO folder is read; nothing is downloaded)")
    ann_path = root / ANNOTATIONS
    data = _read_annotations(ann_path)
    images, truths = _ground_truth(ann_path, data)
    if subset is not None:
        if subset < 1:
            raise ValueError(f"COCO subset must be a positive number of images, got {subset}")
        images = images[:subset]
    digests = []
    for im in images:
        path = root / IMAGES / im["file_name"]
        if not path.is_file():
            raise _fail(path, f"image {im['id']} of {ann_path.name} is missing")
        digests.append(sha256_file(path))
    ids = tuple(int(im["id"]) for im in images)
    labels = tuple(truths[i] for i in ids)
    # the annotation file's bytes, each image's bytes and which images: any change gives another fingerprint
    fp = sha256_bytes(json.dumps({"annotations": sha256_file(ann_path), "images": list(zip(ids, digests))}).encode())
    n = len(ids)
    crowd = sum(len(t.crowd_classes) for t in labels)
    notes = (f"ground truth: {sum(len(t) for t in labels)} boxes, {crowd} crowd regions (ignored as COCOeval does)",)
    if n < DOCUMENTED_EVAL_SIZE:
        notes += (f"subset: {n} of COCO val2017's {DOCUMENTED_EVAL_SIZE} images (first in image-id order); "
                  f"documented box mAP is measured on all {DOCUMENTED_EVAL_SIZE}, so a subset is judged as a smoke "
                  f"check (the documented mAP inside the 95% bootstrap interval over images)",)
    return CocoDataset(name=COCO_DATASET, split="val", root=root, files=tuple(im["file_name"] for im in images),
                       image_ids=ids, labels=labels, classes=torchvision_categories(),
                       source=f"COCO val2017 at {root} ({n} images)", fingerprint=fp, notes=notes,
                       smoke=n < DOCUMENTED_EVAL_SIZE)
