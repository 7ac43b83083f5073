"""The evaluation engine: batched, deterministic inference with an on-disk result cache.

A result is keyed by content fingerprints: what the model computes (every submodule's class with
the sha256 of its source file, every tensor it holds and every other attribute, see
:mod:`nnconform.model_identity`; never the module's identity or registered state alone), the
dataset's fingerprint, the preprocessing and the batch size. A model whose content cannot be read
as data (a closure, an arbitrary object) is evaluated every time and never cached. Parametrized cases that evaluate the same
model on the same data share one forward pass. Entries live in a :class:`~nnconform.store.ContentStore`
(``<cache>/eval/<key>/``): published atomically, safe under concurrent runs, and every byte verified
on read; a corrupt entry is warned about, recomputed and replaced, never trusted.

What a model outputs and how it is scored is the task's (:mod:`nnconform.tasks`): classification logits
[N, C] and per-sample correctness; ASR CTC log-probabilities [N, T, V], word errors and reference words.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .data import ImageDataset, Preprocess
from .hashing import sha256_bytes
from .model_identity import Uncacheable, model_content_sha256
from .store import ContentStore
from .tasks import ClassificationTask, SampleScores, Task, get_task

ENGINE_VERSION = "1"
DEFAULT_BATCH_SIZE = 250  # fixed: results must not depend on a user's choice of batch size


def resolve_task(dataset, task=None) -> Task:
    """The task an evaluation scores with: ``task`` when given, else the dataset's own ``task`` attribute (a
    speech dataset carries its ASR task with the model's vocabulary), else classification."""
    return get_task(task if task is not None else getattr(dataset, "task", None))


@dataclass(frozen=True)
class EvalResult:
    """A model's outputs on one dataset and the task's per-sample scores of them."""

    outputs: torch.Tensor  # [N, ...] float32, dataset order (classification: logits [N, C])
    labels: Any  # the dataset's labels (classification: int64 tensor [N]; ASR: transcripts)
    key: str
    task: Task = field(default_factory=get_task, compare=False)

    @functools.cached_property
    def scores(self) -> SampleScores:
        """The task's per-sample scores (correctness; word errors and reference words), the paired tests' input."""
        return self.task.scores(self.outputs, self.labels)

    @property
    def metric(self) -> float:
        """The task's aggregate metric (top-1 accuracy, WER) over every sample."""
        return self.task.aggregate(self.scores)

    def _classification(self, what: str) -> None:
        if self.task.name != "classification":
            raise TypeError(f"{what} is a classification figure; this result is {self.task.name} "
                            f"(use .metric: {self.task.metric_label})")

    @property
    def logits(self) -> torch.Tensor:
        """The outputs of a classifier (kept under their old name: every classification caller reads it)."""
        self._classification("logits")
        return self.outputs

    @property
    def predictions(self) -> torch.Tensor:
        """Top-1 class per sample."""
        return self.logits.argmax(1)

    @property
    def correct(self) -> np.ndarray:
        """Per-sample top-1 correctness (bool), the input of every paired test."""
        self._classification("correct")
        return self.scores["correct"]

    @property
    def top1(self) -> float:
        """Top-1 accuracy."""
        return float(self.correct.mean())

    @property
    def top5(self) -> float | None:
        """Top-5 accuracy (None with fewer than 5 classes)."""
        if self.logits.shape[1] < 5:
            return None
        top = self.logits.topk(5, dim=1).indices
        return float((top == self.labels.unsqueeze(1)).any(1).double().mean())


def forward_outputs(model: torch.nn.Module, dataset, preprocess: Preprocess, batch_size: int = DEFAULT_BATCH_SIZE,
                    task: Task | None = None, device: str = "cpu") -> torch.Tensor:
    """All outputs of ``model`` on ``dataset``, in order, under ``torch.inference_mode``, joined and checked
    by the task (classification by default: logits [N, C]). On another ``device`` (``cuda:N``) the model and each
    batch are moved there and the outputs come back to the CPU; the model is moved back afterwards (callers share
    it)."""
    task = task or get_task()
    model.eval()
    outs = []
    on_cpu = device == "cpu"
    if not on_cpu:
        model.to(device)
    try:
        with torch.inference_mode():
            for x, _ in dataset.batches(preprocess, batch_size):
                out = model(x if on_cpu else x.to(device))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"model returned {type(out).__name__}, expected a tensor of "
                                    f"{task.outputs_description}")
                outs.append(out.float() if on_cpu else out.float().cpu())
    finally:
        if not on_cpu:
            model.to("cpu")
    outputs = task.concat_outputs(outs)
    task.check_outputs(outputs, len(dataset))
    return outputs


def forward_logits(model: torch.nn.Module, dataset: ImageDataset, preprocess: Preprocess,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """All logits of a classifier on ``dataset``, in order, under ``torch.inference_mode``."""
    return forward_outputs(model, dataset, preprocess, batch_size)


def cache_key(model: torch.nn.Module, dataset: ImageDataset, preprocess: Preprocess, batch_size: int,
              device: str = "cpu") -> str:
    """The content fingerprint of one evaluation; :class:`~nnconform.model_identity.Uncacheable` when the
    model's content cannot be fingerprinted. The task is not part of it: it reads the same outputs. A device
    other than the CPU is part of it (its kernels compute other bits); the CPU adds nothing (keys unchanged)."""
    from .engine.device import device_key_part

    spec = {"engine": ENGINE_VERSION, "model": model_content_sha256(model), "dataset": dataset.fingerprint,
            "preprocess": preprocess.to_dict(), "batch_size": batch_size, "torch": torch.__version__,
            **device_key_part(device)}
    return sha256_bytes(json.dumps(spec, sort_keys=True).encode())


class Evaluator:
    """Evaluates models on datasets, caching results in memory and on disk."""

    def __init__(self, cache_dir: str | Path | None, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu") -> None:
        self.device = device
        self.cache_dir = Path(cache_dir) / "eval" if cache_dir else None
        self.store = ContentStore(self.cache_dir, "evaluation cache") if self.cache_dir else None
        self.batch_size = batch_size
        self._memory: dict[str, EvalResult] = {}
        self.hits = self.misses = self.recomputed = 0
        #: why models were evaluated without the cache (one line each, for the report)
        self.uncached: list[str] = []

    def _read(self, key: str, dataset, task: Task) -> EvalResult | None:
        assert self.store is not None
        entry = self.store.get(key)
        if entry is None:
            self.recomputed = self.store.stats.corrupt
            return None
        num_samples = len(dataset)
        try:
            tensors = load(entry.files["logits.safetensors"])
            outputs = tensors["logits"]  # the file keeps its first name: entries written before tasks stay valid
            labels = tensors["labels"] if "labels" in tensors else _labels_of(dataset)
            if isinstance(labels, torch.Tensor) and tuple(labels.shape) != (num_samples,):
                raise ValueError(f"labels {tuple(labels.shape)} do not cover {num_samples} samples")
            task.check_outputs(outputs, num_samples)
        except (SafetensorError, KeyError, ValueError) as exc:  # verified bytes, wrong content: a foreign entry
            self.store.report_corrupt(key, f"{type(exc).__name__}: {exc}")
            self.recomputed = self.store.stats.corrupt
            return None
        return EvalResult(outputs, labels, key, task)

    def _write(self, result: EvalResult) -> None:
        assert self.store is not None
        tensors = {"logits": result.outputs.contiguous()}
        if isinstance(result.labels, torch.Tensor):  # other labels (transcripts) come from the dataset's content
            tensors["labels"] = result.labels.contiguous()
        self.store.put(result.key, {"logits.safetensors": save(tensors)},
                       {"engine": ENGINE_VERSION, "samples": int(result.outputs.shape[0])})

    def evaluate(self, model: torch.nn.Module, dataset, preprocess: Preprocess, task: Task | str | None = None
                 ) -> EvalResult:
        """The outputs of ``model`` on ``dataset`` and the task's per-sample scores (:func:`resolve_task`:
        ``task``, else the dataset's, else classification); one forward pass per distinct content."""
        task = resolve_task(dataset, task)
        try:
            key = cache_key(model, dataset, preprocess, self.batch_size, self.device)
        except Uncacheable as exc:  # never risk another model's outputs: compute, keep nothing
            self.misses += 1
            self.uncached.append(str(exc))
            return EvalResult(forward_outputs(model, dataset, preprocess, self.batch_size, task, self.device),
                              _labels_of(dataset),
                              f"uncached: {exc}", task)
        if key in self._memory:
            self.hits += 1
            cached = self._memory[key]
            if cached.task is task or type(cached.task) is type(task) is ClassificationTask:
                return cached
            return EvalResult(cached.outputs, cached.labels, key, task)  # same outputs, read by another task
        result = self._read(key, dataset, task) if self.store else None
        if result is None:
            self.misses += 1
            outputs = forward_outputs(model, dataset, preprocess, self.batch_size, task, self.device)
            result = EvalResult(outputs, _labels_of(dataset), key, task)
            if self.store and bool(torch.isfinite(outputs).all()):
                self._write(result)
        else:
            self.hits += 1
        self._memory[key] = result
        return result


def _labels_of(dataset) -> Any:
    """A private copy of the dataset's labels (a tensor cloned; transcripts as a tuple)."""
    labels = dataset.labels
    return labels.clone() if isinstance(labels, torch.Tensor) else tuple(labels)
