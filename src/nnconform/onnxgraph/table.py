"""The TR 26.847-style node table: per cut, the node, its op type, the branches crossing it, their shapes
and the intermediate data (bytes per input) at each input size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .cuts import CutSizes, NodeCut, node_cuts, shapes_at


@dataclass(frozen=True)
class NodeRow:
    """One row of the table: a cut and its crossing tensors at every input size (in the order asked)."""

    cut: NodeCut
    sizes: tuple[CutSizes, ...]

    def to_dict(self) -> dict:
        """Plain dict for records and JSON."""
        return {"index": self.cut.index, "node": self.cut.node, "op_type": self.cut.op_type,
                "branches": self.cut.branches, "tensors": list(self.cut.tensors),
                "sizes": [{"size": list(s.size) if s.size else None,
                           "shapes": [list(sh) if sh is not None else None for sh in s.shapes],
                           "dtypes": list(s.dtypes), "bytes_per_input": s.bytes_per_input} for s in self.sizes]}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"224,320"`` or ``"224,320x240"`` (H x W) -> ``[(224, 224), (320, 240)]``; a ValueError names a bad item."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.lower().split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"input size {item!r}: expected N or HxW with positive integers") from None
        if len(dims) not in (1, 2) or min(dims) < 1:
            raise ValueError(f"input size {item!r}: expected N or HxW with positive integers")
        out.append((dims[0], dims[-1]))
    if not out:
        raise ValueError(f"no input size in {text!r}")
    return out


def node_table(model, sizes: Sequence[Sequence[int]] | None = None) -> list[NodeRow]:
    """The rows of every candidate cut of ``model`` at each input size (``None``: the graph's own size)."""
    cuts = node_cuts(model)
    per_size = [shapes_at(model, cuts, s) for s in (sizes or [None])]
    return [NodeRow(c, tuple(ps[k] for ps in per_size)) for k, c in enumerate(cuts)]


def _size_label(s: CutSizes) -> str:
    if s.size is None:
        return "graph size"
    return f"{s.size[0]}" if len(set(s.size)) == 1 else "x".join(map(str, s.size))


def _shapes(s: CutSizes) -> str:
    return " + ".join("?" if sh is None else "x".join(map(str, sh)) for sh in s.shapes)


def render_table(rows: Sequence[NodeRow]) -> str:
    """The table in Markdown (:func:`nnconform.report.md_table`): shapes are per input (batch 1), a ``?``
    marks a shape inference cannot give at that size (the graph does not run there)."""
    from ..report import md_table

    if not rows:
        return "(no candidate cut)"
    labels = [_size_label(s) for s in rows[0].sizes]
    headers = ["#", "node", "op", "branches"]
    for label in labels:
        headers += [f"shapes @{label}", f"bytes/input @{label}"]
    body = []
    for r in rows:
        line = [r.cut.index, r.cut.node, r.cut.op_type, r.cut.branches]
        for s in r.sizes:
            line += [_shapes(s), "?" if s.bytes_per_input is None else f"{s.bytes_per_input:,}"]
        body.append(line)
    return md_table(headers, body)
