"""``python -m nnconform.proposal check MANIFEST [...]``: run the submission checker alone.

Prints every problem (file: field: message), one per line, and exits 1 when there is any; with
``--json`` prints the checked proposals as JSON instead. Nothing is evaluated: this is the
check a CI job (or a pre-commit hook) runs before the conformance suite.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import load_proposal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnconform.proposal",
                                     description="Validate nnconform proposal manifests.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check manifests against the schema, the anchors and the files")
    check.add_argument("manifests", nargs="+", metavar="MANIFEST",
                       help="proposal.toml, a folder holding one, or the proposal's .py file")
    check.add_argument("--json", action="store_true", help="print the checked proposals as JSON")
    check.add_argument("--no-import", action="store_true",
                       help="do not run the proposal's code, even in the sandbox (method names and configs are then "
                            "not checked)")
    args = parser.parse_args(argv)
    proposals = [load_proposal(m, import_code=not args.no_import) for m in args.manifests]
    if args.json:
        print(json.dumps([p.to_dict() for p in proposals], indent=2))
    else:
        for p in proposals:
            if p.ok:
                ran = f" (its code ran in the sandbox: {p.isolation})" if p.isolation else ""
                print(f"ok: {p.manifest}: {p.name} {p.version}{ran}")
            for problem in p.problems:
                print(f"error: {problem}")
    return 0 if all(p.ok for p in proposals) else 1


if __name__ == "__main__":
    sys.exit(main())
