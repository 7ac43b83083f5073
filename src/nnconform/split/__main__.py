"""``python -m nnconform.split catalogue [--update] [ANCHOR ...]``: check or rewrite the committed cut catalogue."""

from __future__ import annotations

import argparse
import sys

from ..kit.plan import PlanError
from .catalogue import catalogue_path, entry, trace_entry, update_catalogue


def main(argv: list[str] | None = None) -> int:
    """Check the catalogue against fresh traces (exit 1 when stale), or rewrite it with ``--update``."""
    parser = argparse.ArgumentParser(prog="python -m nnconform.split", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cat = sub.add_parser("catalogue", help="check (or --update) anchors/split-catalogue.toml")
    cat.add_argument("--update", action="store_true", help="rewrite the entries of the anchors traced")
    cat.add_argument("anchors", nargs="*", help="anchor names (default: every anchor)")
    args = parser.parse_args(argv)
    from ..anchors import list_anchors

    unknown = [a for a in args.anchors if a not in list_anchors()]
    if unknown:
        parser.error(f"unknown anchor(s) {unknown}; anchors: {', '.join(list_anchors())}")
    if args.update:
        path = update_catalogue(args.anchors or None)
        print(f"wrote {path} ({len(args.anchors) or len(list_anchors())} anchors traced)")
        return 0
    stale = 0
    for name in args.anchors or list_anchors():
        try:
            problems = entry(name).differences(trace_entry(name))
        except PlanError as exc:
            problems = [str(exc)]
        if problems:
            stale += 1
            print(f"{name}: STALE: {'; '.join(problems)}")
        else:
            print(f"{name}: current")
    if stale:
        print(f"{catalogue_path()}: {stale} stale entr{'y' if stale == 1 else 'ies'}; rewrite with --update")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
