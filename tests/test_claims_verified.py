"""Every claim is verified or the gate fails (issue 11 item 4), at the level of the records: a claimed tier that
was only measured is not verified, a skip is not verified, and ``proposal.claims`` counts made vs verified. The
end-to-end cases are the bad fixtures ``bad-claim-smoke-set`` and ``bad-claim-weights-missing``
(tests/test_proposals.py)."""

from __future__ import annotations

from nnconform.kit import describe
from nnconform.proposal.checks import claims_record, not_verified, unverified_reason
from nnconform.records import CheckRecord, Status

P = "some-proposal"


def rec(check_id, status, subject="a/m/p", proposal=P, message="m"):
    return CheckRecord(check_id, subject, status, message=message, details={"proposal": proposal})


def test_the_check_ids_are_registered():
    assert describe("proposal.claim_verified") and describe("proposal.claims")


def test_a_claimed_tier_measured_on_a_smoke_set_is_not_verified():
    smoke = rec("compression.accuracy", Status.INFO, message="SMOKE CHECK on 10 images, accuracy not gated: ...")
    reason = unverified_reason("99%", [rec("compression.compress", Status.PASS), smoke])
    assert reason and "'99%' was measured but not gated" in reason and "SMOKE CHECK on 10 images" in reason


def test_a_gated_or_unclaimed_accuracy_needs_no_reason():
    assert unverified_reason("99%", [rec("compression.accuracy", Status.PASS)]) is None
    assert unverified_reason("99%", [rec("compression.accuracy", Status.FAIL)]) is None  # verified, and false
    assert unverified_reason(None, [rec("compression.accuracy", Status.INFO)]) is None  # nothing claimed


def test_claims_made_vs_verified():
    records = [rec("compression.accuracy", Status.PASS, "x/1"), rec("compression.size_claim", Status.FAIL, "x/1"),
               rec("compression.accuracy", Status.INFO, "x/3"),  # no claim: a measured point
               rec("compression.accuracy", Status.PASS, "y/1", proposal="another-proposal")]
    ok = claims_record(P, records)
    assert ok.passed and (ok.measured, ok.expected) == (2, 2) and ok.details["claims_made"] == 2
    records += [not_verified("x/2", P, "its case skipped (weights missing)"),
                rec("compression.accuracy", Status.ERROR, "x/4", message="not evaluated: compression.decode failed")]
    bad = claims_record(P, records)
    assert not bad.passed and (bad.measured, bad.expected) == (2, 4)
    assert "2 of 4 claim(s) verified; NOT verified: x/2" in bad.message and "weights missing" in bad.message
    assert [n["subject"] for n in bad.details["not_verified"]] == ["x/2", "x/4"]


def test_a_claiming_point_none_of_whose_cases_ran_is_not_verified():
    """A point deselected by the run's options (its run tier, --nnc-anchors, -k) made claims nobody checked."""
    from nnconform.compress.plan import CompressionPoint
    from nnconform.compress import compressor_class
    from nnconform.proposal.checks import point_key

    make = lambda label, tier: CompressionPoint(  # noqa: E731
        "fmnist-lenet5", "fp16", compressor_class("fp16").Config(), label=label, claimed_tier=tier, proposal=P)
    ran, skipped_over, measured = make("ran", "99%"), make("deselected", "99%"), make("measured", None)
    records = [CheckRecord("compression.accuracy", ran.subject, Status.PASS,
                           details={"proposal": P, "proposal_point": point_key(ran)})]
    out = claims_record(P, records, [ran, skipped_over, measured])
    assert not out.passed and (out.measured, out.expected) == (1, 2)
    assert "no case of this point ran in this run" in out.message and skipped_over.id in out.message


def test_a_split_case_carries_its_proposal_point():
    """A split case's parameter is a CodedCase holding the point: the plugin finds the proposal's point in it, so
    a split case that skips fails as not verified like the other criteria's (a reference point is no claim)."""
    from nnconform.proposal.checks import proposal_point_of
    from nnconform.split.plan import SplitPoint
    from nnconform.split.runs import CodedCase

    point = SplitPoint(label="sq8", family="q", codec="uniform", claimed_tier="99%", proposal=P)
    reference = SplitPoint(label="uq8", family="q", codec="uniform", claimed_tier="99%")
    assert proposal_point_of(["fmnist-lenet5", CodedCase("fmnist-lenet5", "features", point, "quick")]) is point
    assert proposal_point_of(["fmnist-lenet5", CodedCase("fmnist-lenet5", "features", reference, "quick")]) is None
    assert proposal_point_of(["fmnist-lenet5", "features"]) is None


def test_an_update_claim_measured_on_a_smoke_set_is_not_verified():
    """On a smoke set an update point's accuracy is measured (INFO, 'SMOKE' prefix), never gated: its claim fails
    as not verified instead of passing with the prefix."""
    smoke = rec("updates.accuracy", Status.INFO, message="SMOKE (not gated on 20 images): top-1 ...")
    reason = unverified_reason("99%", [rec("updates.reconstruction", Status.PASS), smoke])
    assert reason and "'99%' was measured but not gated (updates.accuracy: SMOKE (not gated on 20 images)" in reason
