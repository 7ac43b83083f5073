"""A compressed or coded model significantly better than its reference is flagged (issue 11 item 6): the accuracy
record's details carry ``suspicious_gain`` and its message says so; an ordinary result is not flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnconform.compress.checks import check_accuracy
from nnconform.compress.metrics import compute_metrics
from nnconform.suspicious_gain import suspicious_gain
from nnconform.updates.checks import check_update_accuracy

N, CLASSES = 2000, 10


def logits_right_on(correct: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
    """Logits that predict ``labels`` where ``correct`` is True and the next class elsewhere."""
    out = torch.zeros(len(labels), CLASSES)
    pred = torch.where(torch.from_numpy(correct), labels, (labels + 1) % CLASSES)
    out[torch.arange(len(labels)), pred] = 5.0
    return out


@pytest.fixture(scope="module")
def outcomes():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, CLASSES, N))
    ref = rng.random(N) < 0.85
    better = ref | (rng.random(N) < 0.5)  # fixes half of the reference's mistakes: about +7.5 points
    return labels, ref, better


def metrics(labels, ref, new):
    return compute_metrics(logits_right_on(ref, labels), logits_right_on(new, labels), labels,
                           tuple(str(i) for i in range(CLASSES)), bytes_ref=1000, nbytes=100, params_ref=10, params=10,
                           macs_ref=10, macs=10)


@pytest.mark.parametrize("claim", ["99%", None])
def test_a_significant_gain_is_flagged_in_the_compression_record(outcomes, claim):
    labels, ref, better = outcomes
    rec = check_accuracy("anchor/method/point", metrics(labels, ref, better), claim)
    gain = rec.details["suspicious_gain"]
    assert gain["delta_ci95"][0] > gain["margin"] > 0
    assert "SUSPICIOUS GAIN" in rec.message
    assert gain["tier"] == (claim or "transparent")


def test_an_equal_model_is_not_flagged(outcomes):
    labels, ref, _ = outcomes
    rec = check_accuracy("anchor/method/point", metrics(labels, ref, ref), "99%")
    assert "suspicious_gain" not in rec.details and "SUSPICIOUS" not in rec.message and rec.passed


def test_a_gain_within_the_margin_is_not_flagged():
    """The interval must clear the margin, not just zero."""
    assert suspicious_gain((0.005, 0.02), 0.9, "99%") is None  # margin 0.009: the interval starts below it
    assert suspicious_gain((0.010, 0.02), 0.9, "99%") is not None


def test_a_significant_gain_is_flagged_in_the_update_record(outcomes):
    _, ref, better = outcomes
    rec = check_update_accuracy("lineage/codec", target_correct=ref, recon_correct=better, claim="99%",
                                update_bytes=10, full_bytes=100, agreement=0.9)
    assert rec.details["suspicious_gain"]["tier"] == "99%" and "SUSPICIOUS GAIN" in rec.message
    same = check_update_accuracy("lineage/codec", target_correct=ref, recon_correct=ref, claim="99%",
                                 update_bytes=10, full_bytes=100, agreement=1.0)
    assert "suspicious_gain" not in same.details
