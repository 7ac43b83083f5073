"""The compression criterion's state for one run: anchors under test, calibration sets, case outcomes.

One :class:`CompressionRuns` per pytest run (``kit.criterion_state(config, "compression", ...)``)
computes each of them once, whichever case asks first; the conformance file only parametrizes
over the plan, asks for outcomes and records them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..records import CheckRecord
from .calibration import CalibrationSpec, build_calibration, calibration_dataset_name
from .checks import check_calibration
from .plan import CompressionPlan, CompressionPoint
from .runner import AnchorUnderTest, CaseOutcome, run_case


class CompressionRuns:
    """Anchors, calibration sets and case outcomes of one run, each computed once.

    ``session`` is the run's :class:`~nnconform.session.ConformanceSession` (anchors, datasets, the
    cached evaluator, the options); ``plan`` the plan with the run's proposal points.
    """

    def __init__(self, session, plan: CompressionPlan) -> None:
        self.session = session
        self.plan = plan
        self.anchors: dict[str, AnchorUnderTest] = {}
        self.calibration: dict[str, object] = {}
        self.outcomes: dict[str, CaseOutcome] = {}

    def calibration_spec(self, anchor_name: str) -> CalibrationSpec:
        """The calibration list an anchor uses; a LookupError naming the missing table."""
        anchor = self.session.anchor(anchor_name)
        name = calibration_dataset_name(anchor.dataset)
        if name not in self.plan.calibration:
            raise LookupError(f"anchors/compression.toml has no [calibration.{name}] list for anchor "
                              f"{anchor_name} (dataset {anchor.dataset})")
        return self.plan.calibration[name]

    def eval_dataset(self, name: str):
        """The anchor's evaluation set; when the calibration list is carved out of a smoke set (the offline
        ImageNet samples), the samples not in the list."""
        anchor = self.session.anchor(name)
        dataset = self.session.dataset(anchor)
        spec = self.plan.calibration.get(calibration_dataset_name(anchor.dataset))
        if spec is not None and spec.evaluate_on_rest and dataset.name == (spec.source or spec.dataset):
            taken = set(spec.indices)
            dataset = dataset.subset([i for i in range(len(dataset)) if i not in taken], "-minus-calibration")
        return dataset

    def anchor(self, name: str) -> AnchorUnderTest:
        """The anchor's model, shapes and reference evaluation (on :meth:`eval_dataset`)."""
        if name not in self.anchors:
            anchor = self.session.anchor(name)
            model = self.session.model(name)
            dataset = self.eval_dataset(name)
            ref = self.session.evaluator.evaluate(model, dataset, anchor.preprocess)
            # a speech set has transcripts, no class names; its task (with the vocabulary) scores the outputs
            self.anchors[name] = AnchorUnderTest(name, model, tuple(anchor.input_shape), anchor.num_classes,
                                                 tuple(getattr(dataset, "classes", ())), ref.outputs, ref.labels,
                                                 dataset.smoke, task=ref.task)
        return self.anchors[name]

    def calibration_for(self, name: str):
        """The anchor's calibration set, preprocessed for it (shared by anchors with the same list and
        preprocessing); a LookupError when the plan has no list for its dataset."""
        anchor = self.session.anchor(name)
        spec = self.calibration_spec(name)
        key = f"{spec.dataset}|{anchor.preprocess.to_dict()}"
        if key not in self.calibration:
            self.calibration[key] = build_calibration(spec, anchor.preprocess, data_dir=self.session.config.data_dir,
                                                      cache_dir=self.session.config.cache_dir)
        return self.calibration[key]

    def outcome(self, point: CompressionPoint) -> CaseOutcome:
        """The outcome of one case (compressed, checked and evaluated once per run)."""
        if point.id not in self.outcomes:
            aut = self.anchor(point.anchor)
            calibration = self.calibration_for(point.anchor)
            anchor = self.session.anchor(point.anchor)
            dataset = self.eval_dataset(point.anchor)

            def evaluate(model: torch.nn.Module) -> torch.Tensor:
                return self.session.evaluator.evaluate(model, dataset, anchor.preprocess).outputs

            cache = Path(self.session.config.cache_dir) if self.session.config.cache_dir else None
            self.outcomes[point.id] = run_case(point, aut, calibration, evaluate=evaluate, cache_dir=cache,
                                               device=getattr(self.session.config, "device", None) or "cpu")
        return self.outcomes[point.id]

    def check_calibration_list(self, dataset_name: str, load: Callable) -> CheckRecord:
        """``compression.calibration`` of one list: ``load(source, split, data_dir=...)`` loads a dataset split
        (the conformance file passes a loader that skips the case when the data is missing)."""
        spec = self.plan.calibration[dataset_name]
        source = spec.source or spec.dataset
        data_dir = self.session.config.data_dir
        cache_dir = self.session.config.cache_dir  # speech sets are generated or laid out there
        pool = load(source, spec.split, data_dir=data_dir, cache_dir=cache_dir)
        evaluation = None
        if max(spec.indices) < len(pool):
            if spec.evaluate_on_rest:
                taken = set(spec.indices)
                evaluation = pool.subset([i for i in range(len(pool)) if i not in taken])
            else:
                evaluation = load(source, "test", data_dir=data_dir, cache_dir=cache_dir)
        return check_calibration(spec, pool, evaluation)
