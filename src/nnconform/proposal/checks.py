"""Every claim a proposal makes is verified, or the gate fails (issue 11 item 4), and the
check ids of the proposal criterion (``proposal.manifest`` is the submission checker's).

A proposal's operating point claims an accuracy tier and/or a size. The claim counts only when a
gate actually judged it: the case ran to its end (no skip for missing weights or data), accuracy
was gated (not a smoke set, where it is INFO), and the point ran in this run (proposal points run
in every run tier, :meth:`nnconform.kit.OperatingPoint.runs_in`). The plugin turns a case of a
proposal point that skips, or whose claimed tier was only measured, into a failure with a
``proposal.claim_verified`` record naming why (:func:`not_verified`), and at the end of the run adds
one ``proposal.claims`` record per proposal: claims made against claims verified (:func:`claims_record`).
"""

from __future__ import annotations

from typing import Iterable

from .. import kit
from ..records import CheckRecord, Status, gate

CRITERION = "proposal"
#: checks whose PASS or FAIL record is a verified accuracy claim
ACCURACY_CLAIMS = ("compression.accuracy", "updates.accuracy", "split.codec_accuracy")
#: checks whose PASS or FAIL record is a verified size claim
SIZE_CLAIMS = ("compression.size_claim", "updates.size_claim")
CLAIM_CHECKS = ACCURACY_CLAIMS + SIZE_CLAIMS

kit.register_check("proposal.manifest", "the proposal's manifest passes the submission checker (schema, anchors, "
                   "tiers, registered methods, confined and pinned files); one FAIL record per problem", "pass-fail")
kit.register_check("proposal.claim_verified", "a case of a proposal's operating point verified its claims: it ran "
                   "(no skip for missing weights or data), in this run, with its accuracy gated (not a smoke set); "
                   "fails 'not verified' naming why", "pass-fail")
kit.register_check("proposal.claims", "every claim of a proposal was verified by a gate: claims verified equals "
                   "claims made", "equal")


def not_verified(subject: str, proposal: str, reason: str, *, point: dict | None = None) -> CheckRecord:
    """The FAIL record of a proposal point's case whose claims were not verified, naming ``reason``."""
    return CheckRecord("proposal.claim_verified", subject, Status.FAIL, criterion=CRITERION,
                       expected="verified", measured="not verified",
                       message=f"claim of proposal {proposal!r} not verified: {reason}",
                       details={"proposal": proposal, "point": point or {}, "reason": reason})


def unverified_reason(claimed_tier: str | None, records: Iterable[CheckRecord]) -> str | None:
    """Why a proposal point's case that ran did not verify its accuracy claim ``claimed_tier`` (None: nothing to
    say): a claim check that came back INFO (a smoke set, where accuracy is measured, not gated)."""
    if claimed_tier is None:
        return None
    for rec in records:
        if rec.check_id in ACCURACY_CLAIMS and rec.status == Status.INFO:
            first = (rec.message or "").split(";")[0]
            return (f"its accuracy claim {claimed_tier!r} was measured but not gated ({rec.check_id}: {first}); a "
                    "smoke set cannot verify a tier: run it on the full evaluation set (--nnc-imagenet) or claim "
                    "no tier")
    return None


def skipped_reason(reason: str) -> str:
    """The not-verified reason of a proposal point's case that skipped."""
    return (f"its case skipped ({reason}); a skipped case verifies nothing: provide the missing weights or data, "
            "or leave the point out")


def claimed_tier_of(point, params: dict) -> str | None:
    """The accuracy tier ``point`` claims in a case with these parameters (an update point may claim per pair
    kind: the case's ``pair``)."""
    pair = params.get("pair")
    if pair is not None and hasattr(point, "claim_for") and hasattr(pair, "kind"):
        return point.claim_for(pair.kind)
    return getattr(point, "claimed_tier", None)


def proposal_point_of(values: Iterable):
    """The proposal operating point among a case's parameter values (None for reference methods and anchors): a
    point itself (compression, updates) or the point a case parameter carries (a split case's ``.point``)."""
    for value in values:
        for candidate in (value, getattr(value, "point", None)):
            if isinstance(getattr(candidate, "proposal", None), str) and candidate.proposal \
                    and hasattr(candidate, "claims"):
                return candidate
    return None


def point_key(point) -> str:
    """The key the plugin tags a proposal point's records with (``details["proposal_point"]``)."""
    return f"{type(point).__name__}:{point.id}"


def makes_claim(point) -> bool:
    """Whether a point claims anything a gate must verify (a tier, on some pair kind, or a size)."""
    return (getattr(point, "claimed_tier", None) is not None or getattr(point, "claimed_bytes", None) is not None
            or any(t is not None for t in (getattr(point, "pair_claims", None) or {}).values()))


def claims_record(proposal: str, records: Iterable[CheckRecord], points: Iterable = ()) -> CheckRecord:
    """``proposal.claims`` of one proposal from the run's records: a claim record gated PASS or FAIL is a
    verified claim; a ``proposal.claim_verified`` failure or a claim check that errored (not evaluated) is a
    claim made and not verified, and so is each claiming point of ``points`` none of whose cases ran."""
    records = list(records)
    ran = set()
    for r in records:  # a case's records carry its point's key (plugin) or, in a criterion's details, its label
        if _proposal_of(r) == proposal:
            d = r.details or {}
            ran.update({d.get("proposal_point"), f"label:{(d.get('point') or {}).get('label')}"})
    verified, unverified = [], []
    for point in points:
        if makes_claim(point) and not {point_key(point), f"label:{point.label}"} & ran:
            unverified.append(not_verified(point.id, proposal, "no case of this point ran in this run (deselected by "
                                           "--nnc-tier, --nnc-anchors or -k): its claims were not checked",
                                           point=point.point_dict()))
    for rec in records:
        if _proposal_of(rec) != proposal:
            continue
        if rec.check_id in CLAIM_CHECKS and rec.status in (Status.PASS, Status.FAIL):
            verified.append(rec)
        elif (rec.check_id == "proposal.claim_verified" and not rec.passed) or \
                (rec.check_id in CLAIM_CHECKS and rec.status == Status.ERROR):
            unverified.append(rec)
    made = len(verified) + len(unverified)
    listed = "; ".join(f"{r.subject}: {r.message.split(chr(10))[0]}" for r in unverified[:5])
    return gate("proposal.claims", proposal, not unverified, measured=len(verified), expected=made,
                criterion=CRITERION,
                details={"proposal": proposal, "claims_made": made, "claims_verified": len(verified),
                         "not_verified": [{"subject": r.subject, "check": r.check_id, "message": r.message}
                                          for r in unverified]},
                message=(f"{len(verified)} of {made} claim(s) verified" + (f"; NOT verified: {listed}" if unverified
                                                                          else "") if made else
                         "the proposal's cases that ran make no accuracy or size claim"))


def _proposal_of(rec: CheckRecord) -> str:
    d = rec.details or {}
    return d.get("proposal") or (d.get("point") or {}).get("proposal") or ""
