"""The ONNX node-level split catalogue: tail(head(x)) equals the full graph at every cut, branches per node
on graphs with known skip connections, and the cross-check with the torch.fx catalogue."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from nnconform.onnxgraph import node_cuts, run_model, shapes_at, split_model, verify_split
from nnconform.onnxgraph.crosscheck import export_onnx, match_fx_cuts
from nnconform.onnxgraph.cuts import find_cut, make_session
from nnconform.split.catalogue import entry

ANCHORS = ["fmnist-lenet5", "fmnist-resnet8"]


@pytest.fixture(scope="module")
def exported():
    """Each embedded anchor (its committed weights) traced with torch.fx and exported to ONNX, once."""
    from nnconform.anchors import get_anchor
    from nnconform.split.cuts import SplitGraph

    out = {}
    for name in ANCHORS:
        anchor = get_anchor(name)
        model = anchor.build()
        out[name] = (model, SplitGraph.trace(model, anchor.input_shape), export_onnx(model, anchor.input_shape))
    return out


@pytest.fixture(scope="module")
def matches(exported):
    """Every fx cut of each anchor matched to its ONNX cut, once."""
    return {name: match_fx_cuts(graph, proto) for name, (_, graph, proto) in exported.items()}


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_tail_of_head_equals_full_model_at_every_cut(exported, anchor_name):
    model, graph, proto = exported[anchor_name]
    x = _x(graph.input_shape)
    full = run_model(make_session(proto), {"input": x})
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(full["output"] - ref)) < 1e-4  # the export computes what the torch model does
    cuts = node_cuts(proto)
    assert len(cuts) >= len(graph.cuts)
    for cut in cuts:
        check = verify_split(proto, cut, {"input": x}, full=full)
        assert check.passed, f"{cut.node}: |tail(head(x)) - model(x)| = {check.max_abs_error} > {check.tolerance}"


def test_a_planted_wrong_tail_fails_the_equality(exported):
    _, graph, proto = exported["fmnist-resnet8"]
    cut = find_cut(node_cuts(proto), "/layer2/relu2/Relu")
    _, tail = split_model(proto, cut)
    init = next(i for i in tail.graph.initializer if i.name.endswith("conv2.weight"))
    weights = onnx.numpy_helper.to_array(init).copy()
    weights.flat[0] += 0.5  # one weight of the tail changed
    init.CopyFrom(onnx.numpy_helper.from_array(weights, init.name))
    check = verify_split(proto, cut, {"input": _x(graph.input_shape)}, tail=tail)
    assert not check.passed and check.max_abs_error > check.tolerance


def test_branches_across_resnet8_residual_blocks(exported):
    _, _, proto = exported["fmnist-resnet8"]
    cuts = {c.node: c for c in node_cuts(proto)}
    inside = cuts["/layer1/conv1/Conv"]  # the block's input waits for the Add: two tensors cross
    assert inside.branches == 2
    assert inside.tensors[1] == "/layer1/conv1/Conv_output_0"
    assert cuts["/layer1/Add"].branches == 1 and cuts["/layer1/relu2/Relu"].branches == 1
    # a downsampling block: the block input (for the shortcut conv) and the shortcut's output
    assert cuts["/layer2/downsample/downsample.0/Conv"].branches == 2
    sizes = {s.cut.node: s for s in shapes_at(proto, list(cuts.values()))}
    assert sizes["/layer2/downsample/downsample.0/Conv"].shapes == ((1, 16, 28, 28), (1, 32, 14, 14))
    assert sizes["/layer2/downsample/downsample.0/Conv"].bytes_per_input == 4 * (16 * 28 * 28 + 32 * 14 * 14)
    assert max(c.branches for c in cuts.values()) == 2


def _graph(nodes, outputs, ir_version=8, opset=17, initializers=(), init_as_inputs=False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    inits = list(initializers)
    inputs = [x] + ([helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
                    if init_as_inputs else [])
    g = helper.make_graph(nodes, "g", inputs, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def test_branches_per_node_on_a_graph_with_known_skips():
    # a = relu(x); b = relu(a); c = b + a; d = neg(c); e = d + x (the graph input is not a branch);
    # outputs c (early, handed on to the end) and f = relu(e)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="A"), helper.make_node("Relu", ["a"], ["b"], name="B"),
             helper.make_node("Add", ["b", "a"], ["c"], name="C"), helper.make_node("Neg", ["c"], ["d"], name="D"),
             helper.make_node("Add", ["d", "x"], ["e"], name="E"), helper.make_node("Relu", ["e"], ["f"], name="F")]
    model = _graph(nodes, ["c", "f"])
    cuts = {c.node: c for c in node_cuts(model)}
    assert {k: v.tensors for k, v in cuts.items()} == {"A": ("a",), "B": ("a", "b"), "C": ("c",), "D": ("c", "d"),
                                                       "E": ("c", "e")}
    assert cuts["A"].tail_inputs == ("x",) and cuts["E"].tail_inputs == ()
    x = _x((4,))
    for cut in cuts.values():
        assert verify_split(model, cut, {"x": x}).passed


def test_constants_are_not_branches_and_old_ir_graphs_split():
    # IR 3 / opset 7 (the model zoo's VGG16 and ResNet50-v1): weights listed as graph inputs too
    w = onnx.numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 10, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "h"], ["y"], name="add")]
    model = _graph(nodes, ["y"], ir_version=3, opset=7, initializers=[w], init_as_inputs=True)
    cuts = node_cuts(model)
    assert [(c.node, c.tensors) for c in cuts] == [("mm", ("h",)), ("relu", ("h", "r"))]
    x = _x((4,))
    for cut in cuts:
        assert verify_split(model, cut, {"x": x}).passed


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_cuts_agree_with_the_torch_fx_catalogue(exported, matches, anchor_name):
    _, graph, _ = exported[anchor_name]
    matched = matches[anchor_name]
    assert len(matched) == len(graph.cuts)
    bad = [f"{m.fx_name}: {m.problems}" for m in matched if not m.agrees]
    assert not bad, bad
    committed = entry(anchor_name)  # anchors/split-catalogue.toml
    by_name = {m.fx_name: m for m in matched}
    for name, shape in committed.single:
        assert by_name[name].onnx.branches == 1
        assert by_name[name].onnx_shapes == (tuple(shape),), name
        assert by_name[name].onnx_bytes == 4 * int(np.prod(shape))
    assert all(by_name[n].onnx.branches >= 2 for n in committed.multi)


def test_shapes_at_other_sizes_agree_with_torch_fx(exported, matches):
    for name, size in (("fmnist-resnet8", (40, 40)), ("fmnist-lenet5", (32, 32))):
        _, graph, proto = exported[name]
        fx = graph.shapes_at((1, *size))
        by_index = {s.cut.index: s for s in shapes_at(proto, node_cuts(proto), size)}
        for m in matches[name]:
            got = tuple(None if s is None else s[1:] for s in by_index[m.onnx.index].shapes)
            if m.fx_name in fx:
                assert got == fx[m.fx_name], (name, m.fx_name)
            else:  # LeNet's first Linear takes 400 features only: torch cannot run there, ONNX gives no shape
                assert None in got, (name, m.fx_name, got)


def test_a_tampered_export_does_not_match_the_fx_catalogue(exported):
    _, graph, proto = exported["fmnist-lenet5"]
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    init = next(i for i in bad.graph.initializer if i.name.endswith("features.3.weight"))
    arr = onnx.numpy_helper.to_array(init) * 1.01
    init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    matches = {m.fx_name: m for m in match_fx_cuts(graph, bad)}
    assert matches["features.0"].agrees  # before the changed layer
    assert not matches["features.3"].agrees and "no ONNX node produces" in matches["features.3"].problems[0]
