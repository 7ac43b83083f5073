"""Reference methods that need no AIMET: fp16, torch's own int8 PTQ, unstructured magnitude pruning.

Each artifact is real bytes a decoder turns back into a runnable model:

* ``fp16``: the state dict as float16 safetensors (computed in float32 after decoding, or in float16
  with ``compute_dtype="float16"``);
* ``torch-int8``: torch.ao FX post-training quantization (x86 backend, per-channel weights); the
  artifact holds the int8 weights, scales and zero points as safetensors, and the decoder rebuilds
  the quantized graph from the anchor's code and loads them;
* ``magnitude-prune``: each conv/linear weight keeps its largest ``1 - sparsity`` magnitudes; the
  artifact is a bitmask plus the surviving values per tensor, zstandard-coded, so its size is that of
  a real sparse encoding, not a count of zeros.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..kit import register_method
from .base import Artifact, ArtifactError, CompressedModel, CompressionContext, Compressor, CompressorConfig
from .serialize import load_full_state, pack_tensors, structure_changes, unpack_tensors, apply_structure

# ---------------------------------------------------------------------------------------------
# Shared: a (possibly restructured) float model as safetensors + structure


def encode_float_model(model: nn.Module, reference: nn.Module, *, dtype: torch.dtype = torch.float32,
                       fmt: str = "safetensors+structure", extra_header: dict | None = None) -> Artifact:
    """The model's structure changes (vs ``reference``) and its floating state in ``dtype``."""
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    header = {"structure": structure_changes(model, reference), "dtype": str(dtype).removeprefix("torch."),
              **(extra_header or {})}
    return Artifact({"model.safetensors": pack_tensors(state, header)}, fmt)


def decode_float_model(artifact: Artifact, template: nn.Module, *, name: str = "model.safetensors") -> nn.Module:
    """Inverse of :func:`encode_float_model`: rebuild the structure on the template, load float32 weights."""
    tensors, header = unpack_tensors(artifact.file(name), name)
    model = apply_structure(template, header.get("structure", []))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return load_full_state(model, state, name).eval()


# ---------------------------------------------------------------------------------------------
# fp16


class HalfPrecision(nn.Module):
    """Runs a float16 model on float32 inputs and returns float32 logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


@register_method("compressor", "fp16")
class Fp16Compressor(Compressor):
    """float16 weights (the simplest baseline: half the bytes, usually transparent)."""

    description = "float16 safetensors of the full state dict"

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """Store every floating tensor as IEEE float16."""

        compute_dtype: str = "float32"

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_choice("compute_dtype", ("float32", "float16"))

    def compress(self, model, ctx: CompressionContext) -> CompressedModel:
        """float16 safetensors of the state dict; the method's own model is the rounded float model."""
        config = self.config
        reference = copy.deepcopy(model)
        artifact = encode_float_model(model, reference, dtype=torch.float16, fmt="safetensors-fp16")
        rounded = copy.deepcopy(model).half().float().eval()
        module = HalfPrecision(copy.deepcopy(rounded)) if config.compute_dtype == "float16" else rounded
        return CompressedModel(module, artifact, artifact.nbytes, metadata={"compute_dtype": config.compute_dtype})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """float16 tensors back into the template (float32 compute unless the config says float16)."""
        config = self.config
        tensors, header = unpack_tensors(artifact.file("model.safetensors"), "model.safetensors")
        if header.get("dtype") != "float16":
            raise ArtifactError(f"fp16 artifact declares dtype {header.get('dtype')!r}, expected 'float16'")
        bad = [k for k, v in tensors.items() if v.is_floating_point() and v.dtype != torch.float16]
        if bad:
            raise ArtifactError(f"fp16 artifact holds non-float16 tensors: {bad[:5]}")
        model = decode_float_model(artifact, template)
        return HalfPrecision(model).eval() if config.compute_dtype == "float16" else model


# ---------------------------------------------------------------------------------------------
# torch int8 (torch.ao FX graph mode PTQ)


def _flatten_quantized_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split quantized tensors, packed-param tuples and dtypes into plain tensors plus a JSON layout."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, object] = {}

    def put(key: str, value) -> object:
        if isinstance(value, torch.Tensor) and value.is_quantized:
            tensors[key + "::int"] = value.int_repr()
            if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                tensors[key + "::scales"] = value.q_per_channel_scales().to(torch.float32)
                tensors[key + "::zero_points"] = value.q_per_channel_zero_points().to(torch.int32)
                return {"q": "per_channel", "axis": int(value.q_per_channel_axis()), "dtype": str(value.dtype)}
            return {"q": "per_tensor", "scale": float(value.q_scale()), "zero_point": int(value.q_zero_point()),
                    "dtype": str(value.dtype)}
        if isinstance(value, torch.Tensor):
            tensors[key] = value
            return {"t": True}
        if isinstance(value, (tuple, list)):
            return {"tuple": [put(f"{key}::{i}", v) for i, v in enumerate(value)]}
        if isinstance(value, torch.dtype):
            return {"dtype_value": str(value)}
        if value is None:
            return {"none": True}
        raise ArtifactError(f"cannot serialize state entry {key} of type {type(value).__name__}")

    for k, v in state.items():
        layout[k] = put(k, v)
    return tensors, layout


_QDTYPES = {"torch.qint8": torch.qint8, "torch.quint8": torch.quint8, "torch.qint32": torch.qint32}
_DTYPES = {"torch.qint8": torch.qint8, "torch.quint8": torch.quint8, "torch.float32": torch.float32,
           "torch.float16": torch.float16}


def _unflatten_quantized_state(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    def get(key: str, spec):
        if not isinstance(spec, dict):
            raise ArtifactError(f"layout entry {key}: expected an object, got {spec!r}")
        try:
            if spec.get("t"):
                return tensors[key]
            if spec.get("q") == "per_channel":
                return torch._make_per_channel_quantized_tensor(
                    tensors[key + "::int"], tensors[key + "::scales"].double(),
                    tensors[key + "::zero_points"].long(), spec["axis"])
            if spec.get("q") == "per_tensor":
                return torch._make_per_tensor_quantized_tensor(tensors[key + "::int"], spec["scale"],
                                                               spec["zero_point"])
        except KeyError as exc:
            raise ArtifactError(f"layout entry {key}: tensor {exc} is missing from the artifact") from None
        if "tuple" in spec:
            return tuple(get(f"{key}::{i}", s) for i, s in enumerate(spec["tuple"]))
        if "dtype_value" in spec:
            if spec["dtype_value"] not in _DTYPES:
                raise ArtifactError(f"layout entry {key}: unknown dtype {spec['dtype_value']!r}")
            return _DTYPES[spec["dtype_value"]]
        if spec.get("none"):
            return None
        raise ArtifactError(f"layout entry {key}: unrecognised spec {spec!r}")

    return {k: get(k, s) for k, s in layout.items()}


def _fx_quantize(model: nn.Module, example: torch.Tensor, backend: str, calibrate) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(backend), (example,))
        with torch.no_grad():
            calibrate(prepared)
        return convert_fx(prepared).eval()


@register_method("compressor", "torch-int8")
class TorchInt8Compressor(Compressor):
    """torch's own int8 post-training quantization (FX graph mode, per-channel weights)."""

    description = "torch.ao FX static PTQ, int8 weights and activations, min-max/histogram observers"

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """torch.ao FX post-training static quantization: int8 weights (per channel) and activations."""

        backend: str = "x86"
        calibration_samples: int = 512

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_choice("backend", ("x86", "fbgemm", "qnnpack"))
            self._check_range("calibration_samples", 1, 1_000_000)

    def compress(self, model, ctx: CompressionContext) -> CompressedModel:
        """Calibrate, convert, and store the quantized state as plain tensors plus a layout."""
        config = self.config
        torch.backends.quantized.engine = "x86" if config.backend == "fbgemm" else config.backend
        x, _ = ctx.calibration.take(config.calibration_samples)

        def calibrate(prepared):
            for start in range(0, len(x), 128):
                prepared(x[start:start + 128])

        quantized = _fx_quantize(model, ctx.dummy_input(), config.backend, calibrate)
        tensors, layout = _flatten_quantized_state(quantized.state_dict())
        artifact = Artifact({"model.safetensors": pack_tensors(tensors, {"layout": layout, "backend": config.backend})},
                            "safetensors-int8")
        params = sum(p.numel() for p in model.parameters())
        from ..profile import count_macs

        return CompressedModel(QuantizedGraph(quantized), artifact, artifact.nbytes, params=params,
                               macs=count_macs(model, ctx.input_shape),
                               metadata={"backend": config.backend, "calibration_samples": len(x)})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """Rebuild the quantized graph from the architecture's code and load the artifact's tensors."""
        config = self.config
        tensors, header = unpack_tensors(artifact.file("model.safetensors"), "model.safetensors")
        if "layout" not in header:
            raise ArtifactError("torch-int8 artifact has no 'layout' header")
        state = _unflatten_quantized_state(tensors, header["layout"])
        torch.backends.quantized.engine = "x86" if config.backend == "fbgemm" else config.backend
        # The quantized graph comes from the architecture's code; observers need finite weights to
        # convert, so what the (NaN) template's state dict carries is zeroed first, and every such tensor
        # is then loaded from the artifact. Non-persistent buffers the architecture builds itself (the
        # detector's anchor-point grid and strides) are in no state dict, so no artifact restores them:
        # they are kept as the template has them (zeroing them once put every box at the origin).
        blank = copy.deepcopy(template)
        with torch.no_grad():
            for t in blank.state_dict(keep_vars=True).values():
                if t.is_floating_point():
                    t.zero_()
        shell = _fx_quantize(blank, torch.zeros(1, *ctx.input_shape), config.backend, lambda m: m(torch.zeros(1, *ctx.input_shape)))
        target = shell.state_dict()  # keeps the modules' version metadata, which loading needs
        expected = set(target)
        if expected != set(state):
            raise ArtifactError(f"torch-int8 artifact entries do not match the quantized graph: missing "
                                f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        for k in expected:
            target[k] = state[k]
        try:
            shell.load_state_dict(target, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"torch-int8 artifact does not load: {exc}") from None
        return QuantizedGraph(shell).eval()


class QuantizedGraph(nn.Module):
    """A torch.ao quantized graph whose ``state_dict`` is plain tensors (int8 values, scales, zero
    points), so the evaluation cache can fingerprint it like any float model."""

    profiled_by_method = True  # quantized modules expose no parameters to count

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def state_dict(self, *args, **kwargs):  # noqa: D102  (fingerprinting view, not for loading)
        tensors, layout = _flatten_quantized_state(self.graph.state_dict())
        import json as _json

        tensors["__layout__"] = torch.frombuffer(bytearray(_json.dumps(layout, sort_keys=True).encode()),
                                                 dtype=torch.uint8)
        return tensors


# ---------------------------------------------------------------------------------------------
# Unstructured magnitude pruning, sparse + zstandard encoding


def _prunable(model: nn.Module, include_first: bool) -> list[str]:
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names if include_first else names[1:]


def encode_sparse_state(state: dict[str, torch.Tensor], sparse_keys: set[str], value_dtype: torch.dtype,
                        level: int) -> bytes:
    """Bitmask + nonzero values for ``sparse_keys``, dense for the rest; safetensors then zstandard."""
    import zstandard

    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k in sparse_keys:
            flat = v.detach().reshape(-1)
            mask = flat != 0
            tensors[k + "::mask"] = torch.from_numpy(np.packbits(mask.numpy().astype(np.uint8)))
            tensors[k + "::values"] = flat[mask].to(value_dtype)
            shapes[k] = list(v.shape)
        else:
            tensors[k] = v.to(value_dtype) if v.is_floating_point() else v
    raw = pack_tensors(tensors, {"sparse": shapes, "value_dtype": str(value_dtype).removeprefix("torch.")})
    return zstandard.ZstdCompressor(level=level).compress(raw)


def decode_sparse_state(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_sparse_state` (float32 tensors)."""
    import zstandard

    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31)
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"{where}: not a zstandard frame ({exc})") from None
    tensors, header = unpack_tensors(raw, where)
    state: dict[str, torch.Tensor] = {}
    sparse = header.get("sparse", {})
    for k, shape in sparse.items():
        try:
            bits, values = tensors.pop(k + "::mask"), tensors.pop(k + "::values")
        except KeyError:
            raise ArtifactError(f"{where}: sparse tensor {k} lacks its mask or values") from None
        n = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
        if int(mask.sum()) != values.numel():
            raise ArtifactError(f"{where}: {k} mask has {int(mask.sum())} ones but {values.numel()} values")
        dense = torch.zeros(n, dtype=torch.float32)
        dense[mask] = values.float()
        state[k] = dense.reshape(shape)
    for k, v in tensors.items():
        state[k] = v.float() if v.is_floating_point() else v
    return state


@register_method("compressor", "magnitude-prune")
class MagnitudePruneCompressor(Compressor):
    """Unstructured magnitude pruning; size is a real sparse encoding (bitmask + values + zstandard)."""

    description = "per-layer unstructured L1 magnitude pruning (no fine-tuning), bitmask+values+zstd encoding"

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """Per-layer unstructured magnitude pruning of conv/linear weights, no fine-tuning.

        ``value_dtype`` is how surviving values are stored; ``zstd_level`` the entropy coder's level.
        """

        sparsity: float = 0.5
        value_dtype: str = "float32"
        zstd_level: int = 19
        prune_first_layer: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_range("sparsity", 0.0, 1.0, hi_open=True)
            self._check_choice("value_dtype", ("float32", "float16"))
            self._check_range("zstd_level", 1, 22)

    def compress(self, model, ctx: CompressionContext) -> CompressedModel:
        """Zero the smallest weights of each conv/linear layer; encode bitmask + values + zstd."""
        config = self.config
        pruned = copy.deepcopy(model).eval()
        keys = _prunable(pruned, config.prune_first_layer)
        state = pruned.state_dict()
        with torch.no_grad():
            for k in keys:
                w = state[k]
                n_prune = int(round(config.sparsity * w.numel()))
                if n_prune == 0:
                    continue
                # ties broken by position so the result is deterministic
                order = torch.argsort(w.abs().reshape(-1), stable=True)
                flat = w.reshape(-1)
                flat[order[:n_prune]] = 0
        dtype = torch.float16 if config.value_dtype == "float16" else torch.float32
        if dtype == torch.float16:
            with torch.no_grad():
                for t in list(pruned.parameters()) + list(pruned.buffers()):
                    if t.is_floating_point():
                        t.copy_(t.half().float())
        data = encode_sparse_state(pruned.state_dict(), set(keys), dtype, config.zstd_level)
        artifact = Artifact({"model.sparse.zst": data}, "sparse-bitmask+zstd")
        total = sum(pruned.state_dict()[k].numel() for k in keys)
        zeros = sum(int((pruned.state_dict()[k] == 0).sum()) for k in keys)
        nonzero_params = sum(int((p != 0).sum()) for p in pruned.parameters())
        from ..profile import count_macs

        return CompressedModel(pruned, artifact, artifact.nbytes, params=nonzero_params,
                               macs=count_macs(model, ctx.input_shape),
                               metadata={"pruned_tensors": keys, "achieved_sparsity": zeros / max(total, 1),
                                         "params_are": "nonzero parameters", "macs_are": "dense execution"})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """The sparse state back into the template."""
        state = decode_sparse_state(artifact.file("model.sparse.zst"), "model.sparse.zst")
        return load_full_state(template, state, "model.sparse.zst").eval()
