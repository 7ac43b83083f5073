"""Anchor conformance: every anchor is the model its manifest says it is.

Weights match their pinned sha256, the documented accuracy is reproduced on the anchor's
dataset, parameters and MACs match the documented figures, evaluation is deterministic, and
inference latency is measured.
"""

from __future__ import annotations

import pytest
import torch

from nnconform.anchors import get_anchor, list_anchors
from nnconform.evaluate import forward_logits
from nnconform.profile import count_macs, count_params
from nnconform.records import CheckRecord, Status, gate
from nnconform.stats import wilson_interval

pytestmark = pytest.mark.criterion("anchors")

ANCHORS = list_anchors()
MACS_RTOL = 0.001  # manifest MACs are published figures with 3-4 significant digits (Google's "385M")
TORCHVISION_MACS_ATOL = 0.0005e9  # torchvision's `_ops` is rounded to 3 decimals of GFLOPS (which are MACs)


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_weights_sha256(anchor_name, nnc_session, nnc_record, load_or_skip):
    """The weights file is the one the manifest pins (full sha256, checked on every load)."""
    anchor = nnc_session.anchor(anchor_name)
    load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    rec = nnc_record(gate("anchor.weights_sha256", anchor_name, True, measured=anchor.sha256, expected=anchor.sha256,
                          message=f"{anchor.weights} verified"))
    assert rec.passed


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_documented_accuracy(anchor_name, nnc_session, nnc_record, load_or_skip):
    """Top-1 on the anchor's dataset reproduces the documented figure within the anchor's tolerance.

    On the 20-image offline ImageNet sample set the check is a smoke check: it passes when the
    documented accuracy lies inside the 95% Wilson interval of the observed accuracy.
    """
    anchor = nnc_session.anchor(anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=anchor_name)
    result = load_or_skip(nnc_session.reference, anchor_name, subject=anchor_name)
    documented = anchor.metrics["top1"]
    if dataset.smoke:
        hits = int(result.correct.sum())
        lo, hi = wilson_interval(hits, len(dataset))
        rec = nnc_record(gate("anchor.accuracy_smoke", anchor_name, lo <= documented <= hi,
                              measured=result.top1, expected=documented, tolerance=[lo, hi],
                              message=f"SMOKE CHECK on {len(dataset)} {dataset.name} images ({hits} correct): "
                                      f"95% interval {lo:.3f}..{hi:.3f}; not a measurement of ImageNet accuracy",
                              details={"dataset": dataset.name, "fingerprint": dataset.fingerprint, "smoke": True}))
    else:
        diff = result.top1 - documented
        details = {"dataset": f"{dataset.name}/{dataset.split}", "samples": len(dataset),
                   "fingerprint": dataset.fingerprint, "top5": result.top5}
        rec = nnc_record(gate("anchor.accuracy", anchor_name, abs(diff) <= anchor.tolerance,
                              measured=result.top1, expected=documented, tolerance=anchor.tolerance,
                              message=f"top-1 {result.top1:.4%} vs documented {documented:.4%} "
                                      f"(difference {diff:+.4%}) on {len(dataset)} samples", details=details))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_params_and_macs(anchor_name, nnc_record):
    """Parameter and MAC counts (torch.utils.flop_counter) match the documented values."""
    anchor = get_anchor(anchor_name)
    model = anchor.build_architecture()  # no weights needed: works offline for every anchor
    params, macs = count_params(model), count_macs(model, anchor.input_shape)
    documented = {"num_params": anchor.num_params, "macs": anchor.macs}
    macs_tol = MACS_RTOL * anchor.macs
    if anchor.family == "torchvision":
        from torchvision.models import get_weight

        meta = get_weight(anchor.weights.removeprefix("torchvision:")).meta
        documented = {"num_params": meta["num_params"], "macs": int(round(meta["_ops"] * 1e9))}
        macs_tol = TORCHVISION_MACS_ATOL
    ok = params == documented["num_params"] and abs(macs - documented["macs"]) <= macs_tol
    rec = nnc_record(gate("anchor.params_macs", anchor_name, ok, measured={"num_params": params, "macs": macs},
                          expected=documented, tolerance={"num_params": 0, "macs": macs_tol},
                          message=f"{params:,} params, {macs:,} MACs at {list(anchor.input_shape)}",
                          details={"macs_difference": macs - documented["macs"]}))
    assert rec.passed, f"{rec.message}; documented {documented}"


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_deterministic_evaluation(anchor_name, nnc_session, nnc_record, load_or_skip):
    """Two evaluations of the same model on the same data give bit-identical logits."""
    anchor = nnc_session.anchor(anchor_name)
    model = load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=anchor_name)
    sample = dataset.subset(range(min(len(dataset), 1000)))
    first = forward_logits(model, sample, anchor.preprocess)
    second = forward_logits(model, sample, anchor.preprocess)
    differing = int((first != second).any(1).sum())
    rec = nnc_record(gate("anchor.deterministic", anchor_name, torch.equal(first, second), measured=differing,
                          expected=0, message=f"{differing} of {len(sample)} samples differ between two runs"))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_inference_latency(anchor_name, nnc_session, nnc_record, load_or_skip, benchmark):
    """CPU latency of one batch of 32 (pytest-benchmark; reported, never asserted)."""
    anchor = nnc_session.anchor(anchor_name)
    model = load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    x = torch.zeros((32, *anchor.input_shape))
    benchmark.group = "anchor-latency"
    with torch.inference_mode():
        out = benchmark.pedantic(model, args=(x,), rounds=5, warmup_rounds=1)
    rec = nnc_record(CheckRecord("anchor.latency", anchor_name, Status.INFO, measured=list(out.shape),
                                 message="batch 32 latency recorded by pytest-benchmark (see Latency table)"))
    assert out.shape == (32, anchor.num_classes), f"output shape {tuple(out.shape)}"
    assert rec.passed
