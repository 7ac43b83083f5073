"""Model updates (issue 4): comparing the checkpoints of a lineage, and coding the updates.

For each anchor lineage (the zoo's epochs plus the fine-tuned update; torchvision ResNet-50
IMAGENET1K_V1 -> V2, whose preprocessing changes with the weights):

* every checkpoint reproduces its documented top-1, and every pair's documented change is
  reproduced (paired test, bootstrap CI, agreement, per-class and per-layer changes);
* every update codec operating point (``anchors/updates.toml``) yields a payload that decodes,
  on its own base only, to exactly the state its header pins (bit-exact for lossless codecs);
* the model rebuilt from the update is non-inferior to the target checkpoint at the claimed
  accuracy tier; sizes are lengths of real payload bytes, ratios are to the full checkpoint;
* damaged payloads and wrong bases are refused; encode and decode are timed by pytest-benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nnconform import proposal
from nnconform.anchors import get_anchor, list_anchors
from nnconform.hashing import sha256_bytes
from nnconform.records import CheckRecord, Status, gate
from nnconform.stats import top1_agreement, wilson_interval
from nnconform.updates import CodecUnavailable, apply_update, encode_update, make_codec
from nnconform.updates.checks import (check_lineage_accuracy, check_payload_safety, check_reconstruction,
                                      check_update_accuracy, comparison_record)
from nnconform.updates.compare import compare_results, weight_changes
from nnconform.updates.plan import RUN_TIERS, LineagePair, higher_run_tier, lineage_pairs, load_plan

pytestmark = pytest.mark.criterion("updates")

PLAN = load_plan()
POINTS = PLAN.points_with_proposals(proposal.update_points())
UPDATE_ARTIFACTS = proposal.update_artifacts()
LINEAGES = {name: [c.name for c in get_anchor(name).checkpoints] for name in list_anchors()
            if len(get_anchor(name).checkpoints) >= 2}
PAIRS = [p for name, checkpoints in LINEAGES.items() for p in lineage_pairs(name, checkpoints)]


def _tier_mark(tier: str | None):
    return [pytest.mark.tier(tier)] if tier and tier != RUN_TIERS[0] else []


def _checkpoint_params():
    for anchor_name, checkpoints in LINEAGES.items():
        latest = checkpoints[-2:]
        for ck in checkpoints:
            tier = PLAN.eval_run_tier(anchor_name, "quick" if ck in latest else "default")
            yield pytest.param(anchor_name, ck, id=f"{anchor_name}-{ck}", marks=_tier_mark(tier))


def _pair_params():
    for pair in PAIRS:
        tier = PLAN.eval_run_tier(pair.anchor, "quick" if pair.kind == "latest" else "default")
        yield pytest.param(pair.anchor, pair, id=pair.id, marks=_tier_mark(tier))


def _case_params(evaluates: bool):
    for pair in PAIRS:
        pair_tier = PLAN.pair_run_tier(pair.kind)
        if pair_tier is None:
            continue
        for point in POINTS:
            if not point.applies_to(pair.anchor):
                continue
            tier = higher_run_tier(pair_tier, point.run_tier)
            if evaluates:
                tier = PLAN.eval_run_tier(pair.anchor, tier)
            yield pytest.param(pair.anchor, pair, point, id=f"{pair.id}-{point.label}", marks=_tier_mark(tier))


def _codec_params():
    """One case per codec operating point on the latest pair of each lineage."""
    for pair in PAIRS:
        if pair.kind != "latest":
            continue
        for point in POINTS:
            if point.applies_to(pair.anchor):
                yield pytest.param(pair.anchor, pair, point, id=f"{pair.id}-{point.label}",
                                   marks=_tier_mark(point.run_tier))


def _rounds(state) -> int:
    """Benchmark rounds: fewer for large models (anchors/updates.toml [benchmark])."""
    params = sum(t.numel() for t in state.values())
    if params > int(PLAN.benchmark.get("large_model_params", 5_000_000)):
        return int(PLAN.benchmark.get("large_model_rounds", 1))
    return int(PLAN.benchmark.get("rounds", 3))


class _Payloads:
    """Payload bytes per (pair, operating point), encoded once per session."""

    def __init__(self) -> None:
        self._bytes: dict[tuple, bytes] = {}

    def get(self, session, pair, point) -> bytes:
        key = (pair.id, point.label)
        if key not in self._bytes:
            self._bytes[key] = self.encode(session, pair, point.make())
        return self._bytes[key]

    def full_bytes(self, session, pair) -> int:
        """Size of the whole target checkpoint (the ``full`` codec's payload)."""
        key = (pair.id, "::full")
        if key not in self._bytes:
            self._bytes[key] = self.encode(session, pair, make_codec("full"))
        return len(self._bytes[key])

    @staticmethod
    def encode(session, pair, codec) -> bytes:
        """A fresh encoding of the pair's update with ``codec`` (what a sender would transmit)."""
        base = session.model(pair.anchor, pair.base).state_dict()
        target = session.model(pair.anchor, pair.target).state_dict()
        preprocess = session.anchor(pair.anchor).preprocess_for(pair.target)
        return encode_update(codec, base, target, preprocess=preprocess)


@pytest.fixture(scope="session")
def payloads() -> _Payloads:
    return _Payloads()


@pytest.fixture
def encoded(payloads, nnc_session, nnc_record, load_or_skip):
    """Payload bytes of a case; a missing weights file or codec package skips with its message."""
    def get(pair, point) -> bytes:
        load_or_skip(nnc_session.model, pair.anchor, pair.base, subject=pair.id)
        load_or_skip(nnc_session.model, pair.anchor, pair.target, subject=pair.id)
        try:
            return payloads.get(nnc_session, pair, point)
        except CodecUnavailable as exc:
            nnc_record(CheckRecord("input.available", f"{pair.id}/{point.label}", Status.SKIP, message=str(exc)))
            pytest.skip(str(exc))

    return get


# ---------------------------------------------------------------------------------------------
# Comparing checkpoints


@pytest.mark.parametrize("anchor_name,checkpoint", list(_checkpoint_params()))
def test_lineage_accuracy(anchor_name, checkpoint, nnc_session, nnc_record, load_or_skip):
    """Each checkpoint of a lineage reproduces the top-1 its manifest documents (within the anchor's tolerance;
    on the offline ImageNet sample set, a smoke check: the documented value lies in the 95% Wilson interval)."""
    anchor = nnc_session.anchor(anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=f"{anchor_name}/{checkpoint}")
    result = load_or_skip(nnc_session.reference, anchor_name, checkpoint, subject=f"{anchor_name}/{checkpoint}")
    documented = anchor.checkpoint(checkpoint).top1
    hits = int(result.correct.sum())
    ci = wilson_interval(hits, len(dataset))
    details = {"anchor": anchor_name, "checkpoint": checkpoint, "index": LINEAGES[anchor_name].index(checkpoint),
               "top1": result.top1, "ci95": list(ci), "documented": documented, "smoke": dataset.smoke,
               "preprocess": anchor.preprocess_for(checkpoint).to_dict(), "dataset": dataset.name}
    subject = f"{anchor_name}/{checkpoint}"
    if dataset.smoke and documented is not None:
        rec = gate("updates.lineage_accuracy", subject, ci[0] <= documented <= ci[1], measured=result.top1,
                   expected=documented, tolerance=list(ci), criterion="updates", details=details,
                   message=f"SMOKE CHECK on {len(dataset)} {dataset.name} images ({hits} correct): 95% interval "
                           f"{ci[0]:.3f}..{ci[1]:.3f}; not a measurement of ImageNet accuracy")
    else:
        rec = check_lineage_accuracy(subject, result.top1, documented, n=len(dataset), tolerance=anchor.tolerance)
        rec.details.update(details)
    nnc_record(rec)
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name,pair", list(_pair_params()))
def test_checkpoint_comparison(anchor_name, pair, nnc_session, nnc_record, load_or_skip):
    """A pair's accuracy change (paired bootstrap CI, McNemar, agreement, per-class and per-layer changes) is
    measured, and the change the manifest documents is reproduced: within the anchor's tolerance, or, on a
    smoke set, inside the 95% interval of the measured change."""
    anchor = nnc_session.anchor(anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=pair.id)
    base_result = load_or_skip(nnc_session.reference, anchor_name, pair.base, subject=pair.id)
    target_result = load_or_skip(nnc_session.reference, anchor_name, pair.target, subject=pair.id)
    comparison = compare_results(pair.base, pair.target, base_result, target_result, dataset.classes)
    changes = weight_changes(nnc_session.model(anchor_name, pair.base).state_dict(),
                             nnc_session.model(anchor_name, pair.target).state_dict())
    info = comparison_record(pair.id, comparison, changes)
    info.details.update({"anchor": anchor_name, "kind": pair.kind, "smoke": dataset.smoke})
    nnc_record(info)

    c = comparison.comparison
    doc_base, doc_target = anchor.checkpoint(pair.base).top1, anchor.checkpoint(pair.target).top1
    if doc_base is None or doc_target is None:
        pytest.skip(f"{pair.id}: the manifest documents no top-1 for one of the checkpoints")
    documented = doc_target - doc_base
    if dataset.smoke:
        lo, hi = c.delta_ci95
        ok, tol = lo <= documented <= hi, [lo, hi]
        msg = (f"SMOKE CHECK on {len(dataset)} images: documented change {documented:+.4%} vs measured "
               f"{c.delta:+.4%} (95% CI {lo:+.4%}..{hi:+.4%})")
    else:
        ok, tol = abs(c.delta - documented) <= anchor.tolerance, anchor.tolerance
        msg = f"measured change {c.delta:+.4%} vs documented {documented:+.4%} (tolerance {anchor.tolerance:.4%})"
    rec = nnc_record(gate("updates.documented_change", pair.id, ok, measured=c.delta, expected=documented,
                          tolerance=tol, criterion="updates", message=msg, details={"smoke": dataset.smoke}))
    assert rec.passed, rec.message


# ---------------------------------------------------------------------------------------------
# Coding updates


@pytest.mark.parametrize("anchor_name,pair,point", list(_case_params(evaluates=False)))
def test_update_reconstruction(anchor_name, pair, point, encoded, nnc_session, nnc_record):
    """The payload decodes, on its own base, to exactly the state its header pins, which loads into the
    architecture (strict); a lossless codec reproduces the target bit for bit; encoding the same update
    again gives the same bytes."""
    payload = encoded(pair, point)
    base = nnc_session.model(anchor_name, pair.base).state_dict()
    target = nnc_session.model(anchor_name, pair.target).state_dict()
    subject = f"{pair.id}/{point.label}"
    rec, state = check_reconstruction(subject, point.make(), base, target, payload)
    rec.details.update({"pair": pair.id, "codec": point.codec, "label": point.label, "params": dict(point.params),
                        "proposal": point.proposal})
    records = [nnc_record(rec)]
    again = _Payloads.encode(nnc_session, pair, point.make())
    records.append(nnc_record(gate(
        "updates.deterministic_encoding", subject, again == payload, measured=len(again), expected=len(payload),
        criterion="updates", details={"proposal": point.proposal},
        message="encoding is deterministic: a second encoding gives the same bytes" if again == payload
        else "two encodings of the same update differ")))
    if state is not None:
        model = nnc_session.anchor(anchor_name).build_architecture()
        try:
            model.load_state_dict(state, strict=True)
            ok, msg = True, f"{len(payload)} bytes decoded to the pinned state, which loads into {type(model).__name__}"
        except RuntimeError as exc:
            ok, msg = False, f"the decoded state does not load into {type(model).__name__}: {exc}"
        records.append(nnc_record(gate("updates.decoded_loads", subject, ok, measured=rec.measured,
                                       expected="loads with strict=True", criterion="updates", message=msg)))
    failed = [r for r in records if not r.passed]
    assert not failed, "; ".join(r.message for r in failed)


@pytest.mark.parametrize("anchor_name,pair,point", list(_case_params(evaluates=True)))
def test_update_accuracy(anchor_name, pair, point, encoded, payloads, nnc_session, nnc_record, load_or_skip):
    """The model rebuilt from the update (with the preprocessing the payload carries) is non-inferior to the
    target checkpoint at the operating point's claimed accuracy tier."""
    anchor = nnc_session.anchor(anchor_name)
    dataset = load_or_skip(nnc_session.dataset, anchor, subject=pair.id)
    target_result = load_or_skip(nnc_session.reference, anchor_name, pair.target, subject=pair.id)
    payload = encoded(pair, point)
    decoded = apply_update(nnc_session.model(anchor_name, pair.base).state_dict(), payload)
    model = anchor.build_architecture()
    model.load_state_dict(decoded.state, strict=True)
    result = nnc_session.evaluator.evaluate(model.eval(), dataset, decoded.preprocess or anchor.preprocess)
    claim = point.claim_for(pair.kind)
    subject = f"{pair.id}/{point.label}"
    extra = {"pair": pair.id, "anchor": anchor_name, "kind": pair.kind, "codec": point.codec, "label": point.label,
             "params": dict(point.params), "top1": result.top1, "target_top1": target_result.top1,
             "lossless": decoded.header.lossless, "smoke": dataset.smoke, "proposal": point.proposal}
    if dataset.smoke:
        claim = None  # 20 images cannot support a non-inferiority margin of 1% or less
    rec = check_update_accuracy(subject, target_correct=target_result.correct, recon_correct=result.correct,
                                claim=claim, update_bytes=len(payload), full_bytes=payloads.full_bytes(nnc_session, pair),
                                agreement=top1_agreement(target_result.logits, result.logits), extra=extra)
    if dataset.smoke:
        rec.message = f"SMOKE (not gated on {len(dataset)} images): {rec.message}"
    nnc_record(rec)
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name,pair,point", list(_codec_params()))
def test_update_payload_safety(anchor_name, pair, point, encoded, nnc_session, nnc_record):
    """Truncated, corrupted and wrong-version payloads, and the right payload on the wrong base, are refused
    with a clear error; none is turned into a model."""
    payload = encoded(pair, point)
    base = nnc_session.model(anchor_name, pair.base).state_dict()
    wrong_base = nnc_session.model(anchor_name, pair.target).state_dict()
    rec = nnc_record(check_payload_safety(f"{pair.id}/{point.label}", base, wrong_base, payload))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name,pair,point", list(_codec_params()))
def test_update_encode_time(anchor_name, pair, point, encoded, nnc_session, benchmark):
    """Encode time of each operating point on the latest update (pytest-benchmark); the timed bytes must
    equal the bytes the other checks decoded (the deterministic-encoding record comes from the
    reconstruction case, which parallel runs keep)."""
    reference = encoded(pair, point)
    base = nnc_session.model(anchor_name, pair.base).state_dict()
    target = nnc_session.model(anchor_name, pair.target).state_dict()
    preprocess = nnc_session.anchor(anchor_name).preprocess_for(pair.target)
    codec = point.make()
    benchmark.group = f"update-encode {pair.id}"
    timed = benchmark.pedantic(encode_update, args=(codec, base, target), kwargs={"preprocess": preprocess},
                               rounds=_rounds(base), warmup_rounds=0)
    assert timed == reference, f"{pair.id}/{point.label}: the timed encoding differs from the decoded payload"


@pytest.mark.parametrize("anchor_name,pair,point", list(_codec_params()))
def test_update_decode_time(anchor_name, pair, point, encoded, nnc_session, benchmark):
    """Decode time (including payload and hash verification) of each operating point (pytest-benchmark);
    the timed decode yields the state the header pins (``apply_update`` refuses any other)."""
    payload = encoded(pair, point)
    base = nnc_session.model(anchor_name, pair.base).state_dict()
    benchmark.group = f"update-decode {pair.id}"
    decoded = benchmark.pedantic(apply_update, args=(base, payload), rounds=_rounds(base), warmup_rounds=0)
    assert decoded.header.target_sha256, f"{pair.id}/{point.label}: the timed decode returned no pinned state"


# ---------------------------------------------------------------------------------------------
# Artifact-only submissions: update payloads with no code


def _artifact_params():
    for a in UPDATE_ARTIFACTS:
        pair = next((p for p in PAIRS if (p.anchor, p.base, p.target) == (a.anchor, a.base, a.target)),
                    LineagePair(a.anchor, a.base, a.target, "submitted"))
        tier = PLAN.eval_run_tier(a.anchor, "quick")
        yield pytest.param(a.anchor, a, pair, id=a.id, marks=_tier_mark(tier))


if UPDATE_ARTIFACTS:  # defined only for runs with --nnc-proposal artifacts (no empty parameter set)
    @pytest.mark.parametrize("anchor_name,submitted,pair", list(_artifact_params()))
    def test_submitted_update(anchor_name, submitted, pair, payloads, nnc_session, nnc_record, load_or_skip):
        """A submitted update payload (no code runs) is hash-checked and decoded by the reference decoders on
        the base checkpoint it names (a payload built on another base is refused), is no larger than the size
        claimed, and the model it rebuilds meets the claimed accuracy tier against the target checkpoint."""
        a = submitted
        subject = f"{a.anchor}/{a.base}->{a.target}/{a.proposal}/{a.label}"
        path = Path(a.file.path)
        data = path.read_bytes()
        digest = sha256_bytes(data)
        rec = nnc_record(gate("updates.submitted_file", subject, digest == a.file.sha256, measured=digest,
                              expected=a.file.sha256, criterion="updates",
                              message=f"{path}: {len(data)} bytes, sha256 {'matches' if digest == a.file.sha256 else 'differs from'}"
                                      f" the manifest's", details={"proposal": a.proposal, "file": str(path)}))
        assert rec.passed, rec.message
        anchor = nnc_session.anchor(anchor_name)
        dataset = load_or_skip(nnc_session.dataset, anchor, subject=subject)
        base = load_or_skip(nnc_session.model, anchor_name, a.base, subject=subject).state_dict()
        target_result = load_or_skip(nnc_session.reference, anchor_name, a.target, subject=subject)
        try:
            decoded = apply_update(base, data)
            model = anchor.build_architecture()
            model.load_state_dict(decoded.state, strict=True)
        except CodecUnavailable as exc:
            pytest.skip(str(exc))
        except (ValueError, RuntimeError) as exc:
            rec = nnc_record(CheckRecord("updates.submitted_decode", subject, Status.FAIL, criterion="updates",
                                         message=f"{path.name} is refused by the reference decoder: "
                                                 f"{type(exc).__name__}: {exc}",
                                         details={"proposal": a.proposal, "file": str(path), "base": a.base}))
            pytest.fail(rec.message, pytrace=False)
        nnc_record(CheckRecord("updates.submitted_decode", subject, Status.PASS, criterion="updates",
                               message=f"{path.name} decoded by the reference {decoded.header.codec!r} decoder on "
                                       f"{a.base} to the state its header pins",
                               details={"proposal": a.proposal, "codec": decoded.header.codec}))
        records = []
        if a.claimed_bytes is not None:
            size_ok = len(data) <= a.claimed_bytes
            records.append(nnc_record(gate(
                "updates.size_claim", subject, size_ok, measured=len(data), expected=a.claimed_bytes,
                criterion="updates", details={"proposal": a.proposal},
                message=f"payload {len(data)} bytes {'<=' if size_ok else '>'} the {a.claimed_bytes} bytes claimed")))
        result = nnc_session.evaluator.evaluate(model.eval(), dataset, decoded.preprocess or anchor.preprocess)
        full = payloads.full_bytes(nnc_session, pair)
        rec = check_update_accuracy(
            subject, target_correct=target_result.correct, recon_correct=result.correct,
            claim=None if dataset.smoke else a.claimed_tier, update_bytes=len(data), full_bytes=full,
            agreement=top1_agreement(target_result.logits, result.logits),
            extra={"pair": pair.id, "anchor": anchor_name, "kind": pair.kind, "codec": decoded.header.codec,
                   "label": f"{a.proposal}-{a.label}", "params": decoded.header.config, "top1": result.top1,
                   "target_top1": target_result.top1, "lossless": decoded.header.lossless, "smoke": dataset.smoke,
                   "proposal": a.proposal})
        records.append(nnc_record(rec))
        failed = [r for r in records if not r.passed]
        assert not failed, "; ".join(r.message for r in failed)
