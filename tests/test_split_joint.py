"""Self-tests of joint coding of multi-tensor cuts: the joint payload round trip (hypothesis), a damaged shape header
refused with a clear message, real payload sizes in both modes (per tensor: summed; joint: one payload), the joint
gate failing on a codec that breaks the joint protocol, and the BD-rate of joint against per-tensor coding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnconform import kit
from nnconform.records import Status
from nnconform.split import RawCodec, SplitGraph, make_codec, run_study
from nnconform.split.codecs import JOINT_TAG, FeatureCodec, PayloadError, flatten_joint
from nnconform.split.joint import joint_records
from nnconform.split.plan import SplitPoint
from nnconform.split.runs import torch_threads
from nnconform.zoo import build_architecture

FMNIST = (1, 28, 28)
REFERENCE = [("raw", {}), ("fp16", {}), ("uniform", {"bits": 4}), ("uniform", {"bits": 8, "granularity": "per-channel"}),
             ("uniform", {"bits": 12}), ("topk", {"keep": 0.5}), ("image", {"format": "png"}),
             ("image", {"format": "webp", "quality": 75}), ("image", {"format": "jpeg", "quality": 75}),
             ("image", {"format": "png", "bits": 16})]


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2**16))
def test_joint_round_trip_every_reference_codec(shapes, seed):
    """Every reference codec's joint payload decodes to the tensors' shapes and dtype, in order; raw exactly, the
    uniform codec within half a quantisation step of the shared range."""
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(s, generator=g) * 3 for s in shapes]
    for name, params in REFERENCE:
        codec = make_codec(name, params)
        payload = codec.encode_joint(tensors)
        assert isinstance(payload, bytes) and payload[0] == JOINT_TAG
        decoded = codec.decode_joint(payload)
        assert [tuple(d.shape) for d in decoded] == [tuple(s) for s in shapes], (name, params)
        assert all(d.dtype == torch.float32 and bool(torch.isfinite(d).all()) for d in decoded)
        assert codec.encode_joint([t.clone() for t in tensors]) == payload  # deterministic
        if name == "raw":
            assert all(torch.equal(a, b) for a, b in zip(tensors, decoded))
        if name == "uniform" and params.get("granularity", "per-tensor") == "per-tensor":
            flat = flatten_joint(tensors)
            step = float(flat.max() - flat.min()) / ((1 << params["bits"]) - 1)
            assert float((flatten_joint(decoded) - flat).abs().max()) <= step / 2 + 1e-5


def test_joint_uniform_shares_one_range_across_tensors():
    """Per-tensor granularity coded jointly quantises every tensor with ONE range: a tensor of small values next to
    one of large values loses its detail (which per-tensor coding keeps), so the shared range is really shared."""
    small, large = torch.linspace(0, 1, 64).reshape(4, 4, 4), torch.linspace(-100, 100, 64).reshape(4, 4, 4)
    codec = make_codec("uniform", {"bits": 4})
    joint_small = codec.decode_joint(codec.encode_joint([small, large]))[0]
    alone = codec.decode(codec.encode(small))
    assert float((alone - small).abs().max()) < 0.05 < float((joint_small - small).abs().max())
    # per-channel keeps a range per channel of every tensor: the small tensor keeps its detail
    per_channel = make_codec("uniform", {"bits": 4, "granularity": "per-channel"})
    kept = per_channel.decode_joint(per_channel.encode_joint([small, large]))[0]
    assert float((kept - small).abs().max()) < 0.05


def _corrupt_first_dim(payload: bytes) -> bytes:
    """The joint header's first tensor's first dimension changed (tag, count, ndim, then the dimension's varint)."""
    out = bytearray(payload)
    assert out[0] == JOINT_TAG and out[3] < 0x7F
    out[3] += 1
    return bytes(out)


@pytest.mark.parametrize(("name", "params"), REFERENCE, ids=lambda v: str(v))
def test_damaged_joint_shape_header_fails_clearly(name, params):
    """A joint payload whose shape header was damaged is refused with a PayloadError naming the header's shapes (the
    body holds another number of elements), never decoded to tensors of the wrong shape."""
    codec = make_codec(name, params)
    payload = codec.encode_joint([torch.randn(3, 4, 4), torch.randn(3, 2, 2)])
    with pytest.raises(PayloadError, match=r"joint header shapes \[\[4, 4, 4\], \[3, 2, 2\]\] hold 76 elements"
                       if name in ("raw", "fp16", "topk") else r"header|frame"):
        codec.decode_joint(_corrupt_first_dim(payload))


def test_joint_header_errors_name_the_problem():
    codec = RawCodec()
    with pytest.raises(PayloadError, match="not a joint payload"):
        codec.decode_joint(codec.encode(torch.randn(3)))
    with pytest.raises(PayloadError, match="counts 0 tensors"):
        codec.decode_joint(bytes([JOINT_TAG, 0]))
    with pytest.raises(PayloadError, match="truncated"):
        codec.decode_joint(codec.encode_joint([torch.randn(2, 2)])[:4])


class PerTensorOnly(FeatureCodec):
    """A proposal-style codec with only the per-tensor API (encode_many/decode_many counted): joint coding reaches it
    through the container, one encode_many call per batch."""

    name = "per-tensor-only"

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """No parameters."""

    calls = 0

    def encode(self, tensor):
        return RawCodec().encode(tensor)

    def decode(self, payload):
        return RawCodec().decode(payload)

    def encode_many(self, tensors):
        type(self).calls += 1
        return super().encode_many(tensors)


def test_per_tensor_api_codes_jointly_in_one_call():
    codec = PerTensorOnly()
    samples = [(torch.randn(2, 3, 3), torch.randn(2, 1, 1)) for _ in range(5)]
    PerTensorOnly.calls = 0
    payloads = codec.encode_joint_many(samples)
    assert PerTensorOnly.calls == 1 and len(payloads) == 5
    for s, d in zip(samples, codec.decode_joint_many(payloads)):
        assert all(torch.equal(a, b) for a, b in zip(s, d))


# ---------------------------------------------------------------------------------------------
# The study


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return SplitGraph.trace(build_architecture("resnet8").eval(), FMNIST)


def _data(n=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((size, *FMNIST), generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def _points():
    return [SplitPoint(label="raw", family="raw", codec="raw", lossless=True)] + [
        SplitPoint(label=f"uq{b}", family="uq", codec="uniform", params={"bits": b}) for b in (8, 4, 2)]


def test_bits_are_real_payloads_in_both_modes(graph):
    """At a skip cut (block input + branch) a sample's per-tensor bits are the sum of its tensors' payloads and its
    joint bits the length of its one joint payload; raw coded jointly gives the uncoded model's outputs."""
    cut = graph.cut("layer2.relu1")
    assert cut.num_tensors == 2
    data = _data()
    study = run_study("t", graph, data, coded={cut.name: _points(), "layer2": _points()[:1]})
    assert ("layer2", "raw") not in study.joint  # a single-tensor cut is coded one way only
    with torch.inference_mode():
        mids = [graph.head(cut.name)(x) for x, _ in data]
    for pid, codec in (("raw", RawCodec()), ("uq4", make_codec("uniform", {"bits": 4}))):
        per, joint = study.result(cut.name, pid), study.joint_result(cut.name, pid)
        assert per.ok and joint.ok, (per.error, joint.error)
        assert per.payload_bytes == [sum(len(codec.encode(t[i])) for t in m) for m in mids for i in range(8)]
        assert joint.payload_bytes == [len(codec.encode_joint([t[i] for t in m])) for m in mids for i in range(8)]
        assert joint.mode == "joint" and per.mode == "per-tensor"
    assert torch.equal(study.joint_result(cut.name, "raw").logits, study.ref_logits)
    records = joint_records("t", cut.name, study)
    gate_rec = records[-1]
    assert gate_rec.check_id == "split.joint_coding" and gate_rec.passed, gate_rec.message
    row = next(r for r in gate_rec.details["rows"] if r["point"] == "uq4")
    assert row["joint_bits"] == pytest.approx(8 * np.mean(study.joint_result(cut.name, "uq4").payload_bytes))
    assert row["per_tensor_bits"] == pytest.approx(8 * np.mean(study.result(cut.name, "uq4").payload_bytes))
    bd = [r for r in records if r.check_id == "split.joint_bd_rate"]
    assert [r.subject for r in bd] == [f"t/{cut.name}/uq"] and bd[0].details["curve_joint"]


class DropsATensor(FeatureCodec):
    """Per-tensor coding is fine; the joint decoder loses the last tensor of the cut."""

    name = "drops-a-tensor"

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """No parameters."""

    def encode(self, tensor):
        return RawCodec().encode(tensor)

    def decode(self, payload):
        return RawCodec().decode(payload)

    def decode_joint_many(self, payloads):
        return [d[:-1] for d in super().decode_joint_many(payloads)]


class JointRaises(DropsATensor):
    """The joint encoder raises (a codec bug, not a broken protocol)."""

    def decode_joint_many(self, payloads):
        return FeatureCodec.decode_joint_many(self, payloads)

    def encode_joint_many(self, samples):
        raise RuntimeError("no joint mode here")


@pytest.mark.parametrize(("cls", "status", "match"), [(DropsATensor, Status.FAIL, "decoded to tuple of 1 tensors"),
                                                      (JointRaises, Status.ERROR, "no joint mode here")])
def test_joint_gate_fails_a_codec_breaking_the_joint_protocol(graph, monkeypatch, cls, status, match):
    """The per-tensor case of the codec passes; its joint coding fails the gate (FAIL for a broken protocol, ERROR
    when it raises), naming the point and what went wrong."""
    monkeypatch.setattr(SplitPoint, "build", lambda self: cls())
    point = SplitPoint(label="bad", family="bad", codec="raw")
    study = run_study("t", graph, _data(1), coded={"layer2.relu1": [point]})
    assert study.result("layer2.relu1", "bad").ok
    rec = joint_records("t", "layer2.relu1", study)[-1]
    assert rec.check_id == "split.joint_coding" and rec.status == status and not rec.passed
    assert "bad" in rec.message and match in rec.message
