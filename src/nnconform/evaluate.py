"""The evaluation engine: batched, deterministic inference with an on-disk result cache.

A result is keyed by content fingerprints: what the model computes (every submodule's class with
the sha256 of its source file, every tensor it holds and every other attribute, see
:mod:`nnconform.model_identity`; never the module's identity or registered state alone), the
dataset's fingerprint, the preprocessing and the batch size. A model whose content cannot be read
as data (a closure, an arbitrary object) is evaluated every time and never cached. Parametrized cases that evaluate the same
model on the same data share one forward pass. Entries live in a :class:`~nnconform.store.ContentStore`
(``<cache>/eval/<key>/``): published atomically, safe under concurrent runs, and every byte verified
on read; a corrupt entry is warned about, recomputed and replaced, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .data import ImageDataset, Preprocess
from .hashing import sha256_bytes
from .model_identity import Uncacheable, model_content_sha256
from .store import ContentStore

ENGINE_VERSION = "1"
DEFAULT_BATCH_SIZE = 250  # fixed: results must not depend on a user's choice of batch size


@dataclass(frozen=True)
class EvalResult:
    """Logits and per-sample correctness of one model on one dataset."""

    logits: torch.Tensor  # [N, C] float32, dataset order
    labels: torch.Tensor  # [N] int64
    key: str

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def correct(self) -> np.ndarray:
        """Per-sample top-1 correctness (bool), the input of every paired test."""
        return (self.predictions == self.labels).numpy()

    @property
    def top1(self) -> float:
        return float(self.correct.mean())

    @property
    def top5(self) -> float | None:
        if self.logits.shape[1] < 5:
            return None
        top = self.logits.topk(5, dim=1).indices
        return float((top == self.labels.unsqueeze(1)).any(1).double().mean())


def forward_logits(model: torch.nn.Module, dataset: ImageDataset, preprocess: Preprocess,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """All logits of ``model`` on ``dataset``, in order, under ``torch.inference_mode``."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for x, _ in dataset.batches(preprocess, batch_size):
            out = model(x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"model returned {type(out).__name__}, expected a logits tensor")
            outs.append(out.float())
    logits = torch.cat(outs)
    if logits.ndim != 2 or logits.shape[0] != len(dataset):
        raise ValueError(f"model output has shape {tuple(logits.shape)}, expected ({len(dataset)}, num_classes)")
    return logits


def cache_key(model: torch.nn.Module, dataset: ImageDataset, preprocess: Preprocess, batch_size: int) -> str:
    """The content fingerprint of one evaluation; :class:`~nnconform.model_identity.Uncacheable` when the
    model's content cannot be fingerprinted."""
    spec = {"engine": ENGINE_VERSION, "model": model_content_sha256(model), "dataset": dataset.fingerprint,
            "preprocess": preprocess.to_dict(), "batch_size": batch_size, "torch": torch.__version__}
    return sha256_bytes(json.dumps(spec, sort_keys=True).encode())


class Evaluator:
    """Evaluates models on datasets, caching results in memory and on disk."""

    def __init__(self, cache_dir: str | Path | None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.cache_dir = Path(cache_dir) / "eval" if cache_dir else None
        self.store = ContentStore(self.cache_dir, "evaluation cache") if self.cache_dir else None
        self.batch_size = batch_size
        self._memory: dict[str, EvalResult] = {}
        self.hits = self.misses = self.recomputed = 0
        #: why models were evaluated without the cache (one line each, for the report)
        self.uncached: list[str] = []

    def _read(self, key: str, num_samples: int) -> EvalResult | None:
        assert self.store is not None
        entry = self.store.get(key)
        if entry is None:
            self.recomputed = self.store.stats.corrupt
            return None
        try:
            tensors = load(entry.files["logits.safetensors"])
            logits, labels = tensors["logits"], tensors["labels"]
            if logits.ndim != 2 or tuple(labels.shape) != (num_samples,) or logits.shape[0] != num_samples:
                raise ValueError(f"logits {tuple(logits.shape)} / labels {tuple(labels.shape)} do not cover "
                                 f"{num_samples} samples")
        except (SafetensorError, KeyError, ValueError) as exc:  # verified bytes, wrong content: a foreign entry
            self.store.report_corrupt(key, f"{type(exc).__name__}: {exc}")
            self.recomputed = self.store.stats.corrupt
            return None
        return EvalResult(logits, labels, key)

    def _write(self, result: EvalResult) -> None:
        assert self.store is not None
        self.store.put(result.key, {"logits.safetensors": save({"logits": result.logits.contiguous(),
                                                                 "labels": result.labels.contiguous()})},
                       {"engine": ENGINE_VERSION, "samples": int(result.labels.shape[0])})

    def evaluate(self, model: torch.nn.Module, dataset: ImageDataset, preprocess: Preprocess) -> EvalResult:
        """Logits and correctness of ``model`` on ``dataset``; one forward pass per distinct content."""
        try:
            key = cache_key(model, dataset, preprocess, self.batch_size)
        except Uncacheable as exc:  # never risk another model's logits: compute, keep nothing
            self.misses += 1
            self.uncached.append(str(exc))
            return EvalResult(forward_logits(model, dataset, preprocess, self.batch_size), dataset.labels.clone(),
                              f"uncached: {exc}")
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        result = self._read(key, len(dataset)) if self.store else None
        if result is None:
            self.misses += 1
            logits = forward_logits(model, dataset, preprocess, self.batch_size)
            result = EvalResult(logits, dataset.labels.clone(), key)
            if self.store and bool(torch.isfinite(logits).all()):
                self._write(result)
        else:
            self.hits += 1
        self._memory[key] = result
        return result
