"""The embedded detector: its architecture (fx-traceable, multi-tensor FPN, fixed-shape outputs), its manifest
entry and weights, and a planted degraded detector failing its tier against the committed one."""

from __future__ import annotations

import pytest
import torch

from nnconform.anchors import get_anchor
from nnconform.data import load_dataset
from nnconform.detection.model import STRIDES, TinyFPNDetector
from nnconform.evaluate import forward_outputs
from nnconform.gates import non_inferiority
from nnconform.profile import count_params

ANCHOR = "fmnist-mosaic-det"


def test_architecture_is_traceable_and_outputs_fixed_shape_boxes_and_logits():
    model = TinyFPNDetector().eval()
    locations = sum((96 // s) ** 2 for s in STRIDES)
    out = model(torch.rand(2, 1, 96, 96))
    assert out.shape == (2, locations, 14)
    boxes = out[..., :4]
    assert (boxes[..., 2:] >= boxes[..., :2]).all() and ((boxes >= 0) & (boxes <= 96)).all()
    graph = torch.fx.symbolic_trace(model)
    assert torch.equal(graph(torch.ones(1, 1, 96, 96)), model(torch.ones(1, 1, 96, 96)))
    smooth = [n.target for n in graph.graph.nodes if n.op == "call_module" and str(n.target).startswith("smooth")]
    assert {s.split(".")[0] for s in smooth} == {"smooth3", "smooth4", "smooth5"}  # three FPN levels
    assert 100_000 <= count_params(model) <= 400_000


def test_manifest_entry_and_lineage():
    anchor = get_anchor(ANCHOR)
    assert anchor.task == "detection" and anchor.dataset == "fmnist-mosaic" and anchor.family == "zoo"
    assert 0 < anchor.metrics["map"] <= anchor.metrics["map50"] <= 1
    assert [c.name for c in anchor.checkpoints][-1] == "finetune" and len(anchor.checkpoints) >= 3
    assert all(c.map is not None and 0 < c.map < 1 for c in anchor.checkpoints)
    assert count_params(anchor.build()) == anchor.num_params


@pytest.fixture(scope="module")
def evaluation():
    anchor = get_anchor(ANCHOR)
    dataset = load_dataset(anchor.dataset, "test").subset(range(200))
    model = anchor.build()
    return anchor, dataset, model, dataset.task.scores(forward_outputs(model, dataset, anchor.preprocess, 100,
                                                                         dataset.task), dataset.labels)


def test_identical_detector_is_transparent(evaluation):
    anchor, dataset, model, ref = evaluation
    again = dataset.task.scores(forward_outputs(model, dataset, anchor.preprocess, 50, dataset.task), dataset.labels)
    assert non_inferiority(ref, again, "transparent", dataset.task).passed


def test_planted_degraded_detector_fails_its_tier(evaluation):
    anchor, dataset, _, ref = evaluation
    degraded = anchor.build()
    with torch.no_grad():  # coarse box regression weights: boxes drift, classes stay
        w = degraded.box_head.weight
        w.copy_(torch.round(w * 8) / 8)
    worse = dataset.task.scores(forward_outputs(degraded, dataset, anchor.preprocess, 100, dataset.task),
                                dataset.labels)
    result = non_inferiority(ref, worse, "99%", dataset.task)
    assert not result.passed and "exceeds" in result.reason, result.reason
