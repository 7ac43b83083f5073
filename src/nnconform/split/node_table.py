"""TR 26.847-style node tables of a split anchor, from its ``torch.fx`` cuts.

TR 26.847 (scenario 2) tabulates, per graph node where a model may be split, "the intermediate data size and
number of branches per node", and runs detection networks at several input sizes. :func:`node_table` gives, for
every cut of the traced graph: its name, the branches (tensors crossing it), each tensor's fx node, shape, dtype
and bytes per input (numel x itemsize), and their total; and an input-size scaling table of the chosen cuts (each
tensor's shape and bytes at every input size of ``[resolutions]`` in ``anchors/split.toml``), from shape
propagation (one zero forward per size: no data, no trained weights). :func:`check_node_table` proves the table
against real tensors: the heads' outputs for a random input at each size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import kit
from ..records import CheckRecord, gate
from .cuts import SplitGraph

CRITERION = "split"

kit.register_check("split.node_table", "TR 26.847 node table: every cut's branches, tensor shapes and bytes per input "
                   "(and at each input size of the scaling table) equal numel x itemsize of the tensors the head "
                   "hands over for a random input", "equal")


def itemsize(dtype: str) -> int:
    """Bytes per element of a torch dtype named as the catalogue names it (``float32``)."""
    try:
        return torch.empty((), dtype=getattr(torch, dtype)).element_size()
    except (AttributeError, TypeError):
        raise ValueError(f"unknown tensor dtype {dtype!r} in the cut catalogue") from None


def scaled_input_shape(input_shape: Sequence[int], size: int) -> tuple[int, ...]:
    """The input shape at another size: a square image (``[C, H, W]``, H == W) on both spatial axes, anything else
    (log-mel ``[1, mels, frames]``) on its last axis (as :func:`nnconform.split.features.resolution_scaling`)."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3 and shape[1] == shape[2]:
        return (shape[0], int(size), int(size))
    return (*shape[:-1], int(size))


def _tensors(names, shapes, dtypes) -> list[dict]:
    return [{"name": n, "shape": list(s), "dtype": d, "bytes": math.prod(s) * itemsize(d)}
            for n, s, d in zip(names, shapes, dtypes)]


def node_table(graph: SplitGraph, sizes: Sequence[int], scaled_cuts: Sequence[str]) -> dict:
    """The node table of every cut at the traced input size and the scaling table of ``scaled_cuts`` at ``sizes``
    (a cut a fixed-size layer stops at some size is absent from that size's column)."""
    nodes = []
    for c in graph.cuts:
        tensors = _tensors(c.tensors, c.shapes, c.dtypes)
        nodes.append({"node": c.name, "kind": c.kind, "branches": c.num_tensors, "tensors": tensors,
                      "bytes": sum(t["bytes"] for t in tensors)})
    scaling: dict[str, dict[str, dict]] = {name: {} for name in scaled_cuts}
    for size in sizes:
        shapes = graph.shapes_at(scaled_input_shape(graph.input_shape, size))
        for name in scaled_cuts:
            if name in shapes:
                c = graph.cut(name)
                tensors = _tensors(c.tensors, shapes[name], c.dtypes)
                scaling[name][str(int(size))] = {"tensors": tensors, "bytes": sum(t["bytes"] for t in tensors)}
    return {"input_shape": list(graph.input_shape), "sizes": [int(s) for s in sizes], "nodes": nodes,
            "scaling": scaling}


def measured_tensors(graph: SplitGraph, cut: str, input_shape: Sequence[int], seed: int = 0) -> list[torch.Tensor]:
    """The tensors cut ``cut``'s head hands over for one random input of ``input_shape`` (batch of one, dropped)."""
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = graph.head(cut)(x)
    return [t[0] for t in (out if isinstance(out, tuple) else (out,))]


def table_problems(graph: SplitGraph, table: dict) -> list[str]:
    """Every entry of ``table`` whose shape or bytes differ from the real tensors (numel x element size) the heads
    hand over for a random input; empty when the table is right."""
    problems = []

    def compare(where: str, listed: list[dict], real: list[torch.Tensor]) -> None:
        if len(listed) != len(real):
            problems.append(f"{where}: table lists {len(listed)} branches, the head hands over {len(real)}")
            return
        for k, (t, r) in enumerate(zip(listed, real)):
            real_bytes = r.numel() * r.element_size()
            if t["shape"] != list(r.shape) or t["bytes"] != real_bytes:
                problems.append(f"{where} tensor {k} ({t['name']}): table {t['shape']} {t['bytes']} B, "
                                f"real {list(r.shape)} {real_bytes} B")

    # every node from one probe pass at the traced size (a head per node would repeat the forward per cut)
    x = torch.randn((1, *graph.input_shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, feats = graph.probe([n["node"] for n in table["nodes"]])(x)
    for node in table["nodes"]:
        got = feats[node["node"]]
        compare(f"{node['node']} @input {table['input_shape']}", node["tensors"],
                [t[0] for t in (got if isinstance(got, tuple) else (got,))])
        if node["bytes"] != sum(t["bytes"] for t in node["tensors"]):
            problems.append(f"{node['node']}: total {node['bytes']} B is not the sum of its tensors")
    for name, by_size in table["scaling"].items():
        for size, entry in by_size.items():
            shape = scaled_input_shape(graph.input_shape, int(size))
            compare(f"{name} @{size}", entry["tensors"], measured_tensors(graph, name, shape))
    return problems


def check_node_table(anchor: str, graph: SplitGraph, sizes: Sequence[int], scaled_cuts: Sequence[str], *,
                     trained: bool) -> CheckRecord:
    """The anchor's TR 26.847 node table and input-size scaling table (in the details), gated on the real tensors'
    numel x itemsize (:func:`table_problems`)."""
    table = node_table(graph, sizes, scaled_cuts)
    problems = table_problems(graph, table)
    checked = len(table["nodes"]) + sum(len(v) for v in table["scaling"].values())
    multi = sum(1 for n in table["nodes"] if n["branches"] > 1)
    rec = gate("split.node_table", anchor, not problems, measured=checked - len(problems), expected=checked,
               tolerance="exact", message="; ".join(problems[:5]) or
               f"{len(table['nodes'])} nodes ({multi} with several branches), {len(table['scaling'])} cuts at "
               f"{len(sizes)} input sizes {list(table['sizes'])}: bytes equal numel x itemsize of the real tensors",
               details={**table, "problems": problems, "trained_weights": trained})
    rec.criterion = CRITERION
    return rec
