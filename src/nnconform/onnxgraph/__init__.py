"""ONNX graphs as anchors and as split subjects (issue 14, TR 26.847 scenario 2).

* :mod:`.files`: an ONNX file checked against its pinned sha256 (external data confined to its folder,
  listed, pinned and counted in the size) and run in onnxruntime (CPU, deterministic options);
* :mod:`.cuts`: the node-level split catalogue: every node output is a candidate cut, with the tensors
  crossing it ("branches per node"), their shapes per input size, and head/tail graphs cut with
  ``onnx.utils.Extractor`` (what ``onnx.utils.extract_model`` runs);
* :mod:`.table`: the TR 26.847-style table per anchor and node (CLI ``python -m nnconform.onnxgraph table``);
* :mod:`.manifest`: ONNX model-zoo anchors, ``anchors/onnx.toml``.
"""

from .cuts import (CutSizes, NodeCut, OnnxSplitError, SplitCheck, node_cuts, run_split, shapes_at, split_model,
                   verify_split)
from .files import OnnxFile, OnnxFileError, OnnxUnavailable, load_onnx, make_session, run_model

__all__ = ["CutSizes", "NodeCut", "OnnxFile", "OnnxFileError", "OnnxSplitError", "OnnxUnavailable", "SplitCheck",
           "load_onnx", "make_session", "node_cuts", "run_model", "run_split", "shapes_at", "split_model",
           "verify_split"]
