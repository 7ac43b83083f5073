"""The checks of the model-update criterion; each returns one :class:`CheckRecord`.

Every check id this criterion records is registered here (kit catalogue: one-line description and
direction). The engine (:mod:`.runs`) calls these on real lineages; the self-tests call them on bad
fixtures to show that each can fail.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from .. import kit
from ..gates import best_tier_met, evaluate_tier, get_tier
from ..hashing import state_dict_sha256
from ..kit import PayloadError
from ..records import CheckRecord, Status, gate
from ..tasks import get_task
from ..suspicious_gain import flag, suspicious_gain
from .codec import BaseMismatchError, UpdateCodec, apply_update
from .compare import CheckpointComparison, LayerChange, summarize_changes
from .payload import FORMAT_VERSION, PayloadVersionError

CRITERION = "updates"



@kit.check("updates.lineage_accuracy", "A checkpoint of a lineage reproduces the top-1 its manifest documents (within "
           "the anchor's tolerance; on a smoke set, the documented value lies in the 95% Wilson interval)", "equal")
def check_lineage_accuracy(subject: str, measured_top1: float, documented_top1: float | None, *,
                           n: int, tolerance: float, metric_label: str = "top-1") -> CheckRecord:
    """A checkpoint of a lineage reproduces the value of the task's metric its manifest documents (top-1; an ASR
    checkpoint's WER), within the anchor's tolerance (in the metric's units, either direction)."""
    if documented_top1 is None:
        return CheckRecord("updates.lineage_accuracy", subject, Status.INFO, measured=measured_top1,
                           message=f"{metric_label} {measured_top1:.4%} on {n} samples (the manifest documents none)",
                           criterion=CRITERION, details={"n": n, "metric_label": metric_label})
    diff = measured_top1 - documented_top1
    return gate("updates.lineage_accuracy", subject, abs(diff) <= tolerance, measured=measured_top1,
                expected=documented_top1, tolerance=tolerance, criterion=CRITERION,
                details={"n": n, "diff": diff, "metric_label": metric_label},
                message=f"{metric_label} {measured_top1:.4%} vs documented {documented_top1:.4%} (diff {diff:+.4%}, "
                        f"tolerance {tolerance:.4%}, {n} samples)")


def check_smoke_lineage_accuracy(subject: str, measured_top1: float, documented_top1: float, *, hits: int, n: int,
                                 ci95: tuple[float, float], dataset: str) -> CheckRecord:
    """On a smoke set (a few labelled images), the documented top-1 lies in the 95% Wilson interval of the
    measured one: a smoke check, not a measurement of accuracy."""
    lo, hi = ci95
    return gate("updates.lineage_accuracy", subject, lo <= documented_top1 <= hi, measured=measured_top1,
                expected=documented_top1, tolerance=[lo, hi], criterion=CRITERION,
                message=f"SMOKE CHECK on {n} {dataset} images ({hits} correct): 95% interval {lo:.3f}..{hi:.3f}; "
                        f"not a measurement of ImageNet accuracy")


@kit.check("updates.documented_change", "The accuracy change between two checkpoints matches the change the manifest "
           "documents (within the anchor's tolerance; on a smoke set, inside the 95% CI of the measured change)",
           "equal")
def check_documented_change(subject: str, comparison: CheckpointComparison, documented: float, *, n: int,
                            tolerance: float, smoke: bool) -> CheckRecord:
    """The measured change (target - base, in the task's metric) reproduces the documented one. ``comparison``: a
    classifier's :class:`CheckpointComparison`, or any task's ``MetricComparison`` itself."""
    c = getattr(comparison, "comparison", comparison)
    if smoke:
        lo, hi = c.delta_ci95
        ok, tol = lo <= documented <= hi, [lo, hi]
        msg = (f"SMOKE CHECK on {n} images: documented change {documented:+.4%} vs measured "
               f"{c.delta:+.4%} (95% CI {lo:+.4%}..{hi:+.4%})")
    else:
        ok, tol = abs(c.delta - documented) <= tolerance, tolerance
        msg = f"measured change {c.delta:+.4%} vs documented {documented:+.4%} (tolerance {tolerance:.4%})"
    return gate("updates.documented_change", subject, ok, measured=c.delta, expected=documented, tolerance=tol,
                criterion=CRITERION, message=msg, details={"smoke": smoke})


@kit.check("updates.comparison", "A lineage pair's accuracy change (paired bootstrap CI, McNemar, agreement, "
           "per-class and per-layer weight changes), measured", "info")
def comparison_record(subject: str, comparison: CheckpointComparison, changes: list[LayerChange]) -> CheckRecord:
    """An INFO record of a pair: accuracies, delta and CI, agreement, per-class and per-layer changes."""
    c = comparison.comparison
    lo, hi = c.delta_ci95
    improved, regressed = comparison.improved(), comparison.regressed()
    summary = summarize_changes(changes)
    msg = (f"{comparison.base} {c.acc_ref:.4%} -> {comparison.target} {c.acc_new:.4%}: delta {c.delta:+.4%} "
           f"(95% CI {lo:+.4%}..{hi:+.4%}, McNemar p={c.mcnemar_p:.3g}), agreement {comparison.agreement:.4%}; "
           f"{len(improved)} class(es) improved, {len(regressed)} regressed significantly; "
           f"{summary['tensors_changed']}/{summary['tensors']} tensors, {summary['changed_fraction']:.2%} of weights "
           f"changed (relative L2 {summary['relative_l2']:.3g})")
    return CheckRecord("updates.comparison", subject, Status.INFO, measured=c.delta, criterion=CRITERION, message=msg,
                       details={**comparison.to_dict(), "weights": summary,
                                "layers": [ch.to_dict() for ch in changes]})


def task_comparison_record(subject: str, base: str, target: str, comparison, changes: list[LayerChange]
                           ) -> CheckRecord:
    """``updates.comparison`` of a pair of a task other than classification (ASR: WER): the task's metric for
    both checkpoints, the change and its paired bootstrap CI, and the per-layer weight changes (no per-class or
    McNemar figures: those are a classifier's)."""
    lo, hi = comparison.delta_ci95
    summary = summarize_changes(changes)
    label = comparison.metric.upper() if comparison.metric == "wer" else comparison.metric
    msg = (f"{base} {label} {comparison.metric_ref:.4%} -> {target} {comparison.metric_new:.4%}: delta "
           f"{comparison.delta:+.4%} (95% CI {lo:+.4%}..{hi:+.4%}, {comparison.n} samples); "
           f"{summary['tensors_changed']}/{summary['tensors']} tensors, {summary['changed_fraction']:.2%} of weights "
           f"changed (relative L2 {summary['relative_l2']:.3g})")
    return CheckRecord("updates.comparison", subject, Status.INFO, measured=comparison.delta, criterion=CRITERION,
                       message=msg, details={"base": base, "target": target, **comparison.to_dict(),
                                             "weights": summary, "layers": [ch.to_dict() for ch in changes]})


@kit.check("updates.reconstruction", "The payload decodes on its own base to exactly the state its header pins; a "
           "lossless codec reproduces the target bit for bit", "equal")
def check_reconstruction(subject: str, codec: UpdateCodec, base: Mapping[str, torch.Tensor],
                         target: Mapping[str, torch.Tensor], payload: bytes) -> tuple[CheckRecord, dict | None]:
    """The payload applies to its base, decodes to the state it promises, and a lossless codec
    reproduces the target bit for bit. Returns the record and the reconstructed state."""
    try:
        decoded = apply_update(base, payload)
    except (PayloadError, BaseMismatchError) as exc:
        return gate("updates.reconstruction", subject, False, measured=f"{type(exc).__name__}", expected="decodes",
                    criterion=CRITERION, message=f"the payload does not apply to its own base: {exc}"), None
    target_sha = state_dict_sha256(target)
    recon_sha = state_dict_sha256(decoded.state)
    details = {"bytes": len(payload), "codec": codec.name, "lossless": codec.lossless,
               "target_sha256": target_sha, "reconstruction_sha256": recon_sha, "header": decoded.header.to_dict()}
    if codec.lossless:
        ok = recon_sha == target_sha
        return gate("updates.reconstruction", subject, ok, measured=recon_sha, expected=target_sha,
                    criterion=CRITERION, details=details,
                    message=("lossless codec reproduces the target bit-exactly" if ok else
                             f"lossless codec {codec.name!r} changed the state: {_first_difference(target, decoded.state)}")
                    ), decoded.state
    ok = recon_sha == decoded.header.target_sha256
    return gate("updates.reconstruction", subject, ok, measured=recon_sha, expected=decoded.header.target_sha256,
                criterion=CRITERION, details=details,
                message=("lossy payload decodes to exactly the state its header pins" if ok else
                         "decoded state differs from the one the header pins")), decoded.state


@kit.check("updates.deterministic_encoding", "Encoding the same update twice gives the same payload bytes", "equal")
def check_deterministic_encoding(subject: str, first: bytes, again: bytes, *, proposal: str = "") -> CheckRecord:
    """Two encodings of one update are the same bytes (a receiver's hash of the payload means something)."""
    same = first == again
    return gate("updates.deterministic_encoding", subject, same, measured=len(again), expected=len(first),
                criterion=CRITERION, details={"proposal": proposal},
                message="encoding is deterministic: a second encoding gives the same bytes" if same
                else "two encodings of the same update differ")


def _first_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> str:
    for k in sorted(a):
        if k not in b:
            return f"key {k!r} missing"
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{k}: {x.dtype}{tuple(x.shape)} -> {y.dtype}{tuple(y.shape)}"
        if not torch.equal(x.reshape(-1).view(torch.uint8) if x.numel() else x,
                           y.reshape(-1).view(torch.uint8) if y.numel() else y):
            diff = (x.to(torch.float64) - y.to(torch.float64)).abs()
            return f"{k}: {int((x != y).sum())} element(s) differ, max abs diff {float(diff.max()):.3g}"
    return "states differ (extra keys)"


@kit.check("updates.accuracy", "The model rebuilt from the update is non-inferior to the target checkpoint at the "
           "claimed accuracy tier (no claim: a measured rate-accuracy point)", "higher")
def check_update_accuracy(subject: str, *, target_correct, recon_correct, claim: str | None, update_bytes: int,
                          full_bytes: int, agreement: float | None, extra: dict | None = None,
                          task=None) -> CheckRecord:
    """The model rebuilt from the update is non-inferior to the target checkpoint at the claimed accuracy tier.

    ``target_correct``/``recon_correct``: the two models' per-sample scores of the anchor's ``task``
    (classification, the default: correctness vectors); ``agreement`` (top-1 agreement) is None for a task
    without logits. With no claim, the operating point is a measured point of a rate-accuracy curve (INFO).
    """
    task = get_task(task)
    comp = task.paired(target_correct, recon_correct)
    details = {"bytes": update_bytes, "full_bytes": full_bytes, "ratio_to_full": update_bytes / full_bytes,
               "agreement": agreement, "claim": claim, "best_tier_met": best_tier_met(comp), **comp.to_dict(),
               **(extra or {})}
    size = f"{update_bytes} bytes ({update_bytes / full_bytes:.2%} of the full checkpoint)"
    # significantly better than the target: flagged in details and message, never a verdict by itself
    lo, hi = comp.delta_ci95
    size = flag(details, size, suspicious_gain((lo, hi) if task.higher_is_better else (-hi, -lo), comp.metric_ref,
                                               claim, task.name))
    label = "top-1" if task.name == "classification" else task.metric_label
    figures = (f"{label} {task.format_value(comp.metric_new)} vs target {task.format_value(comp.metric_ref)}"
               + (f", agreement {agreement:.4%}" if agreement is not None else ""))
    if claim is None:
        return CheckRecord("updates.accuracy", subject, Status.INFO, measured=comp.metric_new,
                           expected=comp.metric_ref, criterion=CRITERION, details=details,
                           message=f"{size}; {figures}; best tier met: {details['best_tier_met']} (no claim)")
    result = evaluate_tier(comp, get_tier(claim, task))
    details.update(result.to_dict())
    return gate("updates.accuracy", subject, result.passed, measured=comp.metric_new, expected=comp.metric_ref,
                tolerance=result.margin, criterion=CRITERION, details=details,
                message=f"{size}; {figures}; claimed tier {claim}: {result.reason}")


def tamper_cases(payload: bytes) -> dict[str, bytes]:
    """Damaged variants of a payload: truncations, a flipped byte in each region, a foreign version."""
    n = len(payload)
    mid = n // 2
    flipped = lambda i: payload[:i] + bytes([payload[i] ^ 0x5A]) + payload[i + 1:]  # noqa: E731
    return {
        "empty": b"",
        "truncated-prefix": payload[:5],
        "truncated-half": payload[:mid],
        "truncated-last-byte": payload[:-1],
        "flipped-magic": flipped(0),
        "flipped-header": flipped(12),
        "flipped-body": flipped(max(0, n - 40)),
        "flipped-checksum": flipped(n - 1),
        "wrong-version": payload[:4] + (FORMAT_VERSION + 1).to_bytes(2, "big") + payload[6:],
        "appended-byte": payload + b"\x00",
    }


@kit.check("updates.payload_safety", "Truncated, corrupted and wrong-version payloads, and a payload applied to the "
           "wrong base, are refused with the error that names the problem", "lower")
def check_payload_safety(subject: str, base: Mapping[str, torch.Tensor], wrong_base: Mapping[str, torch.Tensor],
                         payload: bytes, *, apply: Callable = apply_update) -> CheckRecord:
    """Damaged payloads and a wrong base are refused with a clear error, never turned into a model."""
    problems = []
    outcomes = {}
    try:
        apply(wrong_base, payload)
        problems.append("applying to the wrong base was accepted")
        outcomes["wrong-base"] = "accepted"
    except BaseMismatchError as exc:
        outcomes["wrong-base"] = f"refused: {exc}"
    except Exception as exc:  # refused, but not with the error that names the problem
        problems.append(f"wrong base raised {type(exc).__name__} instead of BaseMismatchError: {exc}")
        outcomes["wrong-base"] = f"{type(exc).__name__}: {exc}"
    for case, data in tamper_cases(payload).items():
        expected = PayloadVersionError if case == "wrong-version" else PayloadError
        try:
            apply(base, data)
            problems.append(f"{case}: accepted")
            outcomes[case] = "accepted"
        except expected as exc:
            outcomes[case] = f"refused: {exc}"
        except Exception as exc:
            problems.append(f"{case}: raised {type(exc).__name__} instead of {expected.__name__}: {exc}")
            outcomes[case] = f"{type(exc).__name__}: {exc}"
    return gate("updates.payload_safety", subject, not problems, measured=len(problems), expected=0,
                criterion=CRITERION, details={"outcomes": outcomes},
                message=("wrong base and all %d damaged variants refused" % (len(outcomes) - 1)) if not problems
                else "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Artifact-only submissions


@kit.check("updates.submitted_file", "A submitted update payload hashes to the sha256 its manifest pins", "equal")
def check_submitted_file(subject: str, path, data: bytes, pinned: str, *, proposal: str) -> CheckRecord:
    """The payload file is the one the manifest pins (its sha256)."""
    from ..hashing import sha256_bytes

    digest = sha256_bytes(data)
    same = digest == pinned
    return gate("updates.submitted_file", subject, same, measured=digest, expected=pinned, criterion=CRITERION,
                message=f"{path}: {len(data)} bytes, sha256 {'matches' if same else 'differs from'} the manifest's",
                details={"proposal": proposal, "file": str(path)})


@kit.check("updates.submitted_decode", "A submitted update payload is decoded by the reference decoders, on the base "
           "it names, into the state its header pins, which loads into the architecture")
def check_submitted_decode(subject: str, path, *, proposal: str, base: str, codec: str | None = None,
                           error: Exception | None = None) -> CheckRecord:
    """PASS with the decoder that read the payload, or FAIL with the error that refused it."""
    if error is not None:
        return CheckRecord("updates.submitted_decode", subject, Status.FAIL, criterion=CRITERION,
                           message=f"{path.name} is refused by the reference decoder: {type(error).__name__}: {error}",
                           details={"proposal": proposal, "file": str(path), "base": base})
    return CheckRecord("updates.submitted_decode", subject, Status.PASS, criterion=CRITERION,
                       message=f"{path.name} decoded by the reference {codec!r} decoder on {base} to the state its "
                               f"header pins", details={"proposal": proposal, "codec": codec})


@kit.check("updates.size_claim", "A submitted update payload is no larger than the bytes it claims", "lower")
def check_size_claim(subject: str, size: int, claimed_bytes: int, *, proposal: str) -> CheckRecord:
    """The payload's length is at most the size the proposal claims."""
    ok = size <= claimed_bytes
    return gate("updates.size_claim", subject, ok, measured=size, expected=claimed_bytes, criterion=CRITERION,
                details={"proposal": proposal},
                message=f"payload {size} bytes {'<=' if ok else '>'} the {claimed_bytes} bytes claimed")


# ---------------------------------------------------------------------------------------------
# NNC incremental coding along a lineage (.lineage)


@kit.check("updates.nnc_lineage_decode", "A lineage's NNC payloads (base first, update tree kept) decode in order, "
           "each bit-exact to the encoder's reconstruction, and a payload whose predecessor was not decoded is "
           "refused")
def check_nnc_lineage_decode(subject: str, template: Mapping[str, torch.Tensor], steps, *,
                             decoder_factory: Callable | None = None) -> CheckRecord:
    """Decode ``steps`` (:class:`~nnconform.updates.lineage.LineageStep`) in order with a fresh decoder and compare
    each state with the encoder's; then give a fresh decoder the second update first, which must be refused."""
    from .lineage import LineageDecoder, LineageOrderError, state_equal

    make = decoder_factory or LineageDecoder
    problems = []
    decoder = make(template)
    for s in steps:
        try:
            state = decoder.decode(s.payload)
        except Exception as exc:
            problems.append(f"step {s.step}: {type(exc).__name__}: {exc}")
            break
        if not state_equal(state, s.state):
            problems.append(f"step {s.step}: the decoded state differs from the encoder's reconstruction")
            break
    refusal = None
    if len(steps) >= 3:
        out_of_order = make(template)
        try:
            out_of_order.decode(steps[0].payload)
            out_of_order.decode(steps[2].payload)
            problems.append("update 2 was decoded without update 1")
        except LineageOrderError as exc:
            refusal = str(exc)
        except Exception as exc:
            problems.append(f"update 2 without update 1 raised {type(exc).__name__} instead of LineageOrderError: {exc}")
    return gate("updates.nnc_lineage_decode", subject, not problems, measured=len(problems), expected=0,
                criterion=CRITERION, details={"payloads": len(steps), "out_of_order_refusal": refusal},
                message=(f"{len(steps)} payloads decoded in order, each bit-exact to the encoder's reconstruction"
                         + ("; update 2 without update 1 refused" if refusal else "")) if not problems
                else "; ".join(problems))


@kit.check("updates.nnc_lineage_size", "Bytes of a lineage coded through NNC (base first), per payload and "
           "cumulative, with the update tree kept (incremental, TCA) against a fresh tree per update", "info")
def nnc_lineage_size_record(subject: str, checkpoints: list[str], sizes: Mapping, *, extra: Mapping | None = None
                            ) -> CheckRecord:
    """INFO: per-update and cumulative payload bytes of the incremental and the independent coding."""
    inc, ind = sizes["incremental"], sizes["independent"]
    total_inc, total_ind = inc["cumulative_bytes"][-1], ind["cumulative_bytes"][-1]
    upd_inc, upd_ind = total_inc - inc["payload_bytes"][0], total_ind - ind["payload_bytes"][0]
    saving = 1 - upd_inc / upd_ind if upd_ind else 0.0
    return CheckRecord("updates.nnc_lineage_size", subject, Status.INFO, measured=total_inc, expected=total_ind,
                       criterion=CRITERION, details={"checkpoints": list(checkpoints), **sizes, **dict(extra or {})},
                       message=f"base {inc['payload_bytes'][0]} B + {len(checkpoints) - 1} updates: {total_inc} B "
                               f"cumulative with the update tree kept vs {total_ind} B with a fresh tree per update "
                               f"(updates alone {upd_inc} vs {upd_ind} B, {saving:+.2%} saved)")
