"""One anchor's split study: a single forward pass per batch feeds the feature statistics of
every documented cut and every (cut, codec operating point) pair, whose decoded tensors then
run through the cut's tail.

Each sample is coded on its own, as a device would send it: bits per sample are the lengths of
real payloads that were decoded back and evaluated. A cut crossing several tensors (FPN levels, a residual
block's two branches) is coded twice per operating point: per tensor (a payload per tensor, the sample's bits
summed) and jointly (every tensor of the sample in ONE payload, :meth:`FeatureCodec.encode_joint`); the joint
results are kept apart (:attr:`SplitStudy.joint`), so every per-tensor figure is what it was.

A codec that breaks the protocol (wrong shape or dtype, NaN, non-deterministic bytes, an undecodable
payload, an exception) stops only its own (cut, point) pair, in its own mode; the error and its
traceback are kept for that case's record.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..progress import progress
from ..stats import mean_kl_divergence, top1_agreement
from ..tasks import SampleScores, Task, get_task
from .codecs import CodecContractError, check_decoded, check_payload
from .cuts import SplitGraph
from .features import CutProfile, FeatureStats, FeatureStatsAccumulator
from .plan import SplitPoint as OperatingPoint


@dataclass
class CodedResult:
    """What one operating point did at one cut, over every evaluated sample."""

    cut: str
    point: OperatingPoint
    payload_bytes: list[int] = field(default_factory=list)
    mode: str = "per-tensor"  # "joint": one payload per sample for every tensor of a multi-tensor cut
    logits: torch.Tensor | None = None  # the coded split model's outputs (logits for a classifier)
    correct: np.ndarray | None = None  # classification only
    scores: SampleScores | None = None  # the task's per-sample scores: what the gates compare
    metric: float | None = None  # the task's metric (top-1, WER)
    agreement: float | None = None
    kl: float | None = None
    max_abs_error: float = 0.0
    sq_error: float = 0.0
    elements: int = 0
    determinism_checked: int = 0
    error: str | None = None
    error_kind: str | None = None  # "contract" (protocol broken) or "exception" (the codec raised)
    traceback: str | None = None
    _chunks: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """True when every sample was coded, decoded and evaluated."""
        return self.error is None

    @property
    def n(self) -> int:
        """Samples coded."""
        return len(self.payload_bytes)

    @property
    def bits_per_sample(self) -> float:
        """Mean payload size in bits."""
        return 8.0 * float(np.mean(self.payload_bytes)) if self.payload_bytes else float("nan")

    @property
    def bytes_per_sample(self) -> float:
        """Mean payload size in bytes."""
        return float(np.mean(self.payload_bytes)) if self.payload_bytes else float("nan")

    @property
    def top1(self) -> float:
        """The task's metric of the coded split model (top-1 accuracy for a classifier)."""
        if self.correct is not None:
            return float(self.correct.mean())
        return self.metric if self.metric is not None else float("nan")

    @property
    def mse(self) -> float:
        """Mean squared error of the decoded features."""
        return self.sq_error / self.elements if self.elements else float("nan")

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"cut": self.cut, "point": self.point.id, "family": self.point.family, "mode": self.mode, "n": self.n,
                "bits_per_sample": self.bits_per_sample, "bytes_per_sample": self.bytes_per_sample,
                "payload_bytes_min": int(min(self.payload_bytes)) if self.payload_bytes else None,
                "payload_bytes_max": int(max(self.payload_bytes)) if self.payload_bytes else None,
                "top1": self.top1, "agreement": self.agreement, "mean_kl": self.kl,
                "feature_mse": self.mse, "feature_max_abs_error": self.max_abs_error,
                "determinism_checked": self.determinism_checked, "error": self.error}


@dataclass
class SplitStudy:
    """Everything measured for one anchor (see the module docstring)."""

    anchor: str
    graph: SplitGraph
    labels: torch.Tensor
    ref_logits: torch.Tensor
    stats: dict[str, FeatureStats]
    coded: dict[tuple[str, str], CodedResult]
    dataset: str = ""
    smoke: bool = False
    profiles: dict[str, CutProfile] = field(default_factory=dict)  # every cut, multi cuts included
    resolution_numel: dict[str, dict[str, int]] = field(default_factory=dict)
    task: Task = field(default_factory=get_task)
    joint: dict[tuple[str, str], CodedResult] = field(default_factory=dict)  # multi-tensor cuts coded jointly

    @property
    def ref_correct(self) -> np.ndarray:
        """Per-sample correctness of the uncoded model on the study's samples (classification)."""
        return (self.ref_logits.argmax(1) == self.labels).numpy()

    @property
    def ref_scores(self) -> SampleScores:
        """The task's per-sample scores of the uncoded model (computed once)."""
        if "_ref_scores" not in self.__dict__:
            self.__dict__["_ref_scores"] = self.task.scores(self.ref_logits, self.labels)
        return self.__dict__["_ref_scores"]

    @property
    def ref_top1(self) -> float:
        """The task's metric of the uncoded model on the study's samples (top-1 for a classifier)."""
        if self.task.name == "classification":
            return float(self.ref_correct.mean())
        return self.task.aggregate(self.ref_scores)

    def result(self, cut: str, point_id: str) -> CodedResult:
        """One (cut, operating point) result; KeyError naming what was studied otherwise."""
        try:
            return self.coded[(cut, point_id)]
        except KeyError:
            raise KeyError(f"{self.anchor}: ({cut!r}, {point_id!r}) was not studied; studied: "
                           f"{sorted(self.coded)}") from None

    def joint_result(self, cut: str, point_id: str) -> CodedResult:
        """One (multi-tensor cut, operating point) coded jointly; KeyError naming what was coded jointly otherwise."""
        try:
            return self.joint[(cut, point_id)]
        except KeyError:
            raise KeyError(f"{self.anchor}: ({cut!r}, {point_id!r}) was not coded jointly; coded jointly: "
                           f"{sorted(self.joint)}") from None

    def curve(self, cut: str, family: str, metric: str = "top1", mode: str = "per-tensor") -> list[tuple[float, float]]:
        """(bits per sample, metric) for every successful point of a family at a cut, coded per tensor (the default)
        or ``joint``."""
        out = []
        for (c, _), r in (self.joint if mode == "joint" else self.coded).items():
            if c == cut and r.point.family == family and r.ok:
                out.append((r.bits_per_sample, r.top1 if metric == "top1" else r.agreement))
        return sorted(out)


def run_study(anchor: str, graph: SplitGraph, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
              coded: Mapping[str, Sequence[OperatingPoint]], stats_cuts: Sequence[str] = (),
              stats_samples: int = 256, determinism_checks: int = 2,
              profiles: Mapping[str, CutProfile] | None = None,
              resolution_numel: Mapping[str, Mapping[str, int]] | None = None,
              dataset: str = "", smoke: bool = False, cache=None, task: Task | str | None = None,
              device: str = "cpu") -> SplitStudy:
    """Run the study; ``coded`` maps a single cut to the operating points coded there; ``task`` (classification by
    default) scores the outputs. On another ``device`` the head and tails run there; features come back to the CPU
    before they are coded or counted (a device sends them from host memory), outputs before they are scored.

    With a :class:`~nnconform.split.cache.SplitResultCache`, (cut, point) results stored by an earlier
    run are read back instead of coded again; the forward pass (statistics, reference logits) always runs.
    """
    task = get_task(task)
    for cut in coded:
        if graph.cut(cut).other_values:  # a tail that needs non-tensor values besides the batch size
            raise ValueError(f"{anchor}: cut {cut!r} hands over non-tensor values {graph.cut(cut).other_values}; "
                             "feature codecs code tensors only")
    probe_cuts = list(dict.fromkeys(list(stats_cuts) + list(coded)))
    probe = graph.probe(probe_cuts)
    tails = {cut: graph.tail(cut) for cut in coded}
    moved: list[torch.nn.Module] = []  # back to the CPU when the study ends (the model is shared with other cases)
    if device != "cpu":
        tails = {cut: _on_device(t, device, moved) for cut, t in tails.items()}
        probe = _on_device(probe, device, moved)
    acc = {cut: FeatureStatsAccumulator(graph.cut(cut)) for cut in stats_cuts}
    results = {(cut, p.id): CodedResult(cut, p) for cut, pts in coded.items() for p in pts}
    joint = {(cut, p.id): CodedResult(cut, p, mode="joint") for cut, pts in coded.items()
             if graph.cut(cut).num_tensors > 1 for p in pts}
    codecs = {}
    for (cut, pid), r in results.items():
        try:
            codecs[(cut, pid)] = r.point.build()
        except Exception as exc:  # the boundary of one case: a codec that cannot even be built
            _fail(r, exc, "exception")
            if (cut, pid) in joint:
                _fail(joint[(cut, pid)], exc, "exception")
    cached: set[tuple[str, str, str]] = set()
    if cache is not None:
        for mode, table in (("per-tensor", results), ("joint", joint)):
            for key, r in table.items():
                hit = cache.load(r.cut, _cache_point(r.point, codecs[key], mode), codecs[key]) if r.ok else None
                if hit is not None:
                    r.payload_bytes.extend(hit["payload_bytes"])
                    r._chunks.append(hit["logits"])
                    r.max_abs_error, r.sq_error = hit["max_abs_error"], hit["sq_error"]
                    r.elements, r.determinism_checked = hit["elements"], hit["determinism_checked"]
                    cached.add((mode, *key))

    labels, ref_logits = [], []
    seen = 0
    to_code = sum(1 for key, r in results.items() if r.ok and ("per-tensor", *key) not in cached) + \
        sum(1 for key, r in joint.items() if r.ok and ("joint", *key) not in cached)
    with torch.inference_mode(), progress(f"split study {anchor}: {to_code} (cut, codec) points coded, "
                                          f"samples done") as line:
        for x, y in batches:
            line.update(len(y))
            out, feats = probe(x)
            if isinstance(y, torch.Tensor):
                labels.append(y)
            else:  # transcripts: a list per batch
                labels.extend(y)
            ref_logits.append(out)
            take = max(0, min(len(y), stats_samples - seen))
            if take:
                for cut, a in acc.items():
                    f = feats[cut]
                    a.update(f[:take] if isinstance(f, torch.Tensor) else tuple(t[:take] for t in f))
            for (cut, pid), r in results.items():
                if r.ok and ("per-tensor", cut, pid) not in cached:
                    _code_batch(r, codecs[(cut, pid)], feats[cut], tails[cut], determinism_checks - r.determinism_checked)
            for (cut, pid), r in joint.items():
                if r.ok and ("joint", cut, pid) not in cached:
                    _code_batch_joint(r, codecs[(cut, pid)], feats[cut], tails[cut],
                                      determinism_checks - r.determinism_checked)
            seen += len(y)

    for module in moved:
        module.to("cpu")
    labels_t = torch.cat(labels) if labels and isinstance(labels[0], torch.Tensor) else tuple(labels)
    ref = task.concat_outputs(ref_logits)
    for r in [*results.values(), *joint.values()]:
        if r.ok:
            r.logits = task.concat_outputs(r._chunks)
            r._chunks.clear()
            r.scores = task.scores(r.logits, labels_t)
            r.metric = task.aggregate(r.scores)
            if task.name == "classification":  # logits-only figures
                r.correct = r.scores["correct"]
                r.agreement = top1_agreement(ref, r.logits)
                r.kl = mean_kl_divergence(ref, r.logits)
            key = (r.cut, r.point.id)
            if cache is not None and (r.mode, *key) not in cached:
                cache.store(r.cut, _cache_point(r.point, codecs[key], r.mode), codecs[key], r)
        else:
            r._chunks.clear()
    stats = {cut: a.result(profile=(profiles or {}).get(cut), resolution_numel=(resolution_numel or {}).get(cut))
             for cut, a in acc.items()}
    return SplitStudy(anchor=anchor, graph=graph, labels=labels_t, ref_logits=ref, stats=stats, coded=results,
                      dataset=dataset, smoke=smoke, profiles=dict(profiles or {}),
                      resolution_numel={k: dict(v) for k, v in (resolution_numel or {}).items()}, task=task,
                      joint=joint)


def _on_device(module, device: str, moved: list):
    """``module`` computing on ``device``: inputs moved there, outputs brought back to the CPU (a tail is handed the
    decoded features from host memory; its logits are scored on the CPU). The module is added to ``moved``."""
    module.to(device)
    moved.append(module)
    return lambda *xs: _to_cpu(module(*(x.to(device) for x in xs)))


def _to_cpu(value):
    """Tensors (in tuples, lists and dicts, as a probe returns them) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _cache_point(p: OperatingPoint, codec=None, mode: str = "per-tensor") -> dict:
    """What of an operating point decides its coded result (not its id, claim or tier); a sandboxed proposal's
    codec adds its folder's tree hash (its proxy class's source file says nothing of the proposal's code). Joint
    coding adds its mode (per-tensor keys are unchanged)."""
    out = {"codec": p.codec, "params": p.kwargs, "lossless": p.lossless, "version": p.version}
    if mode != "per-tensor":
        out["mode"] = mode
    if getattr(codec, "source_sha256", None):
        out["source"] = codec.source_sha256
    return out


def _fail(r: CodedResult, exc: BaseException, kind: str) -> None:
    r.error = f"{type(exc).__name__}: {exc}"
    r.error_kind = kind
    r.traceback = "".join(_traceback.format_exception(exc))
    r._chunks.clear()


def _code_batch(r: CodedResult, codec, batch: torch.Tensor | tuple[torch.Tensor, ...], tail,
                determinism_left: int) -> None:
    """Code a batch of samples: ``encode_many`` once (plus fresh copies of the first ``determinism_left`` samples,
    whose payloads must repeat), then ``decode_many`` once with the payloads in a seeded, shuffled order (a
    sandboxed codec decodes in a process that never saw the features, and not in the order they were coded).

    A multi-tensor cut (FPN levels, skip connections) is coded per tensor, as FCM codes P2..P5: each crossing
    tensor of a sample is one payload, the sample's bits are the sum of its payloads, and the tail runs on
    every decoded tensor."""
    tensors = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
    sizes = None
    decoded_all = []
    checked = r.determinism_checked
    try:
        for k, t in enumerate(tensors):
            label = f"{r.point.id} at {r.cut}" + (f" (tensor {k} of {len(tensors)})" if len(tensors) > 1 else "")
            r.determinism_checked = checked  # counted per sample, not per tensor
            tensor_sizes, decoded = _code_tensor(r, codec, t, label, determinism_left)
            sizes = tensor_sizes if sizes is None else [a + b for a, b in zip(sizes, tensor_sizes)]
            decoded_all.append(torch.stack(decoded))
        logits = tail(*decoded_all)
        if not bool(torch.isfinite(logits).all()):
            raise CodecContractError(f"{r.point.id} at {r.cut}: the tail produced non-finite logits from decoded "
                                     "features")
    except CodecContractError as exc:
        _fail(r, exc, "contract")
        return
    except Exception as exc:  # the boundary of one case: the codec raised on its own input or payload
        _fail(r, exc, "exception")
        return
    r.payload_bytes.extend(sizes)
    r._chunks.append(logits)


def _round_trip(r: CodedResult, label: str, samples: list, copy, encode_many, decode_many, determinism_left: int,
                encode_name: str, decode_name: str) -> tuple[list[bytes], list]:
    """Encode ``samples`` and fresh copies of the first ``determinism_left`` of them in one call (their payloads must
    repeat byte for byte), then decode the payloads in a seeded, shuffled order (a decoder that keeps state from one
    payload to the next is caught): (payloads, decoded outputs in sample order). Raises
    :class:`CodecContractError` on a broken protocol."""
    n = len(samples)
    again = min(max(determinism_left, 0), n)
    coded = encode_many(samples + [copy(samples[i]) for i in range(again)])
    if not isinstance(coded, list) or len(coded) != n + again:
        raise CodecContractError(f"{label}: {encode_name} returned {type(coded).__name__} of "
                                 f"{len(coded) if isinstance(coded, list) else '?'} payloads for {n + again} samples")
    for p in coded:
        check_payload(p, label)
    payloads = coded[:n]
    for i in range(again):
        if coded[n + i] != payloads[i]:
            first = next((j for j in range(min(len(coded[n + i]), len(payloads[i])))
                          if coded[n + i][j] != payloads[i][j]), min(len(coded[n + i]), len(payloads[i])))
            raise CodecContractError(f"{label}: encode is not deterministic: two encodings of sample {r.n + i} "
                                     f"differ ({len(payloads[i])} and {len(coded[n + i])} bytes, first "
                                     f"difference at byte {first})")
        r.determinism_checked += 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(r.n + 7919)).tolist()
    shuffled = decode_many([payloads[j] for j in order])
    if not isinstance(shuffled, list) or len(shuffled) != n:
        raise CodecContractError(f"{label}: {decode_name} returned {type(shuffled).__name__} for {n} payloads")
    outputs = [None] * n
    for pos, j in enumerate(order):
        outputs[j] = shuffled[pos]
    return payloads, outputs


def _code_tensor(r: CodedResult, codec, batch: torch.Tensor, label: str,
                 determinism_left: int) -> tuple[list[int], list[torch.Tensor]]:
    """One crossing tensor of a batch coded and decoded (see :func:`_code_batch`): payload sizes and decoded samples;
    the feature-error figures accumulate on ``r``. Raises :class:`CodecContractError` on a broken protocol."""
    decoded = []
    sizes = []
    n = batch.shape[0]
    samples = [batch[i] for i in range(n)]
    payloads, outputs = _round_trip(r, label, samples, lambda x: x.clone(), codec.encode_many, codec.decode_many,
                                    determinism_left, "encode_many", "decode_many")
    for i in range(n):
        sample, payload, dec = samples[i], payloads[i], outputs[i]
        check_decoded(dec, sample, label)
        diff = (dec.to(torch.float64) - sample.to(torch.float64)).abs()
        if r.point.lossless and bool((diff > 0).any()):
            raise CodecContractError(f"{label}: declared lossless, but decoded values differ from the input "
                                     f"by up to {float(diff.max()):.3g} in sample {r.n + i}")
        r.max_abs_error = max(r.max_abs_error, float(diff.max()))
        r.sq_error += float((diff * diff).sum())
        r.elements += diff.numel()
        sizes.append(len(payload))
        decoded.append(dec)
    return sizes, decoded


def _code_batch_joint(r: CodedResult, codec, batch: tuple[torch.Tensor, ...], tail, determinism_left: int) -> None:
    """A batch of a multi-tensor cut coded jointly: each sample's tensors, in the cut's order, in ONE payload
    (``encode_joint_many`` once, fresh copies of the first ``determinism_left`` samples again, whose payloads must
    repeat), decoded with ``decode_joint_many`` in a seeded, shuffled order; a sample's bits are its one payload's
    length; the tail runs on every decoded tensor. Failures are kept on ``r`` as in :func:`_code_batch`."""
    label = f"{r.point.id} at {r.cut} (joint)"
    k = len(batch)
    n = batch[0].shape[0]
    try:
        samples = [tuple(t[i] for t in batch) for i in range(n)]
        payloads, outputs = _round_trip(r, label, samples, lambda x: tuple(t.clone() for t in x),
                                        codec.encode_joint_many, codec.decode_joint_many, determinism_left,
                                        "encode_joint_many", "decode_joint_many")
        for i in range(n):
            dec = outputs[i]
            if not isinstance(dec, (tuple, list)) or len(dec) != k:
                raise CodecContractError(f"{label}: sample {r.n + i} decoded to {type(dec).__name__} of "
                                         f"{len(dec) if isinstance(dec, (tuple, list)) else '?'} tensors, the cut "
                                         f"hands over {k}")
            for j in range(k):
                check_decoded(dec[j], samples[i][j], f"{label}, tensor {j} of {k}")
                diff = (dec[j].to(torch.float64) - samples[i][j].to(torch.float64)).abs()
                if r.point.lossless and bool((diff > 0).any()):
                    raise CodecContractError(f"{label}: declared lossless, but tensor {j} differs from the input by up "
                                             f"to {float(diff.max()):.3g} in sample {r.n + i}")
                r.max_abs_error = max(r.max_abs_error, float(diff.max()))
                r.sq_error += float((diff * diff).sum())
                r.elements += diff.numel()
        logits = tail(*(torch.stack([outputs[i][j] for i in range(n)]) for j in range(k)))
        if not bool(torch.isfinite(logits).all()):
            raise CodecContractError(f"{label}: the tail produced non-finite logits from decoded features")
    except CodecContractError as exc:
        _fail(r, exc, "contract")
        return
    except Exception as exc:  # the boundary of one case: the codec raised on its own input or payload
        _fail(r, exc, "exception")
        return
    r.payload_bytes.extend(len(p) for p in payloads)
    r._chunks.append(logits)
