"""The update payload: a self-describing, checksummed container around a codec's bytes.

Layout (all integers big-endian)::

    magic          4 bytes   b"NNCU"
    format version u16       FORMAT_VERSION
    header length  u32
    header         JSON (UTF-8, sorted keys): codec name and config, sha256 of the base the update
                   applies to and of the state it reconstructs, the target's preprocessing,
                   body length
    body           the codec's bytes
    checksum       32 bytes  sha256 of everything above

A reader checks magic, version, lengths and checksum before it looks at the body, so a
truncated, corrupted or foreign payload raises :class:`nnconform.kit.PayloadError` and is never decoded into a
model. The base and target hashes are checked by :func:`nnconform.updates.apply_update`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from ..kit import PayloadError

MAGIC = b"NNCU"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">4sHI")  # magic, version, header length
_CHECKSUM_BYTES = 32
#: Headers are small JSON documents; anything larger is a corrupted length field.
MAX_HEADER_BYTES = 1 << 20
_HEADER_FIELDS = ("codec", "config", "base_sha256", "target_sha256", "source_sha256", "preprocess", "body_bytes")


class PayloadVersionError(PayloadError):
    """The payload was written in a container format version this reader does not support."""


@dataclass(frozen=True)
class PayloadHeader:
    """What a payload says about itself.

    ``target_sha256`` is the hash of the state the decoder must produce (for a lossy codec, the
    reconstruction, not the original target); ``source_sha256`` is the hash of the original
    target the encoder was given, so a reader can tell a lossless update (equal hashes) at a glance.
    """

    codec: str
    config: dict[str, Any]
    base_sha256: str
    target_sha256: str
    source_sha256: str
    body_bytes: int
    preprocess: dict[str, Any] | None = None

    @property
    def lossless(self) -> bool:
        """True when the payload reconstructs exactly the state it was encoded from."""
        return self.target_sha256 == self.source_sha256

    def to_dict(self) -> dict[str, Any]:
        """The header as a JSON-ready dict."""
        return {"codec": self.codec, "config": self.config, "base_sha256": self.base_sha256,
                "target_sha256": self.target_sha256, "source_sha256": self.source_sha256,
                "preprocess": self.preprocess, "body_bytes": self.body_bytes}


@dataclass(frozen=True)
class Payload:
    """A parsed payload: its header and the codec's body bytes."""

    header: PayloadHeader
    body: bytes


def pack_payload(header: PayloadHeader, body: bytes) -> bytes:
    """Serialize a header and a body into payload bytes (the inverse of :func:`unpack_payload`)."""
    if header.body_bytes != len(body):
        raise ValueError(f"header says body_bytes={header.body_bytes}, but the body has {len(body)} bytes")
    head = json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    out = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + bytes(body)
    return out + hashlib.sha256(out).digest()


def _parse_header(raw: bytes) -> PayloadHeader:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"payload header is not valid JSON: {exc}") from None
    if not isinstance(d, dict):
        raise PayloadError(f"payload header must be a JSON object, got {type(d).__name__}")
    missing = [k for k in _HEADER_FIELDS if k not in d]
    if missing:
        raise PayloadError(f"payload header lacks field(s) {missing}")
    unknown = sorted(set(d) - set(_HEADER_FIELDS))
    if unknown:
        raise PayloadError(f"payload header has unknown field(s) {unknown}")
    for k in ("base_sha256", "target_sha256", "source_sha256"):
        v = d[k]
        if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            raise PayloadError(f"payload header field {k}={v!r} is not a 64-hex-digit sha256")
    if not isinstance(d["codec"], str) or not isinstance(d["config"], dict):
        raise PayloadError(f"payload header: codec must be a string and config an object, got "
                           f"{d['codec']!r} and {d['config']!r}")
    if d["preprocess"] is not None and not isinstance(d["preprocess"], dict):
        raise PayloadError(f"payload header: preprocess must be an object or null, got {d['preprocess']!r}")
    if not isinstance(d["body_bytes"], int) or d["body_bytes"] < 0:
        raise PayloadError(f"payload header: body_bytes={d['body_bytes']!r} is not a byte count")
    return PayloadHeader(**d)


def unpack_payload(data: bytes | bytearray | memoryview) -> Payload:
    """Parse and verify payload bytes; :class:`PayloadError` says what is wrong with them."""
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise PayloadError(f"payload truncated: {len(data)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"not an nnconform update payload: magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise PayloadVersionError(f"payload format version {version} is not supported; this reader "
                                  f"reads version {FORMAT_VERSION}")
    if head_len > MAX_HEADER_BYTES:
        raise PayloadError(f"payload header length {head_len} exceeds {MAX_HEADER_BYTES} bytes: corrupted prefix")
    min_len = _PREFIX.size + head_len + _CHECKSUM_BYTES
    if len(data) < min_len:
        raise PayloadError(f"payload truncated: {len(data)} bytes, but the prefix announces a {head_len}-byte "
                           f"header, which needs at least {min_len}")
    body_end = len(data) - _CHECKSUM_BYTES
    if hashlib.sha256(data[:body_end]).digest() != data[body_end:]:
        raise PayloadError(f"payload checksum mismatch: the {len(data)} bytes are corrupted or truncated")
    header = _parse_header(data[_PREFIX.size:_PREFIX.size + head_len])
    body = data[_PREFIX.size + head_len:body_end]
    if len(body) != header.body_bytes:
        raise PayloadError(f"payload body has {len(body)} bytes, the header announces {header.body_bytes}")
    return Payload(header, body)
