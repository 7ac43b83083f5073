"""Data-only exchange across the sandbox boundary: tensors, bytes and plain JSON values.

Both sides (the trusted harness and the worker beside untrusted code) use these functions, so what
crosses is always files: a dict of tensors as one safetensors file, raw bytes as a file, and plain
values (None, bool, int, float, str, lists and string-keyed dicts of them) in one JSON document.
Nothing is pickled and no object or callable crosses.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

#: Names of inputs and outputs become file names on both sides, so they are kept plain.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TENSORS_SUFFIX = ".safetensors"
BYTES_SUFFIX = ".bin"
#: The worker's result document and the marker it writes first (in the output folder).
RESULT = "result.json"
STARTED = "started"
#: Plain values nest no deeper than this (a guard against a hostile, very deep JSON document).
MAX_DEPTH = 32


class DataError(ValueError):
    """A value that may not cross the sandbox boundary, named by its place."""


def check_name(name: Any, where: str) -> str:
    """``name`` if it is a plain file-safe name (letters, digits, ``_.-``), else :class:`DataError`."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise DataError(f"{where}: name {name!r} is not allowed (letters, digits, '_', '.', '-'; at most 100)")
    return name


def check_plain(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` if it is a plain JSON value (finite numbers), else :class:`DataError` naming the place."""
    if depth > MAX_DEPTH:
        raise DataError(f"{where}: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"{where}: {value!r} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [check_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise DataError(f"{where}: key {k!r} is not a string")
            out[k] = check_plain(v, f"{where}.{k}", depth + 1)
        return out
    raise DataError(f"{where}: a {type(value).__name__} is not a plain value (only tensors via safetensors, bytes "
                    f"and JSON values cross the sandbox)")


def is_tensor_dict(value: Any) -> bool:
    """True for a non-empty ``dict[str, torch.Tensor]`` (what becomes a safetensors file)."""
    if not isinstance(value, Mapping) or not value:
        return False
    import torch

    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def write_value(folder: Path, name: str, value: Any, where: str) -> tuple[str, str] | None:
    """Write a tensor dict or bytes as ``folder/<name>.<suffix>``; returns ``(kind, file)``.

    Returns ``None`` for a plain value, which the caller keeps for the JSON document.
    """
    check_name(name, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        (folder / f"{name}{BYTES_SUFFIX}").write_bytes(bytes(value))
        return "bytes", f"{name}{BYTES_SUFFIX}"
    if is_tensor_dict(value):
        from safetensors.torch import save_file

        # contiguous, detached copies: safetensors refuses views and shared storage
        tensors = {k: v.detach().contiguous().clone() for k, v in value.items()}
        save_file(tensors, str(folder / f"{name}{TENSORS_SUFFIX}"))
        return "tensors", f"{name}{TENSORS_SUFFIX}"
    return None


def read_value(folder: Path, kind: str, file: str, where: str) -> Any:
    """Read back what :func:`write_value` wrote (``kind`` ``tensors`` or ``bytes``), confined to ``folder``."""
    check_name(file, where)
    path = folder / file
    if path.is_symlink() or not path.is_file():
        raise DataError(f"{where}: {file} is missing or not a regular file")
    if kind == "bytes" and file.endswith(BYTES_SUFFIX):
        return path.read_bytes()
    if kind == "tensors" and file.endswith(TENSORS_SUFFIX):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # a corrupt file written by untrusted code
            raise DataError(f"{where}: {file} is not a valid safetensors file ({type(exc).__name__}: {exc})") from None
    raise DataError(f"{where}: unknown kind {kind!r} for {file}")


def dump_json(value: Any, path: Path) -> None:
    """Write a plain value as JSON (refusing NaN and non-plain values)."""
    path.write_text(json.dumps(check_plain(value, path.name), allow_nan=False, sort_keys=True))


def load_json(path: Path, *, limit: int = 16 << 20) -> Any:
    """Read a JSON document of plain values of at most ``limit`` bytes."""
    size = path.stat().st_size
    if size > limit:
        raise DataError(f"{path.name}: {size} bytes, more than the {limit} allowed")
    try:
        return check_plain(json.loads(path.read_text()), path.name)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path.name}: not a JSON document of plain values ({exc})") from None
