"""Compare two runs' ``results.json``: do they report the same results?

``python -m nnconform.report.compare RUN_A RUN_B`` (a run folder or its results.json) lists every
check record that one run has and the other lacks, and every record whose status, measured or
expected value differs; it exits 1 when any does. Of records whose values are times (latency,
compression and decode seconds, split selection's end-to-end latencies) only the status is compared:
times differ between any two runs. This is how a parallel run (``-n auto``) or a run from a warm
cache is shown to give what a serial, cold run gives.
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


def load_results(path: str | Path) -> dict:
    """A run's results.json (given the file or its run folder)."""
    p = Path(path)
    return json.loads((p / "results.json" if p.is_dir() else p).read_text())


def _key(record: dict) -> tuple[str, str, str]:
    return record["check_id"], record["subject"], (record.get("nodeid") or "").split("::")[-1]


def _same(a: Any, b: Any, rel: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return a == b


def skipped_cases(run: dict) -> set[str]:
    """Node ids of the cases a run skipped."""
    return {c["nodeid"] for c in run["cases"] if c["outcome"] == "skipped"}


def left_out(a: dict, b: dict, ignore_skipped_in_b: bool) -> set[str]:
    """The cases a comparison leaves out: those B skipped and A ran, when asked to."""
    return skipped_cases(b) - skipped_cases(a) if ignore_skipped_in_b else set()


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
    outcomes_a = {c["nodeid"]: c["outcome"] for c in a["cases"]}
    outcomes_b = {c["nodeid"]: c["outcome"] for c in b["cases"]}
    for nodeid in sorted((outcomes_a.keys() | outcomes_b.keys()) - drop):
        oa, ob = outcomes_a.get(nodeid, "absent"), outcomes_b.get(nodeid, "absent")
        if oa != ob:
            out.append(f"case {nodeid}: {oa} (A) != {ob} (B)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnconform.report.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--rel", type=float, default=0.0, help="relative tolerance on float values (default: exact)")
    parser.add_argument("--ignore-skipped-in-b", action="store_true",
                        help="leave out the cases RUN_B skipped and RUN_A ran, with their records (a parallel run "
                             "RUN_B skips the timing cases)")
    args = parser.parse_args(argv)
    a, b = load_results(args.run_a), load_results(args.run_b)
    diffs = compare_results(a, b, rel=args.rel, ignore_skipped_in_b=args.ignore_skipped_in_b)
    drop = left_out(a, b, args.ignore_skipped_in_b)
    if args.ignore_skipped_in_b:
        print(f"left out: {len(drop)} cases skipped in B only")
    compared = [r for r in a["records"] if r.get("nodeid") not in drop]
    timed = len([r for r in compared if r["check_id"] in TIMED_CHECKS])
    for d in diffs:
        print(d)
    print(f"{len(compared)} records of A compared ({timed} timing records by status only): "
          f"{'the same results' if not diffs else f'{len(diffs)} differences'}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
