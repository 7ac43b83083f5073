"""Metrics of one compressed model against its anchor (the tier gate is :func:`.checks.check_accuracy`).

Every accuracy figure is paired: both models are evaluated on the same samples in the same order,
so the drop's bootstrap interval (and, for classification, McNemar's test) use the per-sample results
of the anchor's task (:mod:`nnconform.tasks`), and the gate is the task's tier non-inferiority rule
(:mod:`nnconform.gates`). ``acc_ref``/``acc``/``delta`` hold the task's metric in its own units (top-1
accuracy; WER for speech, where a positive delta is a worsening); the logits-only figures (agreement,
KL, worst class, McNemar) are None for any other task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..gates import tiers_met
from ..stats import mean_kl_divergence, top1_agreement, worst_class_drop
from ..tasks import Task, get_task


@dataclass(frozen=True)
class CompressionMetrics:
    """What the report shows for one (anchor, method, operating point)."""

    samples: int
    acc_ref: float  # the task's metric of the anchor (top-1 accuracy, WER)
    acc: float  # the task's metric of the compressed model
    delta: float  # acc - acc_ref
    relative_delta: float  # delta / acc_ref
    delta_ci95: tuple[float, float]
    mcnemar_p: float | None  # classification only (as the four below)
    ref_only: int | None
    new_only: int | None
    agreement: float | None  # top-1 agreement with the anchor
    mean_kl: float | None  # KL(anchor || compressed), nats
    worst_class: str | None
    worst_class_drop: float | None
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
    task: str = "classification"
    metric: str = "top1"
    metric_label: str = "top-1 accuracy"
    higher_is_better: bool = True

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


def compute_metrics(ref_logits: torch.Tensor, new_logits: torch.Tensor, labels, classes: tuple[str, ...], *,
                    bytes_ref: int, nbytes: int, params_ref: int, params: int, macs_ref: int, macs: int,
                    task: Task | str | None = None) -> CompressionMetrics:
    """The task's paired metric and tier verdicts, the cost ratios, and for classification agreement, KL and
    the worst class. ``ref_logits``/``new_logits``: the two models' outputs (logits for classification)."""
    task = get_task(task)
    ref_scores, new_scores = task.scores(ref_logits, labels), task.scores(new_logits, labels)
    cmp = task.paired(ref_scores, new_scores)
    results = tiers_met(cmp)
    tiers = {name: r.passed for name, r in results.items()}
    best = next((name for name, ok in tiers.items() if ok), None)
    extra: dict = dict(mcnemar_p=None, ref_only=None, new_only=None, agreement=None, mean_kl=None, worst_class=None,
                       worst_class_drop=None)
    if task.name == "classification":
        labels = torch.as_tensor(labels).reshape(-1)
        k, drop = worst_class_drop(ref_scores["correct"], new_scores["correct"], labels.numpy(), len(classes))
        extra = dict(mcnemar_p=cmp.mcnemar_p, ref_only=cmp.ref_only, new_only=cmp.new_only,
                     agreement=top1_agreement(ref_logits, new_logits), mean_kl=mean_kl_divergence(ref_logits, new_logits),
                     worst_class=classes[k] if k < len(classes) else str(k), worst_class_drop=drop)
    return CompressionMetrics(
        samples=cmp.n, acc_ref=cmp.metric_ref, acc=cmp.metric_new, delta=cmp.delta, relative_delta=cmp.relative_delta,
        delta_ci95=cmp.delta_ci95, **extra,
        bytes_ref=bytes_ref, bytes=nbytes, compression_ratio=bytes_ref / nbytes if nbytes else float("inf"),
        params_ref=params_ref, params=params, macs_ref=macs_ref, macs=macs, tiers_met=tiers,
        tier_reasons={name: r.reason for name, r in results.items()}, best_tier=best, task=task.name,
        metric=task.metric, metric_label=task.metric_label, higher_is_better=task.higher_is_better)
