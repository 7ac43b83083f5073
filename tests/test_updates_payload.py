"""Payload safety: wrong base, truncation, corruption, wrong version, lying decoders are all refused."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, strategies as st

from nnconform import kit
from nnconform.hashing import state_dict_sha256
from nnconform.updates import (FORMAT_VERSION, UPDATE_CODECS, BaseMismatchError, PayloadError, PayloadVersionError,
                               ReconstructionError, apply_update, encode_update, make_codec, read_header)
from nnconform.updates.payload import MAGIC, PayloadHeader, pack_payload, unpack_payload

CODECS = [("full", {}), ("zstd-delta", {}), ("topk", {"fraction": 0.1}), ("quant", {"bits": 4})]


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"conv.weight": torch.randn(4, 2, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}
    target = {k: (v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 1)
              for k, v in base.items()}
    return base, target


@pytest.fixture(params=CODECS, ids=lambda c: c[0])
def payload_case(request):
    base, target = _pair()
    return base, target, encode_update(make_codec(*request.param), base, target)


def test_header_pins_base_target_and_source(payload_case):
    base, target, payload = payload_case
    header = read_header(payload)
    assert header.base_sha256 == state_dict_sha256(base)
    assert header.source_sha256 == state_dict_sha256(target)
    assert payload[:4] == MAGIC and struct.unpack(">H", payload[4:6])[0] == FORMAT_VERSION


def test_wrong_base_is_refused_with_both_hashes(payload_case):
    base, _, payload = payload_case
    other, _ = _pair(seed=1)
    with pytest.raises(BaseMismatchError, match=rf"applies to the base with sha256 {state_dict_sha256(base)}, "
                                                 rf"but the given base has sha256 {state_dict_sha256(other)}"):
        apply_update(other, payload)


def test_base_differing_in_one_bit_is_refused(payload_case):
    base, _, payload = payload_case
    nudged = dict(base)
    w = base["conv.bias"].clone()
    w.view(torch.int32)[0] ^= 1  # flip the lowest mantissa bit of one weight
    nudged["conv.bias"] = w
    with pytest.raises(BaseMismatchError):
        apply_update(nudged, payload)


@given(cut=st.integers(min_value=0, max_value=10_000))
def test_every_truncation_is_refused(cut):
    base, target = _pair()
    payload = encode_update("quant", base, target)
    cut = cut % len(payload)  # every strict prefix, including the empty one
    with pytest.raises(PayloadError, match="truncated|checksum|magic"):
        apply_update(base, payload[:cut])


@given(position=st.integers(min_value=0, max_value=10_000), mask=st.integers(1, 255))
def test_every_corrupted_byte_is_refused(position, mask):
    base, target = _pair()
    payload = bytearray(encode_update("zstd-delta", base, target))
    position %= len(payload)
    payload[position] ^= mask
    with pytest.raises(PayloadError):
        apply_update(base, bytes(payload))


def test_appended_bytes_are_refused(payload_case):
    base, _, payload = payload_case
    with pytest.raises(PayloadError, match="checksum"):
        apply_update(base, payload + b"\x00")


def test_wrong_version_is_refused_by_name(payload_case):
    base, _, payload = payload_case
    future = payload[:4] + struct.pack(">H", FORMAT_VERSION + 1) + payload[6:]
    with pytest.raises(PayloadVersionError, match=rf"format version {FORMAT_VERSION + 1} is not supported; this "
                                                   rf"reader reads version {FORMAT_VERSION}"):
        apply_update(base, future)


def test_foreign_bytes_are_refused():
    base, _ = _pair()
    with pytest.raises(PayloadError, match="not an nnconform update payload"):
        apply_update(base, b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(PayloadError, match="truncated"):
        apply_update(base, b"")


def _reforge(payload: bytes, *, header: dict | None = None, body: bytes | None = None) -> bytes:
    """Rewrite a payload's header or body and recompute its checksum (a valid container, a forged content)."""
    parsed = unpack_payload(payload)
    h = parsed.header.to_dict()
    h.update(header or {})
    b = parsed.body if body is None else body
    h["body_bytes"] = len(b)
    return pack_payload(PayloadHeader(**h), b)


def test_forged_target_hash_is_caught_after_decoding(payload_case):
    """A container with a valid checksum whose pinned target is not what the body decodes to is refused."""
    base, _, payload = payload_case
    forged = _reforge(payload, header={"target_sha256": "0" * 64})
    with pytest.raises(ReconstructionError, match="promises 0000"):
        apply_update(base, forged)


def test_garbage_body_with_valid_checksum_is_refused(payload_case):
    base, _, payload = payload_case
    forged = _reforge(payload, body=b"\x28\xb5\x2f\xfd" + bytes(range(64)))
    with pytest.raises(ReconstructionError, match="failed to decode"):
        apply_update(base, forged)


def test_body_of_another_codec_is_refused():
    base, target = _pair()
    topk = encode_update("topk", base, target)
    quant = encode_update("quant", base, target)
    forged = _reforge(quant, body=unpack_payload(topk).body)
    with pytest.raises(ReconstructionError):
        apply_update(base, forged)


def test_forged_preprocess_is_refused():
    base, target = _pair()
    forged = _reforge(encode_update("full", base, target), header={"preprocess": {"mean": [0.5], "colour": 1}})
    with pytest.raises(PayloadError, match="is not a valid Preprocess"):
        apply_update(base, forged)


def test_unknown_codec_in_header_is_refused():
    base, target = _pair()
    forged = _reforge(encode_update("full", base, target), header={"codec": "does-not-exist"})
    with pytest.raises(PayloadError, match="payload names codec 'does-not-exist'"):
        apply_update(base, forged)


def test_malformed_headers_are_refused():
    base, target = _pair()
    payload = encode_update("full", base, target)
    good = unpack_payload(payload)
    for bad in (b"[]", b"{not json", json.dumps({**good.header.to_dict(), "base_sha256": "abc"}).encode(),
                json.dumps({**good.header.to_dict(), "extra": 1}).encode()):
        raw = struct.pack(">4sHI", MAGIC, FORMAT_VERSION, len(bad)) + bad + good.body
        raw += hashlib.sha256(raw).digest()
        with pytest.raises(PayloadError, match="header"):
            apply_update(base, raw)


def test_huge_header_length_is_refused_without_allocating():
    raw = struct.pack(">4sHI", MAGIC, FORMAT_VERSION, 2**31) + b"\x00" * 40
    with pytest.raises(PayloadError, match="exceeds"):
        unpack_payload(raw)


class _LyingCodec:
    """Claims to be lossless but rounds every float (a bad codec the container must catch)."""

    name = "test-lying"
    lossless = True

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """No parameters."""

    def __init__(self, config=None):
        self.config = config or self.Config()

    def encode(self, base, target):
        from safetensors.torch import save
        return save({k: (v.round() if v.is_floating_point() else v) for k, v in target.items()})

    def decode(self, base, body):
        from safetensors.torch import load
        return load(body)


class _NondeterministicCodec(_LyingCodec):
    """Decodes to a different state every call: the pinned hash cannot match twice."""

    name = "test-nondeterministic"
    lossless = False
    calls = 0

    def decode(self, base, body):
        type(self).calls += 1
        return {k: (v + type(self).calls if v.is_floating_point() else v) for k, v in base.items()}


@pytest.fixture
def registered():
    names = []

    def add(cls):
        kit.register_method("update-codec", cls.name)(cls)
        names.append(cls.name)
        return cls()

    yield add
    for n in names:
        UPDATE_CODECS.unregister(n)


def test_lossless_claim_is_verified_at_encode_time(registered):
    base, target = _pair()
    codec = registered(_LyingCodec)
    with pytest.raises(ReconstructionError, match="claims to be lossless, but its round trip changed the state"):
        encode_update(codec, base, target)


def test_nondeterministic_decoder_is_refused(registered):
    base, target = _pair()
    codec = registered(_NondeterministicCodec)
    payload = encode_update(codec, base, target)
    with pytest.raises(ReconstructionError, match="reconstructed a state with sha256"):
        apply_update(base, payload)


def test_preprocessing_travels_with_the_weights():
    from nnconform.data import Preprocess

    base, target = _pair()
    v2 = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=232, crop=224)
    decoded = apply_update(base, encode_update("zstd-delta", base, target, preprocess=v2))
    assert decoded.preprocess == v2
    assert apply_update(base, encode_update("zstd-delta", base, target)).preprocess is None


def test_exhaustive_truncations_and_byte_flips_are_refused():
    """Every strict prefix and every single-byte flip of a real payload raises PayloadError (none decodes)."""
    base, target = _pair()
    payload = encode_update("topk", base, target)
    for cut in range(len(payload)):
        with pytest.raises(PayloadError):
            apply_update(base, payload[:cut])
    for i in range(len(payload)):
        damaged = payload[:i] + bytes([payload[i] ^ 0xFF]) + payload[i + 1:]
        with pytest.raises(PayloadError):
            apply_update(base, damaged)


def test_a_payload_pinning_a_state_of_another_architecture_is_refused():
    """The header pins whatever state its writer chose: a crafted ``full`` payload whose body (and pin) reshapes a
    tensor decodes "correctly" to that state, so ``apply_update`` must also check it against the base's keys,
    shapes and dtypes (this replaced the ``updates.decoded_loads`` check, which could not fail on our own
    payloads)."""
    from safetensors.torch import save

    base = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    forged = {"w": torch.ones(3, 2), "b": torch.ones(3)}
    body = save(forged)
    header = PayloadHeader(codec="full", config={"zstd_level": 0, "version": 1}, base_sha256=state_dict_sha256(base),
                           target_sha256=state_dict_sha256(forged), source_sha256=state_dict_sha256(forged),
                           body_bytes=len(body))
    with pytest.raises(ReconstructionError, match=r"does not fit the base: .*w: \(2, 3\) torch.float32 -> \(3, 2\)"):
        apply_update(base, pack_payload(header, body))
