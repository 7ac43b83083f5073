"""The task protocol: what a model's outputs are, the per-sample scores, the aggregate metric and its
paired statistic. One class per task, registered in :data:`TASKS` (a kit-style registry).

An anchor declares its task (``task = "asr"`` in its manifest; classification by default); every
criterion evaluates, gates and reports through the task, so compression, updates and split code is
the same for image classification, speech recognition and (next) detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from ..registry import Registry

#: one registry of task classes; a third-party task registers through the entry-point group
TASKS: Registry[type["Task"]] = Registry("task", "nnconform.tasks")

#: Bootstrap resamples and seed of the generic paired bootstrap (fixed: a report is reproducible to the digit).
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20261128


@dataclass(frozen=True)
class SampleScores:
    """Per-sample arrays (first axis: samples, dataset order) from which a task computes its aggregate.

    Kept for the paired statistics: the bootstrap resamples rows of every column together. A column may
    be an object array (one ground-truth list per image for detection), never a precomputed aggregate.
    """

    task: str
    columns: Mapping[str, np.ndarray]
    n: int = field(init=False)

    def __post_init__(self) -> None:
        lengths = {name: len(col) for name, col in self.columns.items()}
        if not lengths:
            raise ValueError(f"{self.task} scores: no columns")
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{self.task} scores: columns of different lengths {lengths}")
        object.__setattr__(self, "n", next(iter(lengths.values())))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class MetricComparison:
    """A task's aggregate metric for a reference and a test model on the same samples, and its difference.

    ``delta`` is new - ref in the metric's own units; ``drop`` is the loss in the task's better direction
    (ref - new for a higher-is-better metric, new - ref for a lower-is-better one such as WER), so a tier
    gate reads the same for every task. ``delta_ci95`` is a paired bootstrap percentile interval.
    """

    task: str
    metric: str
    higher_is_better: bool
    n: int
    metric_ref: float
    metric_new: float
    delta_ci95: tuple[float, float]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        """metric_new - metric_ref."""
        return self.metric_new - self.metric_ref

    @property
    def drop(self) -> float:
        """How much worse the new model is (positive: worse), in the metric's units."""
        return -self.delta if self.higher_is_better else self.delta

    @property
    def drop_ci95(self) -> tuple[float, float]:
        """95% interval of :attr:`drop`."""
        lo, hi = self.delta_ci95
        return (-hi, -lo) if self.higher_is_better else (lo, hi)

    @property
    def relative_delta(self) -> float:
        """delta / metric_ref (NaN when the reference metric is 0)."""
        return self.delta / self.metric_ref if self.metric_ref else float("nan")

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"task": self.task, "metric": self.metric, "n": self.n, "ref": self.metric_ref,
                "new": self.metric_new, "delta": self.delta, "relative_delta": self.relative_delta,
                "delta_ci95": list(self.delta_ci95), "drop": self.drop, "drop_ci95": list(self.drop_ci95),
                **dict(self.extra)}


class Task:
    """One kind of model output and its metric. Subclasses set the class attributes and implement
    :meth:`scores` and :meth:`aggregate`; :meth:`paired` defaults to a paired bootstrap over samples."""

    name: ClassVar[str]
    #: the key of the metric in records and manifests ("top1", "wer")
    metric: ClassVar[str]
    #: what a person reads ("top-1 accuracy", "WER")
    metric_label: ClassVar[str]
    higher_is_better: ClassVar[bool]
    #: what a model returns for a batch, in words (the reference pages and error messages quote it)
    outputs_description: ClassVar[str]

    def scores(self, outputs: torch.Tensor, labels: Any) -> SampleScores:
        """The per-sample scores of ``outputs`` (the model's outputs on the whole dataset) against ``labels``."""
        raise NotImplementedError

    def aggregate(self, scores: SampleScores, indices: np.ndarray | None = None) -> float:
        """The metric over all samples, or over the samples at ``indices`` (with repeats: a bootstrap draw)."""
        raise NotImplementedError

    def check_outputs(self, outputs: torch.Tensor, num_samples: int) -> None:
        """Raise ValueError naming the shape when ``outputs`` cannot be this task's outputs for ``num_samples``."""
        if outputs.ndim < 1 or outputs.shape[0] != num_samples:
            raise ValueError(f"{self.name}: model outputs have shape {tuple(outputs.shape)}, expected "
                             f"{self.outputs_description} with {num_samples} samples first")

    def concat_outputs(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """One tensor of the batches' outputs, in order (a task with variable-length outputs pads here)."""
        return torch.cat(list(batches))

    def aggregate_resamples(self, scores: SampleScores, draws: np.ndarray) -> np.ndarray:
        """:meth:`aggregate` of each row of ``draws`` (resample index rows); a task vectorizes it when it can."""
        return np.array([self.aggregate(scores, row) for row in draws], dtype=np.float64)

    def paired(self, ref: SampleScores, new: SampleScores, *, resamples: int = BOOTSTRAP_RESAMPLES,
               seed: int = BOOTSTRAP_SEED, level: float = 0.95):
        """Paired comparison of two models' scores on the same samples: the aggregate's difference and its
        paired bootstrap percentile interval (the same sample draws for both models, fixed seed)."""
        if ref.n != new.n:
            raise ValueError(f"{self.name}: paired comparison needs the same samples, got {ref.n} and {new.n}")
        if ref.n == 0:
            raise ValueError(f"{self.name}: bootstrap of an empty comparison")
        rng = np.random.default_rng(seed)
        deltas = []
        chunk = max(1, 2_000_000 // ref.n)  # bounded memory: at most ~2M indices drawn at once
        done = 0
        while done < resamples:
            k = min(chunk, resamples - done)
            draws = rng.integers(0, ref.n, size=(k, ref.n))
            deltas.append(self.aggregate_resamples(new, draws) - self.aggregate_resamples(ref, draws))
            done += k
        alpha = (1.0 - level) / 2
        lo, hi = np.nanquantile(np.concatenate(deltas), [alpha, 1 - alpha])
        return MetricComparison(task=self.name, metric=self.metric, higher_is_better=self.higher_is_better,
                                n=ref.n, metric_ref=self.aggregate(ref), metric_new=self.aggregate(new),
                                delta_ci95=(float(lo), float(hi)))

    def interval(self, scores: SampleScores, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
        """Bootstrap percentile interval of the aggregate over resampled samples (fixed seed): how precisely a
        small set (a smoke set) measures the metric."""
        if scores.n == 0:
            raise ValueError(f"{self.name}: interval of an empty set")
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, scores.n, size=(resamples, scores.n))
        alpha = (1.0 - level) / 2
        lo, hi = np.nanquantile(self.aggregate_resamples(scores, draws), [alpha, 1 - alpha])
        return float(lo), float(hi)

    def format_value(self, value: float) -> str:
        """A metric value as a person reads it (a percentage for a fraction-valued metric)."""
        return f"{value:.4%}"

    def describe(self) -> dict[str, Any]:
        """What the report and reference pages state about the task."""
        return {"task": self.name, "metric": self.metric, "metric_label": self.metric_label,
                "higher_is_better": self.higher_is_better, "outputs": self.outputs_description}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a task class under its ``name``."""
    TASKS.register(cls.name, cls)
    return cls


def task_names() -> list[str]:
    """Every registered task name."""
    return TASKS.names()


def get_task(task: "str | Task | None" = None, **options: Any) -> Task:
    """A task instance: ``task`` itself when it is one, else the registered class by name (classification
    when None) built with ``options`` (ASR: its vocabulary); a KeyError names the valid tasks."""
    if isinstance(task, Task):
        return task
    return TASKS.get(task or "classification")(**options)
