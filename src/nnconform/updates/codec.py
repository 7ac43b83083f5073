"""The update-codec protocol, its registry, and the safe encode/apply entry points.

A codec turns (base state, target state) into bytes and back::

    body = codec.encode(base, target)
    state = codec.decode(base, body)

Codecs know nothing about integrity: :func:`encode_update` wraps the body in a payload that
carries the codec's name and config, the sha256 of the base and of the exact state the decoder
produces, and the target's preprocessing; :func:`apply_update` refuses a payload for another base,
a damaged payload, and a decoder output that is not the promised state.

Codecs are the kit's method kind ``update-codec``: a class registered with
``@kit.register_method("update-codec", name)`` with a nested frozen ``Config(kit.MethodConfig)``;
``kit.make("update-codec", name, params)`` (or :func:`make_codec`) builds one. Third-party codecs
register through the entry-point group ``nnconform.update_codecs`` (the entry point names a codec
class) or with the decorator in a ``--proposal`` module, exactly like the built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import torch

from .. import kit
from ..data import Preprocess
from ..hashing import state_dict_sha256
from .payload import PayloadError, PayloadHeader, pack_payload, unpack_payload
from .state import StateDict, StateMismatchError, canonical_state, check_compatible

#: the kit's method kind of update codecs
KIND = "update-codec"


class CodecUnavailable(RuntimeError):
    """A codec needs a package that is not installed; the message says what to install."""


class BaseMismatchError(ValueError):
    """The payload was made for a different base checkpoint than the one it is applied to."""


class ReconstructionError(PayloadError):
    """The decoder produced a state other than the one the payload promises (or failed on it)."""


@runtime_checkable
class UpdateCodec(Protocol):
    """Codes the difference between two checkpoints of one architecture.

    ``name`` is the registry name; ``lossless`` says whether ``decode(base, encode(base, target))``
    must equal ``target`` bit for bit; ``config`` is an instance of the class's nested ``Config``
    (a frozen :class:`nnconform.kit.MethodConfig` with a ``VERSION``).
    ``encode`` and ``decode`` receive canonical states (sorted keys, contiguous CPU tensors, same
    keys, shapes and dtypes). ``decode`` must be deterministic.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]
    config: Any

    def encode(self, base: StateDict, target: StateDict) -> bytes: ...

    def decode(self, base: StateDict, body: bytes) -> StateDict: ...


UPDATE_CODECS = kit.method_kind(KIND, "nnconform.update_codecs")


def make_codec(name: str, params: Mapping[str, Any] | None = None) -> UpdateCodec:
    """The registered codec ``name`` with ``params`` (its config fields): ``kit.make("update-codec", ...)``."""
    return kit.make(KIND, name, params)


def codec_config_dict(codec: UpdateCodec) -> dict[str, Any]:
    """The codec's config fields as a plain dict (``version`` included; the method name is the header's
    ``codec`` and is left out, so payload bytes do not repeat it)."""
    return {k: v for k, v in codec.config.to_dict().items() if k != "method"}


def operating_point_label(params: Mapping[str, Any]) -> str:
    """A short readable label of an operating point: its parameter values joined by '-'."""
    if not params:
        return "default"
    return "-".join(str(v) for _, v in sorted(params.items()))


# ---------------------------------------------------------------------------------------------
# Safe entry points


@dataclass(frozen=True)
class DecodedUpdate:
    """The state an update reconstructs, the preprocessing it expects, and the payload's header."""

    state: StateDict
    preprocess: Preprocess | None
    header: PayloadHeader


def _coerce_codec(codec: UpdateCodec | str) -> UpdateCodec:
    return make_codec(codec) if isinstance(codec, str) else codec


def encode_update(codec: UpdateCodec | str, base: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                  *, preprocess: Preprocess | None = None) -> bytes:
    """Encode ``target`` as an update of ``base`` and wrap it in a verified payload.

    The encoder decodes its own body once to learn the hash of the state a receiver will get,
    so a lossy payload still pins its exact reconstruction.
    """
    codec = _coerce_codec(codec)
    base_c = canonical_state(base, "base")
    target_c = canonical_state(target, "target")
    check_compatible(base_c, target_c)
    body = bytes(codec.encode(base_c, target_c))
    recon = canonical_state(codec.decode(base_c, body), f"{codec.name} decoder output")
    check_compatible(target_c, recon)
    header = PayloadHeader(
        codec=codec.name,
        config=codec_config_dict(codec),
        base_sha256=state_dict_sha256(base_c),
        target_sha256=state_dict_sha256(recon),
        source_sha256=state_dict_sha256(target_c),
        body_bytes=len(body),
        preprocess=preprocess.to_dict() if preprocess is not None else None,
    )
    if codec.lossless and not header.lossless:
        raise ReconstructionError(f"update codec {codec.name!r} claims to be lossless, but its round trip changed "
                                  f"the state (sha256 {header.source_sha256[:12]} -> {header.target_sha256[:12]})")
    return pack_payload(header, body)


def read_header(payload: bytes) -> PayloadHeader:
    """The verified header of a payload (magic, version, lengths and checksum checked)."""
    return unpack_payload(payload).header


def _preprocess_from_header(raw: dict):
    """The preprocessing a payload carries: a speech anchor's log-mel features (``kind = "log-mel"``), else an
    image Preprocess; a malformed table raises TypeError/KeyError/ValueError naming the field."""
    if not isinstance(raw, dict):
        raise TypeError(f"expected a table, got {type(raw).__name__}")
    if raw.get("kind") == "log-mel":
        from ..speech.features import SpeechPreprocess

        return SpeechPreprocess.from_dict(raw)
    return Preprocess.from_dict(raw)


def apply_update(base: Mapping[str, torch.Tensor], payload: bytes) -> DecodedUpdate:
    """Apply payload bytes to ``base``; refuse a damaged payload, a wrong base, or a wrong result.

    Raises :class:`PayloadError` (truncated, corrupted, foreign, wrong version),
    :class:`BaseMismatchError` (the payload was made for another base) or
    :class:`ReconstructionError` (the decoder failed, or produced a state whose keys, shapes or dtypes
    differ from the base's, or whose hash is not the one the header pins).
    """
    parsed = unpack_payload(payload)
    header = parsed.header
    base_c = canonical_state(base, "base")
    base_sha = state_dict_sha256(base_c)
    if base_sha != header.base_sha256:
        raise BaseMismatchError(f"this {header.codec!r} update applies to the base with sha256 "
                                f"{header.base_sha256}, but the given base has sha256 {base_sha}; refusing to "
                                f"apply it to the wrong checkpoint")
    try:
        codec = make_codec(header.codec, header.config)
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"payload names codec {header.codec!r} with config {header.config}: {exc}") from None
    try:
        state = canonical_state(codec.decode(base_c, parsed.body), f"{header.codec} decoder output")
    except CodecUnavailable:
        raise
    except Exception as exc:
        raise ReconstructionError(f"update codec {header.codec!r} failed to decode a {len(parsed.body)}-byte "
                                  f"body: {type(exc).__name__}: {exc}") from exc
    try:
        # the header pins a state, but a crafted payload could pin one of another architecture
        check_compatible(base_c, state)
    except StateMismatchError as exc:
        raise ReconstructionError(f"update codec {header.codec!r} decoded a state that does not fit the base: "
                                  f"{exc}") from None
    got = state_dict_sha256(state)
    if got != header.target_sha256:
        raise ReconstructionError(f"update codec {header.codec!r} reconstructed a state with sha256 {got}, but "
                                  f"the payload promises {header.target_sha256}; the result is discarded")
    try:
        pre = _preprocess_from_header(header.preprocess) if header.preprocess else None
    except (TypeError, KeyError, ValueError) as exc:
        raise PayloadError(f"payload header: preprocess {header.preprocess!r} is not a valid Preprocess: {exc}") from None
    return DecodedUpdate(state, pre, header)
