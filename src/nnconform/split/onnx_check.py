"""Export a head or tail to ONNX (in memory) and compare onnxruntime with torch."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

#: The agreement the issue asks for: within 1e-5 of torch, relative to the output's largest
#: magnitude when that exceeds 1 (float32 rounding grows with the values).
ONNX_TOLERANCE = 1e-5
OPSET = 17


@dataclass(frozen=True)
class OnnxComparison:
    """Largest difference between onnxruntime and torch over every output of one module."""

    max_abs_error: float
    scale: float
    onnx_bytes: int

    @property
    def tolerance(self) -> float:
        """The allowed difference: 1e-5 x max(1, largest |output|)."""
        return ONNX_TOLERANCE * max(1.0, self.scale)

    @property
    def passed(self) -> bool:
        """True when onnxruntime agrees with torch within :attr:`tolerance`."""
        return self.max_abs_error <= self.tolerance


def onnx_roundtrip(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> OnnxComparison:
    """Export ``module`` with the TorchScript-based exporter, run it in onnxruntime, compare."""
    import onnxruntime as ort

    inputs = tuple(inputs)
    buf = io.BytesIO()
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=OPSET, input_names=names,
                          do_constant_folding=True)
    model_bytes = buf.getvalue()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[k].detach().cpu().numpy() for k, i in enumerate(session.get_inputs())}
    got = session.run(None, feed)
    with torch.inference_mode():
        ref = module(*inputs)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    if len(refs) != len(got):
        raise AssertionError(f"onnxruntime returned {len(got)} outputs, torch {len(refs)}")
    err = max(float(np.max(np.abs(g - r.detach().numpy()))) for g, r in zip(got, refs))
    scale = max(float(r.abs().max()) for r in refs)
    return OnnxComparison(err, scale, len(model_bytes))
