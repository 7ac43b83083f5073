"""The pytest plugin (entry point ``pytest11``): options, markers and fixtures, nothing else.

The plugin loads in every pytest run of the environment, so it stays inert until a run is a
conformance run: it imports no torch, numpy or engine module and sets nothing global (seeds,
deterministic algorithms, threads, pytest-benchmark's table) unless ``--nnc-*`` options are given
or conformance items are collected (:func:`activate`, called at the first of those points). The
work lives in :class:`nnconform.session.ConformanceSession`, kept in ``config.stash``; the
report is written once and the verdict printed last, when the session finishes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .paths import default_cache_dir, default_report_dir
from .records import CheckRecord, Status
from .session import (PASS, RECORD_PROPERTY, TIERS, ConformanceSession, Outcome, RunConfig, check_run_id,
                      first_line, record_from_property, record_to_property)

SESSION_KEY = pytest.StashKey[ConformanceSession]()
_ACTIVE = pytest.StashKey[bool]()
_ENGINE = pytest.StashKey[object]()  # the RayEngine of --nnc-ray, once its jobs are submitted
#: Why a timing case is skipped under pytest-xdist (a skip the user chose by running in parallel).
XDIST_TIMING_SKIP = ("timing case: pytest-benchmark does not run under pytest-xdist; run without -n to measure "
                     "latency")
#: pytest-benchmark's reason for the cases ``--benchmark-skip`` skips (also a skip the user chose).
BENCHMARK_SKIP = "Skipping benchmark (--benchmark-skip active)."
#: Option dests of the plugin and their defaults: a value other than its default asks for nnconform.
_DEFAULTS: dict[str, object] = {}


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
    cores = os.cpu_count() or 1
    if n > cores:
        raise pytest.UsageError(f"--nnc-threads {value!r}: this machine has {cores} CPU(s); give at most {cores} "
                                "(more threads than cores stall in OpenMP barriers)")
    return n


def _subset_size(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"--nnc-imagenet-subset {value!r}: give a positive number of images")
    return int(value)


def _coco_subset_size(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"--nnc-coco-subset {value!r}: give a positive number of images")
    return int(value)


def _run_id(value: str) -> str:
    try:
        return check_run_id(value)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _device(value: str) -> str:
    from .engine.device import parse_device

    try:
        return parse_device(value)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _existing_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise pytest.UsageError(f"--nnc-data-dir {value!r}: no such folder")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nnconform", "nnconform conformance suite")

    def add(*names: str, **kwargs) -> None:
        group.addoption(*names, **kwargs)
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        _DEFAULTS[dest] = kwargs.get("default", False if kwargs.get("action") == "store_true" else None)

    add("--nnc-anchors", default=None, metavar="SPEC",
        help="anchors to evaluate: 'default' (embedded, offline), 'all', a family (zoo, efficientnet-lite, "
             "torchvision) or comma-separated names/globs (default: 'default', or the anchors of --nnc-proposal)")
    add("--nnc-proposal", "--proposal", action="append", default=[], metavar="PATH",
        help="a proposal to check: its proposal.toml, a folder holding one, or its .py file with the manifest "
             "beside it (repeatable); runs the criteria it applies to, and fails the run when the manifest has a "
             "problem or a claim is not met")
    add("--nnc-proposal-only", action="store_true",
        help="with --nnc-proposal: run only the proposals' own cases (not the reference methods')")
    add("--nnc-tier", default="default", type=_tier, metavar="|".join(TIERS),
        help="how much of the suite runs: quick (CI), default, full (default: %(default)s)")
    add("--nnc-data-dir", default=None, type=_existing_dir, metavar="DIR",
        help="folder holding the Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)")
    add("--nnc-imagenet", default=None, metavar="SOURCE",
        help="ImageNet-1k validation: Hugging Face hub id, local imagefolder or parquet path; a source that does "
             "not load fails the ImageNet cases (no fall-back to the 20-image smoke set)")
    add("--nnc-imagenet-subset", default=None, type=_subset_size, metavar="N",
        help="with --nnc-imagenet: evaluate the fixed class-balanced subset of N images (each class's first "
             "images in file order, round-robin over classes); judged by its confidence interval")
    add("--nnc-coco", default=None, metavar="DIR",
        help="COCO val2017: a local folder with val2017/*.jpg and annotations/instances_val2017.json (default: "
             "$NNCONFORM_COCO_DIR); a folder that does not load fails the COCO cases; without one they skip")
    add("--nnc-coco-subset", default=None, type=_coco_subset_size, metavar="N",
        help="with --nnc-coco: evaluate the first N images in image-id order (labelled a subset)")
    add("--nnc-cache-dir", default=None, metavar="DIR",
        help="evaluation cache (default: <rootdir>/.cache/nnconform, or $NNCONFORM_CACHE_DIR)")
    add("--nnc-report-dir", default=None, metavar="DIR",
        help="where runs write <run-id>/ (default: <rootdir>/reports, or $NNCONFORM_REPORT_DIR)")
    add("--nnc-run-id", default=None, type=_run_id, metavar="ID",
        help="name of the report folder: letters, digits, '._-', at most 100 characters, not 'latest' "
             "(default: a UTC timestamp); an id already used is refused without --nnc-overwrite")
    add("--nnc-overwrite", action="store_true", help="replace the report of a --nnc-run-id already used")
    add("--nnc-no-report", action="store_true", help="do not write a report")
    add("--nnc-benchmark-table", action="store_true",
        help="also print pytest-benchmark's timing tables in the terminal (they are always in the report)")
    add("--nnc-golden", default=None, metavar="FILE",
        help="after the report is written, check that the run reproduces the golden figures of FILE "
             "(python -m nnconform.report golden); any difference fails the run")
    add("--nnc-threads", default=None, type=_threads, metavar="N",
        help="torch threads per process, at most the machine's CPUs (default: torch's choice; under "
             "pytest-xdist, cores / workers). On a shared machine, more threads than free cores stall in OpenMP "
             "barriers")
    add("--nnc-device", default="cpu", type=_device, metavar="cpu|cuda|cuda:N|auto",
        help="where evaluations run (auto: cuda when available, else cpu); a CUDA device that is not there fails "
             "the run at start (default: %(default)s)")
    add("--nnc-ray", default=None, metavar="ADDRESS|auto|local",
        help="run the selected cases' heavy work (compression, update evaluation, split studies) as Ray jobs "
             "before the test bodies, into the same --nnc-cache-dir (shared storage on a cluster); local: a Ray "
             "instance on this machine's CPUs; auto or an address: an existing cluster")


def _asks_for_nnconform(config: pytest.Config) -> bool:
    """Whether the command line makes this a conformance run before anything is collected: an
    ``--nnc-*`` option other than its default, or a path argument inside a ``conformance`` folder."""
    if any(config.getoption(dest) != default for dest, default in _DEFAULTS.items()):
        return True
    return any("conformance" in Path(str(arg).split("::")[0]).parts for arg in config.args)


def _is_conformance_item(item: pytest.Item) -> bool:
    """A case of a conformance suite: under a ``conformance`` folder, or using an ``nnc_*`` fixture."""
    return "conformance" in item.path.parts or any(f.startswith("nnc_") for f in getattr(item, "fixturenames", ()))


def activate(config: pytest.Config) -> None:
    """Make this run a conformance run (once): seeds, deterministic algorithms, torch threads, and
    pytest-benchmark's terminal table folded into the report. Called at the first point a run shows
    it needs nnconform; before that the plugin has imported and set nothing."""
    if config.stash.get(_ACTIVE, False):
        return
    config.stash[_ACTIVE] = True
    import torch

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    run = config.stash.get(SESSION_KEY, None)
    if run is not None and run.config.device != "cpu":
        from .engine.device import cuda_deterministic

        cuda_deterministic()
    worker = getattr(config, "workerinput", None)
    if config.getoption("--nnc-threads"):
        torch.set_num_threads(config.getoption("--nnc-threads"))
    elif worker is not None:
        # N workers share the cores: more torch threads than cores stall in OpenMP barriers
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(worker.get("workercount", 1))))
    if not config.getoption("--nnc-benchmark-table") and not getattr(config.option, "benchmark_verbose", False):
        # pytest-benchmark's own switch (--benchmark-quiet); its session read the option at configure
        # time, so a run found to be a conformance run later is told directly
        if hasattr(config.option, "benchmark_quiet"):
            config.option.benchmark_quiet = True
        bench = getattr(config, "_benchmarksession", None)
        if bench is not None:
            bench.quiet = True


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tier(name): lowest tier (quick|default|full) at which the case runs")
    config.addinivalue_line("markers", "criterion(name): the conformance criterion of the case")
    config.addinivalue_line("markers", "anchors(*names): a case serving several anchors (not parametrized by one); "
                            "deselected when --nnc-anchors selects none of them")
    asked = _asks_for_nnconform(config)
    if asked and getattr(config.option, "dist", "no") == "load":
        # pytest-xdist: keep an anchor's cases on one worker so each worker loads a model once
        config.option.dist = "loadgroup"
    if config.getoption("--nnc-proposal"):
        from .proposal.sandboxed import hide_paths

        # the run's data, caches and reports are never readable by proposal code, wherever they lie
        hide_paths([*(config.getoption(o) for o in ("--nnc-data-dir", "--nnc-imagenet", "--nnc-coco",
                                                      "--nnc-cache-dir", "--nnc-report-dir")),
                    os.environ.get("NNCONFORM_COCO_DIR"),
                    default_cache_dir(config.rootpath), default_report_dir(config.rootpath)])
    proposals = _load_proposals(config.getoption("--nnc-proposal"))
    anchors = config.getoption("--nnc-anchors")
    if anchors is None:
        anchors = _proposal_anchors(proposals) or "default"
    if config.getoption("--nnc-imagenet-subset") and not config.getoption("--nnc-imagenet"):
        raise pytest.UsageError("--nnc-imagenet-subset needs --nnc-imagenet SOURCE (the smoke set has 20 images)")
    if config.getoption("--nnc-coco-subset") and not (config.getoption("--nnc-coco") or
                                                       os.environ.get("NNCONFORM_COCO_DIR")):
        raise pytest.UsageError("--nnc-coco-subset needs --nnc-coco DIR (or $NNCONFORM_COCO_DIR)")
    if config.getoption("--nnc-proposal-only") and not proposals:
        raise pytest.UsageError("--nnc-proposal-only needs --nnc-proposal PATH")
    cache = config.getoption("--nnc-cache-dir")
    report = config.getoption("--nnc-report-dir")
    device = config.getoption("--nnc-device") or "cpu"
    if device != "cpu":
        from .engine.device import DeviceUnavailable, resolve_device

        try:
            device = resolve_device(device)
        except DeviceUnavailable as exc:
            raise pytest.UsageError(str(exc)) from None
    if config.getoption("--nnc-ray") and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--nnc-ray and -n (pytest-xdist) do not combine: Ray runs the heavy work; run the "
                                "test bodies in one process")
    run = RunConfig(
        anchors=anchors,
        tier=config.getoption("--nnc-tier"),
        data_dir=config.getoption("--nnc-data-dir"),
        imagenet=config.getoption("--nnc-imagenet"),
        imagenet_subset=config.getoption("--nnc-imagenet-subset"),
        coco=config.getoption("--nnc-coco") or os.environ.get("NNCONFORM_COCO_DIR") or None,
        coco_subset=config.getoption("--nnc-coco-subset"),
        cache_dir=Path(cache) if cache else default_cache_dir(config.rootpath),
        report_dir=Path(report) if report else default_report_dir(config.rootpath),
        run_id=config.getoption("--nnc-run-id"),
        write_report=not config.getoption("--nnc-no-report"),
        proposals=tuple(config.getoption("--nnc-proposal")),
        proposal_only=config.getoption("--nnc-proposal-only"),
        overwrite=config.getoption("--nnc-overwrite"),
        device=device,
        ray=config.getoption("--nnc-ray"),
    )
    controller = not hasattr(config, "workerinput")
    if controller and run.write_report and run.run_id and not run.overwrite:
        target = Path(run.report_dir) / run.run_id
        if target.exists() or target.is_symlink():
            # refused now, not after the run: a reused id would overwrite a report someone may cite
            raise pytest.UsageError(f"--nnc-run-id {run.run_id!r}: {target} already exists; choose another id "
                                    "or pass --nnc-overwrite to replace it")
    config.stash[SESSION_KEY] = ConformanceSession(run, proposals=proposals)
    if controller:
        # an xdist worker must leave the records in its reports: the controller collects them from there
        config.pluginmanager.register(_RecordCollector(config.stash[SESSION_KEY]), "nnconform-records")
    if asked:
        activate(config)


def _load_proposals(paths: list[str]) -> list:
    """Check every ``--nnc-proposal`` manifest (importing its code) and make the valid ones active."""
    if not paths:
        return []
    from .proposal import activate as activate_proposals, load_proposal

    proposals = [load_proposal(p) for p in paths]
    activate_proposals(proposals)
    return proposals


def _proposal_anchors(proposals: list) -> str:
    if not proposals:
        return ""
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


def pytest_collectstart(collector: pytest.Collector) -> None:
    """A module of a conformance suite is about to be imported: set the run up first."""
    if isinstance(collector, pytest.Module) and "conformance" in collector.path.parts:
        activate(collector.config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect conformance cases outside ``--nnc-anchors``, above ``--nnc-tier`` and, with proposals,
    outside the criteria they apply to. Other tests of the run are left alone."""
    if not any(_is_conformance_item(i) for i in items):
        return
    activate(config)
    from .anchors import select_anchors

    session = config.stash[SESSION_KEY]
    parallel = bool(getattr(config.option, "numprocesses", None)) or hasattr(config, "workerinput")
    selected = None
    proposal_runs = _proposal_selector(session) if session.proposals else None
    keep, drop = [], []
    for item in items:
        if not _is_conformance_item(item):
            keep.append(item)
            continue
        callspec = getattr(item, "callspec", None)
        anchor = callspec.params.get("anchor_name") if callspec else None
        if proposal_runs is not None and not proposal_runs(item):
            drop.append(item)
            continue
        if parallel and "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=XDIST_TIMING_SKIP))
        served = item.get_closest_marker("anchors")
        if anchor is not None or served is not None:
            if anchor is not None:
                item.add_marker(pytest.mark.xdist_group(anchor))
            if selected is None:
                try:
                    selected = set(select_anchors(session.config.anchors))
                except KeyError as exc:
                    raise pytest.UsageError(f"--nnc-anchors {session.config.anchors!r}: {exc.args[0]}") from None
            if (anchor not in selected) if anchor is not None else not selected.intersection(served.args):
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


def pytest_collection_finish(session: pytest.Session) -> None:
    if SESSION_KEY in session.config.stash and session.config.stash.get(_ACTIVE, False):
        run = session.config.stash[SESSION_KEY]
        run.selected = {i.nodeid for i in session.items}
        if run.config.ray and not session.config.option.collectonly and not hasattr(session.config, "workerinput"):
            # the heavy work goes to Ray now, ahead of the first test body
            from .engine import start_ray

            try:
                session.config.stash[_ENGINE] = start_ray(run.config, session.items,
                                                          threads=session.config.getoption("--nnc-threads") or 1)
            except Exception as exc:  # no cluster to talk to: say so in one line rather than run without it
                raise pytest.UsageError(f"--nnc-ray {run.config.ray!r}: Ray did not start or connect: "
                                        f"{type(exc).__name__}: {first_line(str(exc))}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """With ``--nnc-ray``: a case waits for the jobs it reads, then runs as always (and finds their results in
    the caches; a failed job leaves it to compute them itself)."""
    engine = item.config.stash.get(_ENGINE, None)
    if engine is not None:
        engine.wait_for(item.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Under pytest-xdist the controller collects nothing itself: the selected cases are the workers'."""
    run = node.config.stash.get(SESSION_KEY, None)
    if run is not None:
        run.selected = (run.selected or set()) | set(ids)


def _embedded_anchors() -> frozenset[str]:
    """The default (embedded) anchors; none when the manifests cannot be read (the cases fail on that)."""
    from .anchors import list_anchors

    try:
        return frozenset(list_anchors(default_only=True))
    except Exception:  # a broken manifest is reported by the cases that load it, not here
        return frozenset()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A skipped case of an embedded (default) anchor fails: those anchors ship with nnconform, so a
    skip means a file or package is missing, and a run that tested nothing must not pass. Skips the
    user chose by an option (timing cases under xdist or ``--benchmark-skip``) stay skips."""
    report = yield
    if not item.config.stash.get(_ACTIVE, False) or not _is_conformance_item(item):
        return report
    point = _proposal_point(item)
    if point is not None:
        _verify_claims(item, report, point)
        return report
    if not report.skipped:
        return report
    callspec = getattr(item, "callspec", None)
    anchor = callspec.params.get("anchor_name") if callspec else None
    if not isinstance(anchor, str) or anchor not in _embedded_anchors():
        return report  # user-supplied anchors (ImageNet weights, torchvision) may skip
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = str(reason).removeprefix("Skipped: ")
    if reason in (XDIST_TIMING_SKIP, BENCHMARK_SKIP):
        return report
    report.outcome = "failed"
    report.longrepr = (f"embedded anchor {anchor!r} must not skip (it ships with nnconform, so a skip means "
                       f"something is missing): {reason}")
    report.nnc_missing = True  # a failure of the case, whatever phase skipped (travels with xdist reports)
    return report


def _proposal_point(item: pytest.Item):
    """The proposal operating point a case runs (None for reference methods and anchors)."""
    from .proposal.checks import proposal_point_of

    callspec = getattr(item, "callspec", None)
    return proposal_point_of(callspec.params.values() if callspec else ())


def _skip_reason(report: pytest.TestReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return str(reason).removeprefix("Skipped: ")


def _verify_claims(item: pytest.Item, report: pytest.TestReport, point) -> None:
    """A case of a proposal's point verifies its claims or fails: a skip (missing weights or data) or a claimed
    tier that was only measured (a smoke set) becomes a failure with a ``proposal.claim_verified`` record naming
    why. The case's records are tagged with the proposal (the report counts claims made and verified)."""
    from .proposal.checks import claimed_tier_of, not_verified, point_key, skipped_reason, unverified_reason

    own = [i for i, (name, _) in enumerate(report.user_properties) if name == RECORD_PROPERTY]
    records = []
    key = point_key(point)
    for i in own:
        rec = record_from_property(report.user_properties[i][1])
        if (rec.details or {}).get("proposal_point") != key:
            rec.details = {**(rec.details or {}), "proposal": point.proposal, "proposal_point": key}
            report.user_properties[i] = record_to_property(rec)
            if i < len(item.user_properties) and item.user_properties[i][0] == RECORD_PROPERTY:
                item.user_properties[i] = report.user_properties[i]
        records.append(rec)
    reason = None
    if report.skipped:
        skipped = _skip_reason(report)
        if skipped in (XDIST_TIMING_SKIP, BENCHMARK_SKIP):
            return  # chosen by an option, and a timing case claims nothing
        reason = skipped_reason(skipped)
    elif report.when == "call":
        reason = unverified_reason(claimed_tier_of(point, item.callspec.params), records)
    if reason is None:
        return
    rec = not_verified(item.callspec.id if hasattr(item, "callspec") else item.nodeid, point.proposal, reason,
                       point=point.point_dict())
    rec.nodeid = item.nodeid
    rec.details["proposal_point"] = key
    entry = record_to_property(rec)
    item.user_properties.append(entry)
    report.user_properties.append(entry)
    report.outcome = "failed"
    report.longrepr = f"proposal.claim_verified: {rec.message}"
    report.nnc_missing = True  # a failure of the case, whatever phase it happened in


@pytest.fixture(scope="session")
def nnc_session(request: pytest.FixtureRequest) -> ConformanceSession:
    """The run's :class:`ConformanceSession` (anchors, datasets and references loaded once)."""
    activate(request.config)
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
        from .kit.checks import describe

        rec.nodeid = request.node.nodeid
        if not rec.criterion and marker is not None:
            rec.criterion = marker.args[0]
        if describe(rec.check_id) is None:  # the report explains every id it shows: an unexplained one fails
            rec.message = (f"check id {rec.check_id!r} is not registered in the check catalogue "
                           f"(nnconform.kit.register_check); recorded as: {rec.status.value} {rec.message}")
            rec.status = Status.ERROR
        request.node.user_properties.append(record_to_property(rec))
        return rec

    return record


class _RecordCollector:
    """Feeds test reports (and the records they carry) into the run's session.

    Every phase's report carries a copy of all the case's ``user_properties`` so far, so records are
    taken by position: each report contributes only those added since the previous phase (a failed
    teardown would otherwise add the case's records a second time).
    """

    def __init__(self, run: ConformanceSession) -> None:
        self.run = run
        self.taken: dict[str, int] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        records = [value for name, value in report.user_properties if name == RECORD_PROPERTY]
        seen = self.taken.get(report.nodeid, 0)
        for value in records[seen:]:
            self.run.add_record(record_from_property(value))
        self.taken[report.nodeid] = max(seen, len(records))
        if report.when == "teardown":
            self.taken.pop(report.nodeid, None)
        report.user_properties[:] = [(n, v) for n, v in report.user_properties if n != RECORD_PROPERTY]
        outcome = report.outcome
        if report.when != "call" and report.outcome == "failed" and not getattr(report, "nnc_missing", False):
            outcome = "error"
        message = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.failed:
            message = report.longreprtext
        self.run.add_outcome(Outcome(report.nodeid, outcome, report.duration, message), when=report.when)

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        self.run.stopped = "interrupted (KeyboardInterrupt)"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """After pytest's own summary: write the report, then print the verdict as the run's last lines."""
    result = yield
    config = session.config
    if SESSION_KEY not in config.stash or hasattr(config, "workerinput") or not config.stash.get(_ACTIVE, False):
        return result  # not a conformance run; xdist workers leave the report to the controller
    run = config.stash[SESSION_KEY]
    engine = config.stash.get(_ENGINE, None)
    if engine is not None:
        engine.shutdown()
        run.report_notes.append(engine.summary())
        run.report_notes.extend(f"ray job {f.job} failed (its cases computed it themselves): {f.error}"
                                for f in engine.failures)
    run.exitstatus = int(session.exitstatus if session.exitstatus is not None else exitstatus)
    if not run.stopped:
        if run.exitstatus == pytest.ExitCode.INTERRUPTED:
            run.stopped = "interrupted"
        elif session.shouldfail or session.shouldstop:
            run.stopped = str(session.shouldfail or session.shouldstop)
    if config.option.collectonly or not (run.records or _ran_conformance(run)):
        return result  # nothing ran: no verdict to give, no report to write
    unverified = run.add_claims_records() if run.proposals and _ran_conformance(run) else []
    if unverified and run.exitstatus == pytest.ExitCode.OK:
        # a claim made and not verified fails the gate, even if no case failed
        session.exitstatus = run.exitstatus = int(pytest.ExitCode.TESTS_FAILED)
    report_line = "report: not written (--nnc-no-report)"
    if run.config.write_report:
        report_line = _write_report(config, run)
    _print_verdict(config, run, report_line)
    golden = config.getoption("--nnc-golden")
    if golden:
        if _check_golden(config, run, golden):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


def _check_golden(config: pytest.Config, run: ConformanceSession, golden: str) -> bool:
    """Compare the written report with a golden file; print every difference. True when the run fails it."""
    from .report.golden import GoldenError, differences, read_golden, read_results

    tr = config.pluginmanager.get_plugin("terminalreporter")
    write = tr.write_line if tr is not None else print
    try:
        diffs = differences(read_golden(golden), read_results(Path(run.config.report_dir) / run.run_id))
    except GoldenError as exc:
        diffs = [f"cannot check: {exc}"]
    if diffs:
        write(f"golden results: {len(diffs)} difference(s) from {golden} (a deliberate change regenerates it: "
              f"python -m nnconform.report golden --update RUN)")
        for line in diffs[:40]:
            write(f"  {line}")
    else:
        write(f"golden results: the run reproduces {golden}")
    return bool(diffs)


def _write_report(config: pytest.Config, run: ConformanceSession) -> str:
    """Write the report; a failure costs the report, never the run's summary or exit status."""
    try:
        from .report import write_report

        bench = getattr(config, "_benchmarksession", None)
        if bench is not None:
            run.benchmarks = [_benchmark_dict(b) for b in getattr(bench, "benchmarks", [])]
        run_dir = write_report(run, exitstatus=run.exitstatus or 0)
    except Exception as exc:  # the boundary of the run: the message names the path and the cause
        target = Path(run.config.report_dir) / run.run_id
        return f"report: NOT written to {target}: {type(exc).__name__}: {exc}"
    notes = "".join(f"\n        note: {n}" for n in getattr(run, "report_notes", []))
    return f"report: {run_dir / 'index.html'}\n        {run_dir / 'summary.md'}, {run_dir / 'results.json'}{notes}"


def _ran_conformance(run: ConformanceSession) -> bool:
    ids = list(run.outcomes) + list(run.selected or ())
    return any(nodeid.startswith("conformance/") or "/conformance/" in nodeid for nodeid in ids)


def _benchmark_dict(bench) -> dict:
    stats = getattr(bench, "stats", None)
    out = {"name": getattr(bench, "name", ""), "fullname": getattr(bench, "fullname", ""),
           "group": getattr(bench, "group", None)}
    if stats is not None:
        for key in ("min", "max", "mean", "stddev", "median", "rounds", "iterations"):
            out[key] = getattr(stats, key, None)
    return out


#: How many failures and skip reasons the terminal lists (the report has them all).
_TERMINAL_LIST = 8


def _print_verdict(config: pytest.Config, run: ConformanceSession, report_line: str) -> None:
    """The run's last lines: verdict, counts, failures, what was skipped and why, the report path."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    verdict = run.verdict()
    colour = {"green": True} if verdict.status == PASS else {"red": True, "bold": True}
    tr.write_sep("=", f"nnconform verdict: {verdict.status}", **colour)
    tr.write_line(f"cases: {verdict.counts_line()}; {len(run.records)} check records")
    for reason in verdict.reasons:
        tr.write_line(f"  - {reason}")
    for case, message in verdict.failures[:_TERMINAL_LIST]:
        tr.write_line(f"  FAILED {case}: {message}")
    if len(verdict.failures) > _TERMINAL_LIST:
        tr.write_line(f"  ... and {len(verdict.failures) - _TERMINAL_LIST} more failures (see the report)")
    if verdict.skipped:
        tr.write_line(f"skipped ({verdict.counts['skipped']} cases, user-supplied anchors or chosen by options):")
        for reason, n in verdict.skipped[:_TERMINAL_LIST]:
            tr.write_line(f"  {n} x {reason}")
        if len(verdict.skipped) > _TERMINAL_LIST:
            tr.write_line(f"  ... and {len(verdict.skipped) - _TERMINAL_LIST} more reasons (see the report)")
    tr.write_line(report_line)


__all__ = ["activate", "nnc_session", "nnc_config", "nnc_evaluator", "nnc_record", "Status", "first_line"]
