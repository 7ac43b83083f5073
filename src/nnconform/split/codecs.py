"""Feature codecs: the protocol, the registry, the reference codecs and the contract check.

A feature codec turns the tensor one sample hands over at a split point (``[C, H, W]`` or
``[F]``, float32) into bytes and back. The payload must be self-contained: shape and
quantisation parameters travel inside it and count towards the rate. Only the codec's own
configuration (bits, quality, ...) is agreed out of band, as a session would signal it once.

Every codec is a method of the kit's ``feature-codec`` kind: a class registered with
``@kit.register_method("feature-codec", name)`` holding a nested frozen ``Config``
(:class:`~nnconform.kit.MethodConfig`: ``VERSION``, ``__post_init__`` checks), built with
``kit.make("feature-codec", name, params)`` from an operating point of ``anchors/split.toml``.
A proposal registers its own class the same way (or under the entry-point group
``nnconform.feature_codecs``).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import kit
from ..kit import MethodConfig, PayloadError

KIND = "feature-codec"
#: The registry of the ``feature-codec`` method kind (entry-point group ``nnconform.feature_codecs``).
REGISTRY = kit.method_kind(KIND, "nnconform.feature_codecs")
#: The former name of :data:`REGISTRY`.
FEATURE_CODECS = REGISTRY


class FeatureCodec:
    """Base of feature codecs: ``__init__(config)`` keeps the nested frozen ``Config``; subclasses implement
    ``encode`` (one sample's tensor -> a self-contained payload) and ``decode`` (payload -> the tensor)."""

    name: str = ""

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """A codec without parameters."""

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = self.Config() if config is None else config
        if not isinstance(self.config, self.Config):
            raise kit.ConfigError(f"{self.name or type(self).__name__}: expected a {self.Config.__qualname__}, "
                                  f"got {type(self.config).__name__}")

    @property
    def lossless(self) -> bool:
        """True when decode(encode(x)) must equal x exactly."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """The configuration, as a report embeds it."""
        return {"codec": self.name, **{k: v for k, v in self.config.to_dict().items() if k != "method"}}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config

    def __hash__(self) -> int:
        return hash((type(self), self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def encode(self, tensor: torch.Tensor) -> bytes:
        """One sample's intermediate tensor -> a self-contained payload."""
        raise NotImplementedError

    def decode(self, payload: bytes) -> torch.Tensor:
        """A payload from :meth:`encode` -> a tensor of the original shape and dtype."""
        raise NotImplementedError

    def encode_many(self, tensors) -> list[bytes]:
        """Many samples' payloads (one call for a batch: a sandboxed proposal codec makes one process of it)."""
        return [self.encode(t) for t in tensors]

    def decode_many(self, payloads) -> list[torch.Tensor]:
        """Many payloads' tensors, in the order given (one call for a batch, like :meth:`encode_many`)."""
        return [self.decode(p) for p in payloads]

    # ---- joint coding of a multi-tensor cut (see the "Joint payloads" section below) ---------

    def encode_joint(self, tensors) -> bytes:
        """All tensors one sample hands over at a multi-tensor cut, in the cut's order -> ONE payload."""
        return self.encode_joint_many([tensors])[0]

    def decode_joint(self, payload: bytes) -> tuple[torch.Tensor, ...]:
        """A payload from :meth:`encode_joint` -> the tensors, in order, with their shapes."""
        return self.decode_joint_many([payload])[0]

    def encode_joint_many(self, samples) -> list[bytes]:
        """Many samples' joint payloads: the container header (:func:`joint_header`) then a body.

        The default body is the codec's own payload (one :meth:`encode_many` call for the batch) of the sample's
        tensors flattened and concatenated (:func:`flatten_joint`), so every codec, a proposal's included, codes a
        cut jointly with its per-tensor API; a codec overrides :meth:`_joint_encode_body` to keep structure (a
        range per channel, a frame of tiles)."""
        samples = [tuple(s) for s in samples]
        label = self.name or type(self).__name__
        arrays = [[as_finite_array(t, label) for t in s] for s in samples]
        heads = [joint_header([a.shape for a in arrs]) for arrs in arrays]
        if type(self)._joint_encode_body is FeatureCodec._joint_encode_body:
            bodies = self.encode_many([flatten_joint(s) for s in samples])
        else:
            bodies = [self._joint_encode_body(arrs) for arrs in arrays]
        return [h + b if isinstance(b, bytes) else b for h, b in zip(heads, bodies)]

    def decode_joint_many(self, payloads) -> list[tuple[torch.Tensor, ...]]:
        """Many joint payloads' tensors, in the order given; :class:`PayloadError` when a header is damaged or the
        body does not hold the elements the header's shapes imply."""
        label = self.name or type(self).__name__
        parsed = []
        for p in payloads:
            r = _Reader(p, label)
            parsed.append((read_joint_header(r), r.rest()))
        if type(self)._joint_decode_body is FeatureCodec._joint_decode_body:
            flats = self.decode_many([body for _, body in parsed])
            return [split_joint(flat, shapes, label) for (shapes, _), flat in zip(parsed, flats)]
        return [split_joint(torch.from_numpy(self._joint_decode_body(body, shapes)), shapes, label)
                for shapes, body in parsed]

    def _joint_encode_body(self, arrays: list[np.ndarray]) -> bytes:
        """The body of one joint payload from the sample's float32 arrays (default: see :meth:`encode_joint_many`)."""
        raise NotImplementedError

    def _joint_decode_body(self, body: bytes, shapes: list[tuple[int, ...]]) -> np.ndarray:
        """The flattened, concatenated float32 values of one joint body (the inverse of :meth:`_joint_encode_body`)."""
        raise NotImplementedError


def make_codec(name: str, params: dict[str, Any] | None = None) -> FeatureCodec:
    """A registered feature codec built from an operating point's parameters (``kit.make``)."""
    return kit.make(KIND, name, params)


class CodecInputError(ValueError):
    """The tensor given to a codec cannot be coded (non-finite values, wrong dtype)."""


class CodecContractError(AssertionError):
    """A codec broke the protocol: no bytes, wrong shape or dtype, non-finite output, ..."""


# ---------------------------------------------------------------------------------------------
# Shared helpers


def as_finite_array(tensor: torch.Tensor, codec: str) -> np.ndarray:
    """The tensor as a C-contiguous float32 array; CodecInputError for non-float or non-finite input."""
    if not isinstance(tensor, torch.Tensor):
        raise CodecInputError(f"{codec}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise CodecInputError(f"{codec}: expected a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.numel() == 0:
        raise CodecInputError(f"{codec}: cannot code an empty tensor (shape {list(tensor.shape)})")
    arr = np.ascontiguousarray(tensor.detach().cpu().to(torch.float32).numpy())
    bad = ~np.isfinite(arr)
    if bad.any():
        nans = int(np.isnan(arr).sum())
        raise CodecInputError(f"{codec}: cannot code a tensor with non-finite values "
                              f"({nans} NaN, {int(bad.sum()) - nans} inf of {arr.size} elements, shape {list(arr.shape)})")
    return arr


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    """Reads a payload front to back; every short read is a PayloadError naming the codec."""

    def __init__(self, payload: bytes, codec: str) -> None:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise PayloadError(f"{codec}: payload must be bytes, got {type(payload).__name__}")
        self.buf = bytes(payload)
        self.pos = 0
        self.codec = codec

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise PayloadError(f"{self.codec}: payload truncated: need {n} bytes at offset {self.pos}, "
                               f"have {len(self.buf) - self.pos}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        shift = value = 0
        while True:
            (byte,) = self.take(1)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise PayloadError(f"{self.codec}: malformed length field at offset {self.pos}")

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def rest(self) -> bytes:
        out = self.buf[self.pos:]
        self.pos = len(self.buf)
        return out


def _header(tag: int, shape: tuple[int, ...]) -> bytes:
    return bytes([tag, len(shape)]) + b"".join(_varint(d) for d in shape)


def _read_header(r: _Reader, tag: int) -> tuple[int, ...]:
    (got,) = r.take(1)
    if got != tag:
        raise PayloadError(f"{r.codec}: payload starts with tag 0x{got:02x}, expected 0x{tag:02x} "
                           "(not written by this codec or version)")
    (ndim,) = r.take(1)
    shape = tuple(r.varint() for _ in range(ndim))
    if math.prod(shape) > 1 << 31:
        raise PayloadError(f"{r.codec}: header shape {list(shape)} is implausibly large")
    return shape


# ---------------------------------------------------------------------------------------------
# Joint payloads: every tensor of a multi-tensor cut (FPN levels P3..P5, a residual block's two
# branches) in ONE payload. Layout, the same for every codec:
#
#   0xB0 | count (varint) | per tensor, in the cut's order: ndim (1 byte), dims (varints) | body
#
# The tensors are taken in the order the cut lists them (the order the tail receives them), each
# flattened in C (row-major) order, and concatenated: that vector is what the body codes. The
# default body is the codec's own payload of the vector; a codec may keep more structure (the
# uniform codec's per-channel ranges, the image codec's one frame of tiles). The header counts
# towards the rate, like every other header.

#: First byte of every joint payload.
JOINT_TAG = 0xB0
#: Most tensors one joint payload may hold.
JOINT_MAX_TENSORS = 64


def joint_header(shapes) -> bytes:
    """The container header of a joint payload for tensors of ``shapes`` (see the section comment)."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not 1 <= len(shapes) <= JOINT_MAX_TENSORS:
        raise CodecInputError(f"joint coding takes 1..{JOINT_MAX_TENSORS} tensors, got {len(shapes)}")
    return bytes([JOINT_TAG]) + _varint(len(shapes)) + b"".join(bytes([len(s)]) + b"".join(_varint(d) for d in s)
                                                             for s in shapes)


def read_joint_header(r: "_Reader") -> list[tuple[int, ...]]:
    """The tensor shapes of a joint payload's header; :class:`PayloadError` naming what is wrong."""
    (tag,) = r.take(1)
    if tag != JOINT_TAG:
        raise PayloadError(f"{r.codec}: joint payload starts with tag 0x{tag:02x}, expected 0x{JOINT_TAG:02x} "
                           "(not a joint payload)")
    count = r.varint()
    if not 1 <= count <= JOINT_MAX_TENSORS:
        raise PayloadError(f"{r.codec}: joint header counts {count} tensors (1..{JOINT_MAX_TENSORS} allowed)")
    shapes = []
    for _ in range(count):
        (ndim,) = r.take(1)
        shapes.append(tuple(r.varint() for _ in range(ndim)))
    if sum(math.prod(s) for s in shapes) > 1 << 31:
        raise PayloadError(f"{r.codec}: joint header shapes {[list(s) for s in shapes]} are implausibly large")
    return shapes


def flatten_joint(tensors) -> torch.Tensor:
    """The tensors flattened in C order and concatenated, in the order given (float32, 1-D)."""
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])


def split_joint(flat, shapes, codec: str) -> tuple[torch.Tensor, ...]:
    """The inverse of :func:`flatten_joint`; :class:`PayloadError` when ``flat`` does not hold exactly the elements
    the header's ``shapes`` imply."""
    want = sum(math.prod(s) for s in shapes)
    if not isinstance(flat, torch.Tensor):
        raise PayloadError(f"{codec}: joint body decoded to {type(flat).__name__}, expected a tensor")
    if flat.numel() != want:
        raise PayloadError(f"{codec}: joint header shapes {[list(s) for s in shapes]} hold {want} elements, "
                           f"the body decodes to {flat.numel()} (damaged header or body)")
    out, at = [], 0
    flat = flat.reshape(-1)
    for s in shapes:
        n = math.prod(s)
        out.append(flat[at:at + n].reshape(s))
        at += n
    return tuple(out)


def _zstd_compress(data: bytes, level: int) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True).compress(data)


def _zstd_decompress(data: bytes, codec: str, expected: int) -> bytes:
    import zstandard

    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(expected, 1))
    except zstandard.ZstdError as exc:
        raise PayloadError(f"{codec}: zstd stream is corrupt ({exc})") from None
    if len(out) != expected:
        raise PayloadError(f"{codec}: zstd stream holds {len(out)} bytes, header implies {expected}")
    return out


def _check_finite_range(lo: float, hi: float, codec: str) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise PayloadError(f"{codec}: payload range [{lo}, {hi}] is not a finite interval")


def _quantize(arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Uniform quantisation of ``arr`` (rows = channels) to integers in [0, 2**bits - 1], in float64."""
    levels = (1 << bits) - 1
    span = hi.astype(np.float64) - lo.astype(np.float64)
    scale = np.where(span > 0, levels / np.where(span > 0, span, 1.0), 0.0)
    q = np.rint((arr.astype(np.float64) - lo.astype(np.float64)[:, None]) * scale[:, None])
    return np.clip(q, 0, levels).astype(np.uint16 if bits > 8 else np.uint8)


def _dequantize(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    levels = (1 << bits) - 1
    lo64, hi64 = lo.astype(np.float64)[:, None], hi.astype(np.float64)[:, None]
    x = lo64 + q.astype(np.float64) * ((hi64 - lo64) / levels)
    return np.clip(x, lo64, hi64).astype(np.float32)


def _pack_bits(q: np.ndarray, bits: int) -> bytes:
    """Levels (each < 2**bits) written as a dense big-endian bit stream."""
    if bits == 8:
        return q.astype(np.uint8).tobytes()
    flat = q.reshape(-1).astype(np.uint16)
    planes = ((flat[:, None] >> np.arange(bits - 1, -1, -1, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1)).tobytes()


def _unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(data, dtype=np.uint8, count=count)
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint16)
    return (planes.astype(np.uint16) * weights).sum(axis=1).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Reference codecs


@kit.register_method(KIND, "raw")
class RawCodec(FeatureCodec):
    """Uncoded float32 (little-endian): the anchor every other codec is measured against."""

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """No parameters."""

    tag = 0xA1

    @property
    def lossless(self) -> bool:
        return True

    def encode(self, tensor: torch.Tensor) -> bytes:
        arr = as_finite_array(tensor, self.name)
        return _header(self.tag, arr.shape) + arr.astype("<f4").tobytes()

    def decode(self, payload: bytes) -> torch.Tensor:
        r = _Reader(payload, self.name)
        shape = _read_header(r, self.tag)
        body = r.take(4 * math.prod(shape))
        if r.rest():
            raise PayloadError(f"{self.name}: trailing bytes after {list(shape)} float32 values")
        return torch.from_numpy(np.frombuffer(body, dtype="<f4").astype(np.float32).reshape(shape))


@kit.register_method(KIND, "fp16")
class HalfCodec(FeatureCodec):
    """IEEE half precision; values beyond +-65504 saturate (never inf)."""

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """No parameters."""

    tag = 0xA2

    def encode(self, tensor: torch.Tensor) -> bytes:
        arr = as_finite_array(tensor, self.name)
        half_max = float(np.finfo(np.float16).max)
        return _header(self.tag, arr.shape) + np.clip(arr, -half_max, half_max).astype("<f2").tobytes()

    def decode(self, payload: bytes) -> torch.Tensor:
        r = _Reader(payload, self.name)
        shape = _read_header(r, self.tag)
        body = r.take(2 * math.prod(shape))
        if r.rest():
            raise PayloadError(f"{self.name}: trailing bytes after {list(shape)} float16 values")
        return torch.from_numpy(np.frombuffer(body, dtype="<f2").astype(np.float32).reshape(shape))


GRANULARITIES = ("per-tensor", "per-channel")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _channels(arr: np.ndarray, granularity: str) -> np.ndarray:
    """Rows to quantise independently: channels (axis 0) of a >= 2-D tensor, else one row."""
    if granularity == "per-channel" and arr.ndim >= 2:
        return arr.reshape(arr.shape[0], -1)
    return arr.reshape(1, -1)


@kit.register_method(KIND, "uniform")
class UniformQuantCodec(FeatureCodec):
    """Uniform min-max quantisation to ``bits`` bits, entropy-coded with zstandard.

    ``per-channel`` keeps a range per channel (axis 0 of ``[C, H, W]``); a 1-D tensor is one
    channel. Levels are bit-packed or left one per byte, whichever zstd codes smaller (one flag byte).
    """

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """Bits per level, range granularity, zstandard level."""

        bits: int = 8
        granularity: str = "per-tensor"
        zstd_level: int = 3

        def __post_init__(self) -> None:
            super().__post_init__()
            if not (_is_int(self.bits) and 1 <= self.bits <= 16):
                raise kit.ConfigError(f"uniform: bits must be an integer in 1..16, got {self.bits!r}")
            if self.granularity not in GRANULARITIES:
                raise kit.ConfigError(f"uniform: granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
            if not (_is_int(self.zstd_level) and 1 <= self.zstd_level <= 22):
                raise kit.ConfigError(f"uniform: zstd_level must be an integer in 1..22, got {self.zstd_level!r}")

    tag = 0xA3

    def encode(self, tensor: torch.Tensor) -> bytes:
        arr = as_finite_array(tensor, self.name)
        rows = _channels(arr, self.config.granularity)
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        q = _quantize(rows, lo, hi, self.config.bits)
        return _header(self.tag, arr.shape) + self._levels_body(q, lo, hi)

    def _levels_body(self, q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bytes:
        """Packing flag, the (lo, hi) range of each row, then the zstd stream of the levels."""
        if self.config.bits <= 8:
            plain = _zstd_compress(q.astype(np.uint8).tobytes(), self.config.zstd_level)
            packed = _zstd_compress(_pack_bits(q, self.config.bits), self.config.zstd_level)
            flag, body = (1, packed) if len(packed) < len(plain) else (0, plain)
        else:
            flag, body = 2, _zstd_compress(q.astype("<u2").tobytes(), self.config.zstd_level)
        ranges = np.stack([lo, hi], axis=1).astype("<f4").tobytes()
        return bytes([flag]) + ranges + body

    def _read_levels(self, r: _Reader, rows: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(levels, lo, hi)`` of a body written by :meth:`_levels_body` with ``rows`` ranges and ``n`` levels."""
        (flag,) = r.take(1)
        ranges = np.frombuffer(r.take(8 * rows), dtype="<f4").astype(np.float32).reshape(rows, 2)
        lo, hi = ranges[:, 0], ranges[:, 1]
        for a, b in ranges:
            _check_finite_range(float(a), float(b), self.name)
        body = r.rest()
        if flag == 0 and self.config.bits <= 8:
            q = np.frombuffer(_zstd_decompress(body, self.name, n), dtype=np.uint8)
        elif flag == 1 and self.config.bits <= 8:
            q = _unpack_bits(_zstd_decompress(body, self.name, (n * self.config.bits + 7) // 8), self.config.bits, n)
        elif flag == 2 and self.config.bits > 8:
            q = np.frombuffer(_zstd_decompress(body, self.name, 2 * n), dtype="<u2")
        else:
            raise PayloadError(f"{self.name}: packing flag {flag} is invalid for {self.config.bits}-bit levels")
        if q.size and int(q.max()) > (1 << self.config.bits) - 1:
            raise PayloadError(f"{self.name}: level {int(q.max())} exceeds {self.config.bits} bits")
        return q, lo, hi

    def _joint_rows(self, shapes) -> list[int]:
        """Lengths of the rows quantised with one range each, over the concatenated tensors: one row in all
        (``per-tensor``: ONE range shared by every tensor of the cut), or every channel of every tensor."""
        if self.config.granularity == "per-tensor":
            return [sum(math.prod(s) for s in shapes)]
        return [n for s in shapes
                for n in ([math.prod(s[1:])] * s[0] if len(s) >= 2 else [math.prod(s)])]

    def _joint_encode_body(self, arrays: list[np.ndarray]) -> bytes:
        """One zstd stream of the levels of every tensor, in order; a range per row of :meth:`_joint_rows`."""
        flat = np.concatenate([a.reshape(-1) for a in arrays])
        lengths = self._joint_rows([a.shape for a in arrays])
        starts = np.cumsum([0] + lengths[:-1])
        lo, hi = np.minimum.reduceat(flat, starts), np.maximum.reduceat(flat, starts)
        q = _quantize(flat[:, None], np.repeat(lo, lengths), np.repeat(hi, lengths), self.config.bits)
        return self._levels_body(q.reshape(-1), lo, hi)

    def _joint_decode_body(self, body: bytes, shapes) -> np.ndarray:
        lengths = self._joint_rows(shapes)
        n = sum(lengths)
        q, lo, hi = self._read_levels(_Reader(body, self.name), len(lengths), n)
        if q.size != n:
            raise PayloadError(f"{self.name}: joint body holds {q.size} levels, header shapes imply {n}")
        return _dequantize(q.reshape(-1, 1), np.repeat(lo, lengths), np.repeat(hi, lengths), self.config.bits).reshape(-1)

    def decode(self, payload: bytes) -> torch.Tensor:
        r = _Reader(payload, self.name)
        shape = _read_header(r, self.tag)
        n = math.prod(shape)
        rows = shape[0] if self.config.granularity == "per-channel" and len(shape) >= 2 else 1
        q, lo, hi = self._read_levels(r, rows, n)
        out = _dequantize(q.reshape(rows, -1), lo, hi, self.config.bits)
        return torch.from_numpy(out.reshape(shape))


@kit.register_method(KIND, "topk")
class TopKCodec(FeatureCodec):
    """Top-k sparsification: the ``keep`` fraction of largest-magnitude non-zero elements, as
    float16 values plus a bit mask of their positions, entropy-coded with zstandard."""

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """Fraction of elements kept, zstandard level."""

        keep: float = 0.25
        zstd_level: int = 3

        def __post_init__(self) -> None:
            super().__post_init__()
            if not (isinstance(self.keep, (int, float)) and not isinstance(self.keep, bool) and 0 < self.keep <= 1):
                raise kit.ConfigError(f"topk: keep must be a fraction in (0, 1], got {self.keep!r}")
            if not (_is_int(self.zstd_level) and 1 <= self.zstd_level <= 22):
                raise kit.ConfigError(f"topk: zstd_level must be an integer in 1..22, got {self.zstd_level!r}")

    tag = 0xA4

    def encode(self, tensor: torch.Tensor) -> bytes:
        arr = as_finite_array(tensor, self.name)
        flat = arr.reshape(-1)
        k = min(int(math.ceil(self.config.keep * flat.size)), int(np.count_nonzero(flat)))
        order = np.argsort(-np.abs(flat), kind="stable")[:k]
        mask = np.zeros(flat.size, dtype=bool)
        mask[order] = True
        half_max = float(np.finfo(np.float16).max)
        values = np.clip(flat[mask], -half_max, half_max).astype("<f2")
        body = _zstd_compress(np.packbits(mask).tobytes() + values.tobytes(), self.config.zstd_level)
        return _header(self.tag, arr.shape) + _varint(k) + body

    def decode(self, payload: bytes) -> torch.Tensor:
        r = _Reader(payload, self.name)
        shape = _read_header(r, self.tag)
        n = math.prod(shape)
        k = r.varint()
        if k > n:
            raise PayloadError(f"{self.name}: {k} kept values but only {n} elements")
        mask_bytes = (n + 7) // 8
        raw = _zstd_decompress(r.rest(), self.name, mask_bytes + 2 * k)
        mask = np.unpackbits(np.frombuffer(raw[:mask_bytes], dtype=np.uint8))[:n].astype(bool)
        if int(mask.sum()) != k:
            raise PayloadError(f"{self.name}: mask marks {int(mask.sum())} positions, header says {k}")
        out = np.zeros(n, dtype=np.float32)
        out[mask] = np.frombuffer(raw[mask_bytes:], dtype="<f2").astype(np.float32)
        return torch.from_numpy(out.reshape(shape))


IMAGE_FORMATS = ("png", "webp", "jpeg")


def tile_layout(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """How a tensor is laid out as one grey image: (channels, height, width, grid columns).

    ``[C, H, W]`` tiles its channels row by row in a near-square grid (as MPEG's feature-coding
    anchors pack channels into a frame); leading dims beyond three fold into channels; a
    1-D or 2-D tensor is one channel (1-D laid out as a near-square block).
    """
    if len(shape) >= 3:
        c, h, w = math.prod(shape[:-2]), shape[-2], shape[-1]
    elif len(shape) == 2:
        c, h, w = 1, shape[0], shape[1]
    else:
        n = math.prod(shape)
        c, w = 1, max(1, math.isqrt(max(n - 1, 0)) + 1)
        h = max(1, -(-n // w))
    cols = max(1, math.isqrt(max(c - 1, 0)) + 1)
    return c, h, w, cols


def _to_tiles(q: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    c, h, w, cols = tile_layout(shape)
    rows = -(-c // cols)
    flat = q.reshape(-1)
    planes = np.zeros((rows * cols, h * w), dtype=q.dtype)
    planes.reshape(-1)[: flat.size] = flat
    return planes.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def _from_tiles(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    c, h, w, cols = tile_layout(shape)
    rows = -(-c // cols)
    planes = img.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(-1)
    return planes[: math.prod(shape)]


@kit.register_method(KIND, "image")
class TiledImageCodec(FeatureCodec):
    """Channel-tiled image coding with Pillow: min-max quantisation to 8 bits (16 for PNG at
    ``bits=16``), channels tiled into one grey frame, then PNG (lossless), WebP or JPEG."""

    @dataclass(frozen=True)
    class Config(MethodConfig):
        """Image format, quality (WebP/JPEG), bits of the quantised frame."""

        format: str = "png"
        quality: int = 90
        bits: int = 8

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.format not in IMAGE_FORMATS:
                raise kit.ConfigError(f"image: format must be one of {IMAGE_FORMATS}, got {self.format!r}")
            if not (_is_int(self.quality) and 1 <= self.quality <= 100):
                raise kit.ConfigError(f"image: quality must be an integer in 1..100, got {self.quality!r}")
            if not _is_int(self.bits) or self.bits not in (8, 16) or (self.bits == 16 and self.format != "png"):
                raise kit.ConfigError(f"image: bits must be 8, or 16 with format='png'; got bits={self.bits!r} "
                                      f"with format={self.format!r}")

    tag = 0xA5

    def encode(self, tensor: torch.Tensor) -> bytes:
        arr = as_finite_array(tensor, self.name)
        flat = arr.reshape(1, -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        q = _quantize(flat, lo, hi, self.config.bits)
        frame = self._frame_bytes(_to_tiles(q, arr.shape))
        return _header(self.tag, arr.shape) + np.array([lo[0], hi[0]], dtype="<f4").tobytes() + _varint(len(frame)) + frame

    def _joint_encode_body(self, arrays: list[np.ndarray]) -> bytes:
        """ONE frame for the whole cut: one range over every tensor, each tensor's channels tiled as
        :meth:`encode` tiles them, the tiles of the tensors stacked top to bottom in the cut's order (left-aligned,
        zero-padded to the widest), then the frame coded once. The body states its element count: tiles padded
        into a grid can fit a damaged header's shapes as well, and the count tells them apart."""
        flat = np.concatenate([a.reshape(-1) for a in arrays])[None, :]
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        q = _quantize(flat, lo, hi, self.config.bits).reshape(-1)
        blocks, at = [], 0
        for a in arrays:
            blocks.append(_to_tiles(q[at:at + a.size], a.shape))
            at += a.size
        width = max(b.shape[1] for b in blocks)
        frame = np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1]))) for b in blocks], axis=0)
        data = self._frame_bytes(frame)
        return (np.array([lo[0], hi[0]], dtype="<f4").tobytes() + _varint(flat.size) + _varint(len(data)) + data)

    def _joint_decode_body(self, body: bytes, shapes) -> np.ndarray:
        r = _Reader(body, self.name)
        lo, hi = np.frombuffer(r.take(8), dtype="<f4").astype(np.float32)
        _check_finite_range(float(lo), float(hi), self.name)
        count, want = r.varint(), sum(math.prod(s) for s in shapes)
        if count != want:
            raise PayloadError(f"{self.name}: joint header shapes {[list(s) for s in shapes]} hold {want} elements, "
                               f"the body holds {count} (damaged header or body)")
        sizes = []
        for s in shapes:
            c, h, w, cols = tile_layout(s)
            sizes.append((-(-c // cols) * h, cols * w))
        expected = (max(w for _, w in sizes), sum(h for h, _ in sizes))
        data = r.take(r.varint())
        if r.rest():
            raise PayloadError(f"{self.name}: trailing bytes after the joint {self.config.format} frame")
        img = self._frame_array(data, expected)
        parts, top = [], 0
        for s, (h, w) in zip(shapes, sizes):
            parts.append(_from_tiles(img[top:top + h, :w], s))
            top += h
        q = np.concatenate(parts)
        return _dequantize(q.reshape(1, -1), np.array([lo]), np.array([hi]), self.config.bits).reshape(-1)

    def _frame_bytes(self, tiles: np.ndarray) -> bytes:
        """A grey frame of levels coded in the configured format."""
        from PIL import Image

        buf = io.BytesIO()
        if self.config.bits == 16:
            Image.fromarray(tiles.astype(np.uint16)).save(buf, format="PNG")
        else:
            im = Image.fromarray(tiles.astype(np.uint8), mode="L")
            if self.config.format == "png":
                im.save(buf, format="PNG")
            elif self.config.format == "webp":
                im.save(buf, format="WEBP", quality=self.config.quality, method=4)
            else:
                im.save(buf, format="JPEG", quality=self.config.quality, optimize=True)
        return buf.getvalue()

    def decode(self, payload: bytes) -> torch.Tensor:
        r = _Reader(payload, self.name)
        shape = _read_header(r, self.tag)
        lo, hi = np.frombuffer(r.take(8), dtype="<f4").astype(np.float32)
        _check_finite_range(float(lo), float(hi), self.name)
        c, h, w, cols = tile_layout(shape)
        expected = (cols * w, -(-c // cols) * h)
        frame = r.take(r.varint())
        if r.rest():
            raise PayloadError(f"{self.name}: trailing bytes after the {self.config.format} frame")
        img = self._frame_array(frame, expected)
        q = _from_tiles(img, shape)
        out = _dequantize(q.reshape(1, -1), np.array([lo]), np.array([hi]), self.config.bits)
        return torch.from_numpy(out.reshape(shape))

    def _frame_array(self, frame: bytes, expected: tuple[int, int]) -> np.ndarray:
        """The levels of a coded frame of ``expected`` (width, height); PayloadError otherwise."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(frame)) as im:
                im.load()
                if im.size != expected:
                    raise PayloadError(f"{self.name}: frame is {im.size[0]}x{im.size[1]}, header implies "
                                       f"{expected[0]}x{expected[1]}")
                if self.config.bits == 16:
                    img = np.asarray(im, dtype=np.int64).astype(np.uint16)
                else:
                    img = np.asarray(im.convert("L"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise PayloadError(f"{self.name}: the {self.config.format} frame cannot be decoded ({exc})") from None
        return img


# ---------------------------------------------------------------------------------------------
# The contract every codec must keep


def check_roundtrip(codec: FeatureCodec, tensor: torch.Tensor, label: str = "codec") -> tuple[bytes, torch.Tensor]:
    """Encode and decode one tensor, enforcing the protocol; CodecContractError names what broke.

    Returns ``(payload, decoded)``. Exceptions the codec raises itself propagate unchanged.
    """
    payload = codec.encode(tensor)
    check_payload(payload, label)
    decoded = codec.decode(payload)
    check_decoded(decoded, tensor, label)
    return payload, decoded


def check_payload(payload, label: str = "codec") -> None:
    """An encoder's output must be bytes; CodecContractError otherwise."""
    if not isinstance(payload, bytes):
        raise CodecContractError(f"{label}: encode returned {type(payload).__name__}, expected bytes")


def check_decoded(decoded, tensor: torch.Tensor, label: str = "codec") -> None:
    """A decoder's output must be a finite tensor of the input's shape and dtype; CodecContractError otherwise."""
    if not isinstance(decoded, torch.Tensor):
        raise CodecContractError(f"{label}: decode returned {type(decoded).__name__}, expected a torch.Tensor")
    if tuple(decoded.shape) != tuple(tensor.shape):
        raise CodecContractError(f"{label}: decode returned shape {list(decoded.shape)}, expected {list(tensor.shape)}")
    if decoded.dtype != tensor.dtype:
        raise CodecContractError(f"{label}: decode returned dtype {decoded.dtype}, expected {tensor.dtype}")
    finite = torch.isfinite(decoded)
    if not bool(finite.all()):
        raise CodecContractError(f"{label}: decode returned {int((~finite).sum())} non-finite values "
                                 f"of {decoded.numel()}")


def check_deterministic(codec: FeatureCodec, tensor: torch.Tensor, payload: bytes, label: str = "codec") -> None:
    """Encoding the same tensor (a fresh copy) again must give the same bytes."""
    again = codec.encode(tensor.clone())
    if again != payload:
        n = min(len(again), len(payload))
        first = next((i for i in range(n) if again[i] != payload[i]), n)
        raise CodecContractError(f"{label}: encode is not deterministic: two encodings of the same tensor "
                                 f"differ ({len(payload)} and {len(again)} bytes, first difference at byte {first})")
