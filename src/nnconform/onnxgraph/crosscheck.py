"""The ONNX node catalogue against the torch.fx catalogue, on the same model exported to ONNX.

A torch model is exported with the TorchScript exporter keeping every layer as its own node (batch
norm not folded into the convolution before it, so each torch.fx cut has an ONNX tensor to match).
Cuts are matched **by the tensor produced**: one input is run through both graphs, and the fx cut's
boundary tensor is matched to the first ONNX node output holding the same values (same shape, equal
within float rounding). The two catalogues must then agree on what crosses the cut: the same number
of tensors, each with the same values and per-input shape, hence the same bytes per input.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .cuts import NodeCut, node_cuts, shapes_at
from .files import make_session, real_inputs

#: opset of the export (that of :mod:`nnconform.split.onnx_check`)
OPSET = 17
#: values are equal when within this of each other, relative to the larger magnitude when above 1
MATCH_TOLERANCE = 1e-5


def export_onnx(model, input_shape: Sequence[int]):
    """``model`` (eval mode) exported to an ``onnx.ModelProto`` with a symbolic batch, one node per layer
    (``TrainingMode.PRESERVE`` without constant folding keeps BatchNormalization nodes of their own)."""
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros((1, *input_shape)),), buf, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


def all_values(model, x: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """Every input-dependent tensor of ``model`` for input ``x`` (one onnxruntime run)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in inferred.graph.value_info}
    names = []
    for c in node_cuts(model):
        names += [t for t in c.tensors if t not in names]
    probe = onnx.ModelProto()
    probe.CopyFrom(inferred)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(known[n] for n in names if n in known and n not in present)
    session = make_session(probe, threads)
    (inp,) = real_inputs(model)
    wanted = [o.name for o in session.get_outputs()]
    return dict(zip(wanted, session.run(wanted, {inp: x})))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(a))) if a.size else 0.0)
    return bool(np.max(np.abs(a - b)) <= MATCH_TOLERANCE * scale) if a.size else True


@dataclass(frozen=True)
class CutMatch:
    """One torch.fx cut and the ONNX cut that produces the same tensor (``onnx`` is None when none does);
    ``problems`` lists where the two catalogues disagree (empty when they agree)."""

    fx_name: str
    fx_shapes: tuple[tuple[int, ...], ...]
    fx_bytes: int
    onnx: NodeCut | None
    onnx_shapes: tuple[tuple[int, ...] | None, ...]
    onnx_bytes: int | None
    problems: tuple[str, ...]

    @property
    def agrees(self) -> bool:
        """True when a matching ONNX cut crosses the same tensors with the same shapes and bytes."""
        return self.onnx is not None and not self.problems


def match_fx_cuts(graph, onnx_model, *, seed: int = 0, threads: int = 1) -> list[CutMatch]:
    """Match every cut of a traced :class:`~nnconform.split.cuts.SplitGraph` to the ONNX cut producing the same
    tensor, and compare what crosses (values, per-input shapes, bytes per input at the traced size)."""
    import torch

    x = np.random.default_rng(seed).standard_normal((1, *graph.input_shape)).astype(np.float32)
    values = all_values(onnx_model, x, threads)
    cuts = node_cuts(onnx_model)
    sizes = {s.cut.index: s for s in shapes_at(onnx_model, cuts)}
    producer = {}
    for c in cuts:
        for t in c.tensors:
            producer.setdefault(t, c)
    order = [t for c in cuts for t in c.tensors]
    order = list(dict.fromkeys(order))
    fx_cuts = graph.cuts
    with torch.inference_mode():
        _, feats = graph.probe([c.name for c in fx_cuts])(torch.from_numpy(x))
    out = []
    for c in fx_cuts:
        got = feats[c.name]
        tensors = [got] if isinstance(got, torch.Tensor) else list(got)
        arrays = {name: t.numpy() for name, t in zip(c.tensors, tensors)}
        boundary = arrays.get(c.node, tensors[-1].numpy())
        fx_bytes = sum(int(a.size) * a.itemsize for a in arrays.values())
        hit = next((t for t in order if t in values and _same(values[t], boundary)), None)
        if hit is None:
            out.append(CutMatch(c.name, c.shapes, fx_bytes, None, (), None,
                                (f"no ONNX node produces the tensor of fx node {c.node!r}",)))
            continue
        oc = next(k for k in cuts if hit in _outputs(onnx_model, k))
        s = sizes[oc.index]
        onnx_shapes = tuple(None if sh is None else tuple(sh[1:]) for sh in s.shapes)
        problems = []
        if oc.branches != len(arrays):
            problems.append(f"{len(arrays)} tensors cross fx cut {c.name!r}, {oc.branches} cross ONNX node {oc.node!r}")
        if onnx_shapes != tuple(c.shapes):
            problems.append(f"shapes differ: fx {[list(t) for t in c.shapes]}, ONNX {onnx_shapes}")
        if s.bytes_per_input != fx_bytes:
            problems.append(f"bytes per input differ: fx {fx_bytes}, ONNX {s.bytes_per_input}")
        for name, t in zip(oc.tensors, (arrays[n] for n in c.tensors)):
            if not _same(values[name], t):
                problems.append(f"ONNX tensor {name!r} does not hold the values of the fx tensor crossing there")
        out.append(CutMatch(c.name, c.shapes, fx_bytes, oc, onnx_shapes, s.bytes_per_input, tuple(problems)))
    return out


def _outputs(model, cut: NodeCut) -> list[str]:
    return [o for o in model.graph.node[cut.index].output if o]
