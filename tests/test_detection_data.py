"""Fashion-MNIST mosaics: deterministic bytes and fingerprint, valid boxes, split sources, the dataset interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnconform.data import Preprocess, load_dataset, load_fashion_mnist
from nnconform.detection.data import INK, MAX_IOU, SIZE, fingerprint, load_mosaic_dataset, make_mosaics
from nnconform.tasks.detection import box_iou


@pytest.fixture(scope="module")
def items():
    ds = load_fashion_mnist("test")
    return ds.images[:300, 0].numpy(), ds.labels[:300].numpy()


def test_same_seed_same_bytes_other_seed_other_bytes(items):
    a, ta = make_mosaics(*items, 40, seed=7)
    b, tb = make_mosaics(*items, 40, seed=7)
    c, tc = make_mosaics(*items, 40, seed=8)
    assert a.tobytes() == b.tobytes() and fingerprint(a, ta) == fingerprint(b, tb)
    assert fingerprint(a, ta) != fingerprint(c, tc)
    # the fingerprint covers the ground truth too: one moved box changes it
    moved = [type(t)(t.boxes + (1 if i == 0 else 0), t.classes) for i, t in enumerate(ta)]
    assert fingerprint(a, moved) != fingerprint(a, ta)


def test_boxes_are_tight_inside_the_canvas_and_overlaps_limited(items):
    canvases, truths = make_mosaics(*items, 60, seed=1)
    assert canvases.shape == (60, SIZE, SIZE) and canvases.dtype == np.uint8
    counts = [len(t) for t in truths]
    assert min(counts) >= 1 and max(counts) <= 4
    for canvas, t in zip(canvases, truths):
        assert ((t.boxes >= 0) & (t.boxes <= SIZE)).all() and (t.boxes[:, 2:] > t.boxes[:, :2]).all()
        assert ((0 <= t.classes) & (t.classes < 10)).all()
        for x1, y1, x2, y2 in t.boxes.astype(int):
            inside = canvas[y1:y2, x1:x2]
            assert (inside[0] > INK).any() or (inside[:, 0] > INK).any()  # tight: ink on an edge of the box
        iou = box_iou(t.boxes, t.boxes)
        assert (iou[~np.eye(len(t), dtype=bool)] <= MAX_IOU + 1e-6).all()
    assert (canvases.reshape(60, -1).max(1) > INK).all()


def test_the_evaluation_set_uses_the_test_split_and_is_labelled_synthetic():
    ds = load_dataset("fmnist-mosaic", "test")
    assert ds is load_mosaic_dataset("test") and len(ds) == 500 and ds.images.shape == (500, 1, SIZE, SIZE)
    assert "Fashion-MNIST mosaics" in ds.source and "Fashion-MNIST test" in ds.source
    assert any("synthetic" in note for note in ds.notes)
    assert ds.task.name == "detection" and ds.task.num_classes == 10
    with pytest.raises(ValueError, match="split must be one of"):
        load_mosaic_dataset("validation")


def test_subset_and_batches():
    ds = load_mosaic_dataset("test")
    sub = ds.subset([3, 1, 4])
    assert len(sub) == 3 and sub.fingerprint != ds.fingerprint and sub.labels[0] is ds.labels[3]
    assert torch.equal(sub.images[2], ds.images[4])
    pre = Preprocess(mean=(0.1,), std=(0.25,), channels=1)
    batches = list(sub.batches(pre, 2))
    assert [len(y) for _, y in batches] == [2, 1] and batches[0][0].shape == (2, 1, SIZE, SIZE)
    assert batches[0][0].dtype == torch.float32
