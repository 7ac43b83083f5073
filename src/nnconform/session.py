"""The run's state: loaded anchors and datasets, collected records and outcomes, and the verdict.

One :class:`ConformanceSession` lives in ``config.stash`` for the whole pytest session. Records
reach it through test reports (``user_properties``), so a parallel run under pytest-xdist
collects exactly what a serial run does.

The module is light on purpose (no torch, numpy or engine import at module level): the plugin
imports it in every pytest run of the environment, most of which have nothing to do with nnconform.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .kit.runtier import RUN_TIERS as TIERS
from .records import CheckRecord, Status

if TYPE_CHECKING:
    import torch

    from .anchors import Anchor
    from .data import ImageDataset
    from .evaluate import EvalResult, Evaluator

RECORD_PROPERTY = "nnconform_record"

# The environment manifest lives in environment.py (with the lock drift); re-exported for callers.
from .environment import REPORTED_PACKAGES, environment_manifest  # noqa: E402,F401

#: A run id is one path component a person can type: no separators, no hidden or special names.
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: Names a run id may not take: the folder itself, its parent, and the link to the newest run.
RESERVED_RUN_IDS = frozenset({".", "..", "latest"})


def check_run_id(value: str) -> str:
    """``value`` if it is a safe run id (letters, digits, ``._-``; 1 to 100 characters; not ``.``,
    ``..`` or ``latest``); a ``ValueError`` saying what is wrong otherwise."""
    if value in RESERVED_RUN_IDS:
        raise ValueError(f"--nnc-run-id {value!r}: reserved name (not '.', '..' or 'latest')")
    if not _RUN_ID.fullmatch(value):
        bad = sorted(set(re.sub(r"[A-Za-z0-9._-]", "", value)))
        what = f"{len(value)} characters (at most 100)" if len(value) > 100 or not value else \
            f"characters {''.join(bad)!r} are not allowed"
        raise ValueError(f"--nnc-run-id {value[:60]!r}{'...' if len(value) > 60 else ''}: {what}; "
                         "use letters, digits, '.', '_' and '-' (one folder name)")
    return value


@dataclass(frozen=True)
class RunConfig:
    """The ``--nnc-*`` options of a run."""

    anchors: str = "default"
    tier: str = "default"
    data_dir: str | None = None
    imagenet: str | None = None
    imagenet_subset: int | None = None  # --nnc-imagenet-subset: the class-balanced subset's size
    coco: str | None = None  # --nnc-coco (or $NNCONFORM_COCO_DIR): a local COCO val2017 folder
    coco_subset: int | None = None  # --nnc-coco-subset: its first N images in image-id order
    cache_dir: Path | None = None
    report_dir: Path | None = None
    run_id: str | None = None
    write_report: bool = True
    proposals: tuple[str, ...] = ()  # --nnc-proposal manifests, as given
    proposal_only: bool = False  # run only the proposals' own cases
    overwrite: bool = False  # --nnc-overwrite: a run id already used may be replaced
    device: str = "cpu"  # --nnc-device, resolved (auto -> cuda or cpu): where evaluations run
    ray: str | None = None  # --nnc-ray ADDRESS|auto|local: the cases' heavy work runs as Ray jobs first

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"--nnc-tier {self.tier!r}: choose one of {', '.join(TIERS)}")
        if self.run_id is not None:
            check_run_id(self.run_id)

    def tier_allows(self, min_tier: str) -> bool:
        """Whether a case marked ``tier(min_tier)`` runs in this run's tier."""
        if min_tier not in TIERS:
            raise ValueError(f"tier marker {min_tier!r}: choose one of {', '.join(TIERS)}")
        return TIERS.index(self.tier) >= TIERS.index(min_tier)


@dataclass
class Outcome:
    """What pytest reported for one test case (its setup, call and teardown merged)."""

    nodeid: str
    outcome: str  # passed / failed / skipped / error
    duration: float
    message: str = ""
    #: the teardown was reported: the case ran to its end (an interrupted case never gets there)
    done: bool = False

    @property
    def criterion(self) -> str:
        """``conformance/test_compression.py::...`` -> ``compression``."""
        return Path(self.nodeid.split("::")[0]).stem.removeprefix("test_")


#: The verdicts, best first.
PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"


@dataclass(frozen=True)
class Verdict:
    """What the run shows: ``PASS`` (every selected case ran and passed, skips allowed only for
    user-supplied anchors), ``FAIL`` (a case failed) or ``INCOMPLETE`` (interrupted, stopped early,
    errored or nothing ran: what was not tested is unknown, so never a pass)."""

    status: str
    reasons: tuple[str, ...]
    counts: dict[str, int]
    #: (reason, number of cases) for the skipped cases, most frequent first
    skipped: tuple[tuple[str, int], ...]
    #: (case, first line of its message) for every failed or errored case
    failures: tuple[tuple[str, str], ...]

    @property
    def passed(self) -> bool:
        """Whether the run passed."""
        return self.status == PASS

    def counts_line(self) -> str:
        """``12 passed, 1 failed, 0 errors, 3 skipped, 2 not run`` (the cases)."""
        c = self.counts
        return (f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped, "
                f"{c['not_run']} not run")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``results.json``."""
        return {"status": self.status, "reasons": list(self.reasons), "counts": dict(self.counts),
                "skipped": [{"reason": r, "cases": n} for r, n in self.skipped],
                "failures": [{"case": c, "message": m} for c, m in self.failures]}


def first_line(message: str) -> str:
    """What a pytest message says went wrong, on one line of at most 300 characters: a failure's
    ``E ...`` lines joined, else the message's last non-empty line (a skip's reason)."""
    lines = [ln.strip() for ln in (message or "").strip().splitlines() if ln.strip()]
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    line = " ".join(e for e in errors if e) if errors else (lines[-1] if lines else "")
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass
class ConformanceSession:
    """Everything one run loads, measures and reports."""

    config: RunConfig
    started: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    records: list[CheckRecord] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    datasets_used: dict[str, dict] = field(default_factory=dict)
    anchors_used: dict[str, dict] = field(default_factory=dict)
    benchmarks: list[dict] = field(default_factory=list)
    #: checked :class:`~nnconform.proposal.Proposal` objects of ``--nnc-proposal``
    proposals: list[Any] = field(default_factory=list)
    #: node ids of the cases selected to run (``None`` until collection finished)
    selected: set[str] | None = None
    #: why the run ended early (Ctrl-C, ``-x``/``--maxfail``, an internal error); empty when it did not
    stopped: str = ""
    #: pytest's exit status, once the session finished
    exitstatus: int | None = None
    #: what the report writer wants the reader to know (``latest`` not updated, a section that failed)
    report_notes: list[str] = field(default_factory=list)
    _models: dict[tuple, Any] = field(default_factory=dict, repr=False)
    _datasets: dict[tuple, Any] = field(default_factory=dict, repr=False)
    _references: dict[tuple, EvalResult] = field(default_factory=dict, repr=False)
    _evaluator: Evaluator | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        """The run's id: ``--nnc-run-id``, else a UTC timestamp with a random suffix."""
        if not self.config.run_id:
            stamp = self.started.replace(":", "").replace("-", "").replace("+0000", "Z")
            object.__setattr__(self, "config", replace(self.config, run_id=f"{stamp}-{uuid.uuid4().hex[:6]}"))
        return self.config.run_id

    @property
    def evaluator(self) -> Evaluator:
        """The cached evaluation engine (created on first use)."""
        if self._evaluator is None:
            from .evaluate import Evaluator

            self._evaluator = Evaluator(self.config.cache_dir, device=self.config.device)
        return self._evaluator

    # -- loading, once per session --------------------------------------------------------------

    def anchor(self, name: str) -> Anchor:
        """The anchor, recorded in the report's anchor list."""
        from .anchors import get_anchor

        anchor = get_anchor(name)
        self.anchors_used.setdefault(name, anchor.to_dict())
        return anchor

    def model(self, name: str, checkpoint: str | None = None) -> torch.nn.Module:
        """The anchor's model (verified weights), loaded once. Raises the anchors module's errors."""
        from .anchors import WeightsIntegrityError, WeightsUnavailable

        key = (name, checkpoint)
        if key not in self._models:
            try:
                self._models[key] = self.anchor(name).build(checkpoint)
            except (WeightsUnavailable, WeightsIntegrityError) as exc:
                self._models[key] = exc
        value = self._models[key]
        if isinstance(value, Exception):
            raise value
        return value

    def dataset(self, anchor: Anchor | str, split: str = "test") -> ImageDataset:
        """The anchor's evaluation dataset; without ``--nnc-imagenet``, the offline ImageNet samples (a smoke
        set). A ``--nnc-imagenet`` that does not load raises its :class:`DatasetLoadError` (never a fall-back)."""
        from .data import DatasetLoadError, DatasetUnavailable, load_dataset

        anchor = self.anchor(anchor) if isinstance(anchor, str) else anchor
        key = (anchor.dataset, split)
        if key not in self._datasets:
            try:
                ds = load_dataset(anchor.dataset, split, data_dir=self.config.data_dir,
                                  imagenet_source=self.config.imagenet, imagenet_subset=self.config.imagenet_subset,
                                  cache_dir=self.config.cache_dir, coco_source=self.config.coco,
                                  coco_subset=self.config.coco_subset)
            except DatasetLoadError as exc:  # the source the user named: its cases fail with the reason
                self._datasets[key] = exc
                raise
            except DatasetUnavailable as exc:
                if anchor.dataset != "imagenet-1k":
                    self._datasets[key] = exc
                    raise
                try:
                    ds = load_dataset("imagenet-samples")
                except DatasetUnavailable as exc2:
                    self._datasets[key] = DatasetUnavailable(f"{exc}; and the offline smoke set: {exc2}")
                    raise self._datasets[key] from None
            self._datasets[key] = ds
            self.datasets_used[f"{ds.name}/{ds.split}"] = {"fingerprint": ds.fingerprint, "samples": len(ds),
                                                          "source": ds.source, "smoke": ds.smoke,
                                                          "notes": list(ds.notes)}
        value = self._datasets[key]
        if isinstance(value, Exception):
            raise value
        if str(anchor.weights).startswith("hf:"):
            from .speech.hf import anchor_dataset

            # a hub checkpoint is scored with its own vocabulary (the vocab.json beside its weights)
            return anchor_dataset(anchor, value)
        return value

    def reference(self, name: str, checkpoint: str | None = None) -> EvalResult:
        """The anchor's (or checkpoint's) cached evaluation on its dataset."""
        key = (name, checkpoint)
        if key not in self._references:
            anchor = self.anchor(name)
            self._references[key] = self.evaluator.evaluate(self.model(name, checkpoint), self.dataset(anchor),
                                                           anchor.preprocess_for(checkpoint))
        return self._references[key]

    # -- collecting ---------------------------------------------------------------------------

    def add_record(self, record: CheckRecord) -> None:
        """Add one check record (the plugin calls this once per record, whatever the phase)."""
        self.records.append(record)

    def add_outcome(self, outcome: Outcome, when: str = "call") -> None:
        """Merge one phase's report (``setup``/``call``/``teardown``) into the case's outcome: a
        failure beats a pass, and the case is done when its teardown is reported."""
        previous = self.outcomes.get(outcome.nodeid)
        done = when == "teardown" or (previous is not None and previous.done)
        if previous is None or previous.outcome == "passed" or outcome.outcome in ("failed", "error"):
            if previous is not None:
                outcome.duration += previous.duration
            self.outcomes[outcome.nodeid] = outcome
        else:
            previous.duration += outcome.duration
        self.outcomes[outcome.nodeid].done = done

    def add_claims_records(self) -> list[CheckRecord]:
        """One ``proposal.claims`` record per valid proposal (claims made vs verified), added once at the end of
        the run; returns the failing ones."""
        from .proposal.checks import claims_record

        if any(r.check_id == "proposal.claims" for r in self.records):
            return []
        added = [claims_record(p.name, self.records, _points_of(p)) for p in self.proposals if p.ok]
        for rec in added:
            rec.nodeid = "proposal claims"
            self.add_record(rec)
            for manifest in self.records:  # the manifest record reports claims made vs verified too
                if manifest.check_id == "proposal.manifest" and manifest.subject == rec.subject:
                    manifest.details = {**(manifest.details or {}), "claims_made": rec.expected,
                                        "claims_verified": rec.measured}
        return [r for r in added if not r.passed]

    def counts(self) -> dict[str, int]:
        """Cases by outcome; ``not_run``: selected cases that never finished (interrupted, stopped early)."""
        out = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        unfinished = 0
        for o in self.outcomes.values():
            if not o.done and o.outcome == "passed":
                unfinished += 1  # set up, never called: the run stopped inside this case
                continue
            out[o.outcome] = out.get(o.outcome, 0) + 1
        missing = len(self.selected - self.outcomes.keys()) if self.selected is not None else 0
        out["not_run"] = unfinished + missing
        return out

    def verdict(self) -> Verdict:
        """The run's :class:`Verdict`, from the cases' outcomes and how the session ended."""
        counts = self.counts()
        reasons: list[str] = []
        if self.stopped:
            reasons.append(f"the run stopped early: {self.stopped}")
        if counts["not_run"]:
            reasons.append(f"{counts['not_run']} selected case(s) did not run to their end")
        if counts["error"]:
            reasons.append(f"{counts['error']} case(s) errored in set-up or teardown: their checks did not run")
        if self.exitstatus in (3, 4):  # INTERNAL_ERROR, USAGE_ERROR
            reasons.append(f"pytest ended with exit status {self.exitstatus} (internal or usage error)")
        ran = counts["passed"] + counts["failed"] + counts["error"]
        if ran == 0:
            reasons.append("no case ran: nothing was tested")
        incomplete = bool(reasons)
        if counts["failed"]:
            reasons.append(f"{counts['failed']} case(s) failed")
        for rec in self.records:
            if rec.check_id == "proposal.claims" and not rec.passed:
                reasons.append(f"proposal {rec.subject!r}: {rec.message.split(chr(10))[0]}")
        if not reasons and self.exitstatus not in (None, 0):
            reasons.append(f"pytest ended with exit status {self.exitstatus}")
        status = INCOMPLETE if incomplete else FAIL if reasons else PASS
        skipped = Counter(first_line(o.message) or "(no reason given)"
                          for o in self.outcomes.values() if o.outcome == "skipped")
        failures = tuple((o.nodeid, first_line(o.message)) for o in self.outcomes.values()
                         if o.outcome in ("failed", "error"))
        return Verdict(status, tuple(reasons), counts, tuple(skipped.most_common()), failures)


def _points_of(proposal) -> list:
    """Every operating point a checked proposal contributes, across criteria."""
    return [pt for kind in ("compression", "compression_artifacts", "updates", "update_artifacts", "split")
            for pt in getattr(proposal, kind, ())]


def record_to_property(record: CheckRecord) -> tuple[str, str]:
    """A record as a ``user_properties`` entry (JSON travels from xdist workers to the controller)."""
    return (RECORD_PROPERTY, json.dumps(record.to_dict()))


def record_from_property(value: str) -> CheckRecord:
    """The inverse of :func:`record_to_property`."""
    d = json.loads(value)
    d["status"] = Status(d["status"])
    return CheckRecord(**d)
