"""What a model computes, as a fingerprint: the key of the evaluation cache.

Two models share cached logits only when everything their forward pass can read is the same:
for every submodule, its class (qualified name and the sha256 of the source file defining it),
every parameter and buffer it holds (registered or not, persistent or not: name, dtype, shape,
bytes) and every other attribute. Attributes are hashed when their value is plain data (numbers,
strings, tensors, dtypes, classes, top-level functions); a value the fingerprint cannot read (a
closure, a bound method, an arbitrary object, a hook) makes the model *uncacheable*: it is
evaluated every time rather than risk handing it another model's logits.

A class may name attributes that are derived from its hashed state and do not change what it
computes (an onnxruntime session built from the ONNX bytes it holds) in ``__nnconform_derived__``.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import types
from functools import lru_cache
from pathlib import Path

import torch

#: ``nn.Module.__dict__`` entries that are torch's own bookkeeping (hooks are checked separately).
_TORCH_SLOTS = frozenset({"training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules",
                          "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
                          "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                          "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
                          "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_compiled_call_impl"})
_HOOKS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_pre_hooks")


class Uncacheable(Exception):
    """The fingerprint cannot see everything a model's forward reads; the message says what."""


@lru_cache(maxsize=None)
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_identity(obj) -> str:
    """``module:qualname@sha256-of-its-source-file`` of a class or function (no file: built in, no hash)."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        path = None
    digest = _file_sha256(path) if path and Path(path).is_file() else "builtin"
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}@{digest}"


def _feed(h, where: str, value) -> None:
    """Hash one attribute value, or raise :class:`Uncacheable` naming ``where``."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, (torch.dtype, torch.device, torch.Size, torch.memory_format, torch.layout,
                            torch.qscheme, enum.Enum)):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, type):
        h.update(f"class:{code_identity(value)}".encode())
    elif isinstance(value, types.FunctionType):
        if value.__closure__ or "<locals>" in value.__qualname__ or value.__name__ == "<lambda>":
            raise Uncacheable(f"{where} is a closure or local function ({value.__qualname__})")
        h.update(f"function:{code_identity(value)}".encode())
    elif isinstance(value, types.BuiltinFunctionType):
        h.update(f"builtin:{getattr(value, '__module__', '')}.{value.__qualname__}".encode())
    elif isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        h.update(f"{type(value).__name__}[{len(items)}]".encode())
        for i, item in enumerate(items):
            _feed(h, f"{where}[{i}]", item)
    elif isinstance(value, dict):
        h.update(f"dict[{len(value)}]".encode())
        for k in sorted(value, key=repr):
            _feed(h, f"{where} key", k)
            _feed(h, f"{where}[{k!r}]", value[k])
    elif type(value).__module__ == "torchvision.models.detection._utils" and hasattr(value, "__dict__"):
        # torchvision detectors' helpers (BoxCoder, Matcher, SSDMatcher, BalancedPositiveNegativeSampler) are
        # plain parameter holders: their class's code and their attributes are all they compute from
        h.update(f"object:{code_identity(type(value))}".encode())
        _feed(h, f"{where}.__dict__", dict(vars(value)))
    else:
        raise Uncacheable(f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which the "
                          "fingerprint cannot read")


def model_content_sha256(model: torch.nn.Module) -> str:
    """The fingerprint of what ``model`` computes (see the module docstring); :class:`Uncacheable` when some
    attribute of a submodule cannot be read as data."""
    h = hashlib.sha256(b"nnconform-model-content-1")
    for name, module in model.named_modules(remove_duplicate=False):
        where = f"{type(model).__qualname__}{'.' + name if name else ''}"
        h.update(f"module {name!r} {code_identity(type(module))}".encode())
        for hook in _HOOKS:
            if getattr(module, hook, None):
                raise Uncacheable(f"{where} has {hook.strip('_').replace('_', ' ')} registered")
        derived = set(getattr(type(module), "__nnconform_derived__", ()))
        for key in sorted(module.__dict__):
            if key in _TORCH_SLOTS or key in derived:
                continue
            h.update(f"attr {key}".encode())
            _feed(h, f"{where}.{key}", module.__dict__[key])
        for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
            for key in sorted(table):
                h.update(f"{kind} {key}".encode())
                _feed(h, f"{where}.{key}", table[key])
        h.update(f"non-persistent {sorted(module._non_persistent_buffers_set)}".encode())
    return h.hexdigest()
