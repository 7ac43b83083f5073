"""Tasks: what a model's outputs are and the metric computed from them (classification, ASR, detection).

``get_task(anchor.task)`` gives the task of an anchor; ``TASKS`` is the registry of task classes.
"""

from .base import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, TASKS, MetricComparison, SampleScores, Task, get_task,
                   register_task, task_names)
from .classification import ClassificationTask
from .asr import AsrTask, ctc_greedy_decode, normalize_text, word_errors
from .detection import DetectionTask

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "TASKS", "MetricComparison", "SampleScores", "Task", "get_task",
           "register_task", "task_names", "ClassificationTask", "AsrTask", "ctc_greedy_decode", "normalize_text",
           "word_errors", "DetectionTask"]
