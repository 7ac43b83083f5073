"""An ONNX anchor's graph as a split subject of the split criterion (:mod:`nnconform.split`).

:class:`OnnxSplitGraph` offers what the criterion reads from a traced torch graph
(:class:`~nnconform.split.cuts.SplitGraph`): the cuts (here every node cut of :func:`~.cuts.node_cuts`, named
after the node, with the tensors crossing it: TR 26.847's branches per node), their per-sample shapes, sizes at
other input sizes, head and tail callables, a probe that returns the model's output and the tensors at several
cuts from one pass, and each cut's head/tail MACs and parameters. Heads and tails are cut with
``onnx.utils.Extractor`` (:func:`~.cuts.split_model`) and run in onnxruntime without graph optimisations, as the
anchor's whole graph runs (:data:`~nnconform.onnxgraph.anchor.OPTIMIZATION`), so ``tail(head(x))`` is
bit-identical to the model; :meth:`OnnxSplitGraph.verify_optimized` also compares them with every onnxruntime
optimisation on (within :data:`~.cuts.SPLIT_TOLERANCE`).

A cut is named after its node, with a path-like name (``/layer2/relu2/Relu``, as torch's exporter names
nodes) written with dots (``layer2.relu2.Relu``): record subjects and case ids join anchor, cut and codec
with ``/``. The node's own name stays in :attr:`~nnconform.split.cuts.CutPoint.node`.

A cut is catalogued when inference gives every crossing tensor's shape at the anchor's input size and its tail
reads no graph input; others are left out (the node table, :mod:`.table`, lists them all).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Iterable, Sequence

import numpy as np
import torch

from ..split.cuts import CutCatalogue, CutPoint, SplitTraceError
from .cuts import NodeCut, find_cut, node_cuts, prepare, shapes_at, split_model, verify_split
from .files import real_inputs

OPTIMIZATION = "disable_all"


def _session(model, optimization: str = OPTIMIZATION):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.graph_optimization_level = {"disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return ort.InferenceSession(bytes(data), sess_options=opts, providers=["CPUExecutionProvider"])


def _numpy_dtype(onnx_dtype: str) -> str:
    import onnx

    code = getattr(onnx.TensorProto, onnx_dtype.upper(), None)
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code))) if code is not None else onnx_dtype


class _Runner:
    """A graph in onnxruntime behind a torch call: torch tensors in (batch first), torch tensors out; a graph with
    a fixed batch of one runs sample by sample."""

    def __init__(self, model, outputs: Sequence[str] | None = None) -> None:
        self.session = _session(model)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = list(outputs) if outputs is not None else [o.name for o in self.session.get_outputs()]
        first = self.session.get_inputs()[0].shape
        self.batch_one = bool(first) and first[0] == 1

    def __call__(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        if len(xs) != len(self.inputs):
            raise ValueError(f"the graph takes {len(self.inputs)} inputs {self.inputs}, got {len(xs)}")
        arrays = [x.detach().cpu().float().contiguous().numpy() for x in xs]
        if self.batch_one and arrays[0].shape[0] != 1:
            runs = [self.session.run(self.outputs, {n: a[i:i + 1] for n, a in zip(self.inputs, arrays)})
                    for i in range(arrays[0].shape[0])]
            return [torch.from_numpy(np.concatenate([r[k] for r in runs])) for k in range(len(self.outputs))]
        got = self.session.run(self.outputs, dict(zip(self.inputs, arrays)))
        return [torch.from_numpy(np.ascontiguousarray(g)) for g in got]


class OnnxSplitGraph(CutCatalogue):
    """The node cuts of an ONNX graph, as the split criterion reads a traced graph (module docstring)."""

    #: ``tail(head(x))`` is expected bit-identical to the model (no optimisation on either side)
    exact = True

    def __init__(self, model, input_shape: Sequence[int]) -> None:
        self.model = prepare(model)
        self.input_shape = tuple(int(d) for d in input_shape)
        (self.input_name,) = real_inputs(self.model)[:1]
        self.node_cuts = [c for c in node_cuts(self.model) if not c.tail_inputs]
        self._cuts: list[CutPoint] = []
        for sizes in shapes_at(self.model, self.node_cuts, self.input_shape[1:]):
            if any(s is None for s in sizes.shapes) or not sizes.cut.tensors:
                continue
            self._cuts.append(CutPoint(
                name=cut_name(sizes.cut.node), index=len(self._cuts), node=sizes.cut.node, tensors=sizes.cut.tensors,
                shapes=tuple(tuple(s[1:]) for s in sizes.shapes), dtypes=tuple(_numpy_dtype(d) for d in sizes.dtypes)))
        if not self._cuts:
            raise SplitTraceError("the ONNX graph has no node cut whose crossing tensors have inferred shapes")
        names = [c.name for c in self._cuts]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise SplitTraceError(f"ONNX nodes whose cut names coincide once '/' is written '.': {clash}")
        self._by_name = {c.name: c for c in self._cuts}
        #: what a cut's name may stand for (check_catalogue): the cut names and the graph's node names
        self.node_names = set(names) | {n.name for n in self.model.graph.node if n.name}

    @classmethod
    def from_module(cls, module, input_shape: Sequence[int]) -> "OnnxSplitGraph":
        """The graph of an :class:`~nnconform.onnxgraph.anchor.OnnxAnchorModule` (the bytes it holds)."""
        import onnx

        return cls(onnx.load_from_string(module.onnx_bytes.numpy().tobytes()), input_shape)

    # -- the catalogue -------------------------------------------------------------------------

    def _graph_label(self) -> str:
        return "the ONNX graph"

    def _node_cut(self, name: str) -> NodeCut:
        return find_cut(self.node_cuts, self.cut(name).node)

    def shapes_at(self, input_shape: Sequence[int]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Per-sample shapes of every cut's tensors for an input of ``input_shape`` ([C, H, W]); a cut whose shapes
        inference cannot give at that size (a fixed-size Gemm after the convolutions) is left out."""
        names = {c.node: c.name for c in self._cuts}
        out = {}
        for sizes in shapes_at(self.model, [c for c in self.node_cuts if c.node in names], tuple(input_shape)[1:]):
            if all(s is not None for s in sizes.shapes):
                out[names[sizes.cut.node]] = tuple(tuple(s[1:]) for s in sizes.shapes)
        return out

    # -- heads, tails, probes ------------------------------------------------------------------

    @functools.lru_cache(maxsize=None)
    def _parts(self, name: str):
        return split_model(self.model, self._node_cut(name))

    @functools.lru_cache(maxsize=None)
    def _runners(self, name: str) -> tuple[_Runner, _Runner]:
        head, tail = self._parts(name)
        return _Runner(head, list(self.cut(name).tensors)), _Runner(tail)

    def head(self, name: str):
        """``x -> tensor`` (one crossing tensor) or a tuple of them, in onnxruntime."""
        runner = self._runners(name)[0]

        def head(x: torch.Tensor):
            out = runner(x)
            return out[0] if len(out) == 1 else tuple(out)

        return head

    def tail(self, name: str):
        """``*tensors -> output`` (the graph's first output), in onnxruntime."""
        runner = self._runners(name)[1]
        return lambda *tensors: runner(*tensors)[0]

    def split(self, name: str):
        """``(head, tail)`` of one cut."""
        return self.head(name), self.tail(name)

    def probe(self, names: Iterable[str]):
        """``x -> (output, {cut: tensor or tuple})``: the whole graph with the cuts' tensors added as outputs, one
        onnxruntime pass per batch."""
        names = list(dict.fromkeys(names))
        tensors = list(dict.fromkeys(t for n in names for t in self.cut(n).tensors))
        model = copy.deepcopy(self.model)
        import onnx

        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        known = {vi.name: vi for vi in inferred.graph.value_info}
        present = {o.name for o in model.graph.output}
        for t in tensors:
            if t not in present:
                model.graph.output.append(known.get(t) or onnx.helper.make_empty_tensor_value_info(t))
        first = self.model.graph.output[0].name
        runner = _Runner(model, [first] + tensors)

        def probe(x: torch.Tensor):
            out = dict(zip([first] + tensors, runner(x)))
            feats = {}
            for n in names:
                ts = tuple(out[t] for t in self.cut(n).tensors)
                feats[n] = ts[0] if len(ts) == 1 else ts
            return out[first], feats

        return probe

    # -- costs -----------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """``(parameters, MACs)`` of the whole graph (counted from it)."""
        from .anchor import counts_at

        return counts_at(self.model, {None: (1, *self.input_shape)})

    def profiles(self):
        """Head and tail MACs and parameters of every cut, counted from the cut graphs; weights both sides read are
        ``shared_params``."""
        from ..compress.serialize import onnx_parameter_count
        from ..split.features import CutProfile
        from .anchor import counts_at

        out = {}
        for c in self._cuts:
            head, tail = self._parts(c.name)
            # every input fixed to its shape at the anchor's input size (batch 1), so inference gives every shape
            hp, hm = counts_at(head, {self.input_name: (1, *self.input_shape)})
            tp, tm = counts_at(tail, {t: (1, *s) for t, s in zip(c.tensors, c.shapes)})
            both = {i.name for i in head.graph.initializer} & {i.name for i in tail.graph.initializer}
            shared = onnx_parameter_count(_with_initializers(head, both)) if both else 0
            out[c.name] = CutProfile(head_macs=hm, tail_macs=tm, head_params=hp, tail_params=tp, shared_params=shared)
        return out

    # -- checks ----------------------------------------------------------------------------------

    def verify_optimized(self, name: str, x: torch.Tensor):
        """:func:`~.cuts.verify_split` at one cut with onnxruntime's optimisations on (a
        :class:`~.cuts.SplitCheck`)."""
        return verify_split(self.model, self._node_cut(name),
                            {self.input_name: x.detach().cpu().float().numpy()}, threads=max(1, torch.get_num_threads()))


def cut_name(node: str) -> str:
    """A cut's name from its node's: a path-like name (``/layer2/relu2/Relu``) written with dots
    (``layer2.relu2.Relu``), any other name as it is (TR 26.847's ``vgg0_conv2_fwd``)."""
    return node.strip("/").replace("/", ".") if "/" in node else node


def _with_initializers(model, names: set[str]) -> bytes:
    """A graph holding only the initializers ``names`` of ``model`` (what :func:`onnx_parameter_count` reads)."""
    import onnx

    graph = onnx.helper.make_graph([], "shared", [], [], [i for i in model.graph.initializer if i.name in names])
    return onnx.helper.make_model(graph).SerializeToString()


def numel(shapes: Sequence[Sequence[int]]) -> int:
    """Elements of several shapes together."""
    return sum(math.prod(s) for s in shapes)
