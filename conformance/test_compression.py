"""Compression (issue 3): compressed vs uncompressed models.

For each (anchor, method, operating point) of ``anchors/compression.toml``:

* the method's artifact is real bytes that decode, on a NaN-filled copy of the architecture, to a
  model that runs, has the anchor's output shape and finite logits, and computes what the
  method's own result computes; the size the method reports is the artifact's length;
* the decoded model is compared with the anchor on the same test samples: accuracy and its
  change (absolute, relative, paired bootstrap CI, McNemar), top-1 agreement, mean KL, worst
  per-class drop, bytes ratio, parameter and MAC reduction; the case fails when the tier the
  point claims is not met, and reports the strictest tier it meets either way;
* CPU latency of the decoded model is timed by pytest-benchmark.

The calibration samples are a fixed list of training images, checked disjoint from the test set.
ImageNet anchors run offline on the 20 foolbox ImageNet samples: 10 calibrate, the other 10 are a
smoke evaluation (agreement and KL are reported; accuracy is not gated on 10 images).
The work is the engine's (:mod:`nnconform.compress.runs`, :mod:`nnconform.compress.checks`).
"""

from __future__ import annotations

import pytest
import torch

from nnconform import kit, proposal
from nnconform.anchors import get_anchor
from nnconform.compress.calibration import calibration_dataset_name
from nnconform.compress.checks import check_size_claim, latency_record, not_evaluated
from nnconform.compress.plan import CompressionPoint, load_plan
from nnconform.compress.runs import CompressionRuns
from nnconform.records import CheckRecord, Status

pytestmark = pytest.mark.criterion("compression")

PLAN = load_plan().with_proposals(proposal.compression_points())
ARTIFACT_CHECKS = ("compression.compress", "compression.size_reported", "compression.decode", "compression.output",
                   "compression.artifact_consistency")
LATENCY_BATCH = 32


def _run_tier(point: CompressionPoint) -> str:
    # a proposal's point runs in every run tier: a claim outside the run's tier would pass unverified
    return "quick" if point.proposal else point.run_tier


def _case_params(floor: str | None = None):
    """One param per operating point, marked with its run tier (raised to ``floor``: latency runs from default)."""
    for point in PLAN.points:
        yield pytest.param(point.anchor, point, id=point.id, marks=[pytest.mark.tier(kit.later(_run_tier(point), floor))])


def _anchor_params(floor: str | None = None):
    for anchor in PLAN.anchors():
        lowest = min((_run_tier(p) for p in PLAN.for_anchor(anchor)), key=kit.RUN_TIERS.index)
        yield pytest.param(anchor, id=anchor, marks=[pytest.mark.tier(kit.later(lowest, floor))])


@pytest.fixture(scope="session")
def compression(request, nnc_session) -> CompressionRuns:
    """The run's compression state (anchors, calibration sets, outcomes; each computed once)."""
    return kit.criterion_state(request.config, "compression", lambda: CompressionRuns(nnc_session, PLAN))


@pytest.fixture
def case_outcome(compression, nnc_session, load_or_skip, nnc_record):
    """The outcome of one case; skips when the anchor's weights, data or a method's package are missing,
    with the exact message."""

    def get(point: CompressionPoint):
        for loader in (nnc_session.model, nnc_session.dataset, nnc_session.reference):
            load_or_skip(loader, point.anchor, subject=point.subject)
        try:
            load_or_skip(compression.calibration_for, point.anchor, subject=point.subject)
        except LookupError as exc:
            nnc_record(CheckRecord("compression.calibration", point.subject, Status.SKIP, message=str(exc)))
            pytest.skip(str(exc))
        out = compression.outcome(point)
        if out.skip_reason:
            nnc_record(CheckRecord("compression.compress", point.subject, Status.SKIP, message=out.skip_reason))
            pytest.skip(out.skip_reason)
        return out

    return get


def _calibration_params():
    """One param per calibration list, marked with the anchors that calibrate on it (deselected without them)."""
    users: dict[str, list[str]] = {}
    for anchor in PLAN.anchors():
        users.setdefault(calibration_dataset_name(get_anchor(anchor).dataset), []).append(anchor)
    for name in PLAN.calibration:
        yield pytest.param(name, id=name, marks=[pytest.mark.anchors(*users.get(name, ()))])


@pytest.mark.parametrize("dataset_name", list(_calibration_params()))
def test_calibration_disjoint(dataset_name, compression, nnc_record, load_or_skip):
    """The calibration list names distinct samples that exist, and none of its images is byte-identical to an
    image the cases evaluate on (the test split, or for a list carved out of a smoke set, the rest of it)."""
    from nnconform.data import load_dataset

    def load(*args, **kwargs):
        return load_or_skip(load_dataset, *args, subject=f"calibration/{dataset_name}", **kwargs)

    rec = nnc_record(compression.check_calibration_list(dataset_name, load))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name,point", list(_case_params()))
def test_compressed_artifact(anchor_name, point, case_outcome, nnc_record):
    """The artifact decodes on a NaN-filled template to a model with the anchor's output shape and finite logits,
    that model computes what the method's own result computes (the evaluated model is the one rebuilt from the
    artifact) and gives the same output twice, the size the method reports is the artifact's length, and it is no
    larger than the size the point claims."""
    out = case_outcome(point)
    for rec in out.records:
        nnc_record(rec)
    failure = out.failure
    assert failure is None, f"{failure.check_id}: {failure.message}" if failure else ""
    if point.claimed_bytes is not None:
        rec = nnc_record(check_size_claim(point, out.artifact))
        assert rec.passed, rec.message
    assert {r.check_id for r in out.records} >= set(ARTIFACT_CHECKS), \
        f"missing checks: {set(ARTIFACT_CHECKS) - {r.check_id for r in out.records}}"


@pytest.mark.parametrize("anchor_name,point", list(_case_params()))
def test_compressed_accuracy(anchor_name, point, case_outcome, nnc_record):
    """The decoded model meets the accuracy tier the point claims (non-inferiority of paired per-sample results,
    anchors/tiers.toml); the record carries accuracy and delta, agreement, KL, worst class, McNemar, bytes ratio,
    parameter and MAC reduction, and the strictest tier met."""
    out = case_outcome(point)
    if out.accuracy is None:
        rec = nnc_record(not_evaluated(point.subject, point.claimed_tier, out.failure))
        pytest.fail(rec.message, pytrace=False)
    rec = nnc_record(out.accuracy)
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", list(_anchor_params(floor="default")))
def test_reference_latency(anchor_name, nnc_session, load_or_skip, benchmark, nnc_record):
    """CPU latency of the uncompressed anchor on a batch of 32 (the baseline of every compressed latency)."""
    model = load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    x = torch.zeros(LATENCY_BATCH, *nnc_session.anchor(anchor_name).input_shape)
    benchmark.group = f"compression-{anchor_name}"
    benchmark.extra_info.update(anchor=anchor_name, method="reference", batch=LATENCY_BATCH)
    with torch.inference_mode():
        out = benchmark.pedantic(model, args=(x,), rounds=5, warmup_rounds=1)
    rec = nnc_record(latency_record(anchor_name, benchmark, out, LATENCY_BATCH))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name,point", list(_case_params(floor="default")))
def test_compressed_latency(anchor_name, point, case_outcome, nnc_session, benchmark, nnc_record):
    """CPU latency of the decoded compressed model on a batch of 32 (pytest-benchmark; never asserted on time)."""
    out = case_outcome(point)
    if out.decoded is None:
        failure = out.failure
        pytest.fail(f"no decoded model to time: {failure.check_id}: {failure.message}" if failure
                    else "no decoded model to time", pytrace=False)
    x = torch.zeros(LATENCY_BATCH, *nnc_session.anchor(point.anchor).input_shape)
    benchmark.group = f"compression-{point.anchor}"
    benchmark.extra_info.update(anchor=point.anchor, method=point.method, label=point.label, batch=LATENCY_BATCH)
    with torch.inference_mode():
        result = benchmark.pedantic(out.decoded, args=(x,), rounds=5, warmup_rounds=1)
    rec = nnc_record(latency_record(point.subject, benchmark, result, LATENCY_BATCH))
    assert rec.passed, rec.message
