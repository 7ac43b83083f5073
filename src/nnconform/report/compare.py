"""Compare two runs' ``results.json``: do they report the same results?

``python -m nnconform.report.compare RUN_A RUN_B`` (a run folder or its results.json) lists every
check record that one run has and the other lacks, and every record whose status, measured or
expected value differs; it exits 1 when any does, 0 when none does, and 2 (with a message naming
the path and what is wrong) when a run is missing or is not a readable results.json. Of records whose
values are times (latency, compression and decode seconds, split selection's end-to-end latencies)
only the status is compared: times differ between any two runs. This is how a parallel run
(``-n auto``) or a run from a warm cache is shown to give what a serial, cold run gives.

``--ignore-skipped-in-b`` leaves out only the timing cases a parallel run B skipped for that reason
(pytest-benchmark does not run under pytest-xdist); a case B skipped for any other reason is a
difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

#: Checks whose measured value is a time (never equal across runs): only their status is compared.
TIMED_CHECKS = ("compression.latency", "compression.compress", "compression.decode", "split.latency",
                "split.selection", "anchor.latency")
#: The skip reason of a timing case under pytest-xdist (the plugin's marker says it): the only skip
#: ``--ignore-skipped-in-b`` leaves out.
XDIST_TIMING_SKIP = "pytest-benchmark does not run under pytest-xdist"
#: What each record and case needs for a comparison (the rest of results.json is not read).
RECORD_FIELDS = ("check_id", "subject", "status", "measured", "expected", "tolerance")
CASE_FIELDS = ("nodeid", "outcome")


class UnusableRun(ValueError):
    """A run that cannot be compared: missing, unreadable, not JSON, or not shaped like results.json."""


def load_results(path: str | Path) -> dict:
    """A run's results.json (given the file or its run folder), checked to hold what a comparison reads.

    Raises :class:`UnusableRun` naming the path, and the field when one is wrong.
    """
    p = Path(path)
    file = p / "results.json" if p.is_dir() else p
    if not p.exists():
        raise UnusableRun(f"{p}: no such run folder or results.json")
    try:
        run = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnusableRun(f"{file}: missing (the run folder has no results.json; was the run interrupted?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UnusableRun(f"{file}: cannot be read ({exc})") from None
    except ValueError as exc:
        raise UnusableRun(f"{file}: not valid JSON ({exc})") from None
    _check_shape(file, run)
    return run


def _check_shape(file: Path, run: Any) -> None:
    if not isinstance(run, dict):
        raise UnusableRun(f"{file}: holds a JSON {type(run).__name__}, not a results.json object")
    for name, fields in (("records", RECORD_FIELDS), ("cases", CASE_FIELDS)):
        items = run.get(name)
        if not isinstance(items, list):
            raise UnusableRun(f"{file}: field {name!r} must be a list, got "
                              f"{'nothing' if items is None else type(items).__name__}")
        for i, item in enumerate(items):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise UnusableRun(f"{file}: {name}[{i}] lacks {', '.join(missing)}")
            bad = [f for f in fields[:3] if not isinstance(item[f], str)]
            if name == "records" and bad:
                raise UnusableRun(f"{file}: {name}[{i}].{bad[0]} must be a string, got {item[bad[0]]!r}")
            if name == "cases" and not all(isinstance(item[f], str) for f in fields):
                raise UnusableRun(f"{file}: {name}[{i}] nodeid and outcome must be strings")


def _key(record: dict) -> tuple[str, str, str]:
    return record["check_id"], record["subject"], (record.get("nodeid") or "").split("::")[-1]


def _same(a: Any, b: Any, rel: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return a == b


def skipped_cases(run: dict, reason: str | None = None) -> set[str]:
    """Node ids of the cases a run skipped (only those whose skip message contains ``reason``, if given)."""
    return {c["nodeid"] for c in run["cases"] if c["outcome"] == "skipped"
            and (reason is None or reason in str(c.get("message") or ""))}


def left_out(a: dict, b: dict, ignore_skipped_in_b: bool) -> set[str]:
    """The cases a comparison leaves out, when asked to: timing cases B skipped under pytest-xdist and A ran.

    A case B skipped for any other reason (a missing dataset, weights, a failed import) stays in.
    """
    return skipped_cases(b, XDIST_TIMING_SKIP) - skipped_cases(a) if ignore_skipped_in_b else set()


def compare_results(a: dict, b: dict, *, rel: float = 0.0, ignore_skipped_in_b: bool = False) -> list[str]:
    """Differences between two runs' records and case outcomes (empty: the same results).

    ``rel`` tolerates a relative difference in float values (0: exact). ``ignore_skipped_in_b`` leaves
    out the cases B skipped and A ran (a parallel run B skips the timing cases), with their records.
    """
    drop = left_out(a, b, ignore_skipped_in_b)
    recs_a = {_key(r): r for r in a["records"] if r.get("nodeid") not in drop}
    recs_b = {_key(r): r for r in b["records"]}
    out = [f"only in A: {k[0]} {k[1]} ({k[2]})" for k in sorted(recs_a.keys() - recs_b.keys())]
    out += [f"only in B: {k[0]} {k[1]} ({k[2]})" for k in sorted(recs_b.keys() - recs_a.keys())]
    for k in sorted(recs_a.keys() & recs_b.keys()):
        ra, rb = recs_a[k], recs_b[k]
        for fld in ("status",) if k[0] in TIMED_CHECKS else ("status", "measured", "expected", "tolerance"):
            if not _same(ra[fld], rb[fld], rel):
                out.append(f"{k[0]} {k[1]}: {fld} {ra[fld]!r} (A) != {rb[fld]!r} (B)")
    cases_a = {c["nodeid"]: c for c in a["cases"]}
    cases_b = {c["nodeid"]: c for c in b["cases"]}
    for nodeid in sorted((cases_a.keys() | cases_b.keys()) - drop):
        ca, cb = cases_a.get(nodeid), cases_b.get(nodeid)
        if (ca or {}).get("outcome") != (cb or {}).get("outcome"):
            out.append(f"case {nodeid}: {_outcome(ca)} (A) != {_outcome(cb)} (B)")
    return out


def _outcome(case: dict | None) -> str:
    """A case's outcome as a difference line shows it (a skip with its reason)."""
    if case is None:
        return "absent"
    message = str(case.get("message") or "").strip()
    if case["outcome"] == "skipped" and message:
        return f"skipped ({message.splitlines()[-1][:200]})"
    return case["outcome"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnconform.report.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--rel", type=float, default=0.0, help="relative tolerance on float values (default: exact)")
    parser.add_argument("--ignore-skipped-in-b", action="store_true",
                        help="leave out the timing cases RUN_B skipped under pytest-xdist and RUN_A ran, with their "
                             "records; cases RUN_B skipped for any other reason are still differences")
    args = parser.parse_args(argv)
    try:
        a, b = load_results(args.run_a), load_results(args.run_b)
    except UnusableRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    diffs = compare_results(a, b, rel=args.rel, ignore_skipped_in_b=args.ignore_skipped_in_b)
    drop = left_out(a, b, args.ignore_skipped_in_b)
    if args.ignore_skipped_in_b:
        print(f"left out: {len(drop)} timing cases skipped in B only (pytest-xdist)")
    compared = [r for r in a["records"] if r.get("nodeid") not in drop]
    timed = len([r for r in compared if r["check_id"] in TIMED_CHECKS])
    for d in diffs:
        print(d)
    print(f"{len(compared)} records of A compared ({timed} timing records by status only): "
          f"{'the same results' if not diffs else f'{len(diffs)} differences'}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
