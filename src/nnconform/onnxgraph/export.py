"""The embedded ONNX anchors: torch zoo anchors exported to ONNX by a committed, deterministic recipe.

``python -m nnconform.onnxgraph export [--into DIR] [--check]`` writes each recipe's file (the verified
torch weights, ``torch.onnx.export`` with the TorchScript exporter, a fixed opset, constant folding, a
symbolic batch and spatial axes (the node table runs
other input sizes) and no exporter metadata that varies between runs). ``anchors/onnx.toml`` pins the
committed file by sha256 and size; ``--check`` exports into a temporary folder and compares bytes.
Exporting twice on one machine gives the same bytes (a self-test); another torch version may not, which
the check reports.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

#: opset of the embedded exports (onnxruntime 1.2x runs it; torch's TorchScript exporter supports it)
OPSET = 17


@dataclass(frozen=True)
class ExportRecipe:
    """One embedded ONNX anchor: the torch anchor it is exported from and the file it is written to
    (relative to the anchors folder)."""

    name: str
    torch_anchor: str
    path: str
    input_name: str = "input"
    output_name: str = "logits"


RECIPES = {r.name: r for r in (
    ExportRecipe("onnx-fmnist-resnet8", "fmnist-resnet8", "zoo/fmnist-resnet8/fmnist-resnet8.onnx"),
)}


def export_bytes(recipe: ExportRecipe) -> bytes:
    """The ONNX bytes of ``recipe``: the torch anchor's verified weights exported in eval mode."""
    import torch

    from ..anchors import get_anchor

    anchor = get_anchor(recipe.torch_anchor)
    model = anchor.build().eval()
    x = torch.zeros((1, *anchor.input_shape))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=OPSET, input_names=[recipe.input_name],
                          output_names=[recipe.output_name], do_constant_folding=True,
                          dynamic_axes={recipe.input_name: {0: "batch", 2: "height", 3: "width"},
                                        recipe.output_name: {0: "batch"}})
    return _normalized(buf.getvalue())


def _normalized(data: bytes) -> bytes:
    """The exported model without the fields that name the exporting tool's version (producer), so the file
    depends on the graph only."""
    import onnx

    model = onnx.load_from_string(data)
    model.producer_name, model.producer_version = "nnconform.onnxgraph.export", ""
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def export(names=None, into: str | Path | None = None) -> dict[str, Path]:
    """Write each recipe's file under ``into`` (default: the anchors folder); returns name -> path."""
    from ..paths import anchors_dir

    root = Path(into) if into else anchors_dir()
    out = {}
    for name in names or RECIPES:
        recipe = RECIPES[name]
        path = root / recipe.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".onnx.tmp")
        tmp.write_bytes(export_bytes(recipe))
        tmp.replace(path)
        out[name] = path
    return out
