"""The anchor criterion's checks: every anchor is the model its manifest says it is.

Each function returns one :class:`~nnconform.records.CheckRecord`; the ids are registered in the
check catalogue with what they check and how they are judged.
"""

from __future__ import annotations

from typing import Any

import torch

from .anchors import Anchor, WeightsIntegrityError, WeightsUnavailable, resolve_weights_path
from .hashing import sha256_file
from .kit.checks import register_check
from .records import CheckRecord, Status, gate
from .stats import wilson_interval

CRITERION = "anchors"
MACS_RTOL = 0.001  # manifest MACs are published figures with 3-4 significant digits (Google's "385M")
TORCHVISION_MACS_ATOL = 0.0005e9  # torchvision's `_ops` is rounded to 3 decimals of GFLOPS (which are MACs)
LATENCY_BATCH = 32

register_check("anchor.weights_sha256", "The weights file's full sha256, computed from its bytes, is the one the "
               "manifest pins", "equal")
register_check("anchor.accuracy", "The task's metric (top-1, WER) on the anchor's full evaluation set reproduces the "
               "documented figure within the anchor's tolerance", "equal")
register_check("anchor.accuracy_smoke", "On a smoke set (a few samples), the documented figure lies inside the 95% "
               "interval of the observed one (top-1: Wilson; other metrics: bootstrap over samples); not a "
               "measurement of the documented accuracy", "pass-fail")
register_check("anchor.params_macs", "Parameter and MAC counts (torch.utils.flop_counter, MACs = FLOPs / 2; an ONNX "
               "anchor's counted from its graph: stored weights, Conv/Gemm/MatMul MACs) match the documented figures",
               "equal")
register_check("anchor.deterministic", "Two evaluations of the anchor on the same samples give bit-identical "
               "logits", "equal")
register_check("anchor.latency", "CPU latency of one batch of 32 (pytest-benchmark mean, seconds); the timed model "
               "returns finite logits of the anchor's output shape", "info")
register_check("input.available", "Something a case needs (weights, data, a method's package) is present; a skip "
               "names what to supply", "pass-fail")


def check_weights_sha256(anchor: Anchor) -> CheckRecord:
    """Hash the anchor's weights file (raises :class:`WeightsUnavailable` when it is missing)."""
    path = resolve_weights_path(anchor.weights)
    if not path.is_file():
        anchor.state_dict()  # raises WeightsUnavailable with the exact file and what to do (or downloads it)
    actual = sha256_file(path)
    ok = actual == anchor.sha256
    return gate("anchor.weights_sha256", anchor.name, ok, measured=actual, expected=anchor.sha256,
                criterion=CRITERION, details={"file": str(path), "bytes": path.stat().st_size},
                message=f"{path} verified" if ok else f"{path} has sha256 {actual}, but the manifest pins "
                                                      f"{anchor.sha256}; the file is corrupt or not the published one")


def integrity_failure(subject: str, exc: WeightsIntegrityError) -> CheckRecord:
    """The FAIL record of a case whose anchor's weights do not match their pin."""
    return CheckRecord("anchor.weights_sha256", subject, Status.FAIL, message=str(exc), criterion=CRITERION)


def logits_sha256(logits: torch.Tensor) -> str:
    """Fingerprint of a model's logits on its evaluation set (float32, C order): what golden results pin."""
    from .hashing import sha256_bytes

    return sha256_bytes(logits.detach().to(torch.float32).contiguous().numpy().tobytes())


#: documented evaluation-set sizes: a smaller set of the same data is judged by its confidence interval
DOCUMENTED_EVAL_SIZES = {"imagenet-1k": 50_000}
register_check("anchor.accuracy_subset", "On a subset smaller than the documented evaluation set (e.g. "
               "--nnc-imagenet-subset), the documented top-1 lies inside the 95% Wilson interval of the observed "
               "top-1 widened by the anchor's tolerance; labelled a subset, not held to the tolerance alone",
               "pass-fail")


def subset_accuracy(anchor: Anchor, dataset, result, documented: float) -> CheckRecord:
    """``anchor.accuracy_subset``: top-1 on fewer images than the documented set, judged by its interval."""
    hits, n = int(result.correct.sum()), len(dataset)
    lo, hi = wilson_interval(hits, n)
    lo, hi = max(0.0, lo - anchor.tolerance), min(1.0, hi + anchor.tolerance)
    full = DOCUMENTED_EVAL_SIZES[dataset.name]
    return gate("anchor.accuracy_subset", anchor.name, lo <= documented <= hi, measured=result.top1,
                expected=documented, tolerance=[lo, hi], criterion=CRITERION,
                message=f"SUBSET of {n:,} of the {full:,} {dataset.name} images ({hits} correct, top-1 "
                        f"{result.top1:.4%}): documented {documented:.4%} judged against the 95% interval "
                        f"{lo:.4f}..{hi:.4f} (Wilson, widened by the tolerance {anchor.tolerance}); not the full-set "
                        f"measurement",
                details={"dataset": f"{dataset.name}/{dataset.split}", "samples": n, "documented_samples": full,
                         "subset": True, "fingerprint": dataset.fingerprint, "top5": result.top5,
                         "notes": list(dataset.notes), "logits_sha256": logits_sha256(result.logits)})


def check_documented_accuracy(anchor: Anchor, dataset, result) -> CheckRecord:
    """The task's metric against the manifest's figure (``metrics.top1``, ``metrics.wer``): within tolerance
    on a full set; a smoke check on a smoke set."""
    task = result.task
    documented = anchor.metrics[task.metric]
    if task.name != "classification":
        return _documented_metric(anchor, dataset, result, documented)
    if dataset.smoke:
        hits = int(result.correct.sum())
        lo, hi = wilson_interval(hits, len(dataset))
        return gate("anchor.accuracy_smoke", anchor.name, lo <= documented <= hi, measured=result.top1,
                    expected=documented, tolerance=[lo, hi], criterion=CRITERION,
                    message=f"SMOKE CHECK on {len(dataset)} {dataset.name} images ({hits} correct): "
                            f"95% interval {lo:.3f}..{hi:.3f}; not a measurement of ImageNet accuracy",
                    details={"dataset": dataset.name, "fingerprint": dataset.fingerprint, "smoke": True,
                             "logits_sha256": logits_sha256(result.logits)})
    if len(dataset) < DOCUMENTED_EVAL_SIZES.get(dataset.name, 0):
        return subset_accuracy(anchor, dataset, result, documented)
    diff = result.top1 - documented
    return gate("anchor.accuracy", anchor.name, abs(diff) <= anchor.tolerance, measured=result.top1,
                expected=documented, tolerance=anchor.tolerance, criterion=CRITERION,
                message=f"top-1 {result.top1:.4%} vs documented {documented:.4%} (difference {diff:+.4%}) on "
                        f"{len(dataset)} samples",
                details={"dataset": f"{dataset.name}/{dataset.split}", "samples": len(dataset),
                         "fingerprint": dataset.fingerprint, "top5": result.top5,
                         "logits_sha256": logits_sha256(result.outputs)})


def _documented_metric(anchor: Anchor, dataset, result, documented: float) -> CheckRecord:
    """``anchor.accuracy``/``anchor.accuracy_smoke`` of a task other than classification (WER): the smoke
    interval is the task's bootstrap over samples."""
    task, measured = result.task, result.metric
    details = {"dataset": f"{dataset.name}/{dataset.split}", "samples": len(dataset), "task": task.name,
               "metric": task.metric, "fingerprint": dataset.fingerprint, "logits_sha256": logits_sha256(result.outputs)}
    if dataset.smoke:
        lo, hi = task.interval(result.scores)
        return gate("anchor.accuracy_smoke", anchor.name, lo <= documented <= hi, measured=measured,
                    expected=documented, tolerance=[lo, hi], criterion=CRITERION, details={**details, "smoke": True},
                    message=f"SMOKE CHECK on {len(dataset)} {dataset.name} samples: {task.metric_label} "
                            f"{task.format_value(measured)}, 95% bootstrap interval {task.format_value(lo)}.."
                            f"{task.format_value(hi)}; documented {task.format_value(documented)}")
    diff = measured - documented
    return gate("anchor.accuracy", anchor.name, abs(diff) <= anchor.tolerance, measured=measured,
                expected=documented, tolerance=anchor.tolerance, criterion=CRITERION, details=details,
                message=f"{task.metric_label} {task.format_value(measured)} vs documented "
                        f"{task.format_value(documented)} (difference {diff * 100:+.2f} points) on {len(dataset)} "
                        f"samples")


def documented_params_macs(anchor: Anchor) -> tuple[dict[str, int], float]:
    """The documented parameter and MAC counts and the MAC tolerance (torchvision's own figures for its classifiers;
    a torchvision detector's MACs depend on how many proposals its weights keep, so its manifest states the count
    made here, compared with torchvision's ``_ops`` in tests/test_coco_path.py)."""
    if anchor.family == "torchvision" and anchor.task == "classification":
        from torchvision.models import get_weight

        meta = get_weight(anchor.weights.removeprefix("torchvision:")).meta
        return {"num_params": meta["num_params"], "macs": int(round(meta["_ops"] * 1e9))}, TORCHVISION_MACS_ATOL
    return {"num_params": anchor.num_params, "macs": anchor.macs}, MACS_RTOL * anchor.macs


def check_params_macs(anchor: Anchor) -> CheckRecord:
    """Count parameters and MACs of the architecture (no weights needed) against the documented figures."""
    from .profile import count_macs, count_params

    if anchor.family == "onnx":  # torch cannot see inside onnxruntime: counted from the verified graph
        from .onnxgraph.anchor import graph_counts

        params, macs = graph_counts(anchor.name)
    else:
        model = anchor.build_architecture()
        params, macs = count_params(model), count_macs(model, anchor.input_shape)
    documented, macs_tol = documented_params_macs(anchor)
    ok = params == documented["num_params"] and abs(macs - documented["macs"]) <= macs_tol
    return gate("anchor.params_macs", anchor.name, ok, measured={"num_params": params, "macs": macs},
                expected=documented, tolerance={"num_params": 0, "macs": macs_tol}, criterion=CRITERION,
                message=f"{params:,} params, {macs:,} MACs at {list(anchor.input_shape)}"
                        + ("" if ok else f"; documented {documented}"),
                details={"macs_difference": macs - documented["macs"]})


def check_deterministic(anchor: Anchor, model: torch.nn.Module, dataset, samples: int = 1000) -> CheckRecord:
    """Evaluate the first ``samples`` samples twice; the outputs (logits) must be bit-identical."""
    from .evaluate import DEFAULT_BATCH_SIZE, forward_outputs, resolve_task

    task = resolve_task(dataset, getattr(dataset, "task", None) or anchor.task)
    sample = dataset.subset(range(min(len(dataset), samples)))
    first = forward_outputs(model, sample, anchor.preprocess, DEFAULT_BATCH_SIZE, task)
    second = forward_outputs(model, sample, anchor.preprocess, DEFAULT_BATCH_SIZE, task)
    differing = int((first != second).reshape(first.shape[0], -1).any(1).sum()) if first.shape == second.shape \
        else len(sample)
    return gate("anchor.deterministic", anchor.name, torch.equal(first, second), measured=differing, expected=0,
                criterion=CRITERION, message=f"{differing} of {len(sample)} samples differ between two runs")


def latency_record(subject: str, benchmark, out: Any, expected_shape: tuple[int, ...] | None) -> CheckRecord:
    """The INFO record of a timed batch: its mean latency (seconds); FAIL when the timed model did not return
    finite logits of ``expected_shape`` (``None``: any shape with the batch's leading size)."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    mean = getattr(stats, "mean", None)
    ok = isinstance(out, torch.Tensor) and out.shape[0] == LATENCY_BATCH and bool(torch.isfinite(out).all())
    if ok and expected_shape is not None:
        ok = tuple(out.shape) == tuple(expected_shape)
    shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    return CheckRecord("anchor.latency", subject, Status.INFO if ok else Status.FAIL, measured=mean,
                       criterion=CRITERION,
                       message=((f"mean {mean * 1e3:.2f} ms per batch of {LATENCY_BATCH}" if mean is not None
                                 else "timing disabled (--benchmark-disable)") if ok
                                else f"the timed model returned {shape}, not finite logits of shape "
                                     f"{list(expected_shape) if expected_shape else '[32, ...]'}"),
                       details={"batch": LATENCY_BATCH, "output_shape": shape, "median": getattr(stats, "median", None),
                                "stddev": getattr(stats, "stddev", None), "rounds": getattr(stats, "rounds", None)})


__all__ = ["check_weights_sha256", "integrity_failure", "check_documented_accuracy", "check_params_macs",
           "check_deterministic", "latency_record", "WeightsUnavailable", "WeightsIntegrityError"]
