"""Comparing two checkpoints: what changed in the weights, and what changed in the predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..stats import PairedComparison, mcnemar_exact, paired_comparison
from .state import canonical_state, check_compatible, identical, is_continuous


@dataclass(frozen=True)
class LayerChange:
    """How much one tensor changed between base and target."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    changed: int  # elements whose bits differ
    delta_l2: float  # ||target - base||_2 (float tensors; 0 for others)
    base_l2: float
    max_abs_delta: float

    @property
    def changed_fraction(self) -> float:
        """Share of elements whose bits differ."""
        return self.changed / self.numel if self.numel else 0.0

    @property
    def relative_l2(self) -> float:
        """||delta|| / ||base|| (inf when a zero tensor changed, 0 when nothing changed)."""
        if self.base_l2:
            return self.delta_l2 / self.base_l2
        return float("inf") if self.delta_l2 else 0.0

    def to_dict(self) -> dict:
        """Plain dict for records, with the derived fractions."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["changed_fraction"] = self.changed_fraction
        d["relative_l2"] = self.relative_l2
        return d


def weight_changes(base: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> list[LayerChange]:
    """Per tensor (sorted by name): elements changed, norm of the change, norm of the base."""
    base_c, target_c = canonical_state(base, "base"), canonical_state(target, "target")
    check_compatible(base_c, target_c)
    out = []
    for name, b in base_c.items():
        t = target_c[name]
        if identical(b, t):
            changed = 0
        elif b.numel() and b.element_size() in (1, 2, 4, 8):
            bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[b.element_size()]
            changed = int((b.reshape(-1).view(bits) != t.reshape(-1).view(bits)).sum())
        else:
            changed = int((b != t).sum())
        if is_continuous(b):
            d = t.to(torch.float64) - b.to(torch.float64)
            delta_l2 = float(torch.linalg.vector_norm(d)) if d.numel() else 0.0
            base_l2 = float(torch.linalg.vector_norm(b.to(torch.float64))) if b.numel() else 0.0
            max_abs = float(d.abs().max()) if d.numel() else 0.0
        else:
            delta_l2 = base_l2 = max_abs = 0.0
        out.append(LayerChange(name, str(b.dtype).removeprefix("torch."), tuple(b.shape), b.numel(), changed,
                               delta_l2, base_l2, max_abs))
    return out


def summarize_changes(changes: Sequence[LayerChange]) -> dict:
    """Totals over a model: tensors and elements changed, global relative norm of the change."""
    numel = sum(c.numel for c in changes)
    changed = sum(c.changed for c in changes)
    delta_sq = sum(c.delta_l2 ** 2 for c in changes)
    base_sq = sum(c.base_l2 ** 2 for c in changes)
    return {
        "tensors": len(changes),
        "tensors_changed": sum(1 for c in changes if c.changed),
        "elements": numel,
        "elements_changed": changed,
        "changed_fraction": changed / numel if numel else 0.0,
        "delta_l2": delta_sq ** 0.5,
        "relative_l2": (delta_sq / base_sq) ** 0.5 if base_sq else 0.0,
    }


@dataclass(frozen=True)
class ClassChange:
    """One class's accuracy under base and target, and the paired test on its samples."""

    index: int
    name: str
    n: int
    acc_base: float
    acc_target: float
    base_only: int  # samples of this class the base gets right and the target wrong
    target_only: int
    mcnemar_p: float

    @property
    def delta(self) -> float:
        return self.acc_target - self.acc_base

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delta"] = self.delta
        return d


@dataclass(frozen=True)
class CheckpointComparison:
    """Accuracy of base and target on the same samples, their agreement, and per-class changes."""

    base: str
    target: str
    comparison: PairedComparison
    agreement: float
    classes: tuple[ClassChange, ...]

    def improved(self, alpha: float = 0.05) -> list[ClassChange]:
        """Classes whose accuracy rose significantly (exact McNemar at ``alpha``)."""
        return [c for c in self.classes if c.delta > 0 and c.mcnemar_p < alpha]

    def regressed(self, alpha: float = 0.05) -> list[ClassChange]:
        """Classes whose accuracy fell significantly (exact McNemar at ``alpha``)."""
        return [c for c in self.classes if c.delta < 0 and c.mcnemar_p < alpha]

    def to_dict(self) -> dict:
        """Plain dict for records and the report."""
        return {
            "base": self.base,
            "target": self.target,
            **self.comparison.to_dict(),
            "agreement": self.agreement,
            "classes": [c.to_dict() for c in self.classes],
            "improved": [c.name for c in self.improved()],
            "regressed": [c.name for c in self.regressed()],
        }


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def compare_predictions(base_name: str, target_name: str, *, labels, base_pred, target_pred,
                        classes: Sequence[str]) -> CheckpointComparison:
    """Compare two models' top-1 predictions on the same labelled samples."""
    y, pb, pt = _np(labels).reshape(-1), _np(base_pred).reshape(-1), _np(target_pred).reshape(-1)
    if not (y.shape == pb.shape == pt.shape):
        raise ValueError(f"labels and predictions must have one entry per sample, got {y.size}, {pb.size}, {pt.size}")
    cb, ct = pb == y, pt == y
    per_class = []
    for k, cname in enumerate(classes):
        m = y == k
        n = int(m.sum())
        b_only = int((cb & ~ct & m).sum())
        t_only = int((ct & ~cb & m).sum())
        per_class.append(ClassChange(k, str(cname), n, float(cb[m].mean()) if n else float("nan"),
                                     float(ct[m].mean()) if n else float("nan"), b_only, t_only,
                                     mcnemar_exact(b_only, t_only)))
    return CheckpointComparison(base_name, target_name, paired_comparison(cb, ct),
                                float((pb == pt).mean()) if y.size else float("nan"), tuple(per_class))


def compare_results(base_name: str, target_name: str, base_result, target_result,
                    classes: Sequence[str]) -> CheckpointComparison:
    """Compare two ``EvalResult``-like objects (``logits`` [N, C], ``labels``) of the same dataset."""
    base_pred = _np(base_result.logits).argmax(1)
    target_pred = _np(target_result.logits).argmax(1)
    if not np.array_equal(_np(base_result.labels), _np(target_result.labels)):
        raise ValueError(f"{base_name} and {target_name} were evaluated on different samples (labels differ)")
    return compare_predictions(base_name, target_name, labels=base_result.labels, base_pred=base_pred,
                               target_pred=target_pred, classes=classes)
