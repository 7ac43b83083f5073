"""Self-tests of the split gates made task-generic for the detection anchor (issue 14, item 5): cuts that hand over
several tensors (FPN levels) are coded per tensor with the bits summed, a head shared by every FPN level is counted on
both sides of a cut, and split.toml may name a multi-tensor cut but never one that also hands over non-tensor values.
Each gate is shown failing on a bad input."""

from __future__ import annotations

import copy
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


# ---------------------------------------------------------------------------------------------
# compression.artifact_consistency on a detector: torch-int8 keeps the anchor-point grid, AIMET's QuantSim leaves the
# in-model box decoding in float (float_postprocess), and an artifact that really differs still fails.

DET_SIZE = 32


@pytest.fixture(scope="module")
def tiny_detector():
    """A TinyFPNDetector on 32x32 canvases with trained-looking statistics, its calibration images and context."""
    import tempfile
    from pathlib import Path

    from nnconform.compress.base import CalibrationSet, CompressionContext
    from nnconform.detection.model import TinyFPNDetector

    torch.manual_seed(0)
    model = TinyFPNDetector(num_classes=3, size=DET_SIZE, widths=(4, 8, 8, 8), fpn=8)
    images = torch.rand(16, 1, DET_SIZE, DET_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # BatchNorm statistics of the calibration images, so activations have sane ranges
        model.train()
        model(images)
    model.eval()
    cal = CalibrationSet("toy", "train", tuple(range(16)), images, torch.zeros(16, dtype=torch.long), "toy")
    ctx = CompressionContext("toy-det", (1, DET_SIZE, DET_SIZE), 3, cal, Path(tempfile.mkdtemp(prefix="nnc-det-")))
    return model, ctx


@pytest.fixture(scope="module")
def int8_detector(tiny_detector):
    """torch-int8 on the tiny detector: the method and its compressed result (compressed once per module)."""
    from nnconform.compress import compressor_class

    model, ctx = tiny_detector
    int8 = compressor_class("torch-int8")(compressor_class("torch-int8").Config(calibration_samples=16))
    return int8, int8.compress(model, ctx)


def _consistency(compressor, result, decoded, model, ctx, tolerance):
    from nnconform.compress.checks import check_artifact_consistency, forward
    from nnconform.compress.serialize import poisoned_template

    x = ctx.calibration.images[:8]
    return check_artifact_consistency("toy-det/x", compressor, result.artifact, decoded, x, forward(decoded, x),
                                      forward(result.module, x), poisoned_template(model), ctx, tolerance)


def test_int8_decode_keeps_the_anchor_point_grid(tiny_detector, int8_detector):
    """torch-int8 decodes a detector whose boxes come from a non-persistent grid: the artifact's model is the
    method's (boxes included); zeroing every buffer of the template once put every box at the origin."""
    from nnconform.compress.serialize import poisoned_template

    model, ctx = tiny_detector
    int8, result = int8_detector
    decoded = int8.decode(result.artifact, poisoned_template(model), ctx)
    assert torch.equal(decoded.graph.locations, model.locations)
    assert torch.equal(decoded.graph.location_strides, model.location_strides)
    rec = _consistency(int8, result, decoded, model, ctx, 1e-4)
    assert rec.status is Status.PASS, rec.message


@pytest.mark.parametrize("defect", ["grid-lost", "other-weights"])
def test_detector_artifact_that_differs_fails_consistency(tiny_detector, int8_detector, defect):
    """A decoded detector that is not the method's model fails compression.artifact_consistency: one that lost
    the anchor-point grid (the old int8 decoder), and one decoded from an artifact of other weights."""
    from nnconform.compress.serialize import poisoned_template

    model, ctx = tiny_detector
    int8, result = int8_detector
    if defect == "grid-lost":
        decoded = int8.decode(result.artifact, poisoned_template(model), ctx)
        with torch.no_grad():
            decoded.graph.locations.zero_()
            decoded.graph.location_strides.zero_()
    else:
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.box_head.weight.mul_(-3.0)
            other.cls_head.weight.mul_(-3.0)
        decoded = int8.decode(int8.compress(other, ctx).artifact, poisoned_template(model), ctx)
    rec = _consistency(int8, result, decoded, model, ctx, 1e-4)
    assert rec.status is Status.FAIL and "does not encode the model" in rec.message, rec.message
    assert rec.measured > 0.05


def test_aimet_float_postprocess_leaves_box_decoding_unquantized(tiny_detector):
    """AIMET W8A8 with float_postprocess: the quantizers after the heads (exp, stride, anchor points, the output
    concatenation) are off, so boxes keep their pixel range, and the QDQ ONNX artifact matches QuantSim within the
    method's tolerance; without it one 8-bit output range spans boxes and logits."""
    from nnconform.compress import compressor_class
    from nnconform.compress.base import CompressorUnavailable
    from nnconform.compress.checks import forward
    from nnconform.compress.serialize import poisoned_template

    model, ctx = tiny_detector
    cls = compressor_class("aimet-quant")
    aimet = cls(cls.Config(calibration_samples=16, batch_size=16, float_postprocess=True))
    try:
        result = aimet.compress(model, ctx)
    except CompressorUnavailable as exc:
        pytest.skip(str(exc))
    tail = result.metadata["float_postprocess"]
    assert any("exp" in n for n in tail) and any("cat" in n for n in tail), tail
    assert not any("head" in n for n in tail), tail  # the heads' own outputs stay quantized
    decoded = aimet.decode(result.artifact, poisoned_template(model), ctx)
    rec = _consistency(aimet, result, decoded, model, ctx, aimet.decode_tolerance)
    assert rec.status is Status.PASS, rec.message
    x = ctx.calibration.images[:8]
    boxes_float, boxes_sim = forward(model, x)[..., :4], forward(result.module, x)[..., :4]
    assert float(boxes_sim.max()) > 0.9 * float(boxes_float.max())


# ---------------------------------------------------------------------------------------------
# What the detector codes below the full tier: split.toml [cuts.<anchor>] families, updates.toml [lineage_points]

DET = "fmnist-mosaic-det"


def test_split_cut_families_limit_the_detector_below_the_full_tier():
    from nnconform.split.plan import load_plan
    from nnconform.split.runs import coded_cases

    plan = load_plan()
    listed = set(plan.cut_families[DET])
    default = coded_cases(plan, DET, "default")
    assert {c.point.family for c in default} == listed
    assert {c.cut for c in default} == {"layer1", "smooth5"}
    assert {c.point.family for c in coded_cases(plan, DET, "full")} == set(plan.families)  # full codes every family
    other = coded_cases(plan, "fmnist-lenet5", "default")  # an anchor without a list codes every family
    assert {c.point.family for c in other} == {p.family for p in plan.points_for("default")}


def test_split_cut_families_refuse_an_unknown_family(tmp_path):
    from nnconform.kit.plan import PlanError
    from nnconform.paths import anchors_dir
    from nnconform.split.plan import load_plan

    text = (anchors_dir() / "split.toml").read_text()
    assert 'families = ["raw", "uq-per-tensor"]' in text
    bad = tmp_path / "split.toml"
    bad.write_text(text.replace('families = ["raw", "uq-per-tensor"]', 'families = ["raw", "uq-per-tensr"]'))
    with pytest.raises(PlanError, match=r"cuts.fmnist-mosaic-det.families\[1\]: 'uq-per-tensr' is no family"):
        load_plan(bad)


def _update_plan(tmp_path, lineage_points: str):
    from nnconform import kit
    from nnconform.updates.plan import PLAN_VERSION, parse_plan

    path = tmp_path / "updates.toml"
    path.write_text(f"version = {PLAN_VERSION}\n" + '[pairs]\nquick = ["latest"]\ndefault = ["latest", "span"]\n' + """
[[points]]
codec = "quant"
params = { bits = 8 }
claimed_tier = "99%"
run_tier = "quick"

[[points]]
codec = "quant"
params = { bits = 4 }
claimed_tier = "none"
run_tier = "default"
""" + lineage_points)
    root = kit.read_plan("updates", path, version=PLAN_VERSION,
                         tables=("pairs", "points", "benchmark", "nnc_lineage", "lineage_points"))
    return parse_plan(root, known_lineages={"big": ("e1", "e2", "e3"), "small": ("e1", "e2")})


def test_update_lineage_points_hold_the_others_back_to_full(tmp_path):
    from nnconform.updates.cases import codec_cases
    from nnconform.updates.plan import lineage_pairs

    plan = _update_plan(tmp_path, '\n[lineage_points]\nbig = ["quant-8"]\n')
    tiers = {c.id: c.run_tier for c in codec_cases(plan, lineage_pairs("big", ["e1", "e2", "e3"])
                                                    + lineage_pairs("small", ["e1", "e2"]), evaluates=False)}
    assert tiers["big-e2-e3-quant-8"] == "quick" and tiers["big-e2-e3-quant-4"] == "full"
    assert tiers["small-e1-e2-quant-4"] == "default"  # a lineage without a list keeps every point's tier
    # a listed lineage is held to its latest update below full: its history (intermediate checkpoints, consecutive
    # pairs) runs in full, its latest pair and last two checkpoints as before
    from nnconform.updates.cases import checkpoint_cases, pair_cases

    lineages = {"big": ("e1", "e2", "e3"), "small": ("e1", "e2")}
    ck = {c.id: c.run_tier for c in checkpoint_cases(plan, lineages)}
    assert ck["big-e1"] == "full" and ck["big-e3"] == "quick" and ck["small-e1"] == "quick"
    pairs = {c.id: c.run_tier for c in pair_cases(plan, lineage_pairs("big", ["e1", "e2", "e3"]))}
    assert pairs["big-e2-e3"] == "quick" and pairs["big-e1-e2"] == "full"


@pytest.mark.parametrize("table,match", [
    ('big = ["quant-16"]', r"lineage_points.big\[0\]: 'quant-16' is not an operating point"),
    ('bigg = ["quant-8"]', r"lineage_points.bigg: 'bigg' is not an anchor with a lineage"),
])
def test_update_lineage_points_refuse_unknown_names(tmp_path, table, match):
    from nnconform.kit.plan import PlanError

    with pytest.raises(PlanError, match=match):
        _update_plan(tmp_path, f"\n[lineage_points]\n{table}\n")


def test_resampled_map_is_remembered_by_content_only():
    """The reference's half of every detection bootstrap is computed once: the same scores and draws give the
    stored values; other scores (one detection's match flipped) or other draws are computed afresh."""
    import numpy as np

    from nnconform.tasks import get_task
    from nnconform.tasks.base import SampleScores
    from nnconform.tasks.detection import IOU_THRESHOLDS

    def scores(flip: bool) -> SampleScores:
        tp = [np.ones((2, len(IOU_THRESHOLDS)), bool), np.zeros((1, len(IOU_THRESHOLDS)), bool)]
        if flip:
            tp[1] = ~tp[1]
        obj = lambda xs: np.array(xs + [None], dtype=object)[:-1]  # noqa: E731
        return SampleScores("detection", {"gt_counts": np.array([[2, 0], [0, 1]]),
                                          "det_scores": obj([np.array([0.9, 0.8]), np.array([0.7])]),
                                          "det_labels": obj([np.array([0, 0]), np.array([1])]), "det_tp": obj(tp)})

    task = get_task("detection")
    draws = np.random.default_rng(0).integers(0, 2, size=(64, 2))
    first = task.aggregate_resamples(scores(False), draws)
    calls = []
    real = type(task)._aggregate_resamples

    def counted(self, s, d):
        calls.append(1)
        return real(self, s, d)

    type(task)._aggregate_resamples = counted
    try:
        again = task.aggregate_resamples(scores(False), draws)
        flipped = task.aggregate_resamples(scores(True), draws)
        redrawn = task.aggregate_resamples(scores(False), draws[::-1].copy())
    finally:
        type(task)._aggregate_resamples = real
    assert np.array_equal(first, again, equal_nan=True) and len(calls) == 2
    assert not np.array_equal(first, flipped, equal_nan=True)
    assert np.array_equal(np.sort(redrawn), np.sort(first))
