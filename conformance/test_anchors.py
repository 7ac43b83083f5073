"""Anchor conformance: every anchor is the model its manifest says it is.

Weights match their pinned sha256, the documented accuracy is reproduced on the anchor's
dataset, parameters and MACs match the documented figures, evaluation is deterministic, and
inference latency is measured. The checks live in :mod:`nnconform.anchor_checks`.
"""

from __future__ import annotations

import pytest
import torch

from nnconform import anchor_checks as checks
from nnconform.anchors import list_anchors

pytestmark = pytest.mark.criterion("anchors")

ANCHORS = list_anchors()


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_weights_sha256(anchor_name, nnc_session, nnc_record, load_or_skip):
    """The weights file is the one the manifest pins (full sha256 of the file's bytes)."""
    rec = nnc_record(load_or_skip(checks.check_weights_sha256, nnc_session.anchor(anchor_name), subject=anchor_name))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_documented_accuracy(anchor_name, nnc_session, nnc_record, load_or_skip):
    """Top-1 on the anchor's dataset reproduces the documented figure within the anchor's tolerance; on the
    20-image offline ImageNet sample set, a smoke check (the documented figure inside the 95% Wilson interval)."""
    anchor = nnc_session.anchor(anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=anchor_name)
    result = load_or_skip(nnc_session.reference, anchor_name, subject=anchor_name)
    rec = nnc_record(checks.check_documented_accuracy(anchor, dataset, result))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_params_and_macs(anchor_name, nnc_session, nnc_record, load_or_skip):
    """Parameter and MAC counts (torch.utils.flop_counter; an ONNX anchor's from its graph) match the documented
    values."""
    rec = nnc_record(load_or_skip(checks.check_params_macs, nnc_session.anchor(anchor_name), subject=anchor_name))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_deterministic_evaluation(anchor_name, nnc_session, nnc_record, load_or_skip):
    """Two evaluations of the same model on the same data give bit-identical logits."""
    anchor = nnc_session.anchor(anchor_name)
    model = load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=anchor_name)
    rec = nnc_record(checks.check_deterministic(anchor, model, dataset))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_inference_latency(anchor_name, nnc_session, nnc_record, load_or_skip, benchmark):
    """CPU latency of one batch of 32 (pytest-benchmark; reported, never asserted on time)."""
    anchor = nnc_session.anchor(anchor_name)
    model = load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    x = torch.zeros((checks.LATENCY_BATCH, *anchor.input_shape))
    benchmark.group = "anchor-latency"
    with torch.inference_mode():
        out = benchmark.pedantic(model, args=(x,), rounds=5, warmup_rounds=1)
    # a classifier returns [batch, classes]; another task's outputs (ASR: [batch, frames, vocabulary]) need only
    # the batch's leading size
    expected = (checks.LATENCY_BATCH, anchor.num_classes) if anchor.task == "classification" else None
    rec = nnc_record(checks.latency_record(anchor_name, benchmark, out, expected))
    assert rec.passed, rec.message
