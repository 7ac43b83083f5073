"""Accuracy tiers (kept as data in ``anchors/tiers.toml``) and the non-inferiority gate, per task.

Classification's tiers are the ``[tiers.*]`` tables (margins relative to the reference accuracy); another
task's are ``[tasks.<task>.tiers.*]`` under the same names (for WER: absolute margins in WER units). A gate
compares the task's paired statistic (:meth:`nnconform.tasks.Task.paired`) with the tier's margin.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .paths import anchors_dir, read_toml
from .stats import PairedComparison

DEFAULT_TASK = "classification"


@dataclass(frozen=True)
class Tier:
    """An accuracy tier: a margin (relative to the reference metric, or absolute in its units), and why it exists."""

    name: str
    relative_margin: float | None
    require_no_significant_drop: bool
    rationale: str
    absolute_margin: float | None = None
    task: str = DEFAULT_TASK

    def __post_init__(self) -> None:
        if (self.relative_margin is None) == (self.absolute_margin is None):
            raise ValueError(f"tier {self.name!r} ({self.task}): give exactly one of relative_margin and "
                             f"absolute_margin")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"tier {self.name!r}: relative_margin must be in [0, 1), got {self.relative_margin}")
        if self.absolute_margin is not None and not self.absolute_margin >= 0:
            raise ValueError(f"tier {self.name!r}: absolute_margin must be >= 0, got {self.absolute_margin}")

    def margin(self, metric_ref: float) -> float:
        """The worsening of the metric this tier allows against a reference value (in the metric's units)."""
        if self.absolute_margin is not None:
            return self.absolute_margin
        return self.relative_margin * metric_ref


@dataclass(frozen=True)
class GateResult:
    """The verdict of one tier on one paired comparison."""

    tier: Tier
    passed: bool
    margin: float
    comparison: PairedComparison  # or a tasks.MetricComparison: the same drop / drop_ci95 / metric_ref
    reason: str

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"tier": self.tier.name, "passed": self.passed, "margin": self.margin,
                "reason": self.reason, **self.comparison.to_dict()}


def _read_tiers(table, task: str) -> dict[str, Tier]:
    tiers = {}
    for name in list(table.data):
        t = table.table(name)
        relative = t.float("relative_margin", None, min=0, max=1) if t.has("relative_margin") else None
        absolute = t.float("absolute_margin", None, min=0) if t.has("absolute_margin") else None
        if (relative is None) == (absolute is None):
            from .kit.plan import PlanError

            raise PlanError(f"{t.where}: give exactly one of relative_margin and absolute_margin")
        tiers[name] = Tier(name=name, relative_margin=relative, absolute_margin=absolute, task=task,
                           require_no_significant_drop=t.bool("require_no_significant_drop"),
                           rationale=t.str("rationale"))
        t.done()
    return tiers


@functools.lru_cache(maxsize=8)
def _load_all_tiers(path: Path) -> dict[str, dict[str, Tier]]:
    from .kit.plan import PlanError, Table
    from .tasks import task_names

    try:
        root = Table(read_toml(path), str(path))
        out = {DEFAULT_TASK: _read_tiers(root.table("tiers", {}), DEFAULT_TASK)}
        tasks = root.table("tasks", {})
        for task in list(tasks.data):
            if task not in task_names():
                raise PlanError(f"{tasks.at(task)}: {task!r} is not a task ({', '.join(task_names())})")
            tt = tasks.table(task)
            out[task] = _read_tiers(tt.table("tiers"), task)
            tt.done()
            if list(out[task]) != list(out[DEFAULT_TASK]):  # a claimed tier must mean a bar for every task
                raise PlanError(f"{tt.at('tiers')}: tiers {list(out[task])} differ from the classification tiers "
                                f"{list(out[DEFAULT_TASK])} (same names, same order, strictest first)")
        root.done()
    except PlanError as exc:
        raise ValueError(str(exc)) from None
    if not out[DEFAULT_TASK]:
        raise ValueError(f"{path}: no [tiers.*] tables")
    return out


def _load_tiers(path: Path) -> dict[str, Tier]:
    """Classification's tiers of one file (kept for callers that validate a tiers file)."""
    return _load_all_tiers(path)[DEFAULT_TASK]


_load_tiers.cache_clear = _load_all_tiers.cache_clear  # type: ignore[attr-defined]


def _task_name(task) -> str:
    return task if isinstance(task, str) else (task.name if task is not None else DEFAULT_TASK)


def load_tiers(path: str | Path | None = None, task=DEFAULT_TASK) -> dict[str, Tier]:
    """The tiers of ``task`` (a name or a Task), strictest first, from ``tiers.toml``; a KeyError names a
    task that has none."""
    every = _load_all_tiers(Path(path) if path else anchors_dir() / "tiers.toml")
    name = _task_name(task)
    if name not in every:
        raise KeyError(f"tiers.toml has no tiers for task {name!r} (add [tasks.{name}.tiers.*]; tasks with tiers: "
                       f"{list(every)})")
    return dict(every[name])


def get_tier(name: str, task=DEFAULT_TASK) -> Tier:
    """One tier of ``task`` by name; a KeyError listing the valid names otherwise."""
    tiers = load_tiers(task=task)
    try:
        return tiers[name]
    except KeyError:
        raise KeyError(f"unknown tier {name!r}; valid tiers: {list(tiers)}") from None


def _fmt(comparison, value: float) -> str:
    """A drop or margin in the comparison's units: percent for accuracy, WER points for WER."""
    if getattr(comparison, "higher_is_better", True):
        return f"{value:.4%}"
    return f"{value * 100:.2f} {comparison.metric.upper()} points"


def evaluate_tier(comparison, tier: Tier) -> GateResult:
    """Non-inferiority: pass when the upper end of the drop's 95% interval is within the margin (the drop is
    the worsening in the task's better direction: accuracy lost, WER gained)."""
    margin = tier.margin(comparison.metric_ref)
    lo, hi = comparison.drop_ci95
    f = functools.partial(_fmt, comparison)
    if hi > margin:
        return GateResult(tier, False, margin, comparison,
                          f"drop 95% CI upper end {f(hi)} exceeds the {tier.name} margin {f(margin)}")
    if tier.require_no_significant_drop and lo > 0:
        return GateResult(tier, False, margin, comparison,
                          f"drop of {f(comparison.drop)} is significant at 95% (CI {f(lo)}..{f(hi)})")
    return GateResult(tier, True, margin, comparison,
                      f"drop {f(comparison.drop)}, 95% CI {f(lo)}..{f(hi)}, within {tier.name} margin {f(margin)}")


def non_inferiority(ref, new, tier: str | Tier, task=DEFAULT_TASK) -> GateResult:
    """Run the tier's gate on two models' per-sample results: the task's ``SampleScores`` (or, for
    classification, per-sample correctness vectors)."""
    from .tasks import get_task

    task = get_task(task)
    tier = get_tier(tier, task) if isinstance(tier, str) else tier
    if tier.task != task.name:
        raise ValueError(f"tier {tier.name!r} is a {tier.task} tier, the comparison is {task.name}")
    return evaluate_tier(task.paired(ref, new), tier)


def tiers_met(comparison) -> dict[str, GateResult]:
    """Every tier of the comparison's task evaluated on it, strictest first."""
    return {name: evaluate_tier(comparison, tier) for name, tier in load_tiers(task=comparison.task).items()}


def best_tier_met(comparison) -> str | None:
    """The strictest tier the comparison meets, or None."""
    for name, result in tiers_met(comparison).items():
        if result.passed:
            return name
    return None
