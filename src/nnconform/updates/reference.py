"""Reference update codecs: the baselines a proposal has to beat.

* ``full``: the whole target checkpoint as safetensors bytes (optionally zstd-compressed); the
  anchor every ratio is measured against.
* ``zstd-delta``: lossless dense delta. Each tensor's bits are XORed with the base's bits (exact
  for every dtype, unlike a float subtraction), byte-planes are shuffled so that the mostly-zero
  sign/exponent bytes sit together, and the stream is zstd-coded.
* ``topk``: lossy sparse delta; per tensor, the ``fraction`` of elements whose change is largest.
* ``quant``: lossy uniformly quantized delta (symmetric, one step size per tensor), ``bits`` per
  element, entropy-coded with zstd.

Lossy codecs approximate float tensors only; every other tensor (integer counters, bool masks)
is carried exactly when it changed. Elements a lossy codec does not touch keep the base's exact
bits, so an identical pair gives an empty update and an exact reconstruction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import kit
from .body import (check_bool, check_int, check_level, check_records, decode_exact, exact_record, pack_records,
                   unpack_records, zstd_compress, zstd_decompress)
from .codec import KIND
from .state import StateDict, apply_sparse, as_bytes, float_delta, from_bytes, identical, is_continuous

# ---------------------------------------------------------------------------------------------


@kit.register_method(KIND, "full")
class FullCheckpointCodec:
    """Send the whole target (safetensors; zstd at ``zstd_level`` > 0). Lossless; ignores the base's values."""

    lossless: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """``zstd_level`` 0 sends the raw safetensors file (the reference size of every ratio)."""

        zstd_level: int = 0

        def __post_init__(self) -> None:
            super().__post_init__()
            check_level("full", self.zstd_level)

    def __init__(self, config: "FullCheckpointCodec.Config | None" = None) -> None:
        self.config = config or self.Config()

    def encode(self, base: StateDict, target: StateDict) -> bytes:
        raw = st_save(dict(target))
        return zstd_compress(raw, self.config.zstd_level) if self.config.zstd_level else raw

    def decode(self, base: StateDict, body: bytes) -> StateDict:
        raw = zstd_decompress(body) if self.config.zstd_level else body
        state = st_load(raw)
        missing = sorted(set(base) ^ set(state))
        if missing:
            raise ValueError(f"full checkpoint keys differ from the base's: {missing[:5]}")
        return state


def _shuffle(raw: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Byte-plane shuffle: all first bytes, then all second bytes, ..."""
    return raw.reshape(-1, itemsize).t().contiguous().reshape(-1) if itemsize > 1 else raw


def _unshuffle(raw: torch.Tensor, itemsize: int) -> torch.Tensor:
    return raw.reshape(itemsize, -1).t().contiguous().reshape(-1) if itemsize > 1 else raw


@kit.register_method(KIND, "zstd-delta")
class ZstdDeltaCodec:
    """Lossless dense delta: XOR of bit patterns, byte-plane shuffle, zstd."""

    lossless: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """``zstd_level`` 1..22 trades encode time for size; ``shuffle`` groups byte planes."""

        zstd_level: int = 10
        shuffle: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            check_bool("zstd-delta", "shuffle", self.shuffle)
            check_level("zstd-delta", self.zstd_level, lo=1)

    def __init__(self, config: "ZstdDeltaCodec.Config | None" = None) -> None:
        self.config = config or self.Config()

    def _planes(self, t: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        return _shuffle(raw, t.element_size()) if self.config.shuffle else raw

    def encode(self, base: StateDict, target: StateDict) -> bytes:
        parts = [self._planes(base[k], torch.bitwise_xor(as_bytes(base[k]), as_bytes(target[k]))) for k in base]
        stream = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
        return zstd_compress(stream.numpy().tobytes(), self.config.zstd_level)

    def decode(self, base: StateDict, body: bytes) -> StateDict:
        raw = zstd_decompress(body)
        stream = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        expected = sum(t.numel() * t.element_size() for t in base.values())
        if stream.numel() != expected:
            raise ValueError(f"zstd-delta body holds {stream.numel()} bytes, the base needs {expected}")
        out: StateDict = {}
        pos = 0
        for k, t in base.items():
            n = t.numel() * t.element_size()
            xor = stream[pos:pos + n]
            if self.config.shuffle:
                xor = _unshuffle(xor, t.element_size())
            out[k] = from_bytes(torch.bitwise_xor(as_bytes(t), xor), t)
            pos += n
        return out


def _index_dtype(numel: int) -> torch.dtype:
    """The narrowest integer dtype that holds every flat position (or gap) of a tensor."""
    if numel <= 1 << 8:
        return torch.uint8
    if numel <= 1 << 15:
        return torch.int16
    if numel <= 1 << 31:
        return torch.int32
    return torch.int64


@kit.register_method(KIND, "topk")
class TopKDeltaCodec:
    """Lossy sparse delta: per float tensor, keep the ``fraction`` of elements that changed most."""

    lossless: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """``fraction`` in (0, 1]: kept share of each float tensor's elements (at least one when it changed).
        ``dense_1d``: send every change of 0-d and 1-D tensors (biases, BatchNorm parameters and running
        statistics), a negligible share of the bytes (NNC likewise codes them with a finer step)."""

        fraction: float = 0.01
        dense_1d: bool = True
        zstd_level: int = 10

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_range("fraction", 0, 1, lo_open=True)
            check_bool("topk", "dense_1d", self.dense_1d)
            check_level("topk", self.zstd_level, lo=1)

    def __init__(self, config: "TopKDeltaCodec.Config | None" = None) -> None:
        self.config = config or self.Config()

    def encode(self, base: StateDict, target: StateDict) -> bytes:
        records: dict[str, torch.Tensor] = {}
        for name, b in base.items():
            t = target[name]
            if not is_continuous(b):
                exact_record(records, name, b, t)
                continue
            if identical(b, t):
                continue
            d = float_delta(name, b, t)
            changed = int(torch.count_nonzero(d))
            if self.config.dense_1d and b.dim() <= 1:
                k = changed
            else:
                k = min(changed, max(1, math.ceil(self.config.fraction * d.numel())))
            if k == 0:
                continue
            # stable sort: ties resolved by position, so the bytes are deterministic
            order = torch.sort(d.abs(), descending=True, stable=True).indices[:k]
            idx = torch.sort(order).values
            gaps = torch.diff(idx, prepend=torch.zeros(1, dtype=idx.dtype))
            records[f"{name}::gaps"] = gaps.to(_index_dtype(d.numel()))
            records[f"{name}::values"] = (t.reshape(-1)[idx].to(torch.float64)
                                          - b.reshape(-1)[idx].to(torch.float64)).to(b.dtype)
        return pack_records(records, self.config.zstd_level)

    def decode(self, base: StateDict, body: bytes) -> StateDict:
        def one(records, name: str, b: torch.Tensor) -> torch.Tensor:
            gaps, values = records[f"{name}::gaps"], records[f"{name}::values"]
            idx = torch.cumsum(gaps.to(torch.int64), 0)
            if idx.numel() != values.numel():
                raise ValueError(f"{name}: {idx.numel()} positions but {values.numel()} values")
            if idx.numel() and (int(gaps.to(torch.int64).min()) < 0 or int(idx[-1]) >= b.numel()):
                raise ValueError(f"{name}: positions outside 0..{b.numel() - 1}")
            return apply_sparse(b, idx, values)

        return _decode_per_tensor(body, base, ("gaps", "values", "exact"), "gaps", one)


def _decode_per_tensor(body: bytes, base: StateDict, kinds: tuple[str, ...], marker: str, decode_one) -> StateDict:
    """The decode loop shared by the per-tensor lossy codecs: exact tensors as stored, tensors with
    no ``<name>::<marker>`` record unchanged, the rest through ``decode_one(records, name, base)``."""
    records = unpack_records(body)
    check_records(records, base, kinds)
    out: StateDict = {}
    for name, b in base.items():
        exact = decode_exact(records, name, b)
        if exact is not None:
            out[name] = exact
        elif f"{name}::{marker}" not in records:
            out[name] = b.clone()
        else:
            out[name] = decode_one(records, name, b)
    return out


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit levels (-8..7) -> two per byte."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, torch.full((1,), 8, dtype=torch.uint8)])
    return (u[0::2] << 4) | u[1::2]


def _unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    u = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]
    return u.to(torch.int16) - 8


@kit.register_method(KIND, "quant")
class UniformQuantDeltaCodec:
    """Lossy quantized delta: symmetric uniform levels, one step per float tensor, zstd-coded."""

    lossless: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """``bits`` in 2..8: levels are -(2^(bits-1)-1)..2^(bits-1)-1 times max|delta| / (2^(bits-1)-1).
        ``bits_1d`` (2..8) applies to 0-d and 1-D tensors (biases, BatchNorm parameters and running
        statistics), whose one-step-per-tensor quantization is coarse and whose bytes are negligible;
        NNC likewise codes them with a finer step (its ``nonweight_qp``)."""

        bits: int = 8
        bits_1d: int = 8
        zstd_level: int = 10

        def __post_init__(self) -> None:
            super().__post_init__()
            for name in ("bits", "bits_1d"):
                check_int("quant", name, getattr(self, name), 2, 8)
            check_level("quant", self.zstd_level, lo=1)

    def __init__(self, config: "UniformQuantDeltaCodec.Config | None" = None) -> None:
        self.config = config or self.Config()

    def bits_for(self, t: torch.Tensor) -> int:
        """Bits of one tensor: ``bits_1d`` for 0-d and 1-D tensors, ``bits`` otherwise (known to the decoder
        from the base's shapes)."""
        return self.config.bits_1d if t.dim() <= 1 else self.config.bits

    def encode(self, base: StateDict, target: StateDict) -> bytes:
        records: dict[str, torch.Tensor] = {}
        for name, b in base.items():
            t = target[name]
            if not is_continuous(b):
                exact_record(records, name, b, t)
                continue
            if identical(b, t):
                continue
            d = float_delta(name, b, t)
            peak = float(d.abs().max()) if d.numel() else 0.0
            if peak == 0.0:
                continue  # only signed zeros changed; nothing to quantize
            bits = self.bits_for(b)
            levels = (1 << (bits - 1)) - 1
            step = peak / levels
            q = torch.clamp(torch.round(d / step), -levels, levels).to(torch.int8)
            records[f"{name}::step"] = torch.tensor([step], dtype=torch.float64)
            records[f"{name}::levels"] = _pack_nibbles(q) if bits <= 4 else q
        return pack_records(records, self.config.zstd_level)

    def decode(self, base: StateDict, body: bytes) -> StateDict:
        def one(records, name: str, b: torch.Tensor) -> torch.Tensor:
            packed = records[f"{name}::levels"]
            step = float(records[f"{name}::step"].reshape(-1)[0])
            q = _unpack_nibbles(packed, b.numel()) if self.bits_for(b) <= 4 else packed.to(torch.int16)
            if q.numel() != b.numel():
                raise ValueError(f"{name}: {q.numel()} levels for {b.numel()} elements")
            idx = torch.nonzero(q).reshape(-1)
            return apply_sparse(b, idx, q[idx].to(torch.float64) * step)

        return _decode_per_tensor(body, base, ("step", "levels", "exact"), "levels", one)
