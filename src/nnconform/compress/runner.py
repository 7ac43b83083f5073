"""Run one (anchor, method, operating point) case: compress, decode, check, evaluate, gate.

Each step yields a :class:`CheckRecord`; a method that raises, returns NaN, changes the output
shape, returns an artifact that does not decode or reports a size other than its artifact's fails
its own case with a message that says which, and nothing else is affected.

The checks that make sizes honest:

* ``compression.size_reported``: the size the method reports equals ``len(artifact bytes)``;
* ``compression.decode``: the artifact decodes on a template whose weights are all NaN, so every
  weight the evaluated model uses comes from the artifact;
* ``compression.artifact_consistency``: the decoded model computes what the method's own in-memory
  result computes (on a probe batch), gives the same output twice for the same input, and a second
  decode of the artifact has the same fingerprint as the model that is evaluated: the evaluated
  model is the one rebuilt from the artifact, and it is deterministic.

Artifacts are cached on disk by (anchor weights, method, config, calibration, versions), so a
rerun decodes instead of compressing; the evaluation cache then makes the forward passes free.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hashing import class_source_sha256, module_sha256, sha256_bytes
from ..records import CheckRecord, Status, gate
from .base import (Artifact, ArtifactError, CalibrationSet, CompressedModel, CompressionContext, CompressorUnavailable,
                   get_compressor)
from .metrics import CompressionMetrics, accuracy_record, compute_metrics
from .serialize import OnnxModule, fp32_state_bytes, onnx_parameter_count, poisoned_template
from .suite import OperatingPoint

ENGINE_VERSION = "2"
PROBE_SAMPLES = 32
#: Relative tolerance of the decoded model against the method's own module, unless the handler
#: sets ``decode_tolerance`` (an ONNX runtime computing integer kernels differs from AIMET's
#: fake-quantization simulation by a rounding step here and there).
DEFAULT_DECODE_TOLERANCE = 1e-4
CRITERION = "compression"


@dataclass
class AnchorUnderTest:
    """What a case needs about its anchor: the model, its shapes and its reference evaluation."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[str, ...]
    reference_logits: torch.Tensor
    labels: torch.Tensor
    smoke: bool = False
    _costs: dict = field(default_factory=dict, repr=False)

    def costs(self) -> dict[str, int]:
        """fp32 bytes, params and MACs of the anchor (computed once)."""
        if not self._costs:
            from ..profile import count_macs, count_params

            self._costs.update(bytes=fp32_state_bytes(self.model), params=count_params(self.model),
                               macs=count_macs(self.model, self.input_shape))
        return self._costs


@dataclass
class CaseOutcome:
    """Everything one case produced: records, the decoded model, metrics."""

    point: OperatingPoint
    records: list[CheckRecord] = field(default_factory=list)
    decoded: nn.Module | None = None
    metrics: CompressionMetrics | None = None
    accuracy: CheckRecord | None = None
    artifact: Artifact | None = None
    details: dict[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None

    @property
    def failure(self) -> CheckRecord | None:
        """The first record that did not pass (the message a failing case shows)."""
        return next((r for r in self.records if not r.passed and r.status != Status.SKIP), None)

    @property
    def artifact_ok(self) -> bool:
        return self.failure is None and self.skip_reason is None and self.decoded is not None


class CompressionCache:
    """Artifacts (plus the method's probe outputs) on disk, one folder per case key."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) / "compress" if root else None

    def key(self, point: OperatingPoint, model: nn.Module, calibration: CalibrationSet) -> str:
        config = point.config.to_dict()
        config.pop("claimed_tier", None)  # a claim does not change the artifact
        spec = {"engine": ENGINE_VERSION, "config": config, "model": module_sha256(model),
                "calibration": calibration.fingerprint, "torch": torch.__version__, "versions": _tool_versions()}
        if point.proposal:  # a proposal's code changes between submissions; the built-ins change with ENGINE_VERSION
            spec["handler_source"] = class_source_sha256(get_compressor(point.method))
        return sha256_bytes(json.dumps(spec, sort_keys=True).encode())

    def load(self, key: str) -> tuple[CompressedModel, torch.Tensor] | None:
        if self.root is None:
            return None
        folder = self.root / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
            artifact = Artifact.read(folder, meta["files"], meta["format"])
            if artifact.sha256 != meta["artifact_sha256"]:
                return None
            from safetensors.torch import load_file

            probe = load_file(str(folder / "probe.safetensors"))["logits"]
        except (OSError, ValueError, KeyError, ArtifactError):
            return None
        result = CompressedModel(None, artifact, meta["reported_bytes"], meta.get("params"), meta.get("macs"),
                                 meta.get("metadata", {}))
        return result, probe

    def store(self, key: str, result: CompressedModel, probe: torch.Tensor, config: dict) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file

        final = self.root / key
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-")) if self.root.exists() else None
        if tmp is None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
        try:
            result.artifact.write(tmp)
            save_file({"logits": probe.contiguous()}, str(tmp / "probe.safetensors"))
            meta = {"files": list(result.artifact.files), "format": result.artifact.format,
                    "artifact_sha256": result.artifact.sha256, "reported_bytes": result.reported_bytes,
                    "params": result.params, "macs": result.macs, "metadata": _jsonable(result.metadata),
                    "config": config}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _tool_versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for pkg in ("aimet-torch", "nncodec", "onnx", "onnxruntime", "zstandard", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _jsonable(value):
    from ..records import _jsonable as conv

    return json.loads(json.dumps(conv(value), default=str))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, not a logits tensor")
    return out.detach().float().clone()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(b.abs().max()), 1e-6)
    return float((a - b).abs().max()) / scale


def _counts(decoded: nn.Module, result: CompressedModel, input_shape) -> tuple[int, int, str]:
    """(params, MACs, source): measured on the decoded model when it is a plain float torch model."""
    from ..profile import count_macs

    # ONNX graphs and torch.ao quantized graphs hide their weights from ``parameters()``: their
    # methods report the counts of the graph they exported (``profiled_by_method``)
    opaque = isinstance(decoded, OnnxModule) or any(getattr(m, "profiled_by_method", False) for m in decoded.modules())
    plain = not opaque and all(p.is_floating_point() for p in decoded.parameters()) \
        and any(True for _ in decoded.parameters())
    if plain:
        nonzero = sum(int((p != 0).sum()) for p in decoded.parameters())
        return nonzero, count_macs(decoded, input_shape), "measured on the decoded model (nonzero parameters)"
    if result.macs is None or (result.params is None and not isinstance(decoded, OnnxModule)):
        raise ArtifactError("the decoded model cannot be profiled by torch and the method reported no params/MACs")
    if isinstance(decoded, OnnxModule):
        params = onnx_parameter_count(decoded.onnx_bytes.numpy().tobytes())
        return params, int(result.macs), "parameters stored in the ONNX graph; MACs reported by the method"
    return int(result.params), int(result.macs), "reported by the method for the graph it exported"


def run_case(point: OperatingPoint, anchor: AnchorUnderTest, calibration: CalibrationSet, *, evaluate,
             cache_dir: Path | None = None, use_cache: bool = True) -> CaseOutcome:
    """Compress (or load from cache), decode, check and evaluate one operating point.

    ``evaluate(model) -> logits`` evaluates a model on the anchor's dataset (the session's cached
    evaluator). Never raises for a method's failure: the outcome's records say what went wrong.
    """
    out = CaseOutcome(point)
    subject = point.subject
    rec = out.records.append
    try:
        handler = get_compressor(point.method)
    except (KeyError, TypeError) as exc:
        rec(CheckRecord.from_exception("compression.compress", subject, exc, criterion=CRITERION))
        return out
    # a handler that reads files the user may change (artifact-only submissions) is never cached
    cache = CompressionCache(cache_dir if use_cache and getattr(handler, "cacheable", True) else None)
    key = cache.key(point, anchor.model, calibration)
    probe_x = calibration.images[:PROBE_SAMPLES]
    out.details.update(anchor=point.anchor, method=point.method, label=point.label, run_tier=point.run_tier,
                       proposal=point.proposal,
                       description=getattr(handler, "description", ""), smoke=anchor.smoke,
                       config=point.config.to_dict(), calibration=calibration.to_dict(), cache_key=key[:16])

    # 1. compress (or reuse the cached artifact) ---------------------------------------------
    cached = cache.load(key)
    workdir = Path(tempfile.mkdtemp(prefix="nnconform-compress-"))
    try:
        ctx = CompressionContext(anchor.name, tuple(anchor.input_shape), anchor.num_classes, calibration, workdir,
                                 cache_dir=Path(cache_dir) if cache_dir else None)
        if cached is not None:
            result, method_probe = cached
            out.details["from_cache"] = True
            rec(CheckRecord("compression.compress", subject, Status.PASS, message="artifact loaded from the cache "
                            f"(key {key[:16]})", criterion=CRITERION, details={"from_cache": True}))
        else:
            start = time.perf_counter()
            try:
                model_copy = _fresh_copy(anchor.model)
                _seed_everything(ctx.seed)  # AIMET's channel-pruning reconstruction samples at random
                result = handler.compress(model_copy, point.config, ctx)
            except CompressorUnavailable as exc:
                out.skip_reason = str(exc)
                rec(CheckRecord("compression.compress", subject, Status.SKIP, message=str(exc), criterion=CRITERION))
                return out
            except BaseException as exc:  # a method's crash (even SystemExit) is its own case's failure
                if isinstance(exc, KeyboardInterrupt):
                    raise
                rec(CheckRecord.from_exception("compression.compress", subject, exc, criterion=CRITERION))
                return out
            seconds = time.perf_counter() - start
            if not isinstance(result, CompressedModel) or not isinstance(result.artifact, Artifact):
                rec(CheckRecord("compression.compress", subject, Status.ERROR, criterion=CRITERION,
                                message=f"{point.method}.compress returned {type(result).__name__}, expected a "
                                        f"CompressedModel with an Artifact"))
                return out
            method_probe = None
            if result.module is not None:
                try:
                    method_probe = _forward(result.module, probe_x)
                except Exception as exc:
                    rec(CheckRecord.from_exception("compression.compress", subject, exc, criterion=CRITERION,
                                                   details={"step": "running the method's own compressed module"}))
                    return out
            rec(CheckRecord("compression.compress", subject, Status.PASS, measured=round(seconds, 3),
                            message=f"compressed in {seconds:.1f} s", criterion=CRITERION,
                            details={"seconds": seconds, "from_cache": False}))
            out.details["compress_seconds"] = seconds
        out.artifact = result.artifact
        out.details.update(artifact_bytes=result.artifact.nbytes, artifact_files=result.artifact.sizes(),
                           artifact_format=result.artifact.format, artifact_sha256=result.artifact.sha256,
                           method_metadata=_jsonable(result.metadata))

        # 2. the size the method reports is its artifact's length ----------------------------
        reported = result.reported_bytes
        size_ok = isinstance(reported, int) and not isinstance(reported, bool) and reported == result.artifact.nbytes
        rec(gate("compression.size_reported", subject, size_ok, measured=reported, expected=result.artifact.nbytes,
                 criterion=CRITERION,
                 message=(f"reported size {reported} bytes equals the artifact's {result.artifact.nbytes} bytes"
                          if size_ok else f"{point.method} reports {reported!r} bytes but its artifact is "
                          f"{result.artifact.nbytes} bytes ({result.artifact.sizes()}): sizes must be artifact "
                          f"lengths")))

        # 3. decode on a NaN template ---------------------------------------------------------
        start = time.perf_counter()
        try:
            decoded = handler.decode(result.artifact, poisoned_template(anchor.model), point.config, ctx)
            if not isinstance(decoded, nn.Module):
                raise ArtifactError(f"decode returned {type(decoded).__name__}, not an nn.Module")
            decoded.eval()
            decoded_probe = _forward(decoded, probe_x)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            rec(CheckRecord.from_exception("compression.decode", subject, exc, criterion=CRITERION,
                                           details={"artifact_files": result.artifact.sizes()}))
            return out
        decode_seconds = time.perf_counter() - start
        rec(CheckRecord("compression.decode", subject, Status.PASS, measured=round(decode_seconds, 3),
                        message=f"artifact ({result.artifact.format}, {result.artifact.nbytes} bytes) decoded on a "
                                f"NaN-filled template in {decode_seconds:.2f} s", criterion=CRITERION))

        # 4. outputs: shape and finiteness ----------------------------------------------------
        expected_shape = (probe_x.shape[0], anchor.num_classes)
        finite = bool(torch.isfinite(decoded_probe).all())
        shape_ok = tuple(decoded_probe.shape) == expected_shape
        rec(gate("compression.output", subject, finite and shape_ok, measured=list(decoded_probe.shape),
                 expected=list(expected_shape), criterion=CRITERION,
                 message=("decoded model outputs finite logits of the anchor's shape" if finite and shape_ok else
                          "; ".join(m for m in (
                              None if shape_ok else f"output shape {tuple(decoded_probe.shape)} differs from the "
                                                    f"anchor's {expected_shape}",
                              None if finite else f"{int((~torch.isfinite(decoded_probe)).sum())} non-finite "
                                                  f"logits (NaN/inf) on the probe batch (a weight missing from "
                                                  f"the artifact would show up as NaN)") if m))))
        if not (finite and shape_ok):
            return out

        # 5. the evaluated model is the one the artifact encodes -------------------------------
        tol = float(getattr(handler, "decode_tolerance", DEFAULT_DECODE_TOLERANCE))
        details: dict[str, Any] = {"tolerance": tol}
        problems = []
        if method_probe is not None:
            if tuple(method_probe.shape) != tuple(decoded_probe.shape):
                problems.append(f"the method's own model outputs shape {tuple(method_probe.shape)}, the decoded "
                                f"artifact {tuple(decoded_probe.shape)}")
            else:
                err = _relative_error(decoded_probe, method_probe)
                details["relative_error"] = err
                if not math.isfinite(err) or err > tol:
                    problems.append(f"decoded artifact differs from the method's own model by {err:.3g} (relative "
                                    f"max error; tolerance {tol:g}): the artifact does not encode the model the "
                                    f"method produced")
        else:
            details["relative_error"] = None
        repeat_probe = _forward(decoded, probe_x)
        if not torch.equal(repeat_probe, decoded_probe):
            diff = float((repeat_probe - decoded_probe).abs().max())
            problems.append(f"two forward passes of the decoded model on the same {probe_x.shape[0]} inputs differ "
                            f"(max difference {diff:.3g}): its output is not deterministic")
        try:
            again = handler.decode(result.artifact, poisoned_template(anchor.model), point.config, ctx)
            fp1, fp2 = module_sha256(decoded), module_sha256(again)
            details.update(decoded_sha256=fp1)
            if fp1 != fp2:
                problems.append("two decodes of the same artifact give different models (fingerprints "
                                f"{fp1[:12]} vs {fp2[:12]}): decoding is not deterministic")
        except Exception as exc:
            problems.append(f"a second decode failed: {type(exc).__name__}: {exc}")
        rec(gate("compression.artifact_consistency", subject, not problems, measured=details.get("relative_error"),
                 expected=0.0, tolerance=tol, criterion=CRITERION, details=details,
                 message="; ".join(problems) or (
                     f"the evaluated model is rebuilt from artifact {result.artifact.sha256[:12]} "
                     f"(model fingerprint {details.get('decoded_sha256', '')[:12]}), decodes the same twice and "
                     f"gives the same output twice" + (
                         "; no method-side model to compare (artifact-only submission)" if method_probe is None
                         else f"; it matches the method's own result within {details['relative_error']:.2g}"))))
        if problems:
            return out
        if cached is None and cache.root is not None:
            cache.store(key, result, method_probe if method_probe is not None else decoded_probe,
                        out.details["config"])

        # 6. evaluate the decoded model (only an artifact that passed every check) -------------
        if out.failure is not None:
            return out
        try:
            logits = evaluate(decoded)
        except Exception as exc:
            rec(CheckRecord.from_exception("compression.output", subject, exc, criterion=CRITERION,
                                           details={"step": "evaluating the decoded model"}))
            return out
        if logits.shape != anchor.reference_logits.shape or not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).sum()) if logits.shape == anchor.reference_logits.shape else None
            rec(CheckRecord("compression.output", subject, Status.FAIL, measured=list(logits.shape),
                            expected=list(anchor.reference_logits.shape), criterion=CRITERION,
                            message=f"on the evaluation set the decoded model gives logits of shape "
                                    f"{tuple(logits.shape)}" + (f" with {bad} non-finite values" if bad else "")))
            return out
        out.decoded = decoded

        # 7. metrics and the tier gate --------------------------------------------------------
        costs = anchor.costs()
        params, macs, count_source = _counts(decoded, result, anchor.input_shape)
        out.metrics = compute_metrics(anchor.reference_logits, logits, anchor.labels, anchor.classes,
                                      bytes_ref=costs["bytes"], nbytes=result.artifact.nbytes,
                                      params_ref=costs["params"], params=params, macs_ref=costs["macs"], macs=macs)
        out.details["counts_source"] = count_source
        out.accuracy = accuracy_record(subject, out.metrics, point.config.claimed_tier, smoke=anchor.smoke,
                                       details={k: v for k, v in out.details.items()})
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _fresh_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def _seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so a method that samples (AIMET channel pruning picks random
    feature-map positions for its reconstruction) gives the same artifact on every run."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
