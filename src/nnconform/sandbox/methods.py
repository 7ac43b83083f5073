"""Adapters that run INSIDE the sandbox, beside a proposal's code: ``"nnconform.sandbox.methods:<fn>"``.

Each function is an entry of :func:`nnconform.sandbox.run_sandboxed`: it takes ``(inputs, params)`` as
data (tensors, bytes, plain values), imports the proposal's module from the proposal folder's copy,
builds the proposal's method from its name and config fields, makes ONE call of it and returns data.
Nothing here reads the anchors folder or evaluation data (both are hidden in the sandbox): the
harness passes what a call needs (the architecture's builder and arguments, the anchor's weights,
the calibration tensors, a base checkpoint, a payload).

``describe`` lists the methods the proposal registers and validates the manifest's configs (errors
as data); ``compress``/``decode`` (compressors), ``update_encode``/``update_decode`` (update codecs),
``features_encode``/``features_decode`` (feature codecs) are the method calls, one per process.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import sys
from pathlib import Path
from typing import Any

#: Method kinds a proposal may register, and the module that creates each kind's registry.
KINDS = {"compressor": "nnconform.compress", "update-codec": "nnconform.updates",
         "feature-codec": "nnconform.split.codecs"}
#: Architecture builders the harness may name (a builder is a trusted constructor, never proposal code).
BUILDER_PREFIXES = ("nnconform.", "torchvision.models")


# ---------------------------------------------------------------------------------------------
# Loading the proposal inside the sandbox


def _proposal_folder(module: str) -> Path:
    """The proposal folder's copy: the worker puts it first on ``sys.path`` before importing this module."""
    for entry in sys.path:
        if entry and (Path(entry) / module).is_file():
            return Path(entry)
    raise FileNotFoundError(f"proposal module {module!r} is not in the sandbox's proposal folder")


def _registries() -> dict[str, Any]:
    from ..kit.methods import registry

    for module in KINDS.values():
        importlib.import_module(module)
    return {kind: registry(kind) for kind in KINDS}


def load_proposal_code(params: dict) -> dict[str, list[str]]:
    """Import the proposal's ``module`` (a file of its folder) or ``package``; return the names it registered
    per kind (those not registered before it ran)."""
    from .worker import import_proposal_file

    regs = _registries()
    before = {kind: set(reg.names()) for kind, reg in regs.items()}
    if params.get("module"):
        import_proposal_file(_proposal_folder(params["module"]), params["module"])
    elif params.get("package"):
        importlib.import_module(params["package"])
    return {kind: sorted(set(reg.names()) - before[kind]) for kind, reg in regs.items()}


def _method(kind: str, name: str, config: dict):
    from ..kit.methods import make

    return make(kind, name, {k: v for k, v in config.items() if k != "method"})


def _plain(value: Any) -> Any:
    """A method's metadata as plain JSON values (anything else as its text)."""
    import json

    from ..records import _jsonable

    return json.loads(json.dumps(_jsonable(value), default=str, allow_nan=False)) if value is not None else None


# ---------------------------------------------------------------------------------------------
# describe: what the proposal registers, and whether the manifest's configs build


def _fields(config_cls) -> list[dict]:
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "default": _plain(list(default) if isinstance(default, tuple) else default),
                    "required": f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})
    return out


def describe(inputs: dict, params: dict) -> dict:
    """The proposal's registered methods (kind, name, description, config fields and defaults, version,
    ``lossless``) and, for each manifest point ``params["points"]`` (``where``, ``kind``, ``name``,
    ``config``), a problem when its config does not build (the proposal's own validation)."""
    names = load_proposal_code(params)
    regs = _registries()
    methods = []
    for kind, found in names.items():
        for name in found:
            cls = regs[kind].get(name)
            config_cls = getattr(cls, "Config", None)
            lossless = getattr(cls, "lossless", False)
            methods.append({
                "kind": kind, "name": name, "class": getattr(cls, "__qualname__", str(cls)),
                "description": str(getattr(cls, "description", "") or "").strip()
                or (cls.__doc__ or "").strip().split("\n")[0],
                "version": int(getattr(config_cls, "VERSION", 1)),
                "fields": _fields(config_cls) if dataclasses.is_dataclass(config_cls) else [],
                "lossless": lossless if isinstance(lossless, bool) else False,
                "decode_tolerance": float(getattr(cls, "decode_tolerance", 0) or 0) or None,
            })
    points = []
    for point in params.get("points", []):
        if point["name"] not in names.get(point["kind"], []):
            continue  # the checker names a method the proposal does not register
        try:
            method = _method(point["kind"], point["name"], point.get("config") or {})
        except Exception as exc:  # the proposal's own validation, whatever it raises
            points.append({"where": point["where"], "error": f"{type(exc).__name__}: {exc}"})
            continue
        lossless = getattr(method, "lossless", None)
        points.append({"where": point["where"], "error": None,
                       "lossless": lossless if isinstance(lossless, bool) else None})
    return {"methods": methods, "points": points}


# ---------------------------------------------------------------------------------------------
# Compressors


def build_architecture(params: dict):
    """The anchor's architecture from its builder (``module:callable``) and arguments, in eval mode."""
    builder = str(params["architecture"])
    module_name, _, attr = builder.partition(":")
    if not module_name.startswith(BUILDER_PREFIXES):
        raise ValueError(f"architecture builder {builder!r} is not one of nnconform's or torchvision's")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(**dict(params.get("architecture_kwargs") or {})).eval()


def _context(params: dict, inputs: dict):
    import tempfile

    import torch

    from ..compress.base import CalibrationSet, CompressionContext

    cal = params.get("calibration")
    if cal is None:  # a decoder sees no data: one all-zero input of the anchor's shape (for tracing) only
        calibration = CalibrationSet("none", "none", (), torch.zeros((1, *params["input_shape"])),
                                     torch.zeros(1, dtype=torch.long), "none", "decoders see no data")
    else:
        tensors = inputs["calibration"]
        calibration = CalibrationSet(cal["dataset"], cal["split"], tuple(cal["indices"]), tensors["images"],
                                     tensors["labels"], cal["fingerprint"], cal.get("description", ""))
    workdir = Path(tempfile.mkdtemp(prefix="compress-"))
    torch.manual_seed(int(params.get("seed", 0)))
    return CompressionContext(params["anchor"], tuple(params["input_shape"]), int(params["num_classes"]),
                              calibration, workdir, cache_dir=None, seed=int(params.get("seed", 0)))


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def compress(inputs: dict, params: dict) -> dict:
    """``compress`` of the proposal's compressor on the anchor (``inputs["anchor"]``) with the calibration
    set; returns the artifact's files (``file.<i>`` bytes, names in ``files``), ``format``,
    ``reported_bytes``/``params``/``macs``/``metadata`` and the method's own module's logits on
    ``inputs["probe"]["x"]`` (``probe``), when it returned a module."""
    import torch

    from ..compress.base import CompressedModel
    from ..compress.serialize import load_full_state

    load_proposal_code(params)
    compressor = _method("compressor", params["method"], params["config"])
    model = build_architecture(params)
    load_full_state(model, inputs["anchor"], "anchor weights")
    ctx = _context(params, inputs)
    _seed(ctx.seed)
    result = compressor.compress(model.eval(), ctx)
    if not isinstance(result, CompressedModel):
        raise TypeError(f"{params['method']}.compress returned {type(result).__name__}, expected a CompressedModel")
    names = list(result.artifact.files)
    out: dict[str, Any] = {f"file.{i}": result.artifact.files[n] for i, n in enumerate(names)}
    out.update(files=names, format=result.artifact.format, reported_bytes=_plain(result.reported_bytes),
               params=_plain(result.params), macs=_plain(result.macs), metadata=_plain(result.metadata) or {})
    if result.module is not None:
        with torch.inference_mode():
            logits = result.module.eval()(inputs["probe"]["x"])
        out["probe"] = {"logits": torch.as_tensor(logits).float().contiguous()}
    return out


def _export_onnx(module, example) -> bytes:
    """An ONNX graph of a decoded module whose tensors do not fit the anchor's architecture."""
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


def _fits(module, template) -> bool:
    got, want = module.state_dict(), template.state_dict()
    return set(got) == set(want) and all(tuple(got[k].shape) == tuple(want[k].shape) for k in want)


def decode(inputs: dict, params: dict) -> dict:
    """``decode`` of the artifact (files ``file.<i>``, names in ``params["files"]``) on a NaN-filled template of
    the anchor's architecture, twice; returns the decoded state dict (``state``, and ``state_again`` when the
    second decode differs) or, for a module of another architecture, its ONNX export (``onnx``)."""
    import torch

    from ..compress.base import Artifact
    from ..compress.serialize import poisoned_template

    load_proposal_code(params)
    compressor = _method("compressor", params["method"], params["config"])
    artifact = Artifact({n: inputs[f"file.{i}"] for i, n in enumerate(params["files"])}, params["format"])
    architecture = build_architecture(params)
    ctx = _context(params, inputs)
    decoded = [compressor.decode(artifact, poisoned_template(architecture), ctx) for _ in range(2)]
    for d in decoded:
        if not isinstance(d, torch.nn.Module):
            raise TypeError(f"decode returned {type(d).__name__}, not an nn.Module")
    if _fits(decoded[0], architecture):
        first = {k: v.detach().clone() for k, v in decoded[0].state_dict().items()}
        second = decoded[1].state_dict() if _fits(decoded[1], architecture) else {}
        out: dict[str, Any] = {"state": first}
        if set(second) != set(first) or any(not torch.equal(first[k], second[k]) for k in first):
            out["state_again"] = {k: v.detach().clone() for k, v in (second or first).items()}
            out["again_differs"] = True
        return out
    example = ctx.calibration.images[:1]
    try:
        return {"onnx": _export_onnx(decoded[0], example), "why_onnx": _mismatch(decoded[0], architecture)}
    except Exception as exc:
        raise TypeError(f"the decoded model is not the anchor's architecture ({_mismatch(decoded[0], architecture)}) "
                        f"and does not export to ONNX ({type(exc).__name__}: {str(exc)[:300]})") from None


def _mismatch(module, template) -> str:
    got, want = set(module.state_dict()), set(template.state_dict())
    return (f"tensors missing {sorted(want - got)[:4]}, unexpected {sorted(got - want)[:4]}" if got != want
            else "tensor shapes differ")


# ---------------------------------------------------------------------------------------------
# Update codecs


def update_encode(inputs: dict, params: dict) -> dict:
    """``encode(base, target)`` of the proposal's update codec: the payload body (``body`` bytes)."""
    load_proposal_code(params)
    codec = _method("update-codec", params["codec"], params["config"])
    body = codec.encode(inputs["base"], inputs["target"])
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"{params['codec']}.encode returned {type(body).__name__}, expected bytes")
    return {"body": bytes(body)}


def update_decode(inputs: dict, params: dict) -> dict:
    """``decode(base, body)`` of the proposal's update codec: the reconstructed state dict (``state``)."""
    load_proposal_code(params)
    codec = _method("update-codec", params["codec"], params["config"])
    state = codec.decode(inputs["base"], inputs["body"])
    return {"state": {k: v.detach().contiguous().clone() for k, v in dict(state).items()}}


# ---------------------------------------------------------------------------------------------
# Feature codecs


def features_encode(inputs: dict, params: dict) -> dict:
    """``encode`` of each sample's tensor (``inputs["features"]``, keys ``0..n-1``): the payloads concatenated
    (``payloads``) and their ``lengths``."""
    load_proposal_code(params)
    codec = _method("feature-codec", params["codec"], params["config"])
    features = inputs["features"]
    payloads = []
    for i in range(len(features)):
        p = codec.encode(features[str(i)])
        if not isinstance(p, (bytes, bytearray)):
            raise TypeError(f"{params['codec']}.encode returned {type(p).__name__} for sample {i}, expected bytes")
        payloads.append(bytes(p))
    return {"payloads": b"".join(payloads) or b"\0", "lengths": [len(p) for p in payloads],
            "empty": not any(payloads)}


def features_decode(inputs: dict, params: dict) -> dict:
    """``decode`` of each payload (``inputs["payloads"]`` cut at ``params["lengths"]``): the tensors (keys
    ``0..n-1``, in the order given)."""
    import torch

    load_proposal_code(params)
    codec = _method("feature-codec", params["codec"], params["config"])
    blob = inputs["payloads"] if not params.get("empty") else b""
    out, at = {}, 0
    for i, n in enumerate(params["lengths"]):
        t = codec.decode(blob[at:at + n])
        at += n
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{params['codec']}.decode returned {type(t).__name__} for payload {i}, expected a tensor")
        out[str(i)] = t.detach().contiguous().clone()
    return {"decoded": out}
