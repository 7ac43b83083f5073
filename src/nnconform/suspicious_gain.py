"""A coded or compressed model significantly *better* than its reference is a reason to ask.

Compression, update coding and feature coding remove information; a result whose paired accuracy
gain is significant beyond the tier margin (the 95% interval of the drop lies entirely below
``-margin``) is what a method tuned on the evaluation data would produce. The gate cannot tell
that from luck or a genuinely regularizing method, so it does not fail the case: the accuracy
record's ``details["suspicious_gain"]`` and its message flag it, and the report lists it.
"""

from __future__ import annotations

from typing import Any


def suspicious_gain(delta_ci95, acc_ref: float, claimed_tier: str | None, task: str = "classification"
                    ) -> dict[str, Any] | None:
    """The flag for a paired comparison (``delta`` = test minus reference accuracy, its 95% interval
    ``delta_ci95``; for a lower-is-better metric such as WER pass the improvement, reference minus test): a
    dict when the whole interval lies above the margin of ``claimed_tier`` of ``task`` (no claim: the
    strictest tier's), None otherwise."""
    from .gates import get_tier, load_tiers

    tier = get_tier(claimed_tier, task) if claimed_tier else get_tier(next(iter(load_tiers(task=task))), task)
    margin = tier.margin(acc_ref)
    lo, hi = float(delta_ci95[0]), float(delta_ci95[1])
    if lo <= margin:
        return None
    return {"tier": tier.name, "margin": margin, "delta_ci95": [lo, hi],
            "note": (f"SUSPICIOUS GAIN: accuracy is higher than the reference's by {lo:+.4f}..{hi:+.4f} (95% CI), "
                     f"more than the {tier.name!r} margin {margin:.4f}; a lossy method rarely beats its reference "
                     f"significantly: check it was not tuned on the evaluation data")}


def flag(details: dict, message: str, gain: dict | None) -> str:
    """Put ``gain`` into ``details`` and return ``message`` with its note (both unchanged when None)."""
    if gain is None:
        return message
    details["suspicious_gain"] = gain
    return f"{message}; {gain['note']}"
