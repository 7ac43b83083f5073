"""Content fingerprints: sha256 of files, bytes, arrays and state dicts."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

_CHUNK = 1 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _source_file_digest(path: str) -> str:
    return sha256_file(path)


def class_source_sha256(obj: object) -> str | None:
    """sha256 of the source file that defines ``obj``'s class (None when it has none), read once per process.

    Cache keys carry it so that an edited method or codec (built in or a proposal's) is recomputed.
    """
    import inspect

    try:
        path = inspect.getsourcefile(type(obj))
    except TypeError:
        return None
    return _source_file_digest(path) if path and Path(path).is_file() else None


def _update_with_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(name.encode())
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    # view as bytes so bf16/fp16 and integer dtypes hash exactly
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of a state dict: names, dtypes, shapes and exact values, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        _update_with_tensor(h, name, state[name])
    return h.hexdigest()


def module_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of a module: its class name plus its full state dict (parameters and buffers)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    h.update(state_dict_sha256(model.state_dict()).encode())
    return h.hexdigest()


def arrays_sha256(*arrays: np.ndarray) -> str:
    """Hex sha256 of numpy arrays: dtype, shape and bytes of each, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
