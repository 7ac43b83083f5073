"""Compression (issue 3): compressed vs uncompressed models.

For each (anchor, method, operating point) of ``anchors/compression.toml``:

* the method's artifact is real bytes that decode, on a NaN-filled copy of the architecture, to a
  model that runs, has the anchor's output shape and finite logits, and computes what the
  method's own result computes; the size the method reports is the artifact's length;
* the decoded model is compared with the anchor on the same test samples: accuracy and its
  change (absolute, relative, paired bootstrap CI, McNemar), top-1 agreement, mean KL, worst
  per-class drop, bytes ratio, parameter and MAC reduction; the case fails when the tier the
  method claims is not met, and reports the strictest tier it meets either way;
* CPU latency of the decoded model is timed by pytest-benchmark.

The calibration samples are a fixed list of training images, checked disjoint from the test set.
ImageNet anchors run offline on the 20 foolbox ImageNet samples: 10 calibrate, the other 10 are a
smoke evaluation (agreement and KL are reported; accuracy is not gated on 10 images).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnconform import proposal
from nnconform.compress.runner import AnchorUnderTest, CaseOutcome, run_case
from nnconform.compress.suite import (RUN_TIERS, OperatingPoint, build_calibration, calibration_dataset_name,
                                      load_suite, overlapping_images)
from nnconform.records import CheckRecord, Status, gate

pytestmark = pytest.mark.criterion("compression")

SUITE = load_suite().with_points(proposal.compression_points())
ARTIFACT_CHECKS = ("compression.compress", "compression.size_reported", "compression.decode", "compression.output",
                   "compression.artifact_consistency")
LATENCY_BATCH = 32


def _at_least(tier: str, floor: str | None) -> str:
    return tier if floor is None or RUN_TIERS.index(tier) >= RUN_TIERS.index(floor) else floor


def _case_params(floor: str | None = None):
    """One param per operating point, marked with its run tier (raised to ``floor``: latency runs from default)."""
    for point in SUITE.points:
        yield pytest.param(point.anchor, point, id=point.id, marks=[pytest.mark.tier(_at_least(point.run_tier, floor))])


def _anchor_params(floor: str | None = None):
    for anchor in SUITE.anchors():
        lowest = min((p.run_tier for p in SUITE.for_anchor(anchor)), key=RUN_TIERS.index)
        yield pytest.param(anchor, id=anchor, marks=[pytest.mark.tier(_at_least(lowest, floor))])


class _Runs:
    """Anchors, calibration sets and case outcomes, each computed once per session."""

    def __init__(self) -> None:
        self.anchors: dict[str, AnchorUnderTest] = {}
        self.calibration: dict[str, object] = {}
        self.outcomes: dict[str, CaseOutcome] = {}

    def eval_dataset(self, session, name: str):
        """The anchor's evaluation set; when the calibration list is carved out of a smoke set (the offline
        ImageNet samples), the samples not in the list."""
        anchor = session.anchor(name)
        dataset = session.dataset(anchor)
        spec = SUITE.calibration.get(calibration_dataset_name(anchor.dataset))
        if spec is not None and spec.evaluate_on_rest and dataset.name == (spec.source or spec.dataset):
            taken = set(spec.indices)
            dataset = dataset.subset([i for i in range(len(dataset)) if i not in taken], "-minus-calibration")
        return dataset

    def anchor(self, session, name: str) -> AnchorUnderTest:
        if name not in self.anchors:
            anchor = session.anchor(name)
            model = session.model(name)
            dataset = self.eval_dataset(session, name)
            ref = session.evaluator.evaluate(model, dataset, anchor.preprocess)
            self.anchors[name] = AnchorUnderTest(name, model, tuple(anchor.input_shape), anchor.num_classes,
                                                 tuple(dataset.classes), ref.logits, ref.labels, dataset.smoke)
        return self.anchors[name]

    def calibration_for(self, session, name: str):
        anchor = session.anchor(name)
        key = f"{calibration_dataset_name(anchor.dataset)}|{anchor.preprocess.to_dict()}"
        if key not in self.calibration:
            spec_name = calibration_dataset_name(anchor.dataset)
            if spec_name not in SUITE.calibration:
                raise LookupError(f"anchors/compression.toml has no [calibration.{spec_name}] list for anchor "
                                  f"{name} (dataset {anchor.dataset})")
            self.calibration[key] = build_calibration(SUITE.calibration[spec_name], anchor.preprocess,
                                                      data_dir=session.config.data_dir)
        return self.calibration[key]

    def outcome(self, session, point: OperatingPoint) -> CaseOutcome:
        if point.id not in self.outcomes:
            aut = self.anchor(session, point.anchor)
            calibration = self.calibration_for(session, point.anchor)
            anchor = session.anchor(point.anchor)
            dataset = self.eval_dataset(session, point.anchor)

            def evaluate(model: torch.nn.Module) -> torch.Tensor:
                return session.evaluator.evaluate(model, dataset, anchor.preprocess).logits

            cache = Path(session.config.cache_dir) if session.config.cache_dir else None
            self.outcomes[point.id] = run_case(point, aut, calibration, evaluate=evaluate, cache_dir=cache)
        return self.outcomes[point.id]


@pytest.fixture(scope="session")
def compression_runs() -> _Runs:
    return _Runs()


@pytest.fixture
def case_outcome(compression_runs, nnc_session, load_or_skip, nnc_record):
    """The outcome of one case (computed once); skips when the anchor's weights, data or a method's
    package are missing, with the exact message."""

    def get(point: OperatingPoint) -> CaseOutcome:
        load_or_skip(nnc_session.model, point.anchor, subject=point.subject)
        load_or_skip(nnc_session.dataset, point.anchor, subject=point.subject)
        load_or_skip(nnc_session.reference, point.anchor, subject=point.subject)
        try:
            load_or_skip(compression_runs.calibration_for, nnc_session, point.anchor, subject=point.subject)
        except LookupError as exc:
            nnc_record(CheckRecord("compression.calibration", point.subject, Status.SKIP, message=str(exc)))
            pytest.skip(str(exc))
        out = compression_runs.outcome(nnc_session, point)
        if out.skip_reason:
            nnc_record(CheckRecord("compression.compress", point.subject, Status.SKIP, message=out.skip_reason))
            pytest.skip(out.skip_reason)
        return out

    return get


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset_name", list(SUITE.calibration))
def test_calibration_disjoint(dataset_name, nnc_session, nnc_record, load_or_skip):
    """The calibration list names distinct samples that exist, and none of its images is byte-identical to an
    image the cases evaluate on (the test split, or for a list carved out of a smoke set, the rest of it)."""
    from nnconform.data import load_dataset

    spec = SUITE.calibration[dataset_name]
    source = spec.source or spec.dataset
    subject = f"calibration/{dataset_name}"
    pool = load_or_skip(load_dataset, source, spec.split, data_dir=nnc_session.config.data_dir, subject=subject)
    in_range = max(spec.indices) < len(pool)
    overlap, evaluated = None, None
    if in_range:
        if spec.evaluate_on_rest:
            taken = set(spec.indices)
            evaluation = pool.subset([i for i in range(len(pool)) if i not in taken])
        else:
            evaluation = load_or_skip(load_dataset, source, "test", data_dir=nnc_session.config.data_dir,
                                      subject=subject)
        evaluated = len(evaluation)
        overlap = overlapping_images(pool.subset(spec.indices).images, evaluation.images)
    ok = in_range and overlap == 0 and evaluated > 0
    message = (f"{len(spec.indices)} {source}/{spec.split} samples ({spec.rule}); index list sha256 "
               f"{spec.index_sha256}; {overlap} of them identical to one of the {evaluated} evaluated images"
               if in_range else f"index {max(spec.indices)} is beyond the {len(pool)} {source}/{spec.split} samples")
    rec = nnc_record(gate("compression.calibration", subject, ok, measured=overlap, expected=0, criterion="compression",
                          message=message, details={"indices": len(spec.indices), "index_sha256": spec.index_sha256,
                                                    "rule": spec.rule, "split": spec.split, "source": source,
                                                    "evaluated_samples": evaluated}))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name,point", list(_case_params()))
def test_compressed_artifact(anchor_name, point, case_outcome, nnc_record):
    """The artifact decodes on a NaN-filled template to a model with the anchor's output shape and finite logits,
    that model computes what the method's own result computes (the evaluated model is the one rebuilt from the
    artifact) and gives the same output twice, the size the method reports is the artifact's length, and it is no
    larger than the size a proposal claims."""
    out = case_outcome(point)
    for rec in out.records:
        nnc_record(rec)
    failure = out.failure
    assert failure is None, f"{failure.check_id}: {failure.message}" if failure else ""
    if point.claimed_bytes is not None:
        nbytes = out.artifact.nbytes
        rec = nnc_record(gate("compression.size_claim", point.subject, nbytes <= point.claimed_bytes, measured=nbytes,
                              expected=point.claimed_bytes, criterion="compression",
                              message=f"artifact {nbytes} bytes {'<=' if nbytes <= point.claimed_bytes else '>'} the "
                                      f"{point.claimed_bytes} bytes proposal {point.proposal!r} claims",
                              details={"proposal": point.proposal, "files": out.artifact.sizes()}))
        assert rec.passed, rec.message
    assert {r.check_id for r in out.records} >= set(ARTIFACT_CHECKS), \
        f"missing checks: {set(ARTIFACT_CHECKS) - {r.check_id for r in out.records}}"


@pytest.mark.parametrize("anchor_name,point", list(_case_params()))
def test_compressed_accuracy(anchor_name, point, case_outcome, nnc_record):
    """The decoded model meets the accuracy tier the method claims at this operating point (non-inferiority of
    paired per-sample results, anchors/tiers.toml); the record carries accuracy and delta, agreement, KL, worst
    class, McNemar, bytes ratio, parameter and MAC reduction, and the strictest tier met."""
    out = case_outcome(point)
    if out.accuracy is None:
        failure = out.failure
        rec = nnc_record(CheckRecord("compression.accuracy", point.subject, Status.ERROR, criterion="compression",
                                     expected=point.config.claimed_tier,
                                     message=f"not evaluated: {failure.check_id} failed: {failure.message}"
                                     if failure else "not evaluated"))
        pytest.fail(rec.message, pytrace=False)
    rec = nnc_record(out.accuracy)
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", list(_anchor_params(floor="default")))
def test_reference_latency(anchor_name, nnc_session, load_or_skip, benchmark, nnc_record):
    """CPU latency of the uncompressed anchor on a batch of 32 (the baseline of every compressed latency)."""
    model = load_or_skip(nnc_session.model, anchor_name, subject=anchor_name)
    anchor = nnc_session.anchor(anchor_name)
    x = torch.zeros(LATENCY_BATCH, *anchor.input_shape)
    benchmark.group = f"compression-{anchor_name}"
    benchmark.extra_info.update(anchor=anchor_name, method="reference", batch=LATENCY_BATCH)
    with torch.inference_mode():
        out = benchmark.pedantic(model, args=(x,), rounds=5, warmup_rounds=1)
    rec = nnc_record(_latency_record(anchor_name, benchmark, out, anchor.num_classes))
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
    rec = nnc_record(_latency_record(point.subject, benchmark, result, None))
    assert rec.passed, rec.message


def _latency_record(subject: str, benchmark, out, num_classes: int | None) -> CheckRecord:
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    mean = getattr(stats, "mean", None)
    ok = isinstance(out, torch.Tensor) and out.shape[0] == LATENCY_BATCH and bool(torch.isfinite(out).all())
    return CheckRecord("compression.latency", subject, Status.INFO if ok else Status.FAIL,
                       measured=mean, criterion="compression",
                       message=(f"mean {mean * 1e3:.2f} ms per batch of {LATENCY_BATCH}" if mean is not None
                                else "timing disabled (--benchmark-disable)") if ok
                       else "the timed model did not return finite logits for the batch",
                       details={"batch": LATENCY_BATCH, "median": getattr(stats, "median", None),
                                "stddev": getattr(stats, "stddev", None), "rounds": getattr(stats, "rounds", None)})
