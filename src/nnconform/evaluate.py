"""The evaluation engine: batched, deterministic inference with an on-disk result cache.

A result is keyed by content fingerprints: the module's class and exact state, the dataset's
fingerprint, the preprocessing and the batch size. Parametrized cases that evaluate the same
model on the same data share one forward pass. Cache writes are atomic (write, then rename)
and every read is verified against the sha256 stored beside the data; a corrupt entry is
recomputed, never trusted.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data import ImageDataset, Preprocess
from .hashing import module_sha256, sha256_bytes

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
    """The content fingerprint of one evaluation."""
    spec = {"engine": ENGINE_VERSION, "model": module_sha256(model), "dataset": dataset.fingerprint,
            "preprocess": preprocess.to_dict(), "batch_size": batch_size, "torch": torch.__version__}
    return sha256_bytes(json.dumps(spec, sort_keys=True).encode())


def _payload_digest(logits: torch.Tensor, labels: torch.Tensor) -> str:
    return sha256_bytes(logits.contiguous().numpy().tobytes() + labels.contiguous().numpy().tobytes())


class Evaluator:
    """Evaluates models on datasets, caching results in memory and on disk."""

    def __init__(self, cache_dir: str | Path | None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.cache_dir = Path(cache_dir) / "eval" if cache_dir else None
        self.batch_size = batch_size
        self._memory: dict[str, EvalResult] = {}
        self.hits = self.misses = self.recomputed = 0

    def _path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{key}.safetensors"

    def _read(self, key: str) -> EvalResult | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            logits, labels = tensors["logits"], tensors["labels"]
            if meta.get("key") != key or meta.get("payload_sha256") != _payload_digest(logits, labels):
                raise ValueError("fingerprint mismatch")
        except (SafetensorError, KeyError, ValueError, OSError) as exc:
            warnings.warn(f"evaluation cache entry {path} is corrupt ({exc}); recomputing", stacklevel=3)
            self.recomputed += 1
            return None
        return EvalResult(logits, labels, key)

    def _write(self, result: EvalResult) -> None:
        path = self._path(result.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"logits": result.logits.contiguous(), "labels": result.labels.contiguous()}, tmp,
                      metadata={"key": result.key, "payload_sha256": _payload_digest(result.logits, result.labels)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def evaluate(self, model: torch.nn.Module, dataset: ImageDataset, preprocess: Preprocess) -> EvalResult:
        """Logits and correctness of ``model`` on ``dataset``; one forward pass per distinct content."""
        key = cache_key(model, dataset, preprocess, self.batch_size)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        result = self._read(key) if self.cache_dir else None
        if result is None:
            self.misses += 1
            logits = forward_logits(model, dataset, preprocess, self.batch_size)
            result = EvalResult(logits, dataset.labels.clone(), key)
            if self.cache_dir and bool(torch.isfinite(logits).all()):
                self._write(result)
        else:
            self.hits += 1
        self._memory[key] = result
        return result
