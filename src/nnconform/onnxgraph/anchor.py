"""ONNX anchors in the criteria: an ONNX file as an :class:`~nnconform.anchors.Anchor` of family ``onnx``.

A classification ONNX anchor of ``anchors/onnx.toml`` with documented parameters and MACs (``num_params``,
``macs``) takes part in the anchors and split criteria like a torch anchor: its weights source is
``onnx:<name>`` (the file, pinned by sha256), its "architecture" builds :class:`OnnxAnchorModule`, an
``nn.Module`` that runs the verified graph in onnxruntime (CPU provider, batch by batch), so the evaluation
engine, tasks, caches and gates read its outputs as any model's. Its split cuts are the graph's node cuts
(:mod:`nnconform.onnxgraph.splitgraph`). Compression and updates do not take ONNX anchors (no plan names
them; an ONNX file has no lineage).

Errors map onto the anchors module's: an absent file is :class:`~nnconform.anchors.WeightsUnavailable` (the
case skips with the exact file, folder and URL), a wrong sha256, size or unreadable graph is
:class:`~nnconform.anchors.WeightsIntegrityError` (its cases fail naming the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..compress.serialize import OnnxModule

#: The prefix of an ONNX anchor's weights source in an :class:`~nnconform.anchors.Anchor`.
SOURCE_PREFIX = "onnx:"
#: The callable an ONNX anchor's ``architecture`` names.
ARCHITECTURE = "nnconform.onnxgraph.anchor:onnx_anchor_module"
#: onnxruntime's graph optimisation level for ONNX anchors: none, so a head and tail cut from the graph run
#: the very kernels the whole graph runs (fusions across a cut would move float rounding) and
#: ``tail(head(x))`` is bit-identical to the model.
OPTIMIZATION = "disable_all"

class OnnxAnchorModule(OnnxModule):
    """The verified graph of an ONNX anchor in onnxruntime. A graph exported with a fixed batch of one (the
    ONNX model zoo's VGG16: ``[1, 3, 224, 224]``) is run one sample at a time, so any batch can be evaluated."""

    def __init__(self, onnx_bytes: bytes, input_name: str | None = None, optimization: str = OPTIMIZATION) -> None:
        super().__init__(onnx_bytes, input_name, optimization)
        self.fixed_batch = fixed_batch(onnx_bytes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's first output for the batch ``x`` (float32)."""
        if self.fixed_batch is None or self.fixed_batch == x.shape[0]:
            return super().forward(x)
        if self.fixed_batch != 1:
            raise ValueError(f"the ONNX graph takes batches of exactly {self.fixed_batch}, got {x.shape[0]}")
        return torch.cat([super(OnnxAnchorModule, self).forward(x[i:i + 1]) for i in range(x.shape[0])])

    def __deepcopy__(self, memo):
        return OnnxAnchorModule(self.onnx_bytes.numpy().tobytes(), self._input_name, self._optimization)

def fixed_batch(onnx_bytes: bytes) -> int | None:
    """The fixed leading dimension of the graph's first real input, or None when it is symbolic."""
    import onnx

    from .files import real_inputs

    model = onnx.load_from_string(bytes(onnx_bytes))
    name = real_inputs(model)[0]
    (vi,) = [i for i in model.graph.input if i.name == name]
    dims = vi.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None

def anchor_file(name: str, data_dir: str | Path | None = None) -> Path:
    """Where an ONNX anchor's file is read from: under the anchors folder for an embedded one, else
    :meth:`~nnconform.onnxgraph.manifest.OnnxAnchor.path`."""
    from .manifest import get_onnx_anchor

    return get_onnx_anchor(name).path(data_dir)

def load_verified(name: str):
    """The anchor's :class:`~nnconform.onnxgraph.files.OnnxFile` (size, sha256 and graph checked), with the
    ONNX errors turned into the anchors module's (absent: a skip; anything else wrong: a failure)."""
    from ..anchors import WeightsIntegrityError, WeightsUnavailable
    from .files import OnnxFileError, OnnxUnavailable
    from .manifest import get_onnx_anchor

    try:
        return get_onnx_anchor(name).load()
    except OnnxUnavailable as exc:
        raise WeightsUnavailable(str(exc)) from None
    except OnnxFileError as exc:
        raise WeightsIntegrityError(f"{name}: {exc}") from None

def onnx_anchor_module(anchor: str) -> OnnxAnchorModule:
    """The ``architecture`` of an ONNX anchor: its verified graph behind an ``nn.Module`` (eval mode)."""
    onnx_file = load_verified(anchor)
    return OnnxAnchorModule(onnx_file.model.SerializeToString()).eval()

def graph_counts(anchor: str) -> tuple[int, int]:
    """``(parameters, MACs)`` of the anchor's verified graph at its input shape, counted from the graph."""
    from .manifest import get_onnx_anchor

    return counts_at(load_verified(anchor).model, {None: (1, *get_onnx_anchor(anchor).input_shape)})


def counts_at(model, input_shapes) -> tuple[int, int]:
    """``(parameters, MACs)`` of ``model`` (:func:`nnconform.compress.onnx_profile.onnx_counts`) with its real inputs
    fixed to ``input_shapes`` (name -> full shape; the key ``None`` stands for the only input): a graph exported
    with symbolic spatial axes has no MACs until its input size is chosen."""
    import copy

    from ..compress.onnx_profile import onnx_counts
    from .files import real_inputs

    model = copy.deepcopy(model)
    names = real_inputs(model)
    for vi in model.graph.input:
        if vi.name not in names:
            continue
        shape = input_shapes.get(vi.name, input_shapes.get(None) if len(names) == 1 else None)
        if shape is None:
            raise ValueError(f"no shape given for the graph input {vi.name!r} (given: {sorted(map(str, input_shapes))})")
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)
    del model.graph.value_info[:]  # inferred again at the fixed size
    for o in model.graph.output:
        if o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.ClearField("shape")
    return onnx_counts(model.SerializeToString())

def to_anchor(onnx_anchor, manifest_dir: Path):
    """The :class:`~nnconform.anchors.Anchor` of an ONNX anchor that takes part in the criteria."""
    from ..anchors import Anchor

    return Anchor(
        name=onnx_anchor.name, family="onnx", architecture=ARCHITECTURE, weights=SOURCE_PREFIX + onnx_anchor.name,
        sha256=onnx_anchor.sha256, dataset=onnx_anchor.dataset, input_shape=tuple(onnx_anchor.input_shape),
        num_classes=onnx_anchor.num_classes, preprocess=onnx_anchor.preprocess, metrics=dict(onnx_anchor.metrics),
        tolerance=onnx_anchor.tolerance, num_params=onnx_anchor.num_params, macs=onnx_anchor.macs,
        license=onnx_anchor.license, provenance=onnx_anchor.provenance, default=onnx_anchor.default,
        architecture_kwargs={"anchor": onnx_anchor.name}, manifest=onnx_anchor.manifest, task=onnx_anchor.task)

