"""The node-level split catalogue of an ONNX graph (TR 26.847 scenario 2).

Every node of the graph, in the file's (topological) order, is a candidate cut: the head is that node
and every node before it, the tail the rest. What crosses the cut is the set of tensors produced at or
before the node and consumed after it (or returned by the graph): TR 26.847's "branches per node".
Graph inputs are not counted (the tail is handed them separately when a later node reads them), nor
are values that do not depend on the input (weights, ``Constant`` nodes, shapes of initializers): the
tail recomputes those itself. A cut whose tail would hold no computation is not a candidate.

Shapes are read from ONNX shape inference with the input fixed to one size at a time (a symbolic
batch set to 1), so a table can show the intermediate data at every input size a test condition
runs; a tensor whose shape inference cannot give at a size (a fixed-size ``Gemm`` after the
convolutions) is ``None`` there. Heads and tails are cut with ``onnx.utils.Extractor``, the class
behind ``onnx.utils.extract_model``, which takes several tensors on either side of a cut.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .files import make_session, real_inputs, run_model

class OnnxSplitError(RuntimeError):
    """A graph cannot be cut as asked (unknown node, a tensor without inferred type); names the node."""


@dataclass(frozen=True)
class NodeCut:
    """One candidate cut: after node ``node`` (its index in the graph), with the tensors that cross it
    in the order they are produced, and the graph inputs the tail reads as well (not branches)."""

    index: int
    node: str
    op_type: str
    tensors: tuple[str, ...]
    tail_inputs: tuple[str, ...] = ()

    @property
    def branches(self) -> int:
        """How many tensors cross the cut (TR 26.847's branches per node)."""
        return len(self.tensors)


@dataclass(frozen=True)
class CutSizes:
    """The crossing tensors of one cut at one input size: per-input shapes (``None`` where inference
    cannot give one), element type names and bytes per input (``None`` if any shape is unknown)."""

    cut: NodeCut
    size: tuple[int, ...] | None
    shapes: tuple[tuple[int, ...] | None, ...]
    dtypes: tuple[str, ...]

    @property
    def bytes_per_input(self) -> int | None:
        """Bytes of every crossing tensor for one input (the intermediate data size)."""
        if any(s is None for s in self.shapes):
            return None
        return sum(math.prod(s) * _itemsize(d) for s, d in zip(self.shapes, self.dtypes))


def _itemsize(dtype: str) -> int:
    import onnx

    code = getattr(onnx.TensorProto, dtype.upper(), None)
    if code is None:
        raise OnnxSplitError(f"a crossing tensor has element type {dtype!r}, whose size is unknown")
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)).itemsize)


def node_label(node, index: int) -> str:
    """A node's name, or ``<op_type>#<index>`` when the exporter left it unnamed."""
    return node.name or f"{node.op_type}#{index}"


def _node_reads(node) -> list[str]:
    """Every tensor a node reads: its inputs and the outer-scope names its subgraphs use."""
    import onnx

    names = [i for i in node.input if i]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names += [i for i in _node_reads(n) if i not in local]
            names += [o.name for o in g.output if o.name not in local]
    return names


def prepare(model):
    """A copy of ``model`` that can be cut: IR < 4 graphs list their weights as inputs too, which a cut
    graph cannot (its inputs are the crossing tensors), so those entries are dropped and the IR raised
    to 4, the first version where initializers need not be inputs."""
    model = copy.deepcopy(model)
    stored = {i.name for i in model.graph.initializer}
    if any(i.name in stored for i in model.graph.input):
        keep = [i for i in model.graph.input if i.name not in stored]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return model


def node_cuts(model) -> list[NodeCut]:
    """Every candidate cut of ``model``'s graph, in node order (see the module docstring)."""
    nodes = list(model.graph.node)
    inputs = set(real_inputs(model))
    data: set[str] = set(inputs)  # values that depend on the input
    produced: dict[str, int] = {}
    last_use: dict[str, float] = {}
    for k, node in enumerate(nodes):
        reads = _node_reads(node)
        for name in reads:
            last_use[name] = max(last_use.get(name, -1), k)
        if any(r in data for r in reads):
            data.update(o for o in node.output if o)
        for o in node.output:
            if o:
                produced[o] = k
    for o in model.graph.output:
        last_use[o.name] = math.inf  # a graph output is handed on to the end
    last_data = max((produced[t] for t in data if t in produced), default=-1)
    cuts = []
    for k, node in enumerate(nodes):
        if k >= last_data or not any(o in data for o in node.output):
            continue  # the tail would compute nothing, or the node only computes constants
        tensors = tuple(sorted((t for t in data if t in produced and produced[t] <= k < last_use.get(t, -1)),
                               key=lambda t: (produced[t], t)))
        tail_inputs = tuple(i for i in sorted(inputs) if last_use.get(i, -1) > k)
        cuts.append(NodeCut(k, node_label(node, k), node.op_type, tensors, tail_inputs))
    return cuts


def find_cut(cuts: Sequence[NodeCut], node: str) -> NodeCut:
    """The cut after node ``node``; an :class:`OnnxSplitError` with close names otherwise."""
    for c in cuts:
        if c.node == node:
            return c
    import difflib

    close = difflib.get_close_matches(node, [c.node for c in cuts], n=3)
    raise OnnxSplitError(f"no cut after a node named {node!r}" + (f"; did you mean {close}?" if close else ""))


def with_input_size(model, size: Sequence[int] | None = None):
    """A copy of ``model`` whose real inputs have batch 1 (a symbolic batch fixed) and, when ``size`` is given,
    those spatial dimensions (the last ``len(size)`` ones); old inferred shapes are dropped."""
    model = copy.deepcopy(model)
    names = set(real_inputs(model))
    for vi in model.graph.input:
        if vi.name not in names or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
        if size is not None:
            if len(size) > len(dims) - 1:
                raise OnnxSplitError(f"input {vi.name!r} has {len(dims)} dimensions; size {list(size)} does not fit")
            for d, v in zip(dims[len(dims) - len(size):], size):
                d.dim_value = int(v)
    del model.graph.value_info[:]
    for o in model.graph.output:  # an exporter's recorded output shape would pin the old size
        if o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.ClearField("shape")
    return model


def _inferred(model) -> dict[str, tuple[tuple[int, ...] | None, str]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    out = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "undefined"
        shape = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        out[vi.name] = (shape, dtype)
    return out


def shapes_at(model, cuts: Iterable[NodeCut], size: Sequence[int] | None = None) -> list[CutSizes]:
    """The crossing tensors' shapes (batch 1) and bytes per input of every cut at input ``size``."""
    info = _inferred(with_input_size(model, size))
    out = []
    for c in cuts:
        shapes = tuple(info.get(t, (None, "float"))[0] for t in c.tensors)
        dtypes = tuple(info.get(t, (None, "float"))[1] for t in c.tensors)
        out.append(CutSizes(c, tuple(size) if size is not None else None, shapes, dtypes))
    return out


def split_model(model, cut: NodeCut):
    """``(head, tail)`` graphs of ``cut``: the head maps the real inputs to the crossing tensors, the tail
    the crossing tensors (and any graph input it reads) to the graph's outputs."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.shape_inference.infer_shapes(prepare(model), strict_mode=False)  # Extractor reads value_info
    try:
        extractor = Extractor(model)
        head = extractor.extract_model(real_inputs(model), list(cut.tensors))
        tail = extractor.extract_model(list(cut.tensors) + list(cut.tail_inputs),
                                       [o.name for o in model.graph.output])
    except (KeyError, ValueError) as exc:
        raise OnnxSplitError(f"cut after {cut.node!r}: shape inference gave no type for a crossing tensor ({exc}); "
                             "the graph cannot be cut there") from None
    for part, label in ((head, "head"), (tail, "tail")):
        part.graph.name = f"{model.graph.name or 'graph'}_{label}_{cut.index}"
        try:
            onnx.checker.check_model(part)
        except Exception as exc:
            raise OnnxSplitError(f"cut after {cut.node!r}: the {label} is not a valid graph: {exc}") from None
    return head, tail


def run_split(model, cut: NodeCut, inputs: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """``tail(head(x))``: run the head, hand its crossing tensors (and the graph inputs the tail reads) to the
    tail, and return the tail's outputs by name."""
    head, tail = split_model(model, cut)
    features = run_model(make_session(head, threads), {k: v for k, v in inputs.items()
                                                       if k in {i.name for i in head.graph.input}})
    feed = {**features, **{k: inputs[k] for k in cut.tail_inputs}}
    return run_model(make_session(tail, threads), feed)


#: ``tail(head(x))`` must equal the full graph within this, relative to the output's largest magnitude when
#: above 1 (onnxruntime may fuse nodes differently on either side of a cut, which moves float rounding).
SPLIT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SplitCheck:
    """``tail(head(x))`` against the full graph at one cut: largest difference over every output."""

    cut: NodeCut
    max_abs_error: float
    scale: float

    @property
    def tolerance(self) -> float:
        """The allowed difference: :data:`SPLIT_TOLERANCE` x max(1, largest |output|)."""
        return SPLIT_TOLERANCE * max(1.0, self.scale)

    @property
    def passed(self) -> bool:
        """True when the split graph reproduces the full one within :attr:`tolerance`."""
        return self.max_abs_error <= self.tolerance


def verify_split(model, cut: NodeCut, inputs: dict[str, np.ndarray], *, full: dict[str, np.ndarray] | None = None,
                 tail=None, threads: int = 1) -> SplitCheck:
    """Compare ``tail(head(x))`` with the full graph's outputs (``full``: computed here when not given;
    ``tail``: another tail graph to hand the head's tensors to, which is how a self-test plants a bad one)."""
    if full is None:
        full = run_model(make_session(model, threads), inputs)
    if tail is None:
        got = run_split(model, cut, inputs, threads)
    else:
        head, _ = split_model(model, cut)
        head_inputs = {i.name for i in head.graph.input}
        features = run_model(make_session(head, threads), {k: v for k, v in inputs.items() if k in head_inputs})
        got = run_model(make_session(tail, threads), {**features, **{k: inputs[k] for k in cut.tail_inputs}})
    if set(got) != set(full):
        raise OnnxSplitError(f"cut after {cut.node!r}: the split graph returns {sorted(got)}, "
                             f"the full one {sorted(full)}")
    err = max(float(np.max(np.abs(got[k].astype(np.float64) - full[k]))) if full[k].size else 0.0 for k in full)
    scale = max(float(np.max(np.abs(full[k]))) if full[k].size else 0.0 for k in full)
    return SplitCheck(cut, err, scale)
