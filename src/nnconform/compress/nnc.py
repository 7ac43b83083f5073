"""MPEG NNC (ISO/IEC 15938-17) weight coding through Fraunhofer's ``nncodec`` (DeepCABAC).

The artifact is the NNC bitstream itself; decoding runs NNC's decoder on those bytes and loads the
reconstructed tensors (names and shapes come from the bitstream) into the architecture. The
quantization step is set by ``qp`` for weights and by ``nonweight_qp`` for biases and batch-norm
tensors: the step size is about 2^(qp / 2^qp_density) (nncodec's ``get_stepsize_from_qp``), so a
more negative qp is a *finer* step (more bytes, closer to float; -44 is finer than -20); nncodec's
default is -38.

Install: ``pip install --no-deps nncodec==2.1.3`` (builds the C++ extension, ~2.5 min) plus
``h5py ptflops torchmetrics opencv-python-headless``; nncodec's ``numpy<2`` pin is not needed.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..kit import register_method
from .base import (Artifact, ArtifactError, CompressedModel, CompressionContext, CompressionError, Compressor,
                   CompressorConfig, CompressorUnavailable)
from .serialize import load_full_state

INSTALL = ("pip install --no-deps nncodec==2.1.3 && pip install h5py ptflops torchmetrics "
           "opencv-python-headless")


def _nnc():
    try:
        from nncodec.nnc import compression
    except ImportError as exc:
        raise CompressorUnavailable(f"MPEG NNC needs the nncodec package ({exc}); install it with: {INSTALL}") from None
    return compression


def _params_for_nnc(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    # NNC codes float32 (and int32) tensors of rank >= 1; the BN step counters are not model data.
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not v.is_floating_point():
            raise CompressionError(f"NNC: tensor {k} has dtype {v.dtype}; only floating tensors are coded")
        arr = v.detach().float().cpu().numpy()
        out[k] = arr.reshape(1) if arr.ndim == 0 else np.ascontiguousarray(arr)
    return out


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@register_method("compressor", "nnc")
class NncCompressor(Compressor):
    """MPEG NNC weight coding (nncodec 2.x): the bitstream is the artifact.

    Neural Network Coding, ISO/IEC 15938-17:2022 (MPEG-7 part 17, "Compression of neural networks for
    multimedia content description and analysis"), through Fraunhofer HHI's reference software NNCodec
    (``nncodec``). Each weight tensor is uniformly quantized with a step size set by the quantization
    parameter ``qp`` (step about 2^(qp/4); more negative is finer), 1-D tensors (biases, norms) with
    the finer ``nonweight_qp``; the integer levels are entropy-coded by DeepCABAC, the context-adaptive
    binary arithmetic coder of Wiedemann et al., "DeepCABAC: A Universal Compression Algorithm for Deep
    Neural Networks" (IEEE JSTSP 2020). The artifact is the NNC bitstream itself; decoding it with
    NNCodec gives the model nnconform evaluates.
    """

    description = "MPEG NNC (ISO/IEC 15938-17) uniform quantization + DeepCABAC via nncodec"

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """NNC uniform quantization + DeepCABAC: ``qp`` for weights, ``nonweight_qp`` for the rest."""

        qp: int = -38
        nonweight_qp: int = -75
        qp_density: int = 2
        use_dq: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_range("qp", -128, 0)
            self._check_range("nonweight_qp", -128, 0)
            self._check_range("qp_density", 0, 7)

    def compress(self, model, ctx: CompressionContext) -> CompressedModel:
        """The NNC bitstream of the state dict; the method's own model is the encoder's reconstruction."""
        config = self.config
        nnc = _nnc()
        params = _params_for_nnc(model.state_dict())
        kwargs = dict(bitstream_path=None, qp=config.qp, qp_density=config.qp_density,
                      nonweight_qp=config.nonweight_qp, use_dq=config.use_dq, verbose=False)
        try:
            with _quiet():
                bitstream = nnc.compress({k: v.copy() for k, v in params.items()}, return_bitstream=True, **kwargs)
                # the encoder's own reconstruction (quantize only, no entropy coding): what the
                # decoder must reproduce from the bitstream
                approx = nnc.compress({k: v.copy() for k, v in params.items()}, quantize_only=True, **kwargs)
        except SystemExit as exc:  # nncodec reports bad input by raising SystemExit
            raise CompressionError(f"nncodec refused the model: {exc}") from None
        artifact = Artifact({"model.nnc": bytes(bitstream)}, "mpeg-nnc")
        reconstructed = copy.deepcopy(model).eval()
        state = reconstructed.state_dict()
        with torch.no_grad():
            for k, arr in approx.items():
                state[k].copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)).reshape(state[k].shape))
        return CompressedModel(reconstructed, artifact, artifact.nbytes,
                               metadata={"qp": config.qp, "nonweight_qp": config.nonweight_qp,
                                         "tensors": len(params)})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """Run NNC's decoder on the bitstream and load the tensors into the template."""
        nnc = _nnc()
        data = artifact.file("model.nnc")
        try:
            with _quiet():
                rec = nnc.decompress(bytearray(data), verbose=False)
        except (SystemExit, Exception) as exc:
            raise ArtifactError(f"model.nnc does not decode as an NNC bitstream ({type(exc).__name__}: {exc})") from None
        expected = template.state_dict()
        state = {}
        for k, arr in rec.items():
            if k not in expected:
                raise ArtifactError(f"model.nnc holds tensor {k!r}, which the architecture does not have")
            state[k] = torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).reshape(expected[k].shape)
        return load_full_state(template, state, "model.nnc").eval()
