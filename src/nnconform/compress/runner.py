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

Artifacts are cached on disk by (anchor weights, method, config, the method's source file,
calibration, versions), so a rerun decodes instead of compressing; the evaluation cache then makes the forward passes free.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.device import device_key_part
from ..hashing import class_source_sha256, module_sha256, sha256_bytes
from ..records import CheckRecord, Status
from ..store import FORMAT as STORE_FORMAT, ContentStore
from .base import (DEFAULT_DECODE_TOLERANCE, Artifact, ArtifactError, CalibrationSet, CompressedModel,
                   CompressionContext, CompressorUnavailable, compressor_class)
from .checks import (check_accuracy, check_artifact_consistency, check_evaluated_output, check_output,
                     check_size_reported, check_target_reached, forward)
from .metrics import CompressionMetrics, compute_metrics
from .plan import CompressionPoint
from .serialize import OnnxModule, fp32_state_bytes, onnx_parameter_count, poisoned_template

ENGINE_VERSION = "2"
PROBE_SAMPLES = 32
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
    labels: Any  # class indices (tensor); transcripts for speech
    smoke: bool = False
    task: Any = None  # the task (nnconform.tasks) the outputs are scored with; None: classification
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

    point: CompressionPoint
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
    """Artifacts (plus the method's probe outputs) on disk: one verified store entry per case key.

    An entry holds the artifact's files under their own names, the probe logits
    (``probe.safetensors``) and, in its checksummed manifest, what ``meta.json`` used to hold. A
    corrupt entry (bit flip, truncation, an edited value) is warned about and compressed again.
    """

    PROBE = "probe.safetensors"

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) / "compress" if root else None
        self.entries = ContentStore(self.root, "compression cache") if self.root else None

    def key(self, point: CompressionPoint, model: nn.Module, calibration: CalibrationSet, compressor,
            device: str = "cpu") -> str:
        """The entry of one case: the method's config and the sha256 of its class's source file (an edited
        method, built in or a proposal's, is compressed again), the anchor's weights, the calibration set,
        the engine, store format and tool versions, and the device when it is not the CPU (CPU keys stay as they
        were). Claims are the point's: they never change the artifact."""
        # the store format is in the key: folders of the old layout (no manifest) are misses, not "corrupt"
        spec = {"engine": ENGINE_VERSION, "store": STORE_FORMAT, "config": point.config.to_dict(),
                "model": module_sha256(model), "calibration": calibration.fingerprint, "torch": torch.__version__,
                "versions": _tool_versions(), "handler_source": _source_sha256(compressor),
                **device_key_part(device)}
        return sha256_bytes(json.dumps(spec, sort_keys=True).encode())

    def load(self, key: str) -> tuple[CompressedModel, torch.Tensor] | None:
        """The cached (result, probe logits) of ``key``; None when absent or corrupt (then warned)."""
        if self.entries is None:
            return None
        entry = self.entries.get(key)
        if entry is None:
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load

        meta = entry.meta
        try:
            artifact = Artifact({n: entry.files[n] for n in meta["files"]}, meta["format"])
            if artifact.sha256 != meta["artifact_sha256"]:
                raise ValueError(f"artifact sha256 {artifact.sha256[:12]} != {str(meta['artifact_sha256'])[:12]}")
            probe = load(entry.files[self.PROBE])["logits"]
            result = CompressedModel(None, artifact, meta["reported_bytes"], meta.get("params"), meta.get("macs"),
                                     meta.get("metadata", {}))
        except (SafetensorError, KeyError, TypeError, ValueError) as exc:  # verified bytes, unusable content
            self.entries.report_corrupt(key, f"{type(exc).__name__}: {exc}")
            return None
        return result, probe

    def store(self, key: str, result: CompressedModel, probe: torch.Tensor, config: dict) -> None:
        """Store a checked artifact and its probe logits as entry ``key`` (atomic, safe beside other runs)."""
        if self.entries is None or self.PROBE in result.artifact.files:  # a name clash is simply not cached
            return
        from safetensors.torch import save

        meta = {"files": list(result.artifact.files), "format": result.artifact.format,
                "artifact_sha256": result.artifact.sha256, "reported_bytes": result.reported_bytes,
                "params": result.params, "macs": result.macs, "metadata": _jsonable(result.metadata),
                "config": config}
        self.entries.put(key, {**result.artifact.files, self.PROBE: save({"logits": probe.contiguous()})}, meta)


def _source_sha256(compressor) -> str | None:
    """What identifies the method's code in cache keys: a sandboxed proposal's folder tree hash (its proxy class
    says ``source_sha256``), else the sha256 of the source file defining the method's class."""
    return getattr(compressor, "source_sha256", None) or class_source_sha256(compressor)


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
    if isinstance(decoded, OnnxModule):
        # a submitted graph (artifact-only) reports nothing: both counts come from the graph itself
        from .onnx_profile import onnx_macs

        graph = decoded.onnx_bytes.numpy().tobytes()
        params = onnx_parameter_count(graph)
        if result.macs is not None:
            return params, int(result.macs), "parameters stored in the ONNX graph; MACs reported by the method"
        return params, onnx_macs(graph), "parameters and MACs (Conv/Gemm/MatMul, shape inference) of the ONNX graph"
    if result.macs is None or result.params is None:
        raise ArtifactError("the decoded model cannot be profiled by torch and the method reported no params/MACs")
    return int(result.params), int(result.macs), "reported by the method for the graph it exported"


def run_case(point: CompressionPoint, anchor: AnchorUnderTest, calibration: CalibrationSet, *, evaluate,
             cache_dir: Path | None = None, use_cache: bool = True, device: str = "cpu") -> CaseOutcome:
    """Compress (or load from cache), decode, check and evaluate one operating point.

    ``evaluate(model) -> logits`` evaluates a model on the anchor's dataset (the session's cached
    evaluator). ``device`` is where the handler computes (:attr:`CompressionContext.device`). Never raises for a
    method's failure: the outcome's records say what went wrong.
    """
    out = CaseOutcome(point)
    subject = point.subject
    rec = out.records.append
    try:
        compressor = compressor_class(point.method)(point.config)
    except Exception as exc:  # an unknown method or a proposal class that does not build: its own case's error
        rec(CheckRecord.from_exception("compression.compress", subject, exc, criterion=CRITERION))
        return out
    first_call = len(getattr(getattr(compressor, "sandboxed", None), "calls", ()))  # this case's sandboxed calls
    # a method that reads files the user may change (artifact-only submissions) is never cached
    cache = CompressionCache(cache_dir if use_cache and getattr(compressor, "cacheable", True) else None)
    key = cache.key(point, anchor.model, calibration, compressor, device)
    probe_x = calibration.images[:PROBE_SAMPLES]
    out.details.update(anchor=point.anchor, method=point.method, label=point.label, run_tier=point.run_tier,
                       proposal=point.proposal, claimed_tier=point.claimed_tier, claimed_bytes=point.claimed_bytes,
                       description=getattr(compressor, "description", ""), smoke=anchor.smoke,
                       config=point.config.to_dict(), calibration=calibration.to_dict(), cache_key=key[:16])

    # 1. compress (or reuse the cached artifact) ---------------------------------------------
    cached = cache.load(key)
    workdir = Path(tempfile.mkdtemp(prefix="nnconform-compress-"))
    try:
        ctx = CompressionContext(anchor.name, tuple(anchor.input_shape), anchor.num_classes, calibration, workdir,
                                 cache_dir=Path(cache_dir) if cache_dir else None, device=device)
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
                result = compressor.compress(model_copy, ctx)
            except CompressorUnavailable as exc:
                out.skip_reason = str(exc)
                rec(CheckRecord("compression.compress", subject, Status.SKIP, message=str(exc), criterion=CRITERION))
                return out
            except BaseException as exc:  # a method's crash (even SystemExit) is its own case's failure
                if isinstance(exc, KeyboardInterrupt):
                    raise
                rec(CheckRecord.from_exception("compression.compress", subject, exc, criterion=CRITERION,
                                               details=_sandbox_error(exc)))
                return out
            seconds = time.perf_counter() - start
            if not isinstance(result, CompressedModel) or not isinstance(result.artifact, Artifact):
                rec(CheckRecord("compression.compress", subject, Status.ERROR, criterion=CRITERION,
                                message=f"{point.method}.compress returned {type(result).__name__}, expected a "
                                        f"CompressedModel with an Artifact"))
                return out
            method_probe = None
            if result.module is None and result.probe_logits is not None:
                # the method ran in the sandbox: its own module's logits on the same probe inputs came back as data
                method_probe = torch.as_tensor(result.probe_logits).float()
            if result.module is not None:
                try:
                    method_probe = forward(result.module, probe_x)
                except Exception as exc:
                    rec(CheckRecord.from_exception("compression.compress", subject, exc, criterion=CRITERION,
                                                   details={"step": "running the method's own compressed module"}))
                    return out
            rec(CheckRecord("compression.compress", subject, Status.PASS, measured=round(seconds, 3),
                            message=f"compressed in {seconds:.1f} s", criterion=CRITERION,
                            details={"seconds": seconds, "from_cache": False}))
            out.details["compress_seconds"] = seconds
        out.artifact = result.artifact
        _sandbox_details(out.details, compressor, first_call)
        out.details.update(artifact_bytes=result.artifact.nbytes, artifact_files=result.artifact.sizes(),
                           artifact_format=result.artifact.format, artifact_sha256=result.artifact.sha256,
                           method_metadata=_jsonable(result.metadata))

        # 2. the size the method reports is its artifact's length ----------------------------
        rec(check_size_reported(subject, point.method, result.reported_bytes, result.artifact))

        # 3. decode on a NaN template ---------------------------------------------------------
        start = time.perf_counter()
        try:
            decoded = compressor.decode(result.artifact, poisoned_template(anchor.model), ctx)
            if not isinstance(decoded, nn.Module):
                raise ArtifactError(f"decode returned {type(decoded).__name__}, not an nn.Module")
            decoded.eval()
            decoded_probe = forward(decoded, probe_x)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            rec(CheckRecord.from_exception("compression.decode", subject, exc, criterion=CRITERION,
                                           details={"artifact_files": result.artifact.sizes(), **_sandbox_error(exc)}))
            return out
        decode_seconds = time.perf_counter() - start
        rec(CheckRecord("compression.decode", subject, Status.PASS, measured=round(decode_seconds, 3),
                        message=f"artifact ({result.artifact.format}, {result.artifact.nbytes} bytes) decoded on a "
                                f"NaN-filled template in {decode_seconds:.2f} s", criterion=CRITERION))

        # 4. outputs: shape and finiteness ----------------------------------------------------
        output = check_output(subject, decoded_probe, _probe_shape(anchor, probe_x))
        rec(output)
        if not output.passed:
            return out

        # 5. the evaluated model is the one the artifact encodes -------------------------------
        tol = float(getattr(compressor, "decode_tolerance", DEFAULT_DECODE_TOLERANCE))
        consistency = check_artifact_consistency(subject, compressor, result.artifact, decoded, probe_x, decoded_probe,
                                                 method_probe, poisoned_template(anchor.model), ctx, tol)
        rec(consistency)
        if not consistency.passed:
            return out
        if cached is None and cache.root is not None:
            cache.store(key, result, method_probe if method_probe is not None else decoded_probe,
                        out.details["config"])

        _sandbox_details(out.details, compressor, first_call)

        # 6. evaluate the decoded model (only an artifact that passed every check) -------------
        if out.failure is not None:
            return out
        try:
            logits = evaluate(decoded)
        except Exception as exc:
            rec(CheckRecord.from_exception("compression.output", subject, exc, criterion=CRITERION,
                                           details={"step": "evaluating the decoded model"}))
            return out
        bad_output = check_evaluated_output(subject, logits, tuple(anchor.reference_logits.shape))
        if bad_output is not None:
            rec(bad_output)
            return out
        out.decoded = decoded

        # 7. metrics and the tier gate --------------------------------------------------------
        costs = anchor.costs()
        try:
            params, macs, count_source = _counts(decoded, result, anchor.input_shape)
        except Exception as exc:  # profiling is part of the case: its failure is the case's record, not a crash
            rec(CheckRecord.from_exception("compression.output", subject, exc, criterion=CRITERION,
                                           details={"step": "counting the decoded model's parameters and MACs"}))
            return out
        out.metrics = compute_metrics(anchor.reference_logits, logits, anchor.labels, anchor.classes,
                                      bytes_ref=costs["bytes"], nbytes=result.artifact.nbytes,
                                      params_ref=costs["params"], params=params, macs_ref=costs["macs"], macs=macs,
                                      task=anchor.task)
        out.details["counts_source"] = count_source
        # a point that targets a cost ratio (AIMET compression) is judged by the ratio it reached
        target = check_target_reached(subject, point.config, out.metrics)
        if target is not None:
            rec(target)
            out.details["achieved_ratio"] = target.details["achieved_ratio"]
        out.accuracy = check_accuracy(subject, out.metrics, point.claimed_tier, smoke=anchor.smoke,
                                      details={k: v for k, v in out.details.items()})
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _probe_shape(anchor: AnchorUnderTest, probe_x: torch.Tensor) -> tuple[int, ...]:
    """The output shape the decoded model must give on the probe batch: the anchor's own there (a classifier's
    [n, classes]; an ASR model's [n, frames, vocabulary], whose frames follow the probe's length)."""
    if anchor.task is None or getattr(anchor.task, "name", "classification") == "classification":
        return (probe_x.shape[0], anchor.num_classes)
    return tuple(forward(anchor.model, probe_x).shape)


def _sandbox_details(details: dict, compressor, first_call: int) -> None:
    """The sandboxed calls a proposal's method made for this case (call, seconds, isolation)."""
    sandboxed = getattr(compressor, "sandboxed", None)
    if sandboxed is not None:
        details["sandbox"] = {"isolation": sandboxed.isolation, "calls": list(sandboxed.calls[first_call:])}


def _sandbox_error(exc: BaseException) -> dict:
    """For a proposal's call that failed in the sandbox: its kind, call, isolation and the proposal's own traceback
    (the record's traceback is the gate's side)."""
    from ..sandbox import SandboxError

    if not isinstance(exc, SandboxError):
        return {}
    return {"sandbox": {"kind": exc.kind, "call": exc.call, "isolation": exc.isolation, "error_type": exc.error_type,
                        "traceback": exc.traceback[-4000:]}}


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
