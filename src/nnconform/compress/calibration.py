"""Calibration lists of the compression criterion: fixed training-sample indices, and their data.

The lists live in ``anchors/compression.toml`` (``[calibration.<dataset>]``; read by
:func:`nnconform.compress.plan.load_plan`); this module holds their shape, builds a list's
preprocessed images for an anchor and checks that none is an evaluation image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..hashing import arrays_sha256
from ..kit import PlanError
from .base import CalibrationSet


@dataclass(frozen=True)
class CalibrationSpec:
    """A fixed list of sample indices of a dataset split, and how it was drawn.

    ``dataset`` names the list (``fashion-mnist``, ``imagenet``); ``source`` is the dataset the
    indices point into when it differs (the offline ImageNet samples). ``evaluate_on_rest``: the
    list is carved out of a smoke evaluation set, so cases evaluate on the other samples only.
    """

    dataset: str
    split: str
    indices: tuple[int, ...]
    rule: str
    source: str | None = None
    evaluate_on_rest: bool = False

    def __post_init__(self) -> None:
        if not self.indices:
            raise PlanError(f"calibration.{self.dataset}.indices: the list is empty")
        if len(set(self.indices)) != len(self.indices):
            raise PlanError(f"calibration.{self.dataset}.indices: duplicate indices")
        if any(i < 0 for i in self.indices):
            raise PlanError(f"calibration.{self.dataset}.indices: negative index")
        if self.split == "test":
            raise PlanError(f"calibration.{self.dataset}.split: calibration must not come from the test split")

    @property
    def index_sha256(self) -> str:
        """Fingerprint of the index list itself (printed in the report)."""
        return arrays_sha256(np.asarray(self.indices, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Calibration data


def calibration_dataset_name(anchor_dataset: str) -> str:
    """Which calibration list an anchor uses: ImageNet anchors share the ``imagenet`` list."""
    return "imagenet" if anchor_dataset.startswith("imagenet") else anchor_dataset


def build_calibration(spec: CalibrationSpec, preprocess, *, data_dir=None, limit: int | None = None,
                      cache_dir=None) -> CalibrationSet:
    """Load the listed training samples and preprocess them for the anchor (speech: generated or laid out into
    ``cache_dir``; its labels are transcripts, so the set's ``labels`` are the sample indices instead)."""
    from ..data import load_dataset

    ds = load_dataset(spec.source or spec.dataset, spec.split, data_dir=data_dir, cache_dir=cache_dir)
    if max(spec.indices) >= len(ds):
        raise PlanError(f"calibration.{spec.dataset}: index {max(spec.indices)} is beyond the {len(ds)} samples "
                        f"of {spec.dataset}/{spec.split}")
    indices = spec.indices[:limit] if limit else spec.indices
    sub = ds.subset(indices)
    images = torch.cat([x for x, _ in sub.batches(preprocess, 500)])
    # a class label per sample where there is one; transcripts (speech) are no tensor: methods that train on
    # labels (AIMET fine-tuning, which needs Conv2d/Linear layers anyway) do not apply to such anchors
    labels = sub.labels.clone() if isinstance(sub.labels, torch.Tensor) else torch.as_tensor(indices)
    return CalibrationSet(dataset=spec.source or spec.dataset, split=spec.split, indices=tuple(indices), images=images,
                          labels=labels, fingerprint=sub.fingerprint,
                          description=f"{len(indices)} {spec.source or spec.dataset}/{spec.split} samples: {spec.rule} "
                                      f"(index list sha256 {spec.index_sha256[:16]})")


def overlapping_images(calibration_images: torch.Tensor | list, eval_images: torch.Tensor | list) -> int:
    """How many calibration images are byte-identical to an evaluation image (must be 0)."""
    import hashlib

    def digests(images) -> set[str]:
        return {hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in images}

    return len(digests(calibration_images) & digests(eval_images))


def dataset_samples(dataset) -> "torch.Tensor | tuple":
    """The raw samples of a dataset as compared for overlap: images, or a speech set's int16 waveforms."""
    images = getattr(dataset, "images", None)
    return images if images is not None else dataset.waveforms
