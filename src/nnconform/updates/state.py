"""State-dict helpers shared by the update codecs: validation, byte views and deltas."""

from __future__ import annotations

import math
from typing import Mapping

import torch

StateDict = dict[str, torch.Tensor]

#: dtypes whose difference is a meaningful number; lossy codecs approximate only these. Every other
#: dtype (integers such as BatchNorm's ``num_batches_tracked``, bool, float8) is carried exactly.
CONTINUOUS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class StateMismatchError(ValueError):
    """Base and target are not two checkpoints of one architecture (keys, shapes or dtypes differ)."""


def canonical_state(state: Mapping[str, torch.Tensor], what: str = "state") -> StateDict:
    """Detached, contiguous CPU tensors, keys sorted; a TypeError names any non-tensor entry."""
    out: StateDict = {}
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}[{name!r}] is a {type(t).__name__}, not a torch.Tensor")
        if t.is_complex() or t.is_sparse or t.is_quantized:
            raise TypeError(f"{what}[{name!r}] has unsupported layout or dtype {t.dtype}/{t.layout}; update "
                            f"codecs take dense real tensors")
        out[name] = t.detach().cpu().contiguous()
    return out


def check_compatible(base: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`StateMismatchError` listing added and removed keys and changed shapes or dtypes."""
    added = sorted(set(target) - set(base))
    removed = sorted(set(base) - set(target))
    changed = [f"{k}: {tuple(base[k].shape)} {base[k].dtype} -> {tuple(target[k].shape)} {target[k].dtype}"
               for k in sorted(set(base) & set(target))
               if base[k].shape != target[k].shape or base[k].dtype != target[k].dtype]
    if added or removed or changed:
        parts = []
        if added:
            parts.append(f"keys only in the target: {_preview(added)}")
        if removed:
            parts.append(f"keys only in the base: {_preview(removed)}")
        if changed:
            parts.append(f"shape or dtype changed: {_preview(changed)}")
        raise StateMismatchError("an update needs base and target of the same architecture; " + "; ".join(parts))


def _preview(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes as a flat uint8 tensor (any dtype, including 0-d and empty)."""
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return flat.view(torch.uint8)


def from_bytes(raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rebuild a tensor with ``like``'s dtype and shape from its raw bytes."""
    if like.numel() == 0:
        return torch.empty(like.shape, dtype=like.dtype)
    return raw.contiguous().view(like.dtype).reshape(like.shape).clone()


def is_continuous(t: torch.Tensor) -> bool:
    """True for float16/bfloat16/float32/float64 tensors."""
    return t.dtype in CONTINUOUS_DTYPES


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (NaN payloads and signed zeros included)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(as_bytes(a), as_bytes(b))


def float_delta(name: str, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """target - base in float64, flattened; a ValueError naming the tensor if it is not finite."""
    d = target.reshape(-1).to(torch.float64) - base.reshape(-1).to(torch.float64)
    if d.numel() and not bool(torch.isfinite(d).all()):
        raise ValueError(f"tensor {name!r}: the delta has non-finite values; lossy update codecs need finite "
                         f"weights (use a lossless codec)")
    return d


def apply_sparse(base: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """base with ``base[index] + values`` at ``index`` (flat positions) and base's exact bits elsewhere."""
    out = base.reshape(-1).clone()
    if index.numel():
        out[index] = (out[index].to(torch.float64) + values.to(torch.float64)).to(base.dtype)
    return out.reshape(base.shape)


def raw_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of all tensor data (no container overhead)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def num_elements(shape) -> int:
    """Product of a shape (1 for a 0-d tensor)."""
    return math.prod(shape)
