"""Image classification: logits [N, C], per-sample top-1 correctness, top-1 accuracy.

Its paired statistic is :func:`nnconform.stats.paired_comparison` (multinomial paired bootstrap and
McNemar's exact test), exactly what every criterion used before tasks existed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..stats import PairedComparison, paired_comparison
from .base import SampleScores, Task, register_task


def _correct(scores) -> np.ndarray:
    """The correctness column of classification scores, or a bare correctness vector (older callers)."""
    if isinstance(scores, SampleScores):
        if scores.task != ClassificationTask.name:
            raise ValueError(f"classification: got {scores.task} scores")
        return scores["correct"]
    if scores is None:
        raise ValueError("classification: no per-sample scores (the model was not evaluated)")
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    return np.asarray(scores, dtype=bool).reshape(-1)


@register_task
class ClassificationTask(Task):
    """Image classification: top-1 accuracy of the argmax of the logits (higher is better)."""

    name = "classification"
    metric = "top1"
    metric_label = "top-1 accuracy"
    higher_is_better = True
    outputs_description = "logits [N, num_classes]"

    def check_outputs(self, outputs: torch.Tensor, num_samples: int) -> None:
        """Logits must be [N, C]."""
        if outputs.ndim != 2 or outputs.shape[0] != num_samples:
            raise ValueError(f"model output has shape {tuple(outputs.shape)}, expected ({num_samples}, num_classes)")

    def scores(self, outputs: torch.Tensor, labels) -> SampleScores:
        """Per-sample top-1 correctness (bool)."""
        labels = torch.as_tensor(labels).reshape(-1)
        return SampleScores(self.name, {"correct": (outputs.argmax(1) == labels).numpy()})

    def aggregate(self, scores, indices: np.ndarray | None = None) -> float:
        """Top-1 accuracy: the mean of the correctness column (over ``indices`` when given)."""
        c = _correct(scores)
        return float((c if indices is None else c[indices]).mean())

    def aggregate_resamples(self, scores, draws: np.ndarray) -> np.ndarray:
        """Accuracy of each resample row (vectorized)."""
        return _correct(scores)[draws].mean(axis=1)

    def paired(self, ref, new, **_ignored) -> PairedComparison:
        """McNemar's exact test and the paired bootstrap of the accuracy difference (the figures every report
        has shown since the first release). ``ref``/``new``: classification scores or correctness vectors."""
        return paired_comparison(_correct(ref), _correct(new))
