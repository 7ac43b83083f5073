"""Split points found in the traced graph, and the head and tail modules of each.

A model is traced once with ``torch.fx``. Its computation nodes, in execution order, are
grouped into *blocks*: the children of the model and, recursively, the children of plain
containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``); a function called in the
model's own ``forward`` (``torch.flatten``) is a block of its own. A candidate cut lies after the
last node of a block. It is named after the outermost module that is complete at that point
(``layer2`` rather than ``layer2.1``), so names are those of ``model.named_modules()``.

What crosses a cut is every value computed before it and used after it. A cut where exactly
one tensor crosses is a *single* cut (the usual split point); others hand over several tensors
(3GPP's "number of branches") and are catalogued as *multi* cuts. Inside a block, the ends
of its children (``layer1.0.conv1``) are catalogued too when several tensors cross there (the
residual branch and the block's input): these are the multi cuts. The batch size read from the
input (``x.size(0)``, used by ``view(bs, -1)``) is not data: the tail reads it from the tensor
it receives instead.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import fx, nn

#: Containers whose children are blocks in their own right.
PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

#: The batch size used when tracing shapes; any value other than 1 tells batch from channels.
TRACE_BATCH = 2


class SplitTraceError(RuntimeError):
    """The model cannot be split: torch.fx cannot trace it, or a cut name is unknown."""


@dataclass(frozen=True)
class CutPoint:
    """One candidate split point of a model.

    ``shapes`` are per-sample (without the batch dimension) at the resolution the graph was
    traced with; ``tensors`` are the fx node names of the tensors handed from head to tail.
    """

    name: str
    index: int
    node: str
    tensors: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    other_values: tuple[str, ...] = ()  # non-tensor values that cross (besides the batch size)

    @property
    def num_tensors(self) -> int:
        """How many tensors cross the cut (3GPP's number of branches)."""
        return len(self.tensors)

    @property
    def single(self) -> bool:
        """True when exactly one tensor and nothing else crosses."""
        return len(self.tensors) == 1 and not self.other_values

    @property
    def kind(self) -> str:
        """``single`` or ``multi``."""
        return "single" if self.single else "multi"

    @property
    def depth(self) -> int:
        """Nesting depth of the name: ``layer2`` is 1, ``layer2.0`` is 2."""
        return self.name.count(".") + 1

    @property
    def numel(self) -> int:
        """Elements per sample of all crossing tensors."""
        total = 0
        for shape in self.shapes:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"name": self.name, "index": self.index, "node": self.node, "kind": self.kind,
                "num_tensors": self.num_tensors, "tensors": list(self.tensors),
                "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes),
                "other_values": list(self.other_values), "numel": self.numel}


class _Recorder(fx.Interpreter):
    """Runs the graph once and keeps, per node, the type and shape of what it produced."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.info: dict[str, tuple[bool, tuple[int, ...] | None, str | None, Any]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.info[n.name] = (True, tuple(out.shape), str(out.dtype).replace("torch.", ""), None)
        else:
            self.info[n.name] = (False, None, None, out if isinstance(out, (int, float)) else None)
        return out


def _is_plain_container(module: nn.Module) -> bool:
    return type(module) in PLAIN_CONTAINERS


class CutCatalogue:
    """A split graph's catalogue of cuts by name: what the criterion reads of a torch.fx graph
    (:class:`SplitGraph`) and of an ONNX graph (:class:`nnconform.onnxgraph.splitgraph.OnnxSplitGraph`) alike.
    A subclass sets ``_cuts`` (in execution order) and ``_by_name``."""

    _cuts: list[CutPoint]
    _by_name: dict[str, CutPoint]

    @property
    def cuts(self) -> list[CutPoint]:
        """Every catalogued cut, in execution order."""
        return list(self._cuts)

    @property
    def single_cuts(self) -> list[CutPoint]:
        """The cuts where exactly one tensor crosses."""
        return [c for c in self._cuts if c.single]

    def cut(self, name: str) -> CutPoint:
        """One cut by name; an error listing the valid names (and the closest ones) otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self._by_name, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise SplitTraceError(f"{self._graph_label()} has no cut named {name!r}{hint}; "
                                  f"cuts: {[c.name for c in self._cuts]}") from None

    def _graph_label(self) -> str:
        """What the error of :meth:`cut` calls the graph."""
        return type(self).__name__


class SplitGraph(CutCatalogue):
    """A traced model with its catalogue of cuts; builds heads, tails and feature probes.

    Build it with :meth:`SplitGraph.trace`. Heads and tails share the model's parameters.
    """

    def __init__(self, model: nn.Module, gm: fx.GraphModule, input_shape: tuple[int, ...],
                 info: dict, cuts: list[CutPoint], order: list[fx.Node], positions: dict[fx.Node, int],
                 boundaries: dict[str, int]) -> None:
        self.model = model
        self.gm = gm
        self.input_shape = tuple(input_shape)
        self._info = info
        self._cuts = cuts
        self._by_name = {c.name: c for c in cuts}
        self._order = order
        self._positions = positions
        self._boundaries = boundaries

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def trace(cls, model: nn.Module, input_shape: Sequence[int]) -> "SplitGraph":
        """Trace ``model`` (eval mode) for per-sample inputs of ``input_shape`` (C, H, W)."""
        model = model.eval()
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:
            raise SplitTraceError(f"{type(model).__name__}: torch.fx cannot trace it ({type(exc).__name__}: "
                                  f"{exc}); split points need a model without data-dependent control flow") from exc
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise SplitTraceError(f"{type(model).__name__}: forward takes {len(placeholders)} inputs; "
                                  "split inference needs exactly one")
        rec = _Recorder(gm)
        with torch.inference_mode():
            rec.run(torch.zeros((TRACE_BATCH, *input_shape)))
        order, positions, cuts, boundaries = _catalogue(model, gm, rec.info)
        return cls(model, gm, tuple(input_shape), rec.info, cuts, order, positions, boundaries)

    # ---- catalogue ----------------------------------------------------------------------

    def _graph_label(self) -> str:
        return type(self.model).__name__

    @property
    def node_names(self) -> set[str]:
        """The traced graph's node names (what a cut's name may stand for besides a module)."""
        return {n.name for n in self.gm.graph.nodes}

    def totals(self) -> tuple[int, int]:
        """``(parameters, MACs)`` of the whole model at the traced input shape."""
        from ..profile import count_macs, count_params

        return count_params(self.model), count_macs(self.model, self.input_shape)

    def profiles(self) -> dict:
        """Head and tail MACs and parameters of every cut (:func:`nnconform.split.features.profile_cuts`)."""
        from .features import profile_cuts

        return profile_cuts(self)

    def shapes_at(self, input_shape: Sequence[int]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Per-sample shapes of every cut's tensors for another input size (one zero forward).

        A model with a fixed-size layer (LeNet's first Linear) stops there at other sizes; the
        cuts computed before that point are returned, the others are left out.
        """
        rec = _Recorder(self.gm)
        with torch.inference_mode():
            try:
                rec.run(torch.zeros((1, *input_shape)))
            except Exception:  # a fixed-size layer: keep what was computed before it
                pass
        return {c.name: tuple(rec.info[t][1][1:] for t in c.tensors) for c in self._cuts
                if all(t in rec.info for t in c.tensors)}

    # ---- graph surgery ------------------------------------------------------------------

    def _crossing(self, cut: CutPoint) -> tuple[list[fx.Node], list[tuple[fx.Node, fx.Node | None]]]:
        """Tensor nodes that cross, and (node, tensor it reads the batch size of) for scalars."""
        nodes = {n.name: n for n in self.gm.graph.nodes}
        tensors = [nodes[t] for t in cut.tensors]
        scalars = []
        for n in _crossing_nodes(self._order, self._positions, self._boundaries[cut.name]):
            if n.name in cut.tensors:
                continue
            scalars.append((n, tensors[0] if n.name not in cut.other_values else None))
        return tensors, scalars

    def head(self, name: str) -> fx.GraphModule:
        """The part of the model before cut ``name``: input -> crossing tensor (a tuple if several)."""
        cut = self.cut(name)
        pos = self._boundaries[name]
        tensors, scalars = self._crossing(cut)
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        lookup = _lookup(env, g)
        for n in self._order[: pos + 1]:
            env[n] = g.node_copy(n, lookup)
        outs = [env[t] for t in tensors] + [env[s] for s, via in scalars if via is None]
        g.output(outs[0] if len(outs) == 1 else tuple(outs))
        g.lint()
        return fx.GraphModule(self.gm, g, class_name=f"Head_{_ident(name)}")

    def tail(self, name: str) -> fx.GraphModule:
        """The part of the model after cut ``name``: crossing tensor(s) -> the model's output.

        The tail clones what it receives, so in-place layers after the cut (torchvision's
        ``ReLU(inplace=True)``) never change the caller's tensor.
        """
        cut = self.cut(name)
        pos = self._boundaries[name]
        tensors, scalars = self._crossing(cut)
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        lookup = _lookup(env, g)
        received = []
        for t in tensors:
            ph = g.placeholder(t.name)
            received.append(ph)
            env[t] = g.call_function(torch.clone, (ph,))
        for s, via in scalars:
            if via is None:
                env[s] = g.placeholder(s.name)
        for s, via in scalars:
            if via is not None:
                env[s] = g.call_method("size", (env[via], 0))
        for n in self._order[pos + 1:]:
            env[n] = g.node_copy(n, lookup)
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        g.node_copy(output, lookup)
        g.lint()
        return fx.GraphModule(self.gm, g, class_name=f"Tail_{_ident(name)}")

    def split(self, name: str) -> tuple[fx.GraphModule, fx.GraphModule]:
        """``(head, tail)`` for cut ``name``."""
        return self.head(name), self.tail(name)

    def probe(self, names: Iterable[str]) -> "FeatureProbe":
        """A module whose one forward pass returns the model output and every named cut's tensors."""
        return FeatureProbe(self, list(names))


class FeatureProbe(nn.Module):
    """One forward pass of the whole model that also hands back the tensors at chosen cuts.

    Each captured tensor is cloned as soon as it is computed, before an in-place layer can
    change it, so it equals what :meth:`SplitGraph.head` returns for that cut.
    """

    def __init__(self, graph: SplitGraph, names: list[str]) -> None:
        super().__init__()
        cuts = [graph.cut(n) for n in names]
        self.names = [c.name for c in cuts]
        wanted: dict[str, list[int]] = {}
        slots: list[tuple[int, ...]] = []
        k = 0
        for c in cuts:
            idx = []
            for t in c.tensors:
                wanted.setdefault(t, []).append(k)
                idx.append(k)
                k += 1
            slots.append(tuple(idx))
        self._slots = slots
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        lookup = _lookup(env, g)
        captured: list[fx.Node | None] = [None] * k
        output = None
        for n in graph.gm.graph.nodes:
            if n.op == "get_attr":
                continue
            if n.op == "output":
                output = n
                continue
            env[n] = g.node_copy(n, lookup)
            if n.name in wanted:
                clone = g.call_function(torch.clone, (env[n],))
                for i in wanted[n.name]:
                    captured[i] = clone
        (out_arg,) = output.args
        g.output((fx.map_arg(out_arg, lookup), tuple(captured)))
        g.lint()
        self.gm = fx.GraphModule(graph.gm, g, class_name="FeatureProbe")

    def forward(self, x: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor | tuple[torch.Tensor, ...]]]:
        """``(model output, {cut name: tensor, or tuple of tensors for a multi cut})``."""
        out, captured = self.gm(x)
        feats = {}
        for name, idx in zip(self.names, self._slots):
            feats[name] = captured[idx[0]] if len(idx) == 1 else tuple(captured[i] for i in idx)
        return out, feats


# ---------------------------------------------------------------------------------------------
# Helpers


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _lookup(env: dict[fx.Node, fx.Node], g: fx.Graph):
    """Map an original node to its copy, copying parameter reads (get_attr) on first use."""

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise SplitTraceError(f"node {a.name} is used before it is computed in this part of the graph")
            env[a] = g.node_copy(a)
        return env[a]

    return lookup


def _module_chain(model: nn.Module, n: fx.Node) -> tuple[list[str], int, int | None]:
    """The nn_module_stack keys of a node (outermost first), the index of its block in that list,
    and the index of its inner unit (the block's child, through plain containers) if any."""
    stack = n.meta.get("nn_module_stack")
    if not stack:
        return [f"node:{n.name}"], 0, None
    keys, plain = [], []
    for key, value in stack.items():
        path = value[0] if isinstance(value, tuple) else str(value)
        keys.append(key)
        try:
            plain.append(_is_plain_container(model.get_submodule(path)))
        except AttributeError:
            plain.append(False)
    block = next((i for i, p in enumerate(plain) if not p), len(keys) - 1)
    inner = next((i for i in range(block + 1, len(keys)) if not plain[i]), None)
    return keys, block, inner


def _display(key: str) -> str:
    return key[len("node:"):] if key.startswith("node:") else key


def _crossing_nodes(order: list[fx.Node], positions: dict[fx.Node, int], pos: int) -> list[fx.Node]:
    """Nodes computed at or before ``pos`` and used after it (placeholders included)."""
    out = []
    for n in order[: pos + 1]:
        if any(positions.get(u, len(order)) > pos for u in n.users):
            out.append(n)
    return out


def _batch_size_source(n: fx.Node, info: dict) -> bool:
    """True for ``t.size(0)`` / ``t.shape[0]`` / ``t.size()[0]`` reading a batch dimension."""
    def is_batch_dim_of_tensor(t: Any) -> bool:
        return isinstance(t, fx.Node) and info.get(t.name, (False,))[0] and info[t.name][1][0] == TRACE_BATCH

    if n.op == "call_method" and n.target == "size":
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        return dim == 0 and is_batch_dim_of_tensor(n.args[0])
    if n.op == "call_function" and n.target is operator.getitem and n.args[1] == 0:
        src = n.args[0]
        if isinstance(src, fx.Node):
            whole_size = src.op == "call_method" and src.target == "size" and len(src.args) == 1 and not src.kwargs
            shape_attr = src.op == "call_function" and src.target is getattr and src.args[1] == "shape"
            return (whole_size or shape_attr) and is_batch_dim_of_tensor(src.args[0])
    return False


def _catalogue(model: nn.Module, gm: fx.GraphModule, info: dict):
    nodes = list(gm.graph.nodes)
    placeholder = nodes[0]
    computations = [n for n in nodes if n.op not in ("placeholder", "get_attr", "output")]
    order = [placeholder] + computations
    positions = {n: i for i, n in enumerate(order)}
    chains = {n: _module_chain(model, n) for n in computations}
    # the last position at which each module key (at any depth) is active
    last_active: dict[str, int] = {}
    for n in computations:
        for key in chains[n][0]:
            last_active[key] = positions[n]
    last_tensor = max((positions[n] for n in computations if info[n.name][0]), default=0)

    cuts: list[CutPoint] = []
    boundaries: dict[str, int] = {}
    used_names: dict[str, int] = {}
    for n in computations:
        pos = positions[n]
        keys, block, inner = chains[n]
        if pos >= last_tensor or not info[n.name][0]:
            continue  # the head would be the whole model, or the node only computes a shape
        if last_active[keys[block]] == pos:
            candidates, inner_cut = keys[: block + 1], False
        elif inner is not None and last_active[keys[inner]] == pos:
            candidates, inner_cut = keys[block + 1: inner + 1], True
        else:
            continue  # inside a unit
        crossing = _crossing_nodes(order, positions, pos)
        tensors = [c for c in crossing if info.get(c.name, (False,))[0]]
        scalars = [c for c in crossing if not info.get(c.name, (False,))[0]]
        if tensors == [placeholder]:
            continue  # nothing computed yet
        others = tuple(s.name for s in scalars if not (_batch_size_source(s, info) and tensors))
        if inner_cut and len(tensors) == 1 and not others:
            continue  # single cuts inside blocks are not catalogued (see module docstring)
        name = _display(next(k for k in candidates if last_active[k] == pos))
        if name in used_names:  # a module called twice outside a container
            used_names[name] += 1
            name = f"{name}@{used_names[name] - 1}"
        else:
            used_names[name] = 1
        shapes = tuple(tuple(info[t.name][1][1:]) if info[t.name][1] and info[t.name][1][0] == TRACE_BATCH
                       else tuple(info[t.name][1]) for t in tensors)
        cuts.append(CutPoint(
            name=name, index=len(cuts), node=n.name, tensors=tuple(t.name for t in tensors),
            shapes=shapes, dtypes=tuple(info[t.name][2] for t in tensors), other_values=others,
        ))
        boundaries[name] = pos
    return order, positions, cuts, boundaries
