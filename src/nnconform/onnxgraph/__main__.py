"""``python -m nnconform.onnxgraph``: the node table of an ONNX file, and the ONNX anchors of the manifest.

    python -m nnconform.onnxgraph table MODEL.onnx --sizes 224,320 [--sha256 HEX] [--json OUT.json]
    python -m nnconform.onnxgraph table onnx-vgg16 --sizes 224,320      # an anchor of anchors/onnx.toml
    python -m nnconform.onnxgraph anchors                               # where each anchor's file goes
    python -m nnconform.onnxgraph export [NAME ...] [--into DIR] [--check]  # the embedded ONNX anchors' recipe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _table(args) -> int:
    from .files import OnnxFileError, OnnxUnavailable, load_onnx
    from .table import node_table, parse_sizes, render_table

    try:
        sizes = parse_sizes(args.sizes) if args.sizes else None
    except ValueError as exc:
        print(f"error: --sizes: {exc}", file=sys.stderr)
        return 2
    try:
        if Path(args.model).suffix == ".onnx" or Path(args.model).exists():
            loaded = load_onnx(args.model, args.sha256)
        else:
            from .manifest import get_onnx_anchor

            anchor = get_onnx_anchor(args.model)
            loaded = anchor.load(args.data_dir)
            sizes = sizes or [(s, s) for s in anchor.sizes]
    except (OnnxFileError, OnnxUnavailable, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = node_table(loaded.model, sizes)
    print(f"{loaded.path.name}: sha256 {loaded.sha256}, {loaded.size_bytes:,} bytes, {len(rows)} candidate cuts "
          f"(shapes per input, batch 1)\n")
    print(render_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"file": str(loaded.path), "sha256": loaded.sha256,
                                               "rows": [r.to_dict() for r in rows]}, indent=1))
    return 0


def _anchors(args) -> int:
    from .files import OnnxFileError, OnnxUnavailable
    from .manifest import all_onnx_anchors

    for name, a in all_onnx_anchors().items():
        try:
            a.load(args.data_dir)
            state = "present, sha256 verified"
        except OnnxUnavailable as exc:
            state = f"absent: {exc}"
        except OnnxFileError as exc:
            state = f"REFUSED: {exc}"
        print(f"{name} ({a.file}, default={'yes' if a.default else 'no'}): {state}")
    return 0


def _export(args) -> int:
    import tempfile

    from ..hashing import sha256_file
    from .export import RECIPES, export
    from .manifest import get_onnx_anchor

    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        print(f"error: no export recipe for {unknown}; recipes: {sorted(RECIPES)}", file=sys.stderr)
        return 2
    names = args.names or list(RECIPES)
    if not args.check:
        for name, path in export(names, args.into).items():
            print(f"{name}: wrote {path} (sha256 {sha256_file(path)}, {path.stat().st_size:,} bytes)")
        return 0
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:  # --check: export aside, compare with the pinned file
        for name, path in export(names, tmp).items():
            pinned, digest = get_onnx_anchor(name).sha256, sha256_file(path)
            same = digest == pinned
            bad += not same
            print(f"{name}: {'identical to' if same else 'DIFFERS from'} the pinned file (exported {digest}, "
                  f"pinned {pinned})")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m nnconform.onnxgraph``."""
    parser = argparse.ArgumentParser(prog="python -m nnconform.onnxgraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="TR 26.847-style node table (branches, shapes, bytes per input)")
    table.add_argument("model", help="an .onnx file, or the name of an anchor of anchors/onnx.toml")
    table.add_argument("--sizes", help="input sizes, e.g. 224,320 or 512x384 (default: the graph's own)")
    table.add_argument("--sha256", help="refuse the file unless its sha256 is this one")
    table.add_argument("--json", help="also write the rows as JSON to this file")
    table.add_argument("--data-dir", help="the run's data dir (ONNX anchors are looked for in DATA_DIR/onnx)")
    anchors = sub.add_parser("anchors", help="list the ONNX anchors and whether their files are in place")
    anchors.add_argument("--data-dir", help="the run's data dir (ONNX anchors are looked for in DATA_DIR/onnx)")
    exp = sub.add_parser("export", help="export the embedded ONNX anchors with their committed recipe")
    exp.add_argument("names", nargs="*", help="recipes to run (default: all)")
    exp.add_argument("--into", help="write under this folder instead of the anchors folder")
    exp.add_argument("--check", action="store_true", help="export aside and compare with the pinned sha256")
    args = parser.parse_args(argv)
    return {"table": _table, "anchors": _anchors, "export": _export}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
