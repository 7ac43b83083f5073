"""Parameters and MACs of a submitted ONNX graph come from the graph (issue 11 item 7): an artifact-only
ONNX submission reports no counts, and profiling it used to crash outside ``run_case``'s error handling."""

from __future__ import annotations

import io

import pytest
import torch

from nnconform.anchors import get_anchor
from nnconform.compress.base import Artifact, CompressedModel
from nnconform.compress.onnx_profile import OnnxProfileError, onnx_counts, onnx_macs
from nnconform.compress.runner import _counts
from nnconform.compress.serialize import OnnxModule
from nnconform.profile import count_macs, count_params


@pytest.fixture(scope="module")
def lenet5():
    anchor = get_anchor("fmnist-lenet5")
    return anchor.build(None).eval(), tuple(anchor.input_shape)


def export(model: torch.nn.Module, shape: tuple[int, ...], dynamic: bool = True) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(2, *shape),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None)
    return buf.getvalue()


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "batch-2"])
def test_exported_lenet5_counts_match_torch(lenet5, dynamic):
    """The graph's parameters and per-sample MACs equal torch's counts of the model it was exported from."""
    model, shape = lenet5
    params, macs = onnx_counts(export(model, shape, dynamic))
    assert params == count_params(model)
    assert macs == count_macs(model, shape) > 0


def test_an_artifact_only_onnx_graph_is_profiled_from_the_graph(lenet5):
    """The path that crashed: a decoded ONNX graph whose method reported no params/MACs."""
    model, shape = lenet5
    data = export(model, shape)
    result = CompressedModel(None, Artifact({"model.onnx": data}, "onnx"), len(data))
    params, macs, source = _counts(OnnxModule(data), result, shape)
    assert (params, macs) == (count_params(model), count_macs(model, shape))
    assert "ONNX graph" in source


def test_a_graph_without_static_shapes_is_refused_naming_the_node():
    """A MatMul whose operand shape cannot be inferred is an error naming the node, never a guess."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, ["k", "m"])  # an input, not a stored weight
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x, w], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    with pytest.raises(OnnxProfileError, match="node 'mm' \\(MatMul\\): no static shape"):
        onnx_macs(data)
