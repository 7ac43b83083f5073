"""Paired statistics on per-sample results: the basis of every classification gate.

All functions take the per-sample correctness vectors (or logits) of a reference model and of
a model under test, evaluated on the same samples in the same order. Other tasks' paired
statistics are :meth:`nnconform.tasks.Task.paired` (a paired bootstrap of the task's metric);
:func:`paired_comparison` is the classification task's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _sps

#: Bootstrap resamples and seed: fixed so a report is reproducible to the last digit.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20261128


@dataclass(frozen=True)
class PairedComparison:
    """Accuracy of a reference and a test model on the same samples, and their difference."""

    n: int
    acc_ref: float
    acc_new: float
    delta: float  # acc_new - acc_ref
    delta_ci95: tuple[float, float]  # bootstrap percentile interval of delta
    ref_only: int  # samples the reference gets right and the new model wrong (McNemar's b)
    new_only: int  # samples the new model gets right and the reference wrong (McNemar's c)
    mcnemar_p: float  # exact two-sided McNemar test

    #: the task interface every gate reads (see :class:`nnconform.tasks.MetricComparison`)
    task = "classification"
    metric = "top1"
    higher_is_better = True

    @property
    def metric_ref(self) -> float:
        """The reference's top-1 accuracy (the task-generic name of ``acc_ref``)."""
        return self.acc_ref

    @property
    def metric_new(self) -> float:
        """The new model's top-1 accuracy (the task-generic name of ``acc_new``)."""
        return self.acc_new

    @property
    def drop(self) -> float:
        """acc_ref - acc_new (positive when the new model is worse)."""
        return -self.delta

    @property
    def drop_ci95(self) -> tuple[float, float]:
        """95% interval of the drop."""
        return (-self.delta_ci95[1], -self.delta_ci95[0])

    @property
    def relative_delta(self) -> float:
        """delta / acc_ref."""
        return self.delta / self.acc_ref if self.acc_ref else float("nan")

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {
            "n": self.n,
            "acc_ref": self.acc_ref,
            "acc_new": self.acc_new,
            "delta": self.delta,
            "relative_delta": self.relative_delta,
            "delta_ci95": list(self.delta_ci95),
            "ref_only": self.ref_only,
            "new_only": self.new_only,
            "mcnemar_p": self.mcnemar_p,
        }


def _as_bool(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=bool).reshape(-1)


def mcnemar_exact(ref_only: int, new_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (binomial test at p=0.5)."""
    n = ref_only + new_only
    if n == 0:
        return 1.0
    return float(_sps.binomtest(ref_only, n, 0.5, alternative="two-sided").pvalue)


def bootstrap_delta_ci(ref_correct, new_correct, *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap percentile interval of acc_new - acc_ref.

    Each per-sample difference is -1, 0 or +1, so resampling n samples with replacement is
    exactly a multinomial draw of the three counts; drawing the counts is the same bootstrap
    at a fraction of the cost.
    """
    r, c = _as_bool(ref_correct), _as_bool(new_correct)
    n = r.size
    if n == 0:
        raise ValueError("bootstrap of an empty comparison")
    plus = int(np.sum(c & ~r))
    minus = int(np.sum(r & ~c))
    probs = np.array([plus, minus, n - plus - minus], dtype=np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, probs, size=resamples)
    deltas = (counts[:, 0] - counts[:, 1]) / n
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(deltas, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_comparison(ref_correct, new_correct) -> PairedComparison:
    """Compare two per-sample correctness vectors of equal length."""
    r, c = _as_bool(ref_correct), _as_bool(new_correct)
    if r.shape != c.shape:
        raise ValueError(f"paired comparison needs equal lengths, got {r.size} and {c.size}")
    b = int(np.sum(r & ~c))
    cc = int(np.sum(c & ~r))
    acc_r, acc_c = float(r.mean()), float(c.mean())
    return PairedComparison(
        n=int(r.size),
        acc_ref=acc_r,
        acc_new=acc_c,
        delta=acc_c - acc_r,
        delta_ci95=bootstrap_delta_ci(r, c),
        ref_only=b,
        new_only=cc,
        mcnemar_p=mcnemar_exact(b, cc),
    )


def top1_agreement(ref_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    """Fraction of samples on which both models predict the same class."""
    return float((ref_logits.argmax(1) == new_logits.argmax(1)).double().mean())


def mean_kl_divergence(ref_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(ref) || softmax(new)), in nats."""
    ref_lp = torch.log_softmax(ref_logits.double(), dim=1)
    new_lp = torch.log_softmax(new_logits.double(), dim=1)
    return float(torch.sum(ref_lp.exp() * (ref_lp - new_lp), dim=1).mean())


def per_class_accuracy(correct, labels, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class with no samples)."""
    c, y = _as_bool(correct), np.asarray(labels).reshape(-1)
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        mask = y == k
        if mask.any():
            out[k] = c[mask].mean()
    return out


def worst_class_drop(ref_correct, new_correct, labels, num_classes: int) -> tuple[int, float]:
    """The class whose accuracy drops most, and that drop (negative when every class improves)."""
    drops = per_class_accuracy(ref_correct, labels, num_classes) - per_class_accuracy(new_correct, labels, num_classes)
    k = int(np.nanargmax(drops))
    return k, float(drops[k])


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    z = float(_sps.norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)
