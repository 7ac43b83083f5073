"""Parameters and MACs of an ONNX graph, read from the graph itself (no submitted code runs).

An artifact-only submission can be an ONNX graph; torch's flop counter cannot see inside
onnxruntime, so the counts come from the graph: parameters are the elements of its stored weights
(:func:`~nnconform.compress.serialize.onnx_parameter_count`), MACs those of its Conv, ConvTranspose,
Gemm and MatMul nodes for one sample, with tensor shapes from ONNX shape inference (the batch
dimension fixed to 1, or divided out when the graph was exported with a fixed batch). Other nodes (activations, pooling, additions) are not multiply-accumulates
of weights and are not counted, as torch's counter does not count them either.
"""

from __future__ import annotations

import math

#: node types whose multiply-accumulates are counted
COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class OnnxProfileError(ValueError):
    """The graph's MACs cannot be counted; the message names the node and the missing shape."""


def _shapes(model) -> dict[str, tuple[int, ...] | None]:
    """Every tensor's static shape after shape inference (None where a dimension is unknown)."""
    import onnx

    out: dict[str, tuple[int, ...] | None] = {}
    for init in model.graph.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.name in out or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(int(d.dim_value) for d in dims) if all(d.HasField("dim_value") for d in dims) else None
    for node in model.graph.node:  # Constant nodes carry their tensor in an attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = tuple(int(d) for d in onnx.helper.get_attribute_value(attr).dims)
    return out


def _batch_one(model) -> int:
    """Fix a symbolic leading dimension of the real inputs to 1, so inferred shapes are per sample; returns the
    batch a graph exported with a fixed one has (its totals are divided by it)."""
    stored = {i.name for i in model.graph.initializer}
    batch = 1
    for vi in model.graph.input:
        if vi.name in stored or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if not len(dims):
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch = int(dims[0].dim_value)  # fixed at export (reshapes may bake it in): keep it, divide later
        else:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    return batch


def onnx_macs(onnx_bytes: bytes) -> int:
    """Multiply-accumulates of one forward pass (batch 1) of the graph's Conv/ConvTranspose/Gemm/MatMul nodes;
    an :class:`OnnxProfileError` naming the node whose shapes inference could not give."""
    import onnx

    model = onnx.load_from_string(bytes(onnx_bytes))
    batch = _batch_one(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # a graph onnx cannot infer: say so with the node-free message
        raise OnnxProfileError(f"ONNX shape inference failed: {type(exc).__name__}: {exc}") from None
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        name = node.name or f"{node.op_type}->{node.output[0]}"
        a, w, y = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if a is None or w is None or y is None:
            missing = [n for n, s in ((node.input[0], a), (node.input[1], w), (node.output[0], y)) if s is None]
            raise OnnxProfileError(f"node {name!r} ({node.op_type}): no static shape for {', '.join(missing)}")
        if node.op_type == "Conv":
            total += math.prod(y) * math.prod(w[1:])  # each output element: C_in/groups x kernel MACs
        elif node.op_type == "ConvTranspose":
            total += math.prod(a) * math.prod(w[1:])  # each input element scatters C_out/groups x kernel MACs
        elif node.op_type == "Gemm":
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            total += math.prod(y) * (a[0] if trans_a else a[-1])
        else:  # MatMul
            total += math.prod(y) * a[-1]
    if total % batch:
        raise OnnxProfileError(f"the graph's MACs ({total}) at its fixed batch of {batch} are not a multiple of it")
    return int(total // batch)


def onnx_counts(onnx_bytes: bytes) -> tuple[int, int]:
    """``(parameters, MACs)`` of an ONNX graph, both read from the graph."""
    from .serialize import onnx_parameter_count

    return onnx_parameter_count(onnx_bytes), onnx_macs(onnx_bytes)
