"""Self-tests of the split study: one pass per batch, real payload sizes, feature statistics,
and bad codecs that each fail their own case with a clear message while the others run."""

from __future__ import annotations

from dataclasses import dataclass

import itertools

import numpy as np
import pytest
import torch

from nnconform import kit
from nnconform.split import HalfCodec, RawCodec, SplitGraph, profile_cuts, run_study
from nnconform.split.runs import torch_threads
from nnconform.zoo import build_architecture
from nnconform.split.codecs import FeatureCodec
from nnconform.split.plan import SplitPoint


def _point(label, family, codec, **fields):
    """A split operating point (the kit's points are keyword-only)."""
    return SplitPoint(label=label, family=family, codec=codec, **fields)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests work on tiny tensors, and a shared machine stalls on more."""
    with torch_threads(1):
        yield


FMNIST = (1, 28, 28)


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return SplitGraph.trace(build_architecture("resnet8").eval(), FMNIST)


def batches(n_batches=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((size, *FMNIST), generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n_batches)]


class _Raw(FeatureCodec):
    """A well-behaved codec that bad codecs below break one rule of."""

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """No parameters."""

    def __init__(self, config=None):
        super().__init__(config)
        self.inner = RawCodec()

    def encode(self, tensor):
        return self.inner.encode(tensor)

    def decode(self, payload):
        return self.inner.decode(payload)


class WrongShape(_Raw):
    def decode(self, payload):
        return super().decode(payload).flatten()


class WrongDtype(_Raw):
    def decode(self, payload):
        return super().decode(payload).double()


class NaNOutput(_Raw):
    def decode(self, payload):
        out = super().decode(payload).clone()
        out.view(-1)[3] = float("nan")
        return out


class NonDeterministic(_Raw):
    def __init__(self, config=None):
        super().__init__(config)
        self.counter = itertools.count()

    def encode(self, tensor):
        return super().encode(tensor) + bytes([next(self.counter) % 256])

    def decode(self, payload):
        return super().decode(payload[:-1])


class Undecodable(_Raw):
    def decode(self, payload):
        raise ValueError(f"cannot parse {len(payload)} bytes")


class NotBytes(_Raw):
    def encode(self, tensor):
        return bytearray(super().encode(tensor))


BAD = {
    "wrong-shape": (WrongShape, "contract", "decode returned shape [6272], expected [32, 14, 14]"),
    "wrong-dtype": (WrongDtype, "contract", "decode returned dtype torch.float64, expected torch.float32"),
    "nan": (NaNOutput, "contract", "decode returned 1 non-finite values"),
    "nondeterministic": (NonDeterministic, "contract", "encode is not deterministic"),
    "undecodable": (Undecodable, "exception", "ValueError: cannot parse"),
    "not-bytes": (NotBytes, "contract", "encode returned bytearray, expected bytes"),
}


@pytest.fixture
def bad_codecs():
    """Register the bad codecs for one test, and always remove them again."""
    from nnconform.split import FEATURE_CODECS

    for name, (cls, _, _) in BAD.items():
        FEATURE_CODECS.register(f"test-{name}", cls)
    try:
        yield {name: _point(name, name, f"test-{name}") for name in BAD}
    finally:
        for name in BAD:
            FEATURE_CODECS.unregister(f"test-{name}")


def test_each_bad_codec_fails_its_own_case_and_the_others_run(graph, bad_codecs):
    good = [_point("raw", "raw", "raw", lossless=True),
            _point("uq8", "uq", "uniform", params=(("bits", 8),))]
    lossy_claimed_lossless = _point("fp16-lossless", "fp16", "fp16", lossless=True)
    points = good + list(bad_codecs.values()) + [lossy_claimed_lossless]
    study = run_study("t", graph, batches(), coded={"layer2": points})
    for name, (_, kind, message) in BAD.items():
        r = study.result("layer2", name)
        assert not r.ok and r.error_kind == kind, (name, r.error)
        assert message in r.error, (name, r.error)
        assert f"{name} at layer2" in r.error or kind == "exception", r.error
        assert r.traceback
    r = study.result("layer2", "fp16-lossless")
    assert not r.ok and "declared lossless" in r.error
    for p in good:
        r = study.result("layer2", p.id)
        assert r.ok and r.n == 48 and r.correct.shape == (48,)
    raw = study.result("layer2", "raw")
    assert torch.equal(raw.logits, study.ref_logits)
    assert raw.agreement == 1.0 and raw.max_abs_error == 0.0


def test_codec_that_cannot_be_built_is_its_own_error(graph):
    bad = _point("uq99", "uq", "uniform", params=(("bits", 99),))
    study = run_study("t", graph, batches(1), coded={"layer2": [bad, _point("raw", "raw", "raw")]})
    assert "bits must be an integer in 1..16, got 99" in study.result("layer2", "uq99").error
    assert study.result("layer2", "raw").ok


def test_bits_are_lengths_of_real_payloads(graph):
    data = batches(2)
    study = run_study("t", graph, data, coded={"layer2": [_point("fp16", "fp16", "fp16")]})
    head = graph.head("layer2")
    with torch.inference_mode():
        expected = [len(HalfCodec().encode(f)) for x, _ in data for f in head(x)]
    r = study.result("layer2", "fp16")
    assert r.payload_bytes == expected
    assert r.bits_per_sample == 8 * np.mean(expected)
    assert expected[0] == 2 * 32 * 14 * 14 + 5, "fp16 payload: values plus tag, rank and three dims"


def test_one_forward_pass_per_batch_for_all_cuts_and_codecs(graph):
    calls = []
    hook = graph.model.conv1.register_forward_hook(lambda *a: calls.append(1))
    points = [_point("raw", "raw", "raw"), _point("fp16", "fp16", "fp16"),
              _point("uq4", "uq", "uniform", params=(("bits", 4),))]
    try:
        run_study("t", graph, batches(3), coded={"layer1": points, "layer2": points, "layer3": points},
                  stats_cuts=[c.name for c in graph.single_cuts])
    finally:
        hook.remove()
    assert len(calls) == 3


def test_feature_statistics(graph):
    study = run_study("t", graph, batches(3), coded={}, stats_cuts=["bn1", "relu", "layer2"], stats_samples=20,
                      profiles=profile_cuts(graph))
    relu, bn = study.stats["relu"], study.stats["bn1"]
    assert relu.n_samples == 20
    assert relu.zero_fraction > 0.2 and bn.zero_fraction == 0.0
    assert 0 < relu.entropy_bits < bn.entropy_bits <= 8
    assert relu.value_min == 0.0
    assert relu.channels == 16 and relu.channel_mean["min"] >= 0
    assert study.stats["layer2"].bytes_as("fp32") == 4 * 32 * 14 * 14
    assert study.stats["layer2"].bytes_as("int8") == 32 * 14 * 14
    assert relu.profile is not None and relu.profile.head_params > 0
    # the accumulated statistics equal a direct computation on the same 20 samples
    x = torch.cat([b[0] for b in batches(3)])[:20]
    with torch.inference_mode():
        f = graph.head("relu")(x).double()
    assert relu.zero_fraction == pytest.approx(float((f == 0).double().mean()))
    means = f.mean(dim=(0, 2, 3))
    assert relu.channel_mean["mean"] == pytest.approx(float(means.mean()))
    assert relu.channel_var["max"] == pytest.approx(float(f.var(dim=(0, 2, 3), unbiased=False).max()))


def test_multi_tensor_cut_is_coded_per_tensor(graph):
    """A cut inside a residual block (block input + branch) is coded per tensor: a sample's bytes are the sum of
    its tensors' payloads, and the lossless raw codec gives the uncoded model's outputs."""
    cut = graph.cut(next(c.name for c in graph.cuts if not c.single))
    data = batches(1, size=4)
    study = run_study("t", graph, data, coded={cut.name: [_point("raw", "raw", "raw", lossless=True)]})
    r = study.result(cut.name, "raw")
    assert r.ok, r.error
    with torch.inference_mode():
        mids = graph.head(cut.name)(data[0][0])
    expected = [sum(len(RawCodec().encode(t[i])) for t in mids) for i in range(4)]
    assert r.payload_bytes == expected and len(mids) == cut.num_tensors == 2
    assert torch.equal(r.logits, study.ref_logits)


class Zeroing(_Raw):
    """Keeps the protocol but throws the information away: only the accuracy gate can catch it."""

    def decode(self, payload):
        return torch.zeros_like(super().decode(payload))


def test_codec_that_destroys_the_features_fails_the_accuracy_gate(fmnist_test):
    from nnconform.anchors import WeightsUnavailable, get_anchor
    from nnconform.gates import non_inferiority
    from nnconform.split import FEATURE_CODECS

    anchor = get_anchor("fmnist-lenet5")
    try:
        model = anchor.build()
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
    g = SplitGraph.trace(model, anchor.input_shape)
    FEATURE_CODECS.register("test-zeroing", Zeroing)
    try:
        points = [_point("zeroing", "z", "test-zeroing"), _point("uq8", "uq", "uniform")]
        study = run_study("fmnist-lenet5", g, fmnist_test.subset(range(300)).batches(anchor.preprocess, 100),
                          coded={"features": points})
    finally:
        FEATURE_CODECS.unregister("test-zeroing")
    zero, uq8 = study.result("features", "zeroing"), study.result("features", "uq8")
    assert zero.ok, "the zeroing codec keeps the protocol"
    verdict = non_inferiority(study.ref_correct, zero.correct, "99%")
    assert not verdict.passed and "exceeds the 99% margin" in verdict.reason
    assert zero.top1 < 0.5 < study.ref_top1
    assert non_inferiority(study.ref_correct, uq8.correct, "99%").passed
