"""Report section of proposals (``--nnc-proposal``): who submitted what, the checker's verdict, and
each claim next to what was measured.

The proposal's curves appear in the criteria's own plots, drawn against the reference methods'
(a proposal's compression curve is dashed with diamond markers).
"""

from __future__ import annotations

from . import SECTIONS, ReportContext, md_table

#: Checks whose records are a proposal's claims or the gates its artifacts pass through.
CLAIM_CHECKS = ("compression.accuracy", "compression.size_claim", "updates.accuracy", "updates.size_claim",
                "updates.submitted_decode", "split.codec_accuracy", "proposal.claim_verified", "proposal.claims")


def _claim(record):
    d = record.details or {}
    if record.check_id.endswith("size_claim"):
        return f"<= {record.expected} bytes"
    tier = ((d.get("config") or {}).get("claimed_tier") or d.get("claim") or (d.get("point") or {}).get("claimed_tier")
            or (d.get("point") or {}).get("claim"))
    return tier or ("-" if record.check_id.endswith("accuracy") else record.expected)


def _proposal_of(record) -> str:
    d = record.details or {}
    return d.get("proposal") or (d.get("point") or {}).get("proposal") or ""


@SECTIONS.register("proposal")
def section(ctx: ReportContext) -> str:
    proposals = list(getattr(ctx.session, "proposals", []))
    out = []
    for p in proposals:
        verdict = "manifest valid" if p.ok else f"manifest REJECTED ({len(p.problems)} problems): nothing else ran"
        out += [f"### Proposal {p.name} {p.version}", "",
                md_table(["field", "value"], [
                    ["contact", p.contact], ["organization", p.organization], ["description", p.description],
                    ["manifest", f"{p.manifest} (sha256 {p.manifest_sha256})"],
                    ["code", str(p.module or p.package or "none (artifact-only)")],
                    ["anchors", ", ".join(p.anchors)], ["criteria", ", ".join(p.criteria)], ["checker", verdict]]),
                ""]
        if p.problems:
            out += [md_table(["file", "field", "problem"], [[x.file, x.field, x.message] for x in p.problems]), ""]
            continue
        failing = [r for r in ctx.records if _proposal_of(r) == p.name and not r.passed]
        claims = [r for r in ctx.records if _proposal_of(r) == p.name and r.check_id in CLAIM_CHECKS]
        shown = claims + [r for r in failing if r not in claims]
        if shown:
            out += [md_table(["check", "operating point", "status", "measured", "claimed", "message"],
                             [[r.check_id, r.subject, r.status.value.upper(), r.measured, _claim(r), r.message]
                              for r in shown]), ""]
        else:
            out += ["No case of this proposal ran (see the skipped cases of its criteria).", ""]
        out += _suspicious([r for r in ctx.records if _proposal_of(r) == p.name])
    return "\n".join(out)


def _suspicious(records) -> list[str]:
    """Lines flagging results significantly better than their reference (``details.suspicious_gain``)."""
    flagged = [r for r in records if (r.details or {}).get("suspicious_gain")]
    if not flagged:
        return []
    return ["**Suspicious gains**: significantly better than the reference, beyond the tier margin (a lossy "
            "method rarely is; ask whether it was tuned on the evaluation data):", "",
            md_table(["check", "operating point", "gain 95% CI", "margin"],
                     [[r.check_id, r.subject,
                       "{:+.4f}..{:+.4f}".format(*r.details["suspicious_gain"]["delta_ci95"]),
                       f"{r.details['suspicious_gain']['margin']:.4f} ({r.details['suspicious_gain']['tier']})"]
                      for r in flagged]), ""]


def summary(ctx: ReportContext) -> str:
    """Executive summary: per proposal, whether its manifest was valid and how many of its records
    (claims and gates) passed."""
    rows = []
    for p in getattr(ctx.session, "proposals", []):
        recs = [r for r in ctx.records if _proposal_of(r) == p.name]
        failing = [r for r in recs if not r.passed]
        rows.append([f"{p.name} {p.version}", p.organization, ", ".join(p.criteria),
                     "valid" if p.ok else f"REJECTED ({len(p.problems)} problems)", len(recs) - len(failing),
                     len(failing)])
    if not rows:
        return ""
    return md_table(["proposal", "organization", "criteria", "manifest", "records passed", "records not passed"],
                    rows)


from . import SUMMARIES  # noqa: E402  (the summary registry; added beside the section)

SUMMARIES.register("proposal", summary)
