"""CLI: ``python -m nnconform.docs [--out docs/reference] [--results RUN/results.json] [--check]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import default_out, generate, stale_pages, write_pages
import json

from .results import MEASURED, measured_snapshot, read_results


def main(argv: list[str] | None = None) -> int:
    """Generate the reference pages, or with ``--check`` exit 1 naming each stale page."""
    parser = argparse.ArgumentParser(prog="python -m nnconform.docs", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="folder of the pages (default: docs/reference)")
    parser.add_argument("--results", type=Path, default=None,
                        help="a run's results.json: its measured figures replace the committed snapshot "
                             f"(<out>/{MEASURED}) the pages show")
    parser.add_argument("--check", action="store_true", help="write nothing; fail when a page is stale")
    args = parser.parse_args(argv)
    out = args.out or default_out()
    snapshot = out / MEASURED
    try:
        if args.results and not args.check:
            results = measured_snapshot(read_results(args.results))
            out.mkdir(parents=True, exist_ok=True)
            snapshot.write_text(json.dumps(results, indent=1, sort_keys=True, allow_nan=False) + "\n")
        elif args.results:
            results = measured_snapshot(read_results(args.results))
        else:
            results = read_results(snapshot) if snapshot.is_file() else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pages = generate(results)
    if args.check:
        problems = stale_pages(pages, out)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("the reference pages are stale: run `python -m nnconform.docs` and commit docs/reference/",
                  file=sys.stderr)
            return 1
        print(f"{out}: {len(pages)} pages up to date")
        return 0
    for path in write_pages(pages, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
