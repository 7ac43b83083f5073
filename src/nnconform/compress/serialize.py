"""Honest serialization: artifacts a decoder can rebuild a runnable model from.

* :func:`structure_changes` / :func:`apply_structure` describe the modules a method replaced
  (an SVD split, a pruned convolution) as plain JSON over a whitelist of torch layers, so a
  decoder rebuilds the compressed architecture from the anchor's code without any pickle.
* :func:`pack_tensors` / :func:`unpack_tensors`: safetensors with a JSON header of our own.
* :func:`poisoned_template`: the anchor architecture with every floating parameter and buffer set
  to NaN, the only model a decoder receives; a weight the artifact does not carry shows up as NaN.
* :class:`OnnxModule`: an ONNX model run by onnxruntime behind the ``nn.Module`` interface, its
  bytes held as a buffer so the evaluation cache fingerprints exactly what runs.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from .base import ArtifactError

HEADER_KEY = "nnconform"

# ---------------------------------------------------------------------------------------------
# Module structure as JSON


def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


_LEAVES: dict[str, tuple[type, Any]] = {
    "Conv2d": (nn.Conv2d, _conv_args),
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    "BatchNorm2d": (nn.BatchNorm2d, lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                                               "affine": m.affine, "track_running_stats": m.track_running_stats}),
    "ReLU": (nn.ReLU, lambda m: {}),
    "ReLU6": (nn.ReLU6, lambda m: {}),
    "Identity": (nn.Identity, lambda m: {}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}),
    "MaxPool2d": (nn.MaxPool2d, lambda m: {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                                           "dilation": m.dilation, "ceil_mode": m.ceil_mode}),
    "AvgPool2d": (nn.AvgPool2d, lambda m: {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {"output_size": m.output_size}),
}


def module_spec(module: nn.Module, where: str = "") -> dict[str, Any]:
    """JSON description of a whitelisted leaf layer or an ``nn.Sequential`` of them."""
    if type(module) is nn.Sequential:
        return {"type": "Sequential", "children": [[name, module_spec(child, f"{where}.{name}")]
                                                   for name, child in module.named_children()]}
    kind = type(module).__name__
    if kind not in _LEAVES or type(module) is not _LEAVES[kind][0]:
        raise ArtifactError(f"cannot serialize the structure of {where or 'module'} ({type(module).__qualname__}): "
                            f"only nn.Sequential and {sorted(_LEAVES)} are describable")
    return {"type": kind, "args": _jsonable(_LEAVES[kind][1](module))}


def _jsonable(args: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def build_from_spec(spec: Mapping[str, Any], where: str = "") -> nn.Module:
    """Instantiate a module from :func:`module_spec` output (whitelisted types only)."""
    kind = spec.get("type")
    if kind == "Sequential":
        seq = nn.Sequential()
        for name, child in spec.get("children", []):
            seq.add_module(str(name), build_from_spec(child, f"{where}.{name}"))
        return seq
    if kind not in _LEAVES:
        raise ArtifactError(f"structure entry {where or '<root>'}: unknown layer type {kind!r}; "
                            f"allowed: Sequential, {sorted(_LEAVES)}")
    cls = _LEAVES[kind][0]
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(spec.get("args", {})).items()}
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"structure entry {where}: {kind}({args}) is invalid: {exc}") from None


def _same(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules have the same type and constructor arguments (not weights)."""
    if type(a) is not type(b):
        return False
    if type(a).__name__ in _LEAVES and type(a) is _LEAVES[type(a).__name__][0]:
        fn = _LEAVES[type(a).__name__][1]
        return fn(a) == fn(b)
    return True


def structure_changes(model: nn.Module, reference: nn.Module) -> list[list]:
    """``[[path, spec], ...]``: the submodules of ``model`` that differ from ``reference``'s.

    Containers of the same class are descended into; a module that differs (or is new) is
    described whole. ``reference`` is a fresh instance of the anchor architecture.
    """
    changes: list[list] = []

    def walk(m: nn.Module, r: nn.Module | None, prefix: str) -> None:
        for name, child in m.named_children():
            path = f"{prefix}{name}"
            ref_child = getattr(r, name, None) if r is not None else None
            if isinstance(ref_child, nn.Module) and _same(child, ref_child) and not _is_leaf(child):
                if type(child) is nn.Sequential and [n for n, _ in child.named_children()] != \
                        [n for n, _ in ref_child.named_children()]:
                    changes.append([path, module_spec(child, path)])
                else:
                    walk(child, ref_child, path + ".")
            elif isinstance(ref_child, nn.Module) and _same(child, ref_child):
                continue
            else:
                changes.append([path, module_spec(child, path)])
        if r is not None:
            for name, _ in r.named_children():
                if not hasattr(m, name) or getattr(m, name) is None:
                    raise ArtifactError(f"module {prefix}{name} was removed; a structure change must replace, "
                                        f"not delete, a layer")

    walk(model, reference, "")
    return changes


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


def apply_structure(template: nn.Module, changes: list) -> nn.Module:
    """Replace the template's submodules as :func:`structure_changes` recorded (in place)."""
    if not isinstance(changes, list):
        raise ArtifactError(f"structure must be a list of [path, spec] pairs, got {type(changes).__name__}")
    for entry in changes:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ArtifactError(f"structure entry {entry!r} is not a [path, spec] pair")
        path, spec = entry
        parent_path, _, name = path.rpartition(".")
        try:
            parent = template.get_submodule(parent_path) if parent_path else template
        except AttributeError:
            raise ArtifactError(f"structure entry {path!r}: the architecture has no module {parent_path!r}") from None
        if not hasattr(parent, name):
            raise ArtifactError(f"structure entry {path!r}: {type(parent).__name__} has no attribute {name!r}")
        setattr(parent, name, build_from_spec(spec, path))
    return template


# ---------------------------------------------------------------------------------------------
# Tensors


def pack_tensors(tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any] | None = None) -> bytes:
    """Deterministic safetensors bytes of ``tensors`` with ``header`` as one JSON metadata entry."""
    # one metadata entry: safetensors writes a multi-key metadata map in hash order, which would make
    # the bytes (and every size and fingerprint) differ from run to run
    meta = {HEADER_KEY: json.dumps(dict(header or {}), sort_keys=True, separators=(",", ":"))}
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def unpack_tensors(data: bytes, where: str = "artifact") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON header of :func:`pack_tensors` bytes; ArtifactError when malformed."""
    try:
        tensors = st_load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
        header = json.loads(raw[HEADER_KEY]) if HEADER_KEY in raw else {}
    except Exception as exc:  # safetensors raises several types on garbage
        raise ArtifactError(f"{where}: not a valid safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors, header


def load_full_state(module: nn.Module, state: Mapping[str, torch.Tensor], where: str = "artifact",
                    allow_missing: tuple[str, ...] = ("num_batches_tracked",)) -> nn.Module:
    """Load ``state`` strictly: every floating tensor of the module must come from the artifact."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(allow_missing)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ArtifactError(f"{where}: tensors do not match the architecture; missing {missing[:6]}"
                            f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ArtifactError(f"{where}: tensor {k} has shape {tuple(v.shape)}, the architecture expects "
                                f"{tuple(expected[k].shape)}")
    module.load_state_dict(dict(state), strict=False)
    return module


def poisoned_template(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose floating parameters and buffers are all NaN (integers kept). Non-persistent
    buffers (a detector's anchor-point grid) are kept: they are built by the architecture, not carried by weights,
    so no artifact could restore them."""
    template = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in template.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    return template


def fp32_state_bytes(model: nn.Module) -> int:
    """Size of the model's full state dict as float32 safetensors: the reference every ratio uses."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return len(st_save({k: v.contiguous() for k, v in state.items()}))


# ---------------------------------------------------------------------------------------------
# ONNX


_ORT_LEVELS = ("disable_all", "basic", "extended", "all")


class OnnxModule(nn.Module):
    """Runs an ONNX model with onnxruntime (CPU) behind ``forward``; the bytes are a buffer.

    ``optimization`` is onnxruntime's graph optimization level. QDQ graphs run at ``basic``: at
    ``extended``/``all`` onnxruntime fuses QuantizeLinear/DequantizeLinear chains into integer
    kernels, which changes the numbers (onnxruntime issues #25259, #28130, #32132; with
    onnxruntime 1.32 an AIMET W8A8 LeNet-5 export gives logits off by up to 9.3 that way).
    """

    #: built from ``onnx_bytes`` on first use: not part of what the module computes (nnconform.model_identity)
    __nnconform_derived__ = ("_session",)

    def __init__(self, onnx_bytes: bytes, input_name: str | None = None, optimization: str = "all") -> None:
        super().__init__()
        if optimization not in _ORT_LEVELS:
            raise ValueError(f"onnxruntime optimization {optimization!r}: choose one of {_ORT_LEVELS}")
        self.register_buffer("onnx_bytes", torch.from_numpy(np.frombuffer(bytes(onnx_bytes), dtype=np.uint8).copy()))
        self._input_name = input_name
        self._optimization = optimization
        self._session = None

    def _get_session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            opts.graph_optimization_level = {
                "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self._optimization]
            try:
                self._session = ort.InferenceSession(self.onnx_bytes.numpy().tobytes(), sess_options=opts,
                                                     providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise ArtifactError(f"onnxruntime cannot load the ONNX model: {type(exc).__name__}: {exc}") from None
            if self._input_name is None:
                self._input_name = self._session.get_inputs()[0].name
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._get_session()
        (out, *_) = session.run(None, {self._input_name: x.detach().float().contiguous().numpy()})
        return torch.from_numpy(np.ascontiguousarray(out)).float()

    def __deepcopy__(self, memo):
        return OnnxModule(self.onnx_bytes.numpy().tobytes(), self._input_name, self._optimization)


def check_onnx(data: bytes, where: str) -> None:
    """Parse and check an ONNX model; ArtifactError with onnx's own message otherwise."""
    import onnx

    try:
        model = onnx.load_from_string(bytes(data))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ArtifactError(f"{where}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None


def onnx_parameter_count(onnx_bytes: bytes) -> int:
    """Elements of the graph's stored weights and biases (quantization scales, zero points and integer
    shape constants excluded): the parameter count of what the artifact actually holds."""
    import numpy as np
    import onnx

    graph = onnx.load_from_string(bytes(onnx_bytes)).graph
    total = 0
    for init in graph.initializer:
        if init.name.endswith(("_scale", "_zero_point")) or init.data_type == onnx.TensorProto.INT64:
            continue
        total += int(np.prod(init.dims)) if len(init.dims) else 1
    return total
