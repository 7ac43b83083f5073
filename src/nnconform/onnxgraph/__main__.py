"""``python -m nnconform.onnxgraph``: the node table of an ONNX file, and the ONNX anchors of the manifest.

    python -m nnconform.onnxgraph table MODEL.onnx --sizes 224,320 [--sha256 HEX] [--json OUT.json]
    python -m nnconform.onnxgraph table onnx-vgg16 --sizes 224,320      # an anchor of anchors/onnx.toml
    python -m nnconform.onnxgraph anchors                               # where each anchor's file goes
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
    args = parser.parse_args(argv)
    return _table(args) if args.command == "table" else _anchors(args)


if __name__ == "__main__":
    raise SystemExit(main())
