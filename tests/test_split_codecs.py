"""Self-tests of the reference feature codecs: round trips (hypothesis), error bounds,
determinism, refusal of non-finite input and of damaged payloads, registry and config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnconform import kit
from nnconform.split import (FEATURE_CODECS, CodecInputError, HalfCodec, PayloadError, RawCodec, TiledImageCodec,
                             TopKCodec, UniformQuantCodec, check_deterministic, check_roundtrip, make_codec)
from nnconform.split.codecs import tile_layout
from nnconform.split.runs import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests work on tiny tensors, and a shared machine stalls on more."""
    with torch_threads(1):
        yield


REFERENCE = [RawCodec(), HalfCodec()] + [
    make_codec("uniform", {"bits": b, "granularity": g}) for b in (8, 6, 4, 2, 1, 12) for g in ("per-tensor", "per-channel")
] + [make_codec("topk", {"keep": k}) for k in (1.0, 0.5, 0.05)] + [
    make_codec("image", {"format": "png"}), make_codec("image", {"format": "png", "bits": 16}),
    make_codec("image", {"format": "webp", "quality": 75}), make_codec("image", {"format": "jpeg", "quality": 50}),
]
IDS = [str(c.to_dict()) for c in REFERENCE]

F32_MAX = float(np.finfo(np.float32).max)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9)
ordinary = st.floats(-1e4, 1e4, allow_nan=False, width=32)
extreme = st.floats(-F32_MAX, F32_MAX, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def tensors(draw, elements=ordinary):
    """Float32 tensors: random values, all zeros, a constant, or extremes of float32."""
    shape = draw(shapes)
    kind = draw(st.sampled_from(["random", "zeros", "constant", "extreme", "sparse"]))
    if kind == "zeros":
        arr = np.zeros(shape, np.float32)
    elif kind == "constant":
        arr = np.full(shape, draw(ordinary), np.float32)
    elif kind == "extreme":
        arr = draw(hnp.arrays(np.float32, shape, elements=extreme))
    else:
        arr = draw(hnp.arrays(np.float32, shape, elements=elements))
        if kind == "sparse":
            arr = np.maximum(arr, 0)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _rows(x: np.ndarray, per_channel: bool) -> np.ndarray:
    return x.reshape(x.shape[0], -1) if per_channel and x.ndim >= 2 else x.reshape(1, -1)


def _assert_within_quantisation(x: torch.Tensor, y: torch.Tensor, bits: int, per_channel: bool) -> None:
    a, b = _rows(x.double().numpy(), per_channel), _rows(y.double().numpy(), per_channel)
    span = a.max(axis=1) - a.min(axis=1)
    bound = span / ((1 << bits) - 1) / 2 * (1 + 1e-6) + np.abs(a).max(axis=1) * 2.0**-23
    assert (np.abs(a - b).max(axis=1) <= bound).all()
    assert (b.min(axis=1) >= a.min(axis=1)).all() and (b.max(axis=1) <= a.max(axis=1)).all()


@pytest.mark.parametrize("codec", REFERENCE, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(x=tensors())
def test_round_trip(codec, x):
    payload, y = check_roundtrip(codec, x)
    check_deterministic(codec, x, payload)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    if isinstance(codec, RawCodec):
        assert torch.equal(x, y)
    elif isinstance(codec, HalfCodec):
        clipped = x.clamp(-65504, 65504)
        assert torch.equal(y, clipped.half().float())
    elif isinstance(codec, UniformQuantCodec):
        _assert_within_quantisation(x, y, codec.config.bits, codec.config.granularity == "per-channel")
    elif isinstance(codec, TiledImageCodec) and codec.config.format == "png":
        _assert_within_quantisation(x, y, codec.config.bits, False)
    elif isinstance(codec, TiledImageCodec):
        assert y.min() >= x.min() and y.max() <= x.max()
    elif isinstance(codec, TopKCodec):
        kept = y != 0
        assert int(kept.sum()) <= int(np.ceil(codec.config.keep * x.numel()))
        if kept.any() and (~kept).any():
            assert x[kept].abs().min() >= x[~kept].abs().max(), "a dropped element outweighs a kept one"
        assert torch.equal(y[kept], x[kept].clamp(-65504, 65504).half().float())


@pytest.mark.parametrize("codec", REFERENCE, ids=IDS)
def test_constant_and_zero_tensors_survive(codec):
    for x in (torch.zeros(4, 3, 3), torch.full((4, 3, 3), 2.5)):
        _, y = check_roundtrip(codec, x)
        lossy_on_constants = (isinstance(codec, TiledImageCodec) and codec.config.format != "png") or (
            isinstance(codec, TopKCodec) and codec.config.keep < 1 and bool(x.any()))
        if not lossy_on_constants:
            assert torch.equal(x, y), codec


@pytest.mark.parametrize("codec", REFERENCE, ids=IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_refused(codec, bad):
    x = torch.ones(2, 3, 3)
    x[1, 2, 0] = bad
    with pytest.raises(CodecInputError, match=r"non-finite values \(\d NaN, \d inf of 18 elements"):
        codec.encode(x)


@pytest.mark.parametrize("codec", REFERENCE, ids=IDS)
def test_wrong_dtype_and_empty_input_are_refused(codec):
    with pytest.raises(CodecInputError, match="floating-point"):
        codec.encode(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(CodecInputError, match="empty"):
        codec.encode(torch.ones(0, 3))


@pytest.mark.parametrize("codec", REFERENCE, ids=IDS)
@settings(max_examples=20, deadline=None)
@given(cut=st.integers(0, 10_000))
def test_truncated_payload_is_refused(codec, cut):
    payload = codec.encode(torch.linspace(-3, 5, 48).reshape(3, 4, 4))
    short = payload[: cut % len(payload)]
    with pytest.raises(PayloadError, match=codec.name):
        codec.decode(short)


@pytest.mark.parametrize("codec", REFERENCE, ids=IDS)
def test_foreign_payload_is_refused(codec):
    x = torch.randn(3, 4, 4)
    other = RawCodec() if not isinstance(codec, RawCodec) else HalfCodec()
    with pytest.raises(PayloadError, match="tag"):
        codec.decode(other.encode(x))
    with pytest.raises(PayloadError):
        codec.decode("not bytes")


def test_corrupt_entropy_coded_body_is_refused():
    codec = make_codec("uniform", {"bits": 4})
    payload = bytearray(codec.encode(torch.randn(8, 5, 5)))
    body = 5 + 1 + 8  # tag, ndim, three one-byte dims; packing flag; one float32 range
    payload[body:body + 4] = b"\xff" * 4  # the zstd frame's magic number
    with pytest.raises(PayloadError, match="uniform"):
        codec.decode(bytes(payload))


def test_rates_fall_with_bits():
    x = torch.relu(torch.randn(32, 14, 14, generator=torch.Generator().manual_seed(0)))
    sizes = [len(make_codec("uniform", {"bits": b}).encode(x)) for b in (8, 6, 4, 2)]
    assert sizes == sorted(sizes, reverse=True)
    assert len(RawCodec().encode(x)) > len(HalfCodec().encode(x)) > sizes[0]


def test_tile_layout():
    assert tile_layout((16, 7, 5)) == (16, 7, 5, 4)
    assert tile_layout((17, 2, 2)) == (17, 2, 2, 5)
    assert tile_layout((10,)) == (1, 3, 4, 1)
    assert tile_layout((2, 3, 4, 5)) == (6, 4, 5, 3)


def test_registry_holds_reference_codecs_and_suggests_names():
    assert {"raw", "fp16", "uniform", "topk", "image"} <= set(FEATURE_CODECS.names())
    with pytest.raises(KeyError, match="did you mean 'uniform'"):
        FEATURE_CODECS.get("unifrom")
    assert FEATURE_CODECS.entry_point_group == "nnconform.feature_codecs"


@pytest.mark.parametrize("factory, kwargs, match", [
    (UniformQuantCodec, {"bits": 0}, "bits must be an integer in 1..16, got 0"),
    (UniformQuantCodec, {"granularity": "per-row"}, "granularity must be one of"),
    (TopKCodec, {"keep": 1.5}, "keep must be a fraction in"),
    (TiledImageCodec, {"format": "gif"}, "format must be one of"),
    (TiledImageCodec, {"format": "jpeg", "bits": 16}, "bits must be 8, or 16 with format='png'"),
    (TiledImageCodec, {"quality": 0}, "quality must be an integer in 1..100"),
])
def test_invalid_configuration_names_the_value(factory, kwargs, match):
    with pytest.raises(kit.ConfigError, match=match):
        factory.Config(**kwargs)
    with pytest.raises(kit.ConfigError, match=match):
        make_codec(factory.name, kwargs)


@pytest.mark.parametrize("name, params, match", [
    ("uniform", {"bitz": 4}, r"unknown config field\(s\) \['bitz'\]"),
    ("uniform", {"bits": "8"}, "bits must be an integer in 1..16, got '8'"),
    ("uniform", {"bits": True}, "bits must be an integer"),
    ("uniform", {"version": 2}, "config version 2 is not supported"),
    ("image", {"quality": 75.0}, "quality must be an integer"),
])
def test_make_refuses_unknown_fields_types_and_versions(name, params, match):
    with pytest.raises(kit.ConfigError, match=match):
        make_codec(name, params)


def test_codecs_are_kit_methods_with_nested_frozen_configs():
    import dataclasses

    for name in ("raw", "fp16", "uniform", "topk", "image"):
        cls = kit.method_class("feature-codec", name)
        assert cls.Config.method == name and cls.name == name
        assert dataclasses.fields(cls.Config)[0].name == "version"
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls.Config().version = 2
    assert kit.registry("feature-codec") is FEATURE_CODECS
    assert PayloadError is kit.PayloadError


def test_config_round_trips_to_dict():
    c = make_codec("uniform", {"bits": 6, "granularity": "per-channel"})
    d = c.to_dict()
    assert d == {"codec": "uniform", "bits": 6, "granularity": "per-channel", "zstd_level": 3, "version": 1}
    assert UniformQuantCodec(UniformQuantCodec.Config.from_dict(c.config.to_dict())) == c
    assert make_codec("uniform", {k: v for k, v in d.items() if k != "codec"}) == c
