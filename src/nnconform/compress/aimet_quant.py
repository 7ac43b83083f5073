"""AIMET post-training quantization: the AIMET model zoo recipe.

``prepare_model`` -> batch-norm folding -> cross-layer equalization -> ``QuantizationSimModel``
(``post_training_tf_enhanced``) with encodings computed on the calibration set; for W4A8 the
4-bit weights are rounded by AdaRound first (``Adaround.apply_adaround``, then
``set_and_freeze_param_encodings``). Export is AIMET's own: ``aimet_torch.onnx.export`` with
``prequantize_constants=True`` writes one ONNX graph whose weights are stored as int8 (int4 for
W4, opset 21) followed by ``DequantizeLinear``, and activations carry ``QuantizeLinear`` /
``DequantizeLinear`` pairs: the encodings are in the graph. ``sim.onnx.export`` also writes
AIMET's JSON encodings file; it is part of the artifact (and of its size) so a QNN-style toolchain
gets exactly what AIMET produced. Decoding runs the ONNX graph with onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .aimet_compression import aimet_workdir, quiet_aimet
from ..kit import register_method
from .base import (Artifact, ArtifactError, CompressedModel, CompressionContext, CompressionError, Compressor,
                   CompressorConfig, CompressorUnavailable)
from .serialize import OnnxModule, check_onnx, onnx_parameter_count


def _import_aimet_quant():
    try:
        import aimet_torch.onnx as aimet_onnx
        from aimet_torch.common.defs import QuantScheme
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.cross_layer_equalization import equalize_model
        from aimet_torch.model_preparer import prepare_model
        from aimet_torch.quantsim import QuantizationSimModel
        from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    except ImportError as exc:
        raise CompressorUnavailable(f"AIMET quantization needs aimet-torch==2.42.0 ({exc}); "
                                    f"`pip install aimet-torch==2.42.0`") from None
    quiet_aimet()
    return dict(onnx=aimet_onnx, QuantScheme=QuantScheme, fold=fold_all_batch_norms, cle=equalize_model,
                prepare=prepare_model, QuantSim=QuantizationSimModel, Adaround=Adaround,
                AdaroundParameters=AdaroundParameters)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class _Folded(nn.Module):
    """Marker for params/MAC counting of the prepared, BN-folded float model."""


@register_method("compressor", "aimet-quant")
class AimetQuantCompressor(Compressor):
    """AIMET QuantSim PTQ (BN fold + CLE + tf_enhanced, optional AdaRound), exported as QDQ ONNX."""

    #: The ONNX graph stores int32 biases where QuantSim keeps float ones, and onnxruntime rounds its
    #: requantizations its own way: logits differ by a few output quantization steps (0.5% of the logit
    #: range on LeNet-5, 3% on EfficientNet-Lite0). A wrong artifact differs by ~100%.
    decode_tolerance = 0.05
    description = ("AIMET prepare_model, BN folding, CLE, QuantSim post_training_tf_enhanced "
                   "(AdaRound for low-bit weights); exported as QDQ ONNX with int weights + JSON encodings")

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """QuantSim W{param_bw}A{output_bw}; AdaRound when ``adaround_iterations`` > 0.

        ``calibration_samples``: images for ``compute_encodings`` (and AdaRound);
        ``cle``: cross-layer equalization after BN folding; ``include_encodings``: ship AIMET's JSON
        encodings in the artifact beside the QDQ ONNX graph.
        """

        param_bw: int = 8
        output_bw: int = 8
        quant_scheme: str = "post_training_tf_enhanced"
        calibration_samples: int = 512
        batch_size: int = 64
        cle: bool = True
        adaround_iterations: int = 0
        adaround_reg_param: float = 0.01
        include_encodings: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_choice("param_bw", (4, 8, 16))
            self._check_choice("output_bw", (8, 16))
            self._check_choice("quant_scheme", ("post_training_tf_enhanced", "post_training_tf",
                                                "post_training_percentile"))
            self._check_range("calibration_samples", 1, 1_000_000)
            self._check_range("batch_size", 1, 4096)
            self._check_range("adaround_iterations", 0, 100_000)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressedModel:
        """The AIMET model-zoo PTQ recipe on the calibration set, exported by AIMET as QDQ ONNX."""
        config = self.config
        api = _import_aimet_quant()
        from ..profile import count_macs

        dummy = ctx.dummy_input(1)
        x_cal, _ = ctx.calibration.take(config.calibration_samples)
        scheme = getattr(api["QuantScheme"], config.quant_scheme)
        with aimet_workdir(ctx.workdir / "aimet-quant") as folder, _quiet():
            try:
                prepared = api["prepare"](copy.deepcopy(model).eval())
                folded_pairs = api["fold"](prepared, input_shapes=(1, *ctx.input_shape), dummy_input=dummy)
                if config.cle:
                    api["cle"](prepared, dummy_input=dummy)
                prepared.eval()
                macs = count_macs(prepared, ctx.input_shape)

                def calibrate(sim_model, _args=None):
                    with torch.no_grad():
                        for start in range(0, len(x_cal), config.batch_size):
                            sim_model(x_cal[start:start + config.batch_size])

                adaround = None
                if config.adaround_iterations > 0:
                    loader = ctx.calibration.loader(config.batch_size, config.calibration_samples, with_labels=False)
                    ada_params = api["AdaroundParameters"](loader, num_batches=len(loader),
                                                           default_num_iterations=config.adaround_iterations,
                                                           default_reg_param=config.adaround_reg_param,
                                                           forward_fn=lambda m, batch: m(batch[0]))
                    torch.manual_seed(ctx.seed)
                    prepared = api["Adaround"].apply_adaround(prepared, dummy, ada_params, path=str(folder),
                                                              filename_prefix="adaround",
                                                              default_param_bw=config.param_bw,
                                                              default_quant_scheme=scheme)
                    adaround = str(folder / "adaround.encodings")
                sim = api["QuantSim"](prepared, dummy_input=dummy, quant_scheme=scheme,
                                      default_param_bw=config.param_bw, default_output_bw=config.output_bw)
                if adaround is not None:
                    sim.set_and_freeze_param_encodings(adaround)
                sim.compute_encodings(calibrate)
                opset = 21 if config.param_bw == 4 or config.output_bw == 16 else 13
                export_kw = dict(input_names=["input"], output_names=["logits"],
                                 dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                                 opset_version=opset, dynamo=False)
                qdq_path = folder / "model.onnx"
                api["onnx"].export(sim.model, (dummy,), str(qdq_path), prequantize_constants=True, **export_kw)
                files = {"model.onnx": qdq_path.read_bytes()}
                if config.include_encodings:
                    enc_dir = folder / "encodings"
                    enc_dir.mkdir()
                    sim.onnx.export((dummy,), str(enc_dir / "model.onnx"), **export_kw)
                    files["model.encodings"] = (enc_dir / "model.encodings").read_bytes()
            except (CompressionError, CompressorUnavailable):
                raise
            except Exception as exc:
                raise CompressionError(f"AIMET quantization W{config.param_bw}A{config.output_bw} failed: "
                                       f"{type(exc).__name__}: {exc}") from exc
        artifact = Artifact(files, f"onnx-qdq-w{config.param_bw}a{config.output_bw}")
        params = onnx_parameter_count(files["model.onnx"])
        sim_model = sim.model.eval()
        return CompressedModel(sim_model, artifact, artifact.nbytes, params=params, macs=macs, metadata={
            "opset": opset, "folded_batch_norms": len(folded_pairs or []), "cle": config.cle,
            "adaround_iterations": config.adaround_iterations, "calibration_samples": len(x_cal),
            "file_bytes": artifact.sizes(),
            "params_are": "weights and biases stored in model.onnx", "macs_are": "MACs of the BN-folded graph"})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """The QDQ ONNX graph run by onnxruntime (AIMET's encodings checked against it)."""
        config = self.config
        data = artifact.file("model.onnx")
        check_onnx(data, "model.onnx")
        if config.include_encodings:
            check_encodings_match(data, artifact.file("model.encodings"), config.param_bw)
        return OnnxModule(data, optimization="basic").eval()


def check_encodings_match(onnx_bytes: bytes, encodings: bytes, param_bw: int) -> int:
    """Verify AIMET's JSON encodings describe the QDQ graph: every weight encoding's bit width is
    ``param_bw`` and its scales equal the graph's ``<weight>_scale`` initializer. Returns the count."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        enc = json.loads(encodings)
        params = enc["param_encodings"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"model.encodings is not an AIMET encodings file: {type(exc).__name__}: {exc}") from None
    graph = onnx.load_from_string(bytes(onnx_bytes)).graph
    inits = {i.name: i for i in graph.initializer}
    checked = 0
    for e in params if isinstance(params, list) else []:
        name = e.get("name", "") if isinstance(e, dict) else ""
        if not name.endswith(".weight"):
            continue
        if e.get("bw") != param_bw:
            raise ArtifactError(f"model.encodings: {name} has bit width {e.get('bw')}, the config says {param_bw}")
        init = inits.get(f"{name}_scale")
        if init is None:
            raise ArtifactError(f"model.encodings: {name} has no '{name}_scale' initializer in model.onnx")
        graph_scale = numpy_helper.to_array(init).astype(np.float64).reshape(-1)
        json_scale = np.asarray(e.get("scale", []), dtype=np.float64).reshape(-1)
        if graph_scale.shape != json_scale.shape or not np.allclose(graph_scale, json_scale, rtol=1e-5, atol=0):
            raise ArtifactError(f"model.encodings: the scales of {name} differ from model.onnx's")
        checked += 1
    if checked == 0:
        raise ArtifactError("model.encodings has no weight encodings that match model.onnx")
    return checked

