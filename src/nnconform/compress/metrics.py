"""Metrics of one compressed model against its anchor (the tier gate is :func:`.checks.check_accuracy`).

Every accuracy figure is paired: both models are evaluated on the same samples in the same order,
so the drop's bootstrap interval and McNemar's test use the per-sample results
(:mod:`nnconform.stats`), and the gate is the tier's non-inferiority rule (:mod:`nnconform.gates`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..gates import evaluate_tier, load_tiers
from ..stats import mean_kl_divergence, paired_comparison, top1_agreement, worst_class_drop


@dataclass(frozen=True)
class CompressionMetrics:
    """What the report shows for one (anchor, method, operating point)."""

    samples: int
    acc_ref: float
    acc: float
    delta: float  # acc - acc_ref
    relative_delta: float  # delta / acc_ref
    delta_ci95: tuple[float, float]
    mcnemar_p: float
    ref_only: int
    new_only: int
    agreement: float  # top-1 agreement with the anchor
    mean_kl: float  # KL(anchor || compressed), nats
    worst_class: str
    worst_class_drop: float
    bytes_ref: int  # float32 safetensors of the anchor's state dict
    bytes: int  # the artifact's length
    compression_ratio: float  # bytes_ref / bytes
    params_ref: int
    params: int
    macs_ref: int
    macs: int
    tiers_met: dict[str, bool]
    tier_reasons: dict[str, str]
    best_tier: str | None

    @property
    def param_reduction(self) -> float:
        return 1 - self.params / self.params_ref if self.params_ref else float("nan")

    @property
    def mac_reduction(self) -> float:
        return 1 - self.macs / self.macs_ref if self.macs_ref else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta_ci95"] = list(self.delta_ci95)
        d["param_reduction"] = self.param_reduction
        d["mac_reduction"] = self.mac_reduction
        return d


def compute_metrics(ref_logits: torch.Tensor, new_logits: torch.Tensor, labels: torch.Tensor,
                    classes: tuple[str, ...], *, bytes_ref: int, nbytes: int, params_ref: int, params: int,
                    macs_ref: int, macs: int) -> CompressionMetrics:
    """Paired accuracy, agreement, KL, worst class and the cost ratios."""
    labels = labels.reshape(-1)
    ref_correct = (ref_logits.argmax(1) == labels).numpy()
    new_correct = (new_logits.argmax(1) == labels).numpy()
    cmp = paired_comparison(ref_correct, new_correct)
    k, drop = worst_class_drop(ref_correct, new_correct, labels.numpy(), len(classes))
    results = {name: evaluate_tier(cmp, tier) for name, tier in load_tiers().items()}
    tiers = {name: r.passed for name, r in results.items()}
    best = next((name for name, ok in tiers.items() if ok), None)
    return CompressionMetrics(
        samples=cmp.n, acc_ref=cmp.acc_ref, acc=cmp.acc_new, delta=cmp.delta, relative_delta=cmp.relative_delta,
        delta_ci95=cmp.delta_ci95, mcnemar_p=cmp.mcnemar_p, ref_only=cmp.ref_only, new_only=cmp.new_only,
        agreement=top1_agreement(ref_logits, new_logits), mean_kl=mean_kl_divergence(ref_logits, new_logits),
        worst_class=classes[k] if k < len(classes) else str(k), worst_class_drop=drop,
        bytes_ref=bytes_ref, bytes=nbytes, compression_ratio=bytes_ref / nbytes if nbytes else float("inf"),
        params_ref=params_ref, params=params, macs_ref=macs_ref, macs=macs, tiers_met=tiers,
        tier_reasons={name: r.reason for name, r in results.items()}, best_tier=best)
