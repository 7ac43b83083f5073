"""The pytest plugin (entry point ``pytest11``): options, markers and fixtures, nothing else.

The work lives in :class:`nnconform.session.ConformanceSession`, kept in ``config.stash``; the
report is rendered once, when the session finishes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .paths import default_cache_dir, default_report_dir
from .records import CheckRecord, Status
from .session import (RECORD_PROPERTY, TIERS, ConformanceSession, Outcome, RunConfig, record_from_property,
                      record_to_property)

SESSION_KEY = pytest.StashKey[ConformanceSession]()


def _tier(value: str) -> str:
    if value not in TIERS:
        raise pytest.UsageError(f"--nnc-tier {value!r}: choose one of {', '.join(TIERS)}")
    return value


def _threads(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise pytest.UsageError(f"--nnc-threads {value!r}: give a positive number of threads")
    return n


def _existing_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise pytest.UsageError(f"--nnc-data-dir {value!r}: no such folder")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nnconform", "nnconform conformance suite")
    group.addoption("--nnc-anchors", default=None, metavar="SPEC",
                    help="anchors to evaluate: 'default' (embedded, offline), 'all', a family "
                         "(zoo, efficientnet-lite, torchvision) or comma-separated names/globs "
                         "(default: 'default', or the anchors of --nnc-proposal)")
    group.addoption("--nnc-proposal", "--proposal", action="append", default=[], metavar="PATH",
                    help="a proposal to check: its proposal.toml, a folder holding one, or its .py file with the "
                         "manifest beside it (repeatable); runs the criteria it applies to, and fails the run "
                         "when the manifest has a problem or a claim is not met")
    group.addoption("--nnc-proposal-only", action="store_true",
                    help="with --nnc-proposal: run only the proposals' own cases (not the reference methods')")
    group.addoption("--nnc-tier", default="default", type=_tier, metavar="|".join(TIERS),
                    help="how much of the suite runs: quick (CI), default, full (default: %(default)s)")
    group.addoption("--nnc-data-dir", default=None, type=_existing_dir, metavar="DIR",
                    help="folder holding the Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)")
    group.addoption("--nnc-imagenet", default=None, metavar="SOURCE",
                    help="ImageNet-1k validation: Hugging Face hub id, local imagefolder or parquet path")
    group.addoption("--nnc-cache-dir", default=None, metavar="DIR",
                    help=f"evaluation cache (default: {default_cache_dir()})")
    group.addoption("--nnc-report-dir", default=None, metavar="DIR",
                    help=f"where runs write <run-id>/ (default: {default_report_dir()})")
    group.addoption("--nnc-run-id", default=None, metavar="ID", help="name of the report folder (default: timestamp)")
    group.addoption("--nnc-no-report", action="store_true", help="do not write a report")
    group.addoption("--nnc-threads", default=None, type=_threads, metavar="N",
                    help="torch threads per process (default: torch's choice; under pytest-xdist, cores / workers). "
                         "On a shared machine, more threads than free cores stall in OpenMP barriers")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "dist", "no") == "load":
        # pytest-xdist: keep an anchor's cases on one worker so each worker loads a model once
        config.option.dist = "loadgroup"
    config.addinivalue_line("markers", "tier(name): lowest tier (quick|default|full) at which the case runs")
    config.addinivalue_line("markers", "criterion(name): the conformance criterion of the case")
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    worker = getattr(config, "workerinput", None)
    if config.getoption("--nnc-threads"):
        torch.set_num_threads(config.getoption("--nnc-threads"))
    elif worker is not None:
        # N workers share the cores: more torch threads than cores stall in OpenMP barriers
        import os

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(worker.get("workercount", 1))))
    cache = config.getoption("--nnc-cache-dir")
    report = config.getoption("--nnc-report-dir")
    proposals = _load_proposals(config.getoption("--nnc-proposal"))
    anchors = config.getoption("--nnc-anchors")
    if anchors is None:
        anchors = _proposal_anchors(proposals) or "default"
    if config.getoption("--nnc-proposal-only") and not proposals:
        raise pytest.UsageError("--nnc-proposal-only needs --nnc-proposal PATH")
    run = RunConfig(
        anchors=anchors,
        tier=config.getoption("--nnc-tier"),
        data_dir=config.getoption("--nnc-data-dir"),
        imagenet=config.getoption("--nnc-imagenet"),
        cache_dir=Path(cache) if cache else default_cache_dir(),
        report_dir=Path(report) if report else default_report_dir(),
        run_id=config.getoption("--nnc-run-id"),
        write_report=not config.getoption("--nnc-no-report"),
        proposals=tuple(config.getoption("--nnc-proposal")),
        proposal_only=config.getoption("--nnc-proposal-only"),
    )
    config.stash[SESSION_KEY] = ConformanceSession(run, proposals=proposals)
    if not hasattr(config, "workerinput"):
        # an xdist worker must leave the records in its reports: the controller collects them from there
        config.pluginmanager.register(_RecordCollector(config.stash[SESSION_KEY]), "nnconform-records")


def _load_proposals(paths: list[str]) -> list:
    """Check every ``--nnc-proposal`` manifest (importing its code) and make the valid ones active."""
    if not paths:
        return []
    from .proposal import activate, load_proposal

    proposals = [load_proposal(p) for p in paths]
    activate(proposals)
    return proposals


def _proposal_anchors(proposals: list) -> str:
    from .anchors import list_anchors

    known = set(list_anchors())
    return ",".join(dict.fromkeys(a for p in proposals for a in p.anchors if a in known))


def _proposal_of(value) -> str:
    """The proposal a case parameter belongs to ("" for reference methods and anchors)."""
    own = getattr(value, "proposal", "")
    return own if isinstance(own, str) and own else getattr(getattr(value, "point", None), "proposal", "") or ""


def _proposal_selector(session: ConformanceSession):
    """Which cases run in a run with proposals: a manifest problem stops everything but the manifest
    cases; otherwise the criteria the proposals apply to run (plus the anchors' own checks), and with
    ``--nnc-proposal-only`` only the cases of the proposals' operating points."""
    rejected = any(not p.ok for p in session.proposals)
    applies = {"anchors"} | {c for p in session.proposals for c in p.criteria}

    def runs(item: pytest.Item) -> bool:
        marker = item.get_closest_marker("criterion")
        criterion = marker.args[0] if marker else None
        if criterion == "proposal":
            return True
        if rejected or (criterion is not None and criterion not in applies):
            return False
        if session.config.proposal_only:
            callspec = getattr(item, "callspec", None)
            return bool(callspec) and any(_proposal_of(v) for v in callspec.params.values())
        return True

    return runs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect cases outside ``--nnc-anchors``, above ``--nnc-tier`` and, with proposals, outside the
    criteria they apply to."""
    from .anchors import select_anchors

    session = config.stash[SESSION_KEY]
    parallel = bool(getattr(config.option, "numprocesses", None)) or hasattr(config, "workerinput")
    selected = None
    proposal_runs = _proposal_selector(session) if session.proposals else None
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        anchor = callspec.params.get("anchor_name") if callspec else None
        if proposal_runs is not None and not proposal_runs(item):
            drop.append(item)
            continue
        if parallel and "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason="timing case: pytest-benchmark does not run under "
                                                    "pytest-xdist; run without -n to measure latency"))
        if anchor is not None:
            item.add_marker(pytest.mark.xdist_group(anchor))
            if selected is None:
                try:
                    selected = set(select_anchors(session.config.anchors))
                except KeyError as exc:
                    raise pytest.UsageError(f"--nnc-anchors {session.config.anchors!r}: {exc.args[0]}") from None
            if anchor not in selected:
                drop.append(item)
                continue
        marker = item.get_closest_marker("tier")
        if marker is not None and not session.config.tier_allows(marker.args[0]):
            drop.append(item)
            continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    _check_proposals_run(session, keep)


def _check_proposals_run(session: ConformanceSession, items: list[pytest.Item]) -> None:
    """A valid proposal none of whose cases was selected would pass a CI gate without being tested:
    refuse the run, saying which options deselected it."""
    if not any("conformance" in str(i.fspath) for i in items):
        return
    for p in session.proposals:
        if not p.ok:
            continue
        ran = [i for i in items if getattr(i, "callspec", None)
               and any(_proposal_of(v) == p.name for v in i.callspec.params.values())]
        if not ran:
            raise pytest.UsageError(
                f"no case of proposal {p.name!r} ({p.manifest}) is selected with --nnc-tier {session.config.tier} "
                f"and --nnc-anchors {session.config.anchors!r} (its anchors: {', '.join(p.anchors)}); a gate that "
                f"tests nothing would pass, so the run stops")


@pytest.fixture(scope="session")
def nnc_session(request: pytest.FixtureRequest) -> ConformanceSession:
    """The run's :class:`ConformanceSession` (anchors, datasets and references loaded once)."""
    return request.config.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def nnc_config(nnc_session: ConformanceSession) -> RunConfig:
    """The ``--nnc-*`` options."""
    return nnc_session.config


@pytest.fixture(scope="session")
def nnc_evaluator(nnc_session: ConformanceSession):
    """The cached evaluation engine."""
    return nnc_session.evaluator


@pytest.fixture
def nnc_record(request: pytest.FixtureRequest):
    """Add a :class:`CheckRecord` to the report; returns the record so the test can assert on it."""
    marker = request.node.get_closest_marker("criterion")

    def record(rec: CheckRecord) -> CheckRecord:
        rec.nodeid = request.node.nodeid
        if not rec.criterion and marker is not None:
            rec.criterion = marker.args[0]
        request.node.user_properties.append(record_to_property(rec))
        return rec

    return record


class _RecordCollector:
    """Feeds test reports (and the records they carry) into the run's session."""

    def __init__(self, run: ConformanceSession) -> None:
        self.run = run

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            for name, value in report.user_properties:
                if name == RECORD_PROPERTY:
                    self.run.add_record(record_from_property(value))
            report.user_properties[:] = [(n, v) for n, v in report.user_properties if n != RECORD_PROPERTY]
        outcome = report.outcome
        if report.when != "call" and report.outcome == "failed":
            outcome = "error"
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.failed:
            message = report.longreprtext
        self.run.add_outcome(Outcome(report.nodeid, outcome, report.duration, message))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if SESSION_KEY not in config.stash or hasattr(config, "workerinput"):
        return  # xdist workers send their reports to the controller, which writes the report
    run = config.stash[SESSION_KEY]
    if not run.config.write_report or not (run.records or _ran_conformance(run)):
        return
    from .report import write_report

    bench = getattr(config, "_benchmarksession", None)
    if bench is not None:
        run.benchmarks = [_benchmark_dict(b) for b in getattr(bench, "benchmarks", [])]
    run_dir = write_report(run, exitstatus=int(exitstatus))
    config.stash[_REPORT_PATH] = run_dir


_REPORT_PATH = pytest.StashKey[Path]()


def _ran_conformance(run: ConformanceSession) -> bool:
    return any(nodeid.startswith("conformance/") or "/conformance/" in nodeid for nodeid in run.outcomes)


def _benchmark_dict(bench) -> dict:
    stats = getattr(bench, "stats", None)
    out = {"name": getattr(bench, "name", ""), "fullname": getattr(bench, "fullname", ""),
           "group": getattr(bench, "group", None)}
    if stats is not None:
        for key in ("min", "max", "mean", "stddev", "median", "rounds", "iterations"):
            out[key] = getattr(stats, key, None)
    return out


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _REPORT_PATH in config.stash:
        path = config.stash[_REPORT_PATH]
        run = config.stash[SESSION_KEY]
        c = run.counts()
        terminalreporter.write_sep("-", "nnconform report")
        terminalreporter.write_line(f"{len(run.records)} check records; {c['passed']} passed, {c['failed']} failed, "
                                    f"{c['error']} errors, {c['skipped']} skipped")
        terminalreporter.write_line(f"report: {path / 'summary.md'}")
        terminalreporter.write_line(f"        {path / 'results.json'}")


__all__ = ["nnc_session", "nnc_config", "nnc_evaluator", "nnc_record", "Status"]
