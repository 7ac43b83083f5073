"""Update codecs: round trips on generated state dicts (hypothesis), empty updates, determinism, configs."""

from __future__ import annotations

import math
from dataclasses import dataclass
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from nnconform import kit
from nnconform.hashing import state_dict_sha256
from nnconform.updates import (UPDATE_CODECS, StateMismatchError, apply_update, encode_update, make_codec,
                               read_header)
from nnconform.updates.state import CONTINUOUS_DTYPES

LOSSLESS = [("full", {}), ("full", {"zstd_level": 3}), ("zstd-delta", {}), ("zstd-delta", {"shuffle": False})]
LOSSY = [("topk", {"fraction": 0.01}), ("topk", {"fraction": 0.3}), ("topk", {"fraction": 1.0}),
         ("quant", {"bits": 8}), ("quant", {"bits": 4}), ("quant", {"bits": 3}), ("quant", {"bits": 2})]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.int8, torch.bool]

# -- strategies ------------------------------------------------------------------------------------

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@st.composite
def tensors(draw, dtype=None, shape=None, special=False):
    """A tensor of a drawn dtype and shape; ``special`` adds NaN, inf, -0.0 and subnormals to floats."""
    dtype = dtype if dtype is not None else draw(st.sampled_from(DTYPES))
    shape = shape if shape is not None else draw(shapes)
    n = math.prod(shape)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if dtype in CONTINUOUS_DTYPES:
        t = (torch.randn(n, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).to(dtype)
        if special and n:
            specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-42], dtype=torch.float64)
            picks = torch.randint(0, len(specials), (n,), generator=g)
            mask = torch.rand(n, generator=g) < 0.2
            t = torch.where(mask, specials[picks].to(dtype), t)
    elif dtype == torch.bool:
        t = torch.rand(n, generator=g) < 0.5
    else:
        info = torch.iinfo(dtype)
        lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
        t = torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64).to(dtype)
    return t.reshape(shape)


names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=12)


@st.composite
def state_pairs(draw, special=False):
    """(base, target): same keys, shapes and dtypes; each target tensor unchanged, perturbed or replaced."""
    keys = draw(st.lists(names, min_size=0, max_size=6, unique=True))
    base, target = {}, {}
    for k in keys:
        b = draw(tensors(special=special))
        mode = draw(st.sampled_from(["same", "perturb", "replace", "sparse"]))
        if mode == "same":
            t = b.clone()
        elif mode == "replace" or b.dtype not in CONTINUOUS_DTYPES:
            t = draw(tensors(dtype=b.dtype, shape=tuple(b.shape), special=special))
        else:
            g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
            d = torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.01
            if mode == "sparse":
                d = d * (torch.rand(b.shape, generator=g) < 0.1)
            t = (b.to(torch.float64) + d).to(b.dtype)
            if not special:
                t = torch.where(torch.isfinite(t), t, b)
        base[k], target[k] = b, t
    if draw(st.booleans()):  # a BatchNorm-style counter: 0-d int64
        base["bn.num_batches_tracked"] = torch.tensor(draw(st.integers(0, 10**6)))
        target["bn.num_batches_tracked"] = base["bn.num_batches_tracked"] + draw(st.integers(0, 1000))
    return base, target


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0:
        return a.shape == b.shape and a.dtype == b.dtype
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                    b.reshape(-1).view(torch.uint8))


FAST = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- lossless round trips -------------------------------------------------------------------------


@FAST
@given(pair=state_pairs(special=True), codec=st.sampled_from(LOSSLESS))
def test_lossless_round_trip_is_bit_exact(pair, codec):
    """Every lossless codec reproduces every tensor bit for bit: NaN payloads, -0.0, subnormals, ints, bools."""
    base, target = pair
    payload = encode_update(make_codec(*codec), base, target)
    decoded = apply_update(base, payload)
    assert sorted(decoded.state) == sorted(target)
    for k in target:
        assert _bits_equal(decoded.state[k], target[k]), k
    assert read_header(payload).lossless


# -- lossy round trips ------------------------------------------------------------------------------


@FAST
@given(pair=state_pairs(), codec=st.sampled_from(LOSSY))
def test_lossy_round_trip_pins_its_reconstruction(pair, codec):
    """A lossy payload decodes to exactly the state its header pins; non-float tensors and unchanged tensors
    are exact; untouched elements keep the base's bits."""
    base, target = pair
    payload = encode_update(make_codec(*codec), base, target)
    header = read_header(payload)
    decoded = apply_update(base, payload)
    assert state_dict_sha256(decoded.state) == header.target_sha256
    assert header.source_sha256 == state_dict_sha256(target)
    for k, b in base.items():
        r, t = decoded.state[k], target[k]
        assert r.dtype == b.dtype and r.shape == b.shape
        if b.dtype not in CONTINUOUS_DTYPES or _bits_equal(b, t):
            assert _bits_equal(r, t), k
        elif b.numel():
            moved = r.reshape(-1).view(torch.uint8).reshape(b.numel(), -1) != b.reshape(-1).view(torch.uint8).reshape(b.numel(), -1)
            changed_in_target = (t != b).reshape(-1)
            # an element the codec moved must be one the target moved
            assert not bool((moved.any(1) & ~changed_in_target).any()), k


@FAST
@given(pair=state_pairs(), bits=st.integers(2, 8))
def test_quantized_delta_error_is_within_half_a_step(pair, bits):
    """Uniform quantization: |reconstruction - target| <= step/2 (plus the tensor dtype's rounding)."""
    base, target = pair
    bits_1d = max(2, 10 - bits)
    decoded = apply_update(base, encode_update(make_codec("quant", {"bits": bits, "bits_1d": bits_1d}),
                                               base, target)).state
    for k, b in base.items():
        if b.dtype not in CONTINUOUS_DTYPES or b.numel() == 0:
            continue
        levels = 2 ** ((bits_1d if b.dim() <= 1 else bits) - 1) - 1
        d = target[k].double() - b.double()
        step = float(d.abs().max()) / levels
        err = (decoded[k].double() - target[k].double()).abs()
        rounding = (target[k].double().abs() + d.abs()) * torch.finfo(b.dtype).eps * 2 + torch.finfo(b.dtype).tiny
        assert bool((err <= step / 2 + rounding + 1e-12).all()), (k, float(err.max()), step)


@FAST
@given(pair=state_pairs(), fraction=st.sampled_from([0.05, 0.5, 1.0]), dense_1d=st.booleans())
def test_topk_keeps_the_largest_changes(pair, fraction, dense_1d):
    """topk keeps ceil(fraction * n) elements of each changed float tensor (fewer if fewer changed; all changes
    of 0-d and 1-D tensors with dense_1d), and no kept change is smaller than a dropped one."""
    base, target = pair
    codec = make_codec("topk", {"fraction": fraction, "dense_1d": dense_1d})
    decoded = apply_update(base, encode_update(codec, base, target)).state
    for k, b in base.items():
        if b.dtype not in CONTINUOUS_DTYPES or b.numel() == 0 or _bits_equal(b, target[k]):
            continue
        d = (target[k].double() - b.double()).reshape(-1).abs()
        moved = (decoded[k].reshape(-1).view(torch.uint8).reshape(b.numel(), -1)
                 != b.reshape(-1).view(torch.uint8).reshape(b.numel(), -1)).any(1)
        k_expected = int((d != 0).sum())
        if not (dense_1d and b.dim() <= 1):
            k_expected = min(k_expected, max(1, math.ceil(fraction * b.numel())))
        # an element whose delta rounds back to the base value in this dtype may not move: allow that
        assert int(moved.sum()) <= k_expected
        dropped = ~moved & (d > 0)
        if moved.any() and dropped.any():
            assert float(d[moved].min()) >= float(d[dropped].max()), k


def test_topk_fraction_one_reconstructs_float64_exactly_up_to_rounding():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(100, generator=g, dtype=torch.float64)}
    target = {"w": base["w"] + torch.randn(100, generator=g, dtype=torch.float64)}
    r = apply_update(base, encode_update(make_codec("topk", {"fraction": 1.0}), base, target)).state["w"]
    assert torch.allclose(r, target["w"], rtol=0, atol=1e-12)


# -- empty updates, determinism ---------------------------------------------------------------------


@FAST
@given(pair=state_pairs(special=True), codec=st.sampled_from(LOSSLESS + LOSSY))
def test_identical_checkpoints_give_an_exact_empty_update(pair, codec):
    """base -> base: every codec (lossy included) reconstructs the base bit for bit; delta codecs send almost
    nothing."""
    base, _ = pair
    if codec[0] in ("topk", "quant"):
        assume(all(bool(torch.isfinite(t).all()) for t in base.values() if t.dtype in CONTINUOUS_DTYPES))
    payload = encode_update(make_codec(*codec), base, base)
    decoded = apply_update(base, payload)
    assert state_dict_sha256(decoded.state) == state_dict_sha256(base)
    header = read_header(payload)
    assert header.lossless
    if codec[0] != "full":
        assert header.body_bytes < 200, header.body_bytes  # zstd frame + safetensors header, no tensor data


@FAST
@given(pair=state_pairs(), codec=st.sampled_from(LOSSLESS + LOSSY))
def test_encoding_is_deterministic(pair, codec):
    base, target = pair
    assert encode_update(make_codec(*codec), base, target) == encode_update(make_codec(*codec), base, target)


def test_identical_real_checkpoint_update_is_tiny():
    from nnconform.zoo.models import build_architecture

    torch.manual_seed(0)
    state = build_architecture("resnet8").state_dict()
    sizes = {name: len(encode_update(make_codec(name), state, state)) for name in ("zstd-delta", "topk", "quant")}
    full = len(encode_update(make_codec("full"), state, state))
    assert all(s < 1000 for s in sizes.values()), sizes
    assert full > 100_000


# -- mismatched states -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["full", "zstd-delta", "topk", "quant", "nnc"])
def test_added_key_is_a_clear_error(codec):
    base = {"a": torch.zeros(3)}
    target = {"a": torch.ones(3), "fc.extra": torch.ones(2)}
    with pytest.raises(StateMismatchError, match=r"keys only in the target: fc\.extra"):
        encode_update(make_codec(codec), base, target)


@pytest.mark.parametrize("codec", ["full", "zstd-delta", "topk", "quant", "nnc"])
def test_removed_key_is_a_clear_error(codec):
    base = {"a": torch.zeros(3), "layer9.weight": torch.zeros(2)}
    target = {"a": torch.ones(3)}
    with pytest.raises(StateMismatchError, match=r"keys only in the base: layer9\.weight"):
        encode_update(make_codec(codec), base, target)


@FAST
@given(pair=state_pairs(), codec=st.sampled_from(LOSSLESS + LOSSY), extra=names, data=st.data())
def test_added_or_removed_keys_are_named_for_any_state(pair, codec, extra, data):
    base, target = pair
    assume(extra not in base)
    added = {**target, extra: torch.zeros(2)}
    with pytest.raises(StateMismatchError, match=f"keys only in the target: {re.escape(extra)}"):
        encode_update(make_codec(*codec), base, added)
    if base:
        gone = data.draw(st.sampled_from(sorted(base)))
        removed = {k: v for k, v in target.items() if k != gone}
        with pytest.raises(StateMismatchError, match=f"keys only in the base: .*{re.escape(gone)}"):
            encode_update(make_codec(*codec), base, removed)


def test_shape_and_dtype_changes_are_named():
    with pytest.raises(StateMismatchError, match=r"w: \(3,\) torch.float32 -> \(4,\) torch.float32"):
        encode_update("zstd-delta", {"w": torch.zeros(3)}, {"w": torch.zeros(4)})
    with pytest.raises(StateMismatchError, match=r"torch.float32 -> \(3,\) torch.float16"):
        encode_update("zstd-delta", {"w": torch.zeros(3)}, {"w": torch.zeros(3, dtype=torch.float16)})


def test_non_tensor_entries_are_refused():
    with pytest.raises(TypeError, match=r"target\['w'\] is a list"):
        encode_update("full", {"w": torch.zeros(1)}, {"w": [0.0]})


@pytest.mark.parametrize("codec", ["topk", "quant"])
def test_lossy_codecs_refuse_non_finite_deltas_by_name(codec):
    base = {"w": torch.zeros(4)}
    target = {"w": torch.tensor([0.0, float("inf"), 1.0, 2.0])}
    with pytest.raises(ValueError, match=r"tensor 'w': the delta has non-finite values"):
        encode_update(codec, base, target)


# -- configs and registry -------------------------------------------------------------------------------


def test_reference_codecs_are_registered():
    assert {"full", "zstd-delta", "topk", "quant", "nnc"} <= set(UPDATE_CODECS.names())


@pytest.mark.parametrize("name,params,match", [
    ("topk", {"fraction": 0}, r"fraction=0 must be in \(0, 1\]"),
    ("topk", {"fraction": 1.5}, r"fraction=1.5"),
    ("quant", {"bits": 9}, r"bits=9 must be an integer in 2..8"),
    ("quant", {"bits": 1}, r"bits=1"),
    ("zstd-delta", {"zstd_level": 0}, r"zstd_level=0 must be an integer in 1..22"),
    ("full", {"zstd_level": 23}, r"zstd_level=23"),
    ("nnc", {"qp": 5}, r"qp=5 must be an integer in -100..0"),
    ("topk", {"k": 3}, r"unknown config field\(s\) \['k'\]; valid: \['dense_1d', 'fraction', 'version', 'zstd_level'\]"),
    ("quant", {"bits_1d": 1}, r"bits_1d=1 must be an integer in 2..8"),
    ("quant", {"version": 7}, r"config version 7 is not supported"),
    # types: a flag given as a string, a bool given as a number of bits, a number given as a string
    ("zstd-delta", {"shuffle": "no"}, r"shuffle='no' must be true or false"),
    ("topk", {"dense_1d": 0}, r"dense_1d=0 must be true or false"),
    ("quant", {"bits": True}, r"bits=True must be an integer in 2..8"),
    ("topk", {"fraction": "0.1"}, r"fraction='0.1' must be in \(0, 1\]"),
    ("nnc", {"use_dq": "yes"}, r"use_dq='yes' must be true or false"),
])
def test_bad_configs_name_the_value(name, params, match):
    with pytest.raises(kit.ConfigError, match=match):
        make_codec(name, params)


def test_codecs_are_kit_methods_built_by_kit_make():
    codec = kit.make("update-codec", "topk", {"fraction": 0.05})
    assert isinstance(codec.config, kit.MethodConfig) and codec.config.method == "topk" and codec.name == "topk"
    assert codec.config.to_dict() == {"method": "topk", "version": 1, "fraction": 0.05, "dense_1d": True,
                                      "zstd_level": 10}
    assert kit.registry("update-codec") is UPDATE_CODECS and UPDATE_CODECS.entry_point_group == "nnconform.update_codecs"


def test_a_codec_without_a_nested_config_is_refused_at_registration():
    with pytest.raises(TypeError, match="nested `Config` derived from nnconform.kit.MethodConfig"):
        @kit.register_method("update-codec", "test-no-config")
        class NoConfig:  # noqa: F841
            lossless = True
    assert "test-no-config" not in UPDATE_CODECS.names()


def test_unknown_codec_suggests_close_names():
    with pytest.raises(KeyError, match=r"did you mean 'topk'"):
        make_codec("topkk")


def test_configs_round_trip_through_the_header():
    codec = make_codec("quant", {"bits": 4, "zstd_level": 5})
    header = read_header(encode_update(codec, {"w": torch.zeros(2)}, {"w": torch.ones(2)}))
    assert header.codec == "quant"
    assert header.config == {"bits": 4, "bits_1d": 8, "zstd_level": 5, "version": 1}
    assert make_codec(header.codec, header.config).config == codec.config


def test_a_third_party_codec_goes_through_the_same_door():
    """A codec registered at run time (as a --proposal or entry point would) is encoded, pinned and verified."""

    class NegateCodec:  # stores -target; lossless
        lossless = True

        @dataclass(frozen=True)
        class Config(kit.MethodConfig):
            """No parameters."""

        def __init__(self, config=None):
            self.config = config or self.Config()

        def encode(self, base, target):
            from safetensors.torch import save
            return save({k: -v for k, v in target.items()})

        def decode(self, base, body):
            from safetensors.torch import load
            return {k: -v for k, v in load(body).items()}

    kit.register_method("update-codec", "test-negate")(NegateCodec)
    try:
        base, target = {"w": torch.zeros(3)}, {"w": torch.tensor([1.0, 2.0, 3.0])}
        payload = encode_update("test-negate", base, target)
        assert torch.equal(apply_update(base, payload).state["w"], target["w"])
    finally:
        UPDATE_CODECS.unregister("test-negate")


# -- NNC --------------------------------------------------------------------------------------------------


def _nncodec_or_skip():
    try:
        import nncodec  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"nncodec not installed ({exc}): pip install --no-deps nncodec==2.1.3")


@pytest.mark.parametrize("params", [{}, {"incremental": False}, {"qp": -20, "tca": True}])
def test_nnc_round_trip_on_a_real_architecture(params):
    _nncodec_or_skip()
    from nnconform.zoo.models import build_architecture

    torch.manual_seed(0)
    model = build_architecture("resnet8")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    target = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v + 3) for k, v in base.items()}
    payload = encode_update(make_codec("nnc", params), base, target)
    decoded = apply_update(base, payload).state
    assert state_dict_sha256(decoded) == read_header(payload).target_sha256
    assert torch.equal(decoded["bn1.num_batches_tracked"], target["bn1.num_batches_tracked"])
    err = max(float((decoded[k] - target[k]).abs().max()) for k in base if base[k].is_floating_point())
    step = 2 ** (params.get("qp", -32) / 4)
    assert err <= 2 * step, (err, step)
    assert len(payload) < len(encode_update(make_codec("full"), base, target)) / 2


def test_nnc_finer_qp_gives_more_bytes_and_less_error():
    _nncodec_or_skip()
    g = torch.Generator().manual_seed(1)
    base = {"conv.weight": torch.randn(16, 8, 3, 3, generator=g), "fc.bias": torch.randn(10, generator=g)}
    target = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    out = {}
    for qp in (-40, -24):
        payload = encode_update(make_codec("nnc", {"qp": qp}), base, target)
        rec = apply_update(base, payload).state
        out[qp] = (len(payload), float((rec["conv.weight"] - target["conv.weight"]).abs().max()))
    assert out[-40][0] > out[-24][0] and out[-40][1] < out[-24][1], out
