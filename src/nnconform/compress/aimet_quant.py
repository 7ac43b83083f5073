"""AIMET post-training quantization: the AIMET model zoo recipe.

``prepare_model`` -> cross-layer equalization as AIMET documents it (BatchNorm fold, then
cross-layer scaling, then high-bias fold: ``fold_all_batch_norms`` hands its folded pairs to
``equalize_bn_folded_model``, the two halves of ``equalize_model``) -> ``QuantizationSimModel``
(``post_training_tf_enhanced``) with encodings computed on the calibration set. For low-bit weights
AdaRound rounds them first (``Adaround.apply_adaround`` with AIMET's defaults: 15,000 iterations per
layer below 8-bit weights, 10,000 otherwise, on ~2,000 images; a point that asks for fewer is
labelled *reduced*), and its encodings are loaded with the current API
(``QuantizationSimModel.load_encodings(..., requires_grad=False, allow_overwrite=False)``, which
replaces the deprecated ``set_and_freeze_param_encodings``).

What CLE did is recorded (pairs scaled, BN pairs handed to high-bias fold, bias channels folded);
AIMET's warning that conv-ReLU6-conv pairs are not scaled (since aimet-torch 2.4) is kept in the
metadata, not silenced, so the report can say where CLE is inert.

Export is AIMET's own: ``aimet_torch.onnx.export`` with ``prequantize_constants=True`` writes one
ONNX graph whose weights are stored as int8 (int4 for W4, opset 21) followed by
``DequantizeLinear``, and activations carry ``QuantizeLinear`` / ``DequantizeLinear`` pairs: the
encodings are in the graph. AIMET's JSON encodings file repeats them; it is exported, checked
against the graph and reported as a separate size (``encodings_bytes``), but not shipped nor
counted unless ``include_encodings`` asks for it. Decoding runs the ONNX graph with onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .aimet_compression import aimet_workdir, quiet_aimet
from ..kit import register_method
from ..progress import Progress
from .base import (Artifact, ArtifactError, CompressedModel, CompressionContext, CompressionError, Compressor,
                   CompressorConfig, CompressorUnavailable)
from .serialize import OnnxModule, check_onnx, onnx_parameter_count


def _import_aimet_quant():
    try:
        import aimet_torch.onnx as aimet_onnx
        from aimet_torch.common.defs import QuantScheme
        from aimet_torch.batch_norm_fold import fold_all_batch_norms
        from aimet_torch.cross_layer_equalization import equalize_bn_folded_model
        from aimet_torch.model_preparer import prepare_model
        from aimet_torch.quantsim import QuantizationSimModel
        from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    except ImportError as exc:
        raise CompressorUnavailable(f"AIMET quantization needs aimet-torch==2.42.0 ({exc}); "
                                    f"`pip install aimet-torch==2.42.0`") from None
    quiet_aimet()
    return dict(onnx=aimet_onnx, QuantScheme=QuantScheme, fold=fold_all_batch_norms,
                cle_folded=equalize_bn_folded_model, prepare=prepare_model, QuantSim=QuantizationSimModel,
                Adaround=Adaround, AdaroundParameters=AdaroundParameters)


#: AIMET's AdaRound defaults (``AdaroundParameters`` docstring and ``_adaround_model``): iterations per
#: layer below 8-bit weights and at 8 bits or more, and the number of images to optimize on.
ADAROUND_ITERATIONS_LOW_BIT = 15_000
ADAROUND_ITERATIONS_8BIT = 10_000
ADAROUND_RECOMMENDED_SAMPLES = 2_000


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def cle_effect():
    """Record what AIMET's cross-layer equalization did, by wrapping (not replacing) its two steps.

    Yields a dict filled while ``equalize_bn_folded_model`` runs: ``scaled_sets`` and ``scaled_pairs``
    (what ``CrossLayerScaling.scale_model`` returned), ``hbf_bn_pairs`` (the folded conv/BN pairs handed to
    ``HighBiasFold.bias_fold``; 0 means high-bias fold exits at once), ``hbf_eligible_pairs`` (scaled pairs
    whose first layer had a BN and both layers a bias: AIMET's own condition), ``hbf_channels_folded``
    (bias channels high-bias fold changed) and ``relu6_warning`` (AIMET's warning that conv-ReLU6-conv pairs
    are not scaled, or None).
    """
    from aimet_torch import cross_layer_equalization as cle

    effect = {"scaled_sets": 0, "scaled_pairs": 0, "hbf_bn_pairs": 0, "hbf_eligible_pairs": 0,
              "hbf_channels_folded": 0, "relu6_warning": None}
    # the original descriptors (a staticmethod and a classmethod in aimet-torch 2.42), put back afterwards
    scale_model = cle.CrossLayerScaling.__dict__["scale_model"]
    bias_fold = cle.HighBiasFold.__dict__["bias_fold"]

    def scale_spy(*args, **kwargs):
        sets = scale_model.__func__(*args, **kwargs)
        effect["scaled_sets"] = len(sets)
        effect["scaled_pairs"] = sum(len(s.cls_pair_info_list) for s in sets)
        return sets

    def bias_fold_spy(cls_set_info_list, bn_layers):
        pairs = [p for s in cls_set_info_list for p in s.cls_pair_info_list]
        eligible = [p for p in pairs if p.layer1.bias is not None and p.layer2.bias is not None
                    and p.layer1 in (bn_layers or {})]
        before = [p.layer1.bias.detach().clone() for p in eligible]
        result = bias_fold.__func__(cle.HighBiasFold, cls_set_info_list, bn_layers)
        effect["hbf_bn_pairs"] = len(bn_layers or {})
        effect["hbf_eligible_pairs"] = len(eligible)
        effect["hbf_channels_folded"] = sum(int((p.layer1.bias.detach() != b).sum()) for p, b in zip(eligible, before))
        return result

    cle.CrossLayerScaling.scale_model = staticmethod(scale_spy)
    cle.HighBiasFold.bias_fold = staticmethod(bias_fold_spy)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield effect
        relu6 = [str(w.message) for w in caught if "relu6" in str(w.message).lower()]
        effect["relu6_warning"] = relu6[0] if relu6 else None
    finally:
        cle.CrossLayerScaling.scale_model = scale_model
        cle.HighBiasFold.bias_fold = bias_fold


def describe_cle(effect: dict | None) -> str:
    """One sentence on what CLE did (``inert`` when it scaled nothing), for the report."""
    if not effect:
        return "CLE off"
    text = (f"CLE scaled {effect['scaled_pairs']} layer pairs in {effect['scaled_sets']} sets; high-bias fold got "
            f"{effect['hbf_bn_pairs']} BN pairs, {effect['hbf_eligible_pairs']} eligible pairs, "
            f"{effect['hbf_channels_folded']} bias channels folded")
    if effect["scaled_pairs"] == 0:
        why = (" (conv-ReLU6-conv pairs are not scaled since aimet-torch 2.4)" if effect.get("relu6_warning")
               else "")
        return f"CLE inert{why}: {text}"
    return text


@register_method("compressor", "aimet-quant")
class AimetQuantCompressor(Compressor):
    """AIMET QuantSim PTQ (BN fold + CLE with high-bias fold + tf_enhanced, optional AdaRound), as QDQ ONNX.

    Post-training quantization as the AIMET model zoo applies it, in four steps. *Batch-norm folding*
    merges each BatchNorm into the preceding convolution's weights and bias. *Cross-layer
    equalization* (CLE) rescales the output channels of one layer and the input channels of the next
    so both have balanced per-channel ranges, then *high-bias fold* moves large biases into the next
    layer: Nagel, van Baalen, Blankevoort and Welling, "Data-Free Quantization Through Weight
    Equalization and Bias Correction" (ICCV 2019). *QuantSim* (AIMET's quantization simulation) inserts
    quantizers for weights (``param_bw`` bits) and activations (``output_bw`` bits) and computes their
    encodings on calibration images, ``tf_enhanced`` choosing ranges by minimizing quantization error
    (AIMET white paper: Siddegowda et al., "Neural Network Quantization with AI Model Efficiency
    Toolkit (AIMET)", arXiv:2201.08442; Nagel et al., "A White Paper on Neural Network Quantization",
    arXiv:2106.08295). *AdaRound* (``adaround``), for low-bit weights, learns per weight whether to
    round up or down, layer by layer on calibration data: Nagel, Amjad, van Baalen, Louizos and
    Blankevoort, "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020). The
    artifact is AIMET's own QDQ ONNX export (int8/int4 weights), decoded by onnxruntime.
    """

    reference = """1. `prepared = aimet_torch.model_preparer.prepare_model(model)`
2. `folded = aimet_torch.batch_norm_fold.fold_all_batch_norms(prepared, input_shapes=(1, *anchor.input_shape),
   dummy_input=x)` (BN fold)
3. when `cle`: `aimet_torch.cross_layer_equalization.equalize_bn_folded_model(prepared, None, folded,
   dummy_input=x)` (cross-layer scaling, then high-bias fold with the folded pairs; what it did is recorded)
4. when `adaround`: `Adaround.apply_adaround(prepared, x, AdaroundParameters(<loader of adaround_samples
   calibration images in batches of batch_size>, num_batches=ceil(adaround_samples / batch_size),
   default_num_iterations=adaround_iterations or None (AIMET: 15,000 below 8-bit weights, 10,000 otherwise),
   default_reg_param=adaround_reg_param), path=<private folder>, filename_prefix="adaround",
   default_param_bw=param_bw, default_quant_scheme=QuantScheme.<quant_scheme>)`
5. `sim = QuantizationSimModel(prepared, dummy_input=x, quant_scheme=QuantScheme.<quant_scheme>,
   default_param_bw=param_bw, default_output_bw=output_bw)`; with AdaRound,
   `sim.load_encodings(<AdaRound's parameter encodings>, strict=True, partial=True, requires_grad=False,
   allow_overwrite=False)`
6. `sim.compute_encodings(<forward passes over calibration_samples images in batches of batch_size>)`
7. `aimet_torch.onnx.export(sim.model, (x,), "model.onnx", prequantize_constants=True, opset_version=21 for W4
   or A16 else 13, dynamo=False)`: the artifact (AIMET's JSON encodings, exported by `sim.onnx.export`, are
   checked against the graph and shipped only with `include_encodings`)."""

    #: The ONNX graph stores int32 biases where QuantSim keeps float ones, and onnxruntime rounds its
    #: requantizations its own way: logits differ by a few output quantization steps (0.5% of the logit
    #: range on LeNet-5, 3% on EfficientNet-Lite0). A wrong artifact differs by ~100%.
    decode_tolerance = 0.05
    description = ("AIMET prepare_model, CLE (BN fold, cross-layer scaling, high-bias fold), QuantSim "
                   "post_training_tf_enhanced (AdaRound for low-bit weights); exported as QDQ ONNX with int "
                   "weights (AIMET's JSON encodings reported apart, not counted)")

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """QuantSim W{param_bw}A{output_bw}; AdaRound when ``adaround`` is set.

        ``calibration_samples``: images for ``compute_encodings``; ``cle``: cross-layer equalization
        (BN fold, cross-layer scaling, high-bias fold); ``adaround_iterations``: iterations per layer,
        0 for AIMET's default (15,000 below 8-bit weights, 10,000 otherwise); ``adaround_samples``:
        images AdaRound optimizes on (AIMET recommends about 2,000); fewer of either is a *reduced*
        AdaRound, said so in the metadata and the report. ``include_encodings``: also ship AIMET's JSON
        encodings (they repeat what the QDQ graph holds) and count their bytes. ``float_postprocess``: the
        ops after the network's last weighted layers (a detector's in-model box decoding: exp, stride, anchor
        points, the concatenation of pixel boxes with logits) run unquantized, as a deployment runs its
        post-processing in float; off, one 8-bit output quantizer spans boxes in pixels and logits alike (on
        fmnist-mosaic-det it clipped every box at 14.9 px) and each rounding step of the box regression is
        amplified by exp(.) * stride.
        """

        param_bw: int = 8
        output_bw: int = 8
        quant_scheme: str = "post_training_tf_enhanced"
        calibration_samples: int = 512
        batch_size: int = 64
        cle: bool = True
        adaround: bool = False
        adaround_iterations: int = 0
        adaround_samples: int = ADAROUND_RECOMMENDED_SAMPLES
        adaround_reg_param: float = 0.01
        include_encodings: bool = False
        float_postprocess: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_choice("param_bw", (4, 8, 16))
            self._check_choice("output_bw", (8, 16))
            self._check_choice("quant_scheme", ("post_training_tf_enhanced", "post_training_tf",
                                                "post_training_percentile"))
            self._check_range("calibration_samples", 1, 1_000_000)
            self._check_range("batch_size", 1, 4096)
            self._check_range("adaround_iterations", 0, 100_000)
            self._check_range("adaround_samples", 1, 1_000_000)

        def adaround_recipe(self, available_samples: int) -> dict:
            """Iterations, images and batches AdaRound runs with, and whether that is AIMET's recipe or reduced."""
            default_iters = ADAROUND_ITERATIONS_LOW_BIT if self.param_bw < 8 else ADAROUND_ITERATIONS_8BIT
            iterations = self.adaround_iterations or default_iters
            samples = min(self.adaround_samples, available_samples)
            # AIMET: num_batches = min(len(loader), ceil(2000 / batch_size))
            batches = math.ceil(samples / self.batch_size)
            reduced = iterations < default_iters or samples < ADAROUND_RECOMMENDED_SAMPLES
            return {"iterations": iterations, "aimet_default_iterations": default_iters, "samples": samples,
                    "batches": batches, "recipe": "reduced" if reduced else "aimet-default"}

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressedModel:
        """The AIMET model-zoo PTQ recipe on the calibration set, exported by AIMET as QDQ ONNX.

        BN fold and CLE run on the CPU (cheap, and the same on every device); AdaRound, the QuantSim and its
        calibration passes on ``ctx.device``; the simulated model goes back to the CPU before AIMET exports it."""
        config = self.config
        api = _import_aimet_quant()
        from ..profile import count_macs

        dummy = ctx.dummy_input(1)
        x_cal, _ = ctx.calibration.take(config.calibration_samples)
        x_dev, dummy_dev = x_cal.to(ctx.device), dummy.to(ctx.device)
        scheme = getattr(api["QuantScheme"], config.quant_scheme)
        cle = None
        ada = config.adaround_recipe(len(ctx.calibration)) if config.adaround else None
        with aimet_workdir(ctx.workdir / "aimet-quant") as folder, _quiet():
            try:
                prepared = api["prepare"](copy.deepcopy(model).eval())
                # AIMET's order: BN fold, then cross-layer scaling, then high-bias fold with the folded pairs
                folded_pairs = api["fold"](prepared, input_shapes=(1, *ctx.input_shape), dummy_input=dummy)
                if config.cle:
                    with cle_effect() as cle:
                        api["cle_folded"](prepared, None, folded_pairs, dummy_input=dummy)
                prepared.eval()
                macs = count_macs(prepared, ctx.input_shape)
                prepared.to(ctx.device)  # AIMET takes its dummy input on the model's device

                def calibrate(sim_model, _args=None):
                    with torch.no_grad():
                        for start in range(0, len(x_dev), config.batch_size):
                            sim_model(x_dev[start:start + config.batch_size])

                adaround = None
                if ada is not None:
                    loader = ctx.calibration.loader(config.batch_size, ada["samples"], with_labels=False)
                    # iterations 0 -> None: AIMET picks its own default for the weights' bit width
                    line = Progress(f"aimet-quant W{config.param_bw}A{config.output_bw}: AdaRound "
                                    f"({config.adaround_iterations or 'AIMET default'} iterations per layer), "
                                    f"calibration batches run")

                    def forward(m, batch):
                        line.update()
                        return m(batch[0].to(ctx.device))

                    ada_params = api["AdaroundParameters"](loader, num_batches=ada["batches"],
                                                           default_num_iterations=config.adaround_iterations or None,
                                                           default_reg_param=config.adaround_reg_param,
                                                           forward_fn=forward)
                    torch.manual_seed(ctx.seed)
                    try:
                        prepared = api["Adaround"].apply_adaround(prepared, dummy_dev, ada_params, path=str(folder),
                                                                  filename_prefix="adaround",
                                                                  default_param_bw=config.param_bw,
                                                                  default_quant_scheme=scheme)
                    finally:
                        line.close()
                    adaround = folder / "adaround.encodings"
                sim = api["QuantSim"](prepared, dummy_input=dummy_dev, quant_scheme=scheme,
                                      default_param_bw=config.param_bw, default_output_bw=config.output_bw)
                float_tail = unquantize_postprocess(sim.model) if config.float_postprocess else []
                if adaround is not None:
                    # the current API for AdaRound's parameter encodings: loaded, frozen, kept by compute_encodings
                    encodings = json.loads(adaround.read_text())
                    encodings.pop("activation_encodings", None)
                    sim.load_encodings(encodings, strict=True, partial=True, requires_grad=False,
                                       allow_overwrite=False)
                sim.compute_encodings(calibrate)
                sim.model.to("cpu")  # exported (and probed by the engine) from the CPU, whatever the device
                opset = 21 if config.param_bw == 4 or config.output_bw == 16 else 13
                export_kw = dict(input_names=["input"], output_names=["logits"],
                                 dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                                 opset_version=opset, dynamo=False)
                qdq_path = folder / "model.onnx"
                api["onnx"].export(sim.model, (dummy,), str(qdq_path), prequantize_constants=True, **export_kw)
                files = {"model.onnx": qdq_path.read_bytes()}
                # AIMET's JSON encodings: exported to show the graph holds them, sized, shipped only on request
                enc_dir = folder / "encodings"
                enc_dir.mkdir()
                sim.onnx.export((dummy,), str(enc_dir / "model.onnx"), **export_kw)
                encodings_json = (enc_dir / "model.encodings").read_bytes()
                checked = check_encodings_match(files["model.onnx"], encodings_json, config.param_bw)
                if config.include_encodings:
                    files["model.encodings"] = encodings_json
            except (CompressionError, CompressorUnavailable, ArtifactError):
                raise
            except Exception as exc:
                raise CompressionError(f"AIMET quantization W{config.param_bw}A{config.output_bw} failed: "
                                       f"{type(exc).__name__}: {exc}") from exc
        artifact = Artifact(files, f"onnx-qdq-w{config.param_bw}a{config.output_bw}")
        params = onnx_parameter_count(files["model.onnx"])
        sim_model = sim.model.eval()
        return CompressedModel(sim_model, artifact, artifact.nbytes, params=params, macs=macs, metadata={
            "opset": opset, "folded_batch_norms": len(folded_pairs or []), "cle": cle,
            "cle_summary": describe_cle(cle) if config.cle else "CLE off", "adaround": ada,
            "calibration_samples": len(x_cal), "file_bytes": artifact.sizes(), "float_postprocess": float_tail,
            "encodings_bytes": len(encodings_json), "encodings_counted": config.include_encodings,
            "encodings_share": len(encodings_json) / (len(files["model.onnx"]) + len(encodings_json)),
            "encodings_weights_checked": checked,
            "params_are": "weights and biases stored in model.onnx", "macs_are": "MACs of the BN-folded graph"})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """The QDQ ONNX graph run by onnxruntime (AIMET's encodings, when shipped, checked against it)."""
        config = self.config
        data = artifact.file("model.onnx")
        check_onnx(data, "model.onnx")
        if config.include_encodings:
            check_encodings_match(data, artifact.file("model.encodings"), config.param_bw)
        return OnnxModule(data, optimization="basic").eval()


def postprocess_nodes(graph_module: nn.Module) -> list[str]:
    """Targets of the modules a traced model calls after its last weighted layers: the nodes of its torch.fx
    graph from which no call of a module holding parameters is reachable (a detector's box decoding and the
    concatenation of its outputs; nothing for a classifier ending in a Linear layer)."""
    graph = getattr(graph_module, "graph", None)
    if graph is None:
        raise CompressionError("float_postprocess needs the prepared model's torch.fx graph (aimet prepare_model)")
    modules = dict(graph_module.named_modules())

    def holds_weights(module: nn.Module) -> bool:
        # a QuantSim module's quantizers hold their ranges as parameters: those are no weights of the network
        return any("quantizer" not in name for name, _ in module.named_parameters())

    weighted: set = set()  # nodes with a weighted module call at or after them
    for node in reversed(list(graph.nodes)):
        own = node.op == "call_module" and holds_weights(modules[node.target])
        if own or any(user in weighted for user in node.users):
            weighted.add(node)
    return [n.target for n in graph.nodes if n.op == "call_module" and n not in weighted]


def unquantize_postprocess(sim_model: nn.Module) -> list[str]:
    """Disable every input and output quantizer of the modules :func:`postprocess_nodes` finds in a QuantSim
    model (they then run, and export, in float); returns their names."""
    modules = dict(sim_model.named_modules())
    names = postprocess_nodes(sim_model)
    for name in names:
        module = modules[name]
        for attr in ("input_quantizers", "output_quantizers"):
            quantizers = getattr(module, attr, None)
            for i in range(len(quantizers or ())):
                quantizers[i] = None
    return names


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

