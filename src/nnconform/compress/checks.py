"""The checks of the compression criterion; each returns one :class:`CheckRecord`.

:mod:`nnconform.compress.runner` calls them in order on each case (compress, report the size,
decode, check outputs and consistency, evaluate, gate); :mod:`nnconform.compress.runs` on the
calibration lists; the conformance file records what they return. The self-tests call them on
planted bad methods to show that each can fail. Every check id is registered here with a
one-line description and a direction, which the report shows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import kit
from ..gates import get_tier
from ..hashing import module_sha256
from ..records import CheckRecord, Status, gate
from ..suspicious_gain import flag, suspicious_gain
from .base import Artifact, CompressionContext
from .metrics import CompressionMetrics

CRITERION = "compression"

kit.register_check("compression.compress", "the method compresses the anchor (or its checked artifact is read from "
                   "the cache) without raising", "pass-fail")
kit.register_check("compression.decode", "the artifact decodes on a NaN-filled template of the architecture",
                   "pass-fail")


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (inference mode, float32 copy); a TypeError when it returns no tensor."""
    model.eval()
    with torch.inference_mode():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, not a logits tensor")
    return out.detach().float().clone()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to ``b``'s largest magnitude."""
    scale = max(float(b.abs().max()), 1e-6)
    return float((a - b).abs().max()) / scale


@kit.check("compression.size_reported", "the size the method reports equals the length of its artifact's bytes",
           "equal")
def check_size_reported(subject: str, method: str, reported: Any, artifact: Artifact) -> CheckRecord:
    """The size a method reports is its artifact's length (sizes are never estimates)."""
    ok = isinstance(reported, int) and not isinstance(reported, bool) and reported == artifact.nbytes
    return gate("compression.size_reported", subject, ok, measured=reported, expected=artifact.nbytes,
                criterion=CRITERION,
                message=(f"reported size {reported} bytes equals the artifact's {artifact.nbytes} bytes" if ok else
                         f"{method} reports {reported!r} bytes but its artifact is {artifact.nbytes} bytes "
                         f"({artifact.sizes()}): sizes must be artifact lengths"))


@kit.check("compression.output", "the decoded model gives finite logits of the anchor's output shape (probe batch "
           "and evaluation set)", "pass-fail")
def check_output(subject: str, probe: torch.Tensor, expected_shape: tuple[int, ...]) -> CheckRecord:
    """Finite logits of the anchor's shape on the probe batch (a weight missing from the artifact shows as NaN)."""
    finite = bool(torch.isfinite(probe).all())
    shape_ok = tuple(probe.shape) == tuple(expected_shape)
    problems = [m for m in (
        None if shape_ok else f"output shape {tuple(probe.shape)} differs from the anchor's {tuple(expected_shape)}",
        None if finite else f"{int((~torch.isfinite(probe)).sum())} non-finite logits (NaN/inf) on the probe batch "
                            f"(a weight missing from the artifact would show up as NaN)") if m]
    return gate("compression.output", subject, finite and shape_ok, measured=list(probe.shape),
                expected=list(expected_shape), criterion=CRITERION,
                message="; ".join(problems) or "decoded model outputs finite logits of the anchor's shape")


def check_evaluated_output(subject: str, logits: torch.Tensor, expected_shape: tuple[int, ...]) -> CheckRecord | None:
    """``compression.output`` on the evaluation set: a FAIL record, or None when the logits are fine."""
    same_shape = tuple(logits.shape) == tuple(expected_shape)
    if same_shape and bool(torch.isfinite(logits).all()):
        return None
    bad = int((~torch.isfinite(logits)).sum()) if same_shape else None
    return CheckRecord("compression.output", subject, Status.FAIL, measured=list(logits.shape),
                       expected=list(expected_shape), criterion=CRITERION,
                       message=f"on the evaluation set the decoded model gives logits of shape {tuple(logits.shape)}"
                               + (f" with {bad} non-finite values" if bad else ""))


@kit.check("compression.artifact_consistency", "the evaluated model is the one the artifact encodes: it matches the "
           "method's own result, and decoding and running it are deterministic", "lower")
def check_artifact_consistency(subject: str, compressor, artifact: Artifact, decoded: nn.Module,
                               probe_x: torch.Tensor, decoded_probe: torch.Tensor, method_probe: torch.Tensor | None,
                               template: nn.Module, ctx: CompressionContext, tolerance: float) -> CheckRecord:
    """The decoded model computes what the method's own module computes (within ``tolerance``), gives the same
    output twice, and a second decode of ``artifact`` (on ``template``) has the same fingerprint."""
    details: dict[str, Any] = {"tolerance": tolerance}
    problems = []
    if method_probe is not None:
        if tuple(method_probe.shape) != tuple(decoded_probe.shape):
            problems.append(f"the method's own model outputs shape {tuple(method_probe.shape)}, the decoded "
                            f"artifact {tuple(decoded_probe.shape)}")
        else:
            err = relative_error(decoded_probe, method_probe)
            details["relative_error"] = err
            if not math.isfinite(err) or err > tolerance:
                problems.append(f"decoded artifact differs from the method's own model by {err:.3g} (relative "
                                f"max error; tolerance {tolerance:g}): the artifact does not encode the model the "
                                f"method produced")
    else:
        details["relative_error"] = None
    repeat_probe = forward(decoded, probe_x)
    if not torch.equal(repeat_probe, decoded_probe):
        diff = float((repeat_probe - decoded_probe).abs().max())
        problems.append(f"two forward passes of the decoded model on the same {probe_x.shape[0]} inputs differ "
                        f"(max difference {diff:.3g}): its output is not deterministic")
    try:
        again = compressor.decode(artifact, template, ctx)
        fp1, fp2 = module_sha256(decoded), module_sha256(again)
        details.update(decoded_sha256=fp1)
        if fp1 != fp2:
            problems.append("two decodes of the same artifact give different models (fingerprints "
                            f"{fp1[:12]} vs {fp2[:12]}): decoding is not deterministic")
    except Exception as exc:
        problems.append(f"a second decode failed: {type(exc).__name__}: {exc}")
    return gate("compression.artifact_consistency", subject, not problems, measured=details.get("relative_error"),
                expected=0.0, tolerance=tolerance, criterion=CRITERION, details=details,
                message="; ".join(problems) or (
                    f"the evaluated model is rebuilt from artifact {artifact.sha256[:12]} "
                    f"(model fingerprint {details.get('decoded_sha256', '')[:12]}), decodes the same twice and "
                    f"gives the same output twice" + (
                        "; no method-side model to compare (artifact-only submission)" if method_probe is None
                        else f"; it matches the method's own result within {details['relative_error']:.2g}")))


@kit.check("compression.accuracy", "the decoded model meets the accuracy tier the operating point claims "
           "(paired non-inferiority against the anchor); info when nothing is claimed or on a smoke set", "higher")
def check_accuracy(subject: str, metrics: CompressionMetrics, claimed_tier: str | None, *, smoke: bool = False,
                   details: dict | None = None) -> CheckRecord:
    """PASS/FAIL against the claimed tier; INFO when nothing is claimed or the data is a smoke set."""
    d = {"metrics": metrics.to_dict(), **(details or {})}
    classification = metrics.task == "classification"
    label = "top-1" if classification else metrics.metric_label
    summary = (f"{label} {metrics.acc:.4f} vs {metrics.acc_ref:.4f} (delta {metrics.delta:+.4f}, 95% CI "
               f"{metrics.delta_ci95[0]:+.4f}..{metrics.delta_ci95[1]:+.4f}), "
               + (f"agreement {metrics.agreement:.4f}, " if classification else "")
               + f"{metrics.bytes} bytes ({metrics.compression_ratio:.2f}x smaller), best tier met: "
               f"{metrics.best_tier or 'none'}")
    # the improvement over the anchor and the drop, in the task's better direction (WER: lower is better)
    lo, hi = metrics.delta_ci95
    gain_ci, drop, drop_hi = (((lo, hi), -metrics.delta, -lo) if metrics.higher_is_better
                              else ((-hi, -lo), metrics.delta, hi))
    # significantly better than the anchor: flagged (details and message), never a pass or fail by itself
    summary = flag(d, summary, suspicious_gain(gain_ci, metrics.acc_ref, claimed_tier, metrics.task))
    if smoke:
        return CheckRecord("compression.accuracy", subject, Status.INFO,
                           measured=metrics.agreement if classification else metrics.acc,
                           expected=claimed_tier, message=f"SMOKE CHECK on {metrics.samples} {'images' if classification else 'samples'}, accuracy not "
                           f"gated: {summary}", criterion=CRITERION, details=d)
    if claimed_tier is None:
        return CheckRecord("compression.accuracy", subject, Status.INFO, measured=metrics.best_tier,
                           expected=None, message=f"no tier claimed; {summary}", criterion=CRITERION, details=d)
    tier = get_tier(claimed_tier, metrics.task)
    ok = metrics.tiers_met[claimed_tier]
    margin = tier.margin(metrics.acc_ref)
    reason = f"claimed tier {claimed_tier!r} {'met' if ok else 'NOT met'}: {metrics.tier_reasons[claimed_tier]}"
    return gate("compression.accuracy", subject, ok, measured={"drop": drop, "drop_ci95_upper": drop_hi},
                expected=claimed_tier, tolerance=margin, message=f"{reason}; {summary}", criterion=CRITERION,
                details=d)


def not_evaluated(subject: str, claimed_tier: str | None, failure: CheckRecord | None) -> CheckRecord:
    """The ``compression.accuracy`` ERROR of a case whose artifact failed a check before evaluation."""
    return CheckRecord("compression.accuracy", subject, Status.ERROR, criterion=CRITERION, expected=claimed_tier,
                       message=f"not evaluated: {failure.check_id} failed: {failure.message}" if failure
                       else "not evaluated")


@kit.check("compression.size_claim", "the artifact is no larger than the size the operating point claims", "lower")
def check_size_claim(point, artifact: Artifact) -> CheckRecord:
    """A proposal's (or plan's) ``claimed_bytes`` holds: the artifact is no larger."""
    nbytes, claimed = artifact.nbytes, point.claimed_bytes
    return gate("compression.size_claim", point.subject, nbytes <= claimed, measured=nbytes, expected=claimed,
                criterion=CRITERION,
                message=f"artifact {nbytes} bytes {'<=' if nbytes <= claimed else '>'} the {claimed} bytes "
                        + (f"proposal {point.proposal!r} claims" if point.proposal else "the plan claims"),
                details={"proposal": point.proposal, "files": artifact.sizes()})


@kit.check("compression.calibration", "the calibration list names existing samples, none byte-identical to an "
           "evaluated image", "equal")
def check_calibration(spec, pool, evaluation) -> CheckRecord:
    """``spec``'s indices exist in ``pool`` (its dataset split) and none of their images is in ``evaluation``
    (the test split, or the rest of a smoke set the list is carved out of; None when not loaded)."""
    from .calibration import dataset_samples, overlapping_images

    source = spec.source or spec.dataset
    in_range = max(spec.indices) < len(pool)
    overlap, evaluated = None, None
    if in_range and evaluation is not None:
        evaluated = len(evaluation)
        overlap = overlapping_images(dataset_samples(pool.subset(spec.indices)), dataset_samples(evaluation))
    ok = in_range and overlap == 0 and bool(evaluated)
    message = (f"{len(spec.indices)} {source}/{spec.split} samples ({spec.rule}); index list sha256 "
               f"{spec.index_sha256}; {overlap} of them identical to one of the {evaluated} evaluated images"
               if in_range else f"index {max(spec.indices)} is beyond the {len(pool)} {source}/{spec.split} samples")
    return gate("compression.calibration", f"calibration/{spec.dataset}", ok, measured=overlap, expected=0,
                criterion=CRITERION, message=message,
                details={"indices": len(spec.indices), "index_sha256": spec.index_sha256, "rule": spec.rule,
                         "split": spec.split, "source": source, "evaluated_samples": evaluated})


@kit.check("compression.latency", "CPU latency of the (decoded) model on a batch, timed by pytest-benchmark; fails "
           "only when the timed model gives no finite logits", "info")
def latency_record(subject: str, benchmark, out, batch: int) -> CheckRecord:
    """INFO with the mean time per batch, FAIL when the timed model did not return finite logits for it."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    mean = getattr(stats, "mean", None)
    ok = isinstance(out, torch.Tensor) and out.shape[0] == batch and bool(torch.isfinite(out).all())
    return CheckRecord("compression.latency", subject, Status.INFO if ok else Status.FAIL,
                       measured=mean, criterion=CRITERION,
                       message=(f"mean {mean * 1e3:.2f} ms per batch of {batch}" if mean is not None
                                else "timing disabled (--benchmark-disable)") if ok
                       else "the timed model did not return finite logits for the batch",
                       details={"batch": batch, "median": getattr(stats, "median", None),
                                "stddev": getattr(stats, "stddev", None), "rounds": getattr(stats, "rounds", None)})


#: How far above its target a cost ratio may land: AIMET's greedy search picks each layer's ratio from
#: ``num_candidates`` steps (0.1 apart by default), so the model ratio lands on a grid; half a step.
TARGET_TOLERANCE = 0.05


def cost_target(config) -> tuple[str, float] | None:
    """``(cost metric, target ratio)`` of a config that targets a cost (AIMET compression: ``target_ratio`` with
    ``cost_metric`` "mac" or "memory"); None for a method that targets nothing."""
    target = getattr(config, "target_ratio", None)
    if target is None:
        return None
    return getattr(config, "cost_metric", "mac"), float(target)


@kit.check("compression.target_reached", "a point that targets a cost ratio reaches it: the decoded model's MACs "
           "(or parameters, for a memory target) over the anchor's are at most the target plus "
           f"{TARGET_TOLERANCE}; a point that misses fails, it is never relabelled", "lower")
def check_target_reached(subject: str, config, metrics: CompressionMetrics,
                         tolerance: float = TARGET_TOLERANCE) -> CheckRecord | None:
    """PASS when the achieved cost ratio is within ``tolerance`` above the config's target, FAIL otherwise (the
    message gives target and achieved ratio); None when the config targets no cost."""
    target = cost_target(config)
    if target is None:
        return None
    metric, ratio = target
    measured, reference = (metrics.macs, metrics.macs_ref) if metric == "mac" else (metrics.params, metrics.params_ref)
    achieved = measured / reference if reference else float("nan")
    ok = math.isfinite(achieved) and achieved <= ratio + tolerance
    what = "MACs" if metric == "mac" else "parameters"
    return gate("compression.target_reached", subject, ok, measured=round(achieved, 4), expected=ratio,
                tolerance=tolerance, criterion=CRITERION,
                details={"cost_metric": metric, "achieved_ratio": achieved, "target_ratio": ratio,
                         "measured": measured, "reference": reference},
                message=(f"{what} ratio {achieved:.3f} ({measured} of {reference}) "
                         + (f"reaches the target {ratio:g} (tolerance {tolerance:g})" if ok else
                            f"MISSES the target {ratio:g} by {achieved - ratio:+.3f} (tolerance {tolerance:g}): "
                            f"the point is not what its label says; choose a target the candidates can reach "
                            f"(fewer ignored layers, a scheme that covers more of the MACs)")))
