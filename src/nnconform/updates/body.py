"""The body format shared by the reference codecs: named tensors in safetensors, zstd-compressed.

safetensors parses without pickle and names each record; ``<tensor>::<kind>`` names tie every
record to a tensor of the base, so a record that belongs to no base tensor is refused.
"""

from __future__ import annotations

import torch
import zstandard
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..kit import ConfigError
from .state import StateDict, identical

#: zstd refuses to inflate beyond this; a body announcing more is corrupt (8 GiB covers ViT-H).
MAX_DECOMPRESSED = 8 << 30


def zstd_compress(data: bytes, level: int) -> bytes:
    """One zstd frame that records its content size."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def zstd_decompress(data: bytes) -> bytes:
    """Inflate one zstd frame, refusing one that announces more than :data:`MAX_DECOMPRESSED` bytes."""
    params = zstandard.get_frame_parameters(data)
    if params.content_size > MAX_DECOMPRESSED:
        raise ValueError(f"zstd frame announces {params.content_size} bytes, more than the {MAX_DECOMPRESSED} allowed")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DECOMPRESSED)


def check_int(codec: str, field: str, value, lo: int, hi: int) -> None:
    """Validate an integer config field (``lo``..``hi``; a bool is not an integer), naming codec, field and value."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"update codec {codec!r}: {field}={value!r} must be an integer in {lo}..{hi}")


def check_level(codec: str, level: int, lo: int = 0) -> None:
    """Validate a codec's ``zstd_level`` (``lo``..22), naming the codec and the value."""
    check_int(codec, "zstd_level", level, lo, 22)


def check_bool(codec: str, field: str, value) -> None:
    """Validate a boolean config field (``"no"`` or ``0`` are refused, not read as true or false)."""
    if not isinstance(value, bool):
        raise ConfigError(f"update codec {codec!r}: {field}={value!r} must be true or false")


def pack_records(tensors: dict[str, torch.Tensor], level: int) -> bytes:
    """Named tensors -> safetensors bytes -> zstd (safetensors parses without pickle)."""
    return zstd_compress(st_save({k: v.contiguous() for k, v in tensors.items()}), level)


def unpack_records(body: bytes) -> dict[str, torch.Tensor]:
    """The inverse of :func:`pack_records`."""
    return st_load(zstd_decompress(body))


def exact_record(records: dict, name: str, base: torch.Tensor, target: torch.Tensor) -> None:
    """Carry a non-float tensor exactly (only when it changed)."""
    if not identical(base, target):
        records[f"{name}::exact"] = target.clone()


def decode_exact(records: dict, name: str, base: torch.Tensor) -> torch.Tensor | None:
    """The exact record of ``name``, checked against the base tensor (None when it did not change)."""
    t = records.get(f"{name}::exact")
    if t is None:
        return None
    if t.shape != base.shape or t.dtype != base.dtype:
        raise ValueError(f"{name}: exact record {tuple(t.shape)} {t.dtype} does not fit base {tuple(base.shape)} "
                         f"{base.dtype}")
    return t


def check_records(records: dict, base: StateDict, suffixes: tuple[str, ...]) -> None:
    """Every record must belong to a base tensor; a stray name means a foreign or damaged body."""
    for key in records:
        name, _, kind = key.rpartition("::")
        if name not in base or kind not in suffixes:
            raise ValueError(f"body record {key!r} does not belong to the base (known suffixes {suffixes})")
