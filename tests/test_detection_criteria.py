"""Self-tests of the split gates made task-generic for the detection anchor (issue 14, item 5): cuts that hand over
several tensors (FPN levels) are coded per tensor with the bits summed, a head shared by every FPN level is counted on
both sides of a cut, and split.toml may name a multi-tensor cut but never one that also hands over non-tensor values.
Each gate is shown failing on a bad input."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnconform.records import Status
from nnconform.split import SplitGraph, profile_cuts, run_study
from nnconform.split import checks
from nnconform.split.codecs import RawCodec
from nnconform.split.plan import SplitPoint
from nnconform.split.runs import torch_threads

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: tiny tensors on a shared machine."""
    with torch_threads(1):
        yield


class SharedHeadFPN(nn.Module):
    """Two pyramid levels and one head applied to both (as the detector's tower and heads are)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        p3 = self.c1(x)
        p4 = self.c2(p3)
        return torch.cat([self.head(p3).flatten(2), self.head(p4).flatten(2)], 2).mean(2)  # [N, 3] class scores


class SizeAfterCut(nn.Module):
    """A model whose tail reads a non-batch size of a head tensor: that int crosses the cut besides the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        y = self.c1(x)
        width = y.shape[-1]
        z = self.c2(y)
        return z.flatten(1) * width


@pytest.fixture(scope="module")
def fpn():
    torch.manual_seed(0)
    model = SharedHeadFPN().eval()
    return model, SplitGraph.trace(model, SHAPE)


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn((n, *SHAPE), generator=g), torch.zeros(n, dtype=torch.long))]


def _shared_cut(graph):
    """The cut after the head's first application, before its second: two tensors cross, the head is on both sides."""
    profiles = profile_cuts(graph)
    name = next(c.name for c in graph.cuts if profiles[c.name].shared_params)
    return name, profiles


def test_shared_head_counted_on_both_sides(fpn):
    model, graph = fpn
    name, profiles = _shared_cut(graph)
    p = profiles[name]
    total = sum(t.numel() for t in model.parameters())
    assert p.shared_params == sum(t.numel() for t in model.head.parameters())
    assert p.head_params + p.tail_params - p.shared_params == total
    anchor = SimpleNamespace(name="toy", input_shape=SHAPE, preprocess=None, dataset="toy")
    macs = profiles[graph.cuts[0].name].head_macs + profiles[graph.cuts[0].name].tail_macs
    good = checks.intermediate_data_records(anchor, graph, profiles, {}, {}, total_macs=macs, total_params=total)
    assert good[-1].status is Status.PASS, good[-1].message


def test_params_gate_fails_when_shared_weights_are_forgotten(fpn):
    model, graph = fpn
    name, profiles = _shared_cut(graph)
    bad = {**profiles, name: dataclasses.replace(profiles[name], shared_params=0)}
    anchor = SimpleNamespace(name="toy", input_shape=SHAPE, preprocess=None, dataset="toy")
    macs = profiles[name].head_macs + profiles[name].tail_macs
    rec = checks.intermediate_data_records(anchor, graph, bad, {}, {}, total_macs=macs,
                                           total_params=sum(t.numel() for t in model.parameters()))[-1]
    assert rec.status is Status.FAIL and f"{name}: head" in rec.message and "params != model" in rec.message


def test_fpn_cut_coded_per_tensor_bits_summed(fpn):
    _, graph = fpn
    cut = next(c for c in graph.cuts if c.num_tensors == 2 and not c.other_values)
    data = _data()
    point = SplitPoint(label="raw", family="raw", codec="raw", lossless=True)
    study = run_study("toy", graph, data, coded={cut.name: [point]})
    r = study.result(cut.name, "raw")
    assert r.ok, r.error
    with torch.inference_mode():
        mids = graph.head(cut.name)(data[0][0])
    assert r.payload_bytes == [sum(len(RawCodec().encode(t[i])) for t in mids) for i in range(4)]
    assert torch.equal(r.logits, study.ref_logits)


def test_fpn_cut_fails_when_one_tensor_is_decoded_wrong(fpn, monkeypatch):
    """A codec that breaks the protocol on the second tensor only fails the pair, naming that tensor."""
    _, graph = fpn
    cut = next(c for c in graph.cuts if c.num_tensors == 2 and not c.other_values)
    second = graph.cut(cut.name).shapes[1]
    real_decode = RawCodec.decode

    def decode(self, payload):
        out = real_decode(self, payload)
        return out.flatten() if tuple(out.shape) == tuple(second) else out

    monkeypatch.setattr(RawCodec, "decode", decode)
    point = SplitPoint(label="raw", family="raw", codec="raw")
    r = run_study("toy", graph, _data(), coded={cut.name: [point]}).result(cut.name, "raw")
    assert not r.ok and r.error_kind == "contract" and "(tensor 1 of 2)" in r.error, r.error


def test_catalogue_gate_accepts_multi_tensor_and_refuses_non_tensor_values(fpn):
    model, graph = fpn
    multi = next(c.name for c in graph.cuts if c.num_tensors == 2)
    ok = checks.check_catalogue("toy", model, graph, {"quick": [multi]}, trained=False)
    assert ok.status is Status.PASS, ok.message
    sized = SizeAfterCut().eval()
    g2 = SplitGraph.trace(sized, SHAPE)
    carrying = [c for c in g2.cuts if c.other_values]
    assert carrying, [c.to_dict() for c in g2.cuts]
    bad = checks.check_catalogue("toy", sized, g2, {"quick": [carrying[0].name]}, trained=False)
    assert bad.status is Status.FAIL and "non-tensor values" in bad.message, bad.message
    with pytest.raises(ValueError, match="non-tensor values"):
        run_study("toy", g2, _data(), coded={carrying[0].name: [SplitPoint(label="raw", family="raw", codec="raw")]})


class _Grid(nn.Module):
    """A layer with weights, a persistent buffer and a non-persistent anchor-point grid (as TinyFPNDetector)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("grid", torch.arange(4.0), persistent=False)


def test_nan_template_poisons_what_an_artifact_carries_only():
    """The decode-on-NaN-template gate: weights and persistent buffers (what a state dict carries, so an artifact
    that forgets one shows NaN) are poisoned; a non-persistent grid the architecture builds is kept."""
    from nnconform.compress.serialize import poisoned_template

    t = poisoned_template(_Grid())
    assert torch.isnan(t.lin.weight).all() and torch.isnan(t.lin.bias).all() and torch.isnan(t.scale).all()
    assert torch.equal(t.grid, torch.arange(4.0))
