"""Self-tests of the TR 26.847 node table and input-size scaling table: the bytes equal numel x itemsize of the real
tensors (the detector's FPN levels at several canvas sizes, a residual block's two branches), a wrong table fails its
gate naming the node, and the report renders both tables and the joint-coding comparison."""

from __future__ import annotations

import json

import pytest
import torch

from nnconform.records import Status
from nnconform.split import SplitGraph, run_study
from nnconform.split import node_table as nt
from nnconform.split.joint import joint_records
from nnconform.split.plan import SplitPoint
from nnconform.split.runs import torch_threads
from nnconform.zoo import build_architecture


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def detector():
    from nnconform.anchors import get_anchor

    anchor = get_anchor("fmnist-mosaic-det")
    torch.manual_seed(0)
    return SplitGraph.trace(anchor.build_architecture().eval(), anchor.input_shape)


@pytest.fixture(scope="module")
def resnet8():
    torch.manual_seed(0)
    return SplitGraph.trace(build_architecture("resnet8").eval(), (1, 28, 28))


def _real_bytes(graph, cut, size):
    x = torch.randn((1, *nt.scaled_input_shape(graph.input_shape, size)))
    with torch.inference_mode():
        out = graph.head(cut)(x)
    return [(list(t.shape[1:]), t[0].numel() * t.element_size()) for t in (out if isinstance(out, tuple) else (out,))]


def test_detector_fpn_scaling_bytes_are_numel_times_itemsize(detector):
    """At 96, 128 and 192 px canvases the FPN cut's three levels are listed with the shapes and bytes the head really
    hands over; the stride-8/16/32 levels scale with the canvas area."""
    table = nt.node_table(detector, [96, 128, 192], ["smooth5", "layer1"])
    for size in (96, 128, 192):
        entry = table["scaling"]["smooth5"][str(size)]
        assert [(t["shape"], t["bytes"]) for t in entry["tensors"]] == _real_bytes(detector, "smooth5", size)
        assert entry["bytes"] == sum(t["bytes"] for t in entry["tensors"])
        assert [t["shape"][-1] for t in entry["tensors"]] == [size // 4, size // 8, size // 16]
    assert table["scaling"]["smooth5"]["192"]["bytes"] == 4 * table["scaling"]["smooth5"]["96"]["bytes"]
    smooth5 = next(n for n in table["nodes"] if n["node"] == "smooth5")
    assert smooth5["branches"] == 3 and smooth5["bytes"] == table["scaling"]["smooth5"]["96"]["bytes"]
    assert nt.table_problems(detector, table) == []


def test_every_node_lists_each_branch(resnet8):
    """Every node of the table (skip cuts included) lists each crossing tensor with its real shape and bytes."""
    table = nt.node_table(resnet8, [28, 56], ["layer2.relu1"])
    assert len(table["nodes"]) == len(resnet8.cuts)
    for node in table["nodes"]:
        assert node["branches"] == len(node["tensors"]) == resnet8.cut(node["node"]).num_tensors
        assert [(t["shape"], t["bytes"]) for t in node["tensors"]] == _real_bytes(resnet8, node["node"], 28)
    skip = next(n for n in table["nodes"] if n["node"] == "layer2.relu1")
    assert skip["branches"] == 2 and skip["bytes"] == 2 * 32 * 14 * 14 * 4


def test_wrong_table_fails_the_gate_naming_the_node(resnet8, monkeypatch):
    good = nt.check_node_table("t", resnet8, [28, 56], ["layer2"], trained=False)
    assert good.passed and good.status == Status.PASS, good.message
    real = nt.node_table

    def tampered(*args, **kwargs):
        table = real(*args, **kwargs)
        table["nodes"][3]["tensors"][0]["bytes"] += 4  # one element too many
        table["scaling"]["layer2"]["56"]["tensors"][0]["shape"][1] = 14  # the 28 px shape at 56 px
        return table

    monkeypatch.setattr(nt, "node_table", tampered)
    bad = nt.check_node_table("t", resnet8, [28, 56], ["layer2"], trained=False)
    assert not bad.passed and bad.status == Status.FAIL
    node = resnet8.cuts[3].name
    assert f"{node} @input [1, 28, 28] tensor 0" in bad.message and "layer2 @56 tensor 0" in bad.message


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="'complex7'"):
        nt.itemsize("complex7")


def test_report_renders_node_tables_and_joint_comparison(resnet8, tmp_path):
    """The split section shows the node table (each branch of a multi-tensor node), the scaling table and the joint
    vs per-tensor table with its BD-rate; the records survive JSON (results.json)."""
    from nnconform.report import ReportContext
    from nnconform.report.split import split_section

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn((8, 1, 28, 28), generator=g), torch.randint(0, 10, (8,), generator=g))]
    points = [SplitPoint(label=f"uq{b}", family="uq", codec="uniform", params={"bits": b}) for b in (8, 4, 2)]
    study = run_study("t", resnet8, data, coded={"layer2.relu1": points})
    records = [nt.check_node_table("t", resnet8, [28, 56], ["layer2", "layer2.relu1"], trained=False),
               *joint_records("t", "layer2.relu1", study)]
    for r in records:
        json.dumps(r.details)
    md = split_section(ReportContext(records, tmp_path, session=None))
    assert "#### t: TR 26.847 node table" in md
    assert "| layer2.relu1 | 2 |  |" in md and "|  | branch 2 | layer2_relu1 | 32x14x14 | float32 | 25,088 |" in md
    assert "| layer2 | 1 | layer2_relu2 | 25,088 | 100,352 |" in md
    assert "@28px" in md and "@56px" in md and "32x28x28: 100,352" in md
    assert "#### t / layer2.relu1: 2 tensors coded per tensor and jointly" in md
    assert "BD-rate of joint against per-tensor coding" in md
    assert (tmp_path / "split" / "joint-t-layer2.relu1.png").exists()
