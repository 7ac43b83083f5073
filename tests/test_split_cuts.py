"""Self-tests of the split-point catalogue, heads, tails, probes and the cut profiles."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nnconform.profile import count_macs, count_params
from nnconform.split import SplitGraph, SplitTraceError, profile_cuts, resolution_scaling
from nnconform.split.onnx_check import OnnxComparison, onnx_roundtrip
from nnconform.split.runs import torch_threads
from nnconform.zoo import build_architecture


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests work on tiny tensors, and a shared machine stalls on more."""
    with torch_threads(1):
        yield


FMNIST = (1, 28, 28)
_GRAPHS: dict[str, SplitGraph] = {}


def zoo_graph(arch: str) -> SplitGraph:
    """A random-weight zoo model, traced once per test session."""
    if arch not in _GRAPHS:
        torch.manual_seed(0)
        _GRAPHS[arch] = SplitGraph.trace(build_architecture(arch).eval(), FMNIST)
    return _GRAPHS[arch]


def run_split(graph: SplitGraph, cut: str, x: torch.Tensor) -> torch.Tensor:
    head, tail = graph.split(cut)
    mid = head(x)
    return tail(*mid) if isinstance(mid, tuple) else tail(mid)


def test_resnet8_catalogue_names_and_branches():
    g = zoo_graph("resnet8")
    assert [c.name for c in g.single_cuts] == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool",
                                               "flatten"]
    assert g.cut("layer2").shapes == ((32, 14, 14),)
    multi = [c for c in g.cuts if not c.single]
    assert multi, "cuts inside residual blocks hand over the residual branch and the block input"
    assert all(c.num_tensors == 2 and c.kind == "multi" for c in multi)
    assert "layer1.conv1" in {c.name for c in multi}


def test_lenet_catalogue_has_only_single_cuts_and_block_names():
    g = zoo_graph("lenet5")
    names = [c.name for c in g.cuts]
    assert names[:6] == ["features.0", "features.1", "features.2", "features.3", "features.4", "features"]
    assert all(c.single for c in g.cuts)
    assert "classifier.4" not in names, "a cut after the last layer would make the head the whole model"


@settings(max_examples=25, deadline=None)
@given(arch=st.sampled_from(["lenet5", "resnet8", "mobilenetv2_small"]), pick=st.integers(0, 10_000),
       batch=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_tail_of_head_is_bit_identical_to_model(arch, pick, batch, seed):
    g = zoo_graph(arch)
    cut = g.cuts[pick % len(g.cuts)]
    x = torch.randn((batch, *FMNIST), generator=torch.Generator().manual_seed(seed)) * 3
    with torch.inference_mode():
        assert torch.equal(run_split(g, cut.name, x), g.model(x)), cut.name


def test_probe_returns_every_head_output_in_one_pass():
    g = zoo_graph("resnet8")
    x = torch.randn((2, *FMNIST), generator=torch.Generator().manual_seed(1))
    calls = []
    hook = g.model.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            out, feats = g.probe([c.name for c in g.cuts])(x)
    finally:
        hook.remove()
    assert len(calls) == 1
    with torch.inference_mode():
        assert torch.equal(out, g.model(x))
        for c in g.cuts:
            head = g.head(c.name)(x)
            got = feats[c.name]
            if c.single:
                assert torch.equal(got, head), c.name
            else:
                assert all(torch.equal(a, b) for a, b in zip(got, head)), c.name


class InplaceNet(nn.Module):
    """A cut right before an in-place ReLU: the tail must not change the tensor it receives."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def test_probe_and_tail_are_safe_with_inplace_layers():
    g = SplitGraph.trace(InplaceNet().eval(), (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        mid = g.head("conv")(x)
        before = mid.clone()
        y = g.tail("conv")(mid)
        assert torch.equal(mid, before), "the tail modified its input in place"
        assert torch.equal(y, g.model(x))
        _, feats = g.probe(["conv"])(x)
        assert (feats["conv"] < 0).any(), "the probe captured the tensor after the in-place ReLU"
        assert torch.equal(feats["conv"], before)


class ViewNet(nn.Module):
    """Reads the batch size from the input, as EfficientNet's ``x.view(bs, -1)`` does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 6 * 6, 2)

    def forward(self, x):
        bs = x.size(0)
        return self.fc(self.conv(x).view(bs, -1))


def test_batch_size_read_from_input_is_not_a_second_tensor():
    g = SplitGraph.trace(ViewNet().eval(), (1, 8, 8))
    assert g.cut("conv").single and g.cut("conv").other_values == ()
    x = torch.randn(5, 1, 8, 8)  # a batch size other than the one traced
    with torch.inference_mode():
        assert torch.equal(run_split(g, "conv", x), g.model(x))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_is_refused_with_the_reason():
    with pytest.raises(SplitTraceError, match="Branchy: torch.fx cannot trace it"):
        SplitGraph.trace(Branchy(), (1, 4, 4))


def test_unknown_cut_name_suggests_close_ones():
    with pytest.raises(SplitTraceError, match="did you mean 'layer2'"):
        zoo_graph("resnet8").head("layer_2")


def test_torchvision_resnet50_published_sizes():
    from torchvision.models import resnet50

    g = SplitGraph.trace(resnet50(weights=None).eval(), (3, 224, 224))
    kib = {n: g.cut(n).numel * 4 / 1024 for n in ("layer1", "layer2", "layer3", "layer4")}
    assert kib == {"layer1": 3136, "layer2": 1568, "layer3": 784, "layer4": 392}
    assert sum(1 for c in g.cuts if not c.single) > 0


def test_cut_profiles_match_nnconform_profile():
    g = zoo_graph("resnet8")
    prof = profile_cuts(g)
    total = count_macs(g.model, FMNIST)
    for c in g.single_cuts:
        head, tail = g.split(c.name)
        p = prof[c.name]
        assert p.head_macs == count_macs(head, FMNIST), c.name
        assert p.tail_macs == count_macs(tail, c.shapes[0]), c.name
        assert p.head_params == count_params(head) and p.tail_params == count_params(tail), c.name
        assert p.head_macs + p.tail_macs == total


def test_resolution_scaling():
    g = zoo_graph("resnet8")
    sizes = resolution_scaling(g, [28, 56])
    assert sizes["layer2"] == {"28": 32 * 14 * 14, "56": 32 * 28 * 28}
    assert sizes["flatten"] == {"28": 64, "56": 64}
    lenet = resolution_scaling(zoo_graph("lenet5"), [28, 56])
    assert lenet["features"] == {"28": 400, "56": 16 * 12 * 12}
    assert lenet["classifier.0"] == {"28": 120}, "cuts after a fixed-size layer exist at the native size only"


def test_onnx_roundtrip_of_head_and_tail():
    g = zoo_graph("resnet8")
    x = torch.randn(1, *FMNIST)
    head, tail = g.split("layer2")
    with torch.inference_mode():
        mid = head(x)
    assert onnx_roundtrip(head, (x,)).passed
    assert onnx_roundtrip(tail, (mid,)).passed


def test_onnx_tolerance_scales_with_output_magnitude():
    assert OnnxComparison(9e-6, 0.5, 1).passed
    assert not OnnxComparison(2e-5, 0.5, 1).passed
    assert OnnxComparison(2e-5, 10.0, 1).passed
    assert not OnnxComparison(2e-4, 10.0, 1).passed
