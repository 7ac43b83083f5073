"""The committed catalogue of cut names per anchor (``anchors/split-catalogue.toml``).

Collecting the split cases must not trace models (``torch.fx`` over every anchor took minutes on a
busy machine, paid again by every ``-k`` run), yet the full run tier codes every single-tensor cut
and an anchor without a cut table in ``split.toml`` gets evenly spaced ones. Those names come from
this file, written by ``python -m nnconform.split catalogue --update``. A run-time case traces each
anchor and compares (:func:`nnconform.split.checks.check_catalogue_current`): a stale file fails it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..kit.plan import PlanError, Table, check_type
from ..paths import anchors_dir, read_toml

CATALOGUE_VERSION = 1
FILE_NAME = "split-catalogue.toml"
UPDATE_COMMAND = "python -m nnconform.split catalogue --update"


@dataclass(frozen=True)
class CatalogueEntry:
    """The cuts of one anchor's architecture: single-tensor cuts (name, per-sample shape) in execution
    order, and the names of the multi-tensor cuts."""

    anchor: str
    input_shape: tuple[int, ...]
    single: tuple[tuple[str, tuple[int, ...]], ...]
    multi: tuple[str, ...] = ()
    #: why torch.fx cannot trace the architecture ("" when it can): such an anchor has no cuts to code
    untraceable: str = ""

    @property
    def single_names(self) -> tuple[str, ...]:
        """Names of the single-tensor cuts, in execution order."""
        return tuple(name for name, _ in self.single)

    @property
    def spatial_names(self) -> tuple[str, ...]:
        """Single cuts whose tensor has two or more dimensions (what evenly spaced cuts are chosen from)."""
        return tuple(name for name, shape in self.single if len(shape) >= 2)

    @classmethod
    def from_graph(cls, anchor: str, graph) -> "CatalogueEntry":
        """The entry of a traced :class:`~nnconform.split.cuts.SplitGraph`."""
        return cls(anchor, tuple(graph.input_shape), tuple((c.name, tuple(c.shapes[0])) for c in graph.single_cuts),
                   tuple(c.name for c in graph.cuts if not c.single))

    def differences(self, other: "CatalogueEntry") -> list[str]:
        """What differs between this (committed) entry and ``other`` (traced now), for a failure message."""
        out = []
        if self.input_shape != other.input_shape:
            out.append(f"input shape {list(self.input_shape)} committed, {list(other.input_shape)} traced")
        mine, theirs = dict(self.single), dict(other.single)
        gone = [n for n in mine if n not in theirs]
        new = [n for n in theirs if n not in mine]
        if gone:
            out.append(f"single cuts no longer traced: {gone[:5]}{' ...' if len(gone) > 5 else ''}")
        if new:
            out.append(f"single cuts not in the file: {new[:5]}{' ...' if len(new) > 5 else ''}")
        reshaped = [f"{n} {list(mine[n])} -> {list(theirs[n])}" for n in mine if n in theirs and mine[n] != theirs[n]]
        if reshaped:
            out.append(f"shapes changed: {reshaped[:3]}")
        if not (gone or new) and self.single_names != other.single_names:
            out.append("single cuts are in another order")
        if bool(self.untraceable) != bool(other.untraceable):
            out.append(f"traceable {not self.untraceable} committed, {not other.untraceable} now")
        if set(self.multi) != set(other.multi):
            out.append(f"multi-tensor cuts differ ({len(self.multi)} committed, {len(other.multi)} traced)")
        return out


def catalogue_path() -> Path:
    """``anchors/split-catalogue.toml``."""
    return anchors_dir() / FILE_NAME


def parse_catalogue(data: object, where: str) -> dict[str, CatalogueEntry]:
    """Entries from the parsed TOML; a :class:`PlanError` names the file and field of a bad value."""
    root = Table(data, where)
    version = root.get("version", int, None)
    if version != CATALOGUE_VERSION:
        raise PlanError(f"{where}: version = {version!r}; this nnconform reads split catalogues of version "
                        f"{CATALOGUE_VERSION} (rewrite it with `{UPDATE_COMMAND}`)")
    anchors = root.table("catalogue")
    out = {}
    for name in list(anchors.data):
        t = anchors.table(name)
        single = []
        for cut in t.tables("single"):
            single.append((cut.str("name"), tuple(cut.list("shape", int))))
            cut.done()
        out[name] = CatalogueEntry(name, tuple(t.list("input_shape", int)), tuple(single),
                                   tuple(t.list("multi", str, [])), t.get("untraceable", str, ""))
        t.done()
    root.done()
    return out


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, CatalogueEntry]:
    try:
        data = read_toml(path, PlanError)
    except FileNotFoundError:
        raise PlanError(f"{path}: the split catalogue is missing; write it with `{UPDATE_COMMAND}`") from None
    return parse_catalogue(data, str(path))


def load_catalogue(path: str | Path | None = None) -> dict[str, CatalogueEntry]:
    """The committed catalogue (read once per process)."""
    return _load(Path(path) if path else catalogue_path())


def entry(anchor: str, path: str | Path | None = None) -> CatalogueEntry:
    """One anchor's entry; a :class:`PlanError` saying how to add it otherwise."""
    entries = load_catalogue(path)
    if anchor not in entries:
        raise PlanError(f"{path or catalogue_path()}: no entry for anchor {anchor!r}; add it with `{UPDATE_COMMAND}`")
    return entries[anchor]


def trace_entry(anchor_name: str) -> CatalogueEntry:
    """Trace an anchor's architecture (random weights: cuts and shapes do not depend on them) now."""
    import torch

    from ..anchors import get_anchor
    from .cuts import SplitGraph

    from .cuts import SplitTraceError

    anchor = get_anchor(anchor_name)
    if getattr(anchor, "family", None) == "onnx":  # graph node cuts; an absent file: no cuts, and why
        from ..anchors import WeightsUnavailable
        from ..onnxgraph.splitgraph import OnnxSplitGraph

        try:
            graph = OnnxSplitGraph.from_module(anchor.build(), anchor.input_shape)
        except WeightsUnavailable:  # the reason must not name this machine's folders: the file is committed
            from ..onnxgraph.manifest import get_onnx_anchor

            return CatalogueEntry(anchor_name, tuple(anchor.input_shape), (), (), untraceable=(
                f"the ONNX file {get_onnx_anchor(anchor_name).file} was absent when the catalogue was written; "
                f"no cuts until `{UPDATE_COMMAND} {anchor_name}` runs where it is present"))
        return CatalogueEntry.from_graph(anchor_name, graph)
    torch.manual_seed(0)
    try:
        graph = SplitGraph.trace(anchor.build_architecture().eval(), anchor.input_shape)
    except SplitTraceError as exc:  # recorded, so the file says why the anchor has no split cases
        return CatalogueEntry(anchor_name, tuple(anchor.input_shape), (), (), untraceable=str(exc))
    return CatalogueEntry.from_graph(anchor_name, graph)


def _toml_list(values: Iterable) -> str:
    return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "]"


def format_catalogue(entries: Iterable[CatalogueEntry]) -> str:
    """The TOML text of a catalogue (stable: one line per cut, anchors in the given order)."""
    lines = [f"# The cuts of every anchor's architecture, traced with torch.fx: written by `{UPDATE_COMMAND}`,",
             "# read when the split cases are collected (so collection traces nothing), and compared with a",
             "# fresh trace by the split.catalogue_current case (a stale file fails it). Do not edit by hand.",
             f"version = {CATALOGUE_VERSION}", ""]
    for e in entries:
        lines += [f'[catalogue."{e.anchor}"]', f"input_shape = {_toml_list(e.input_shape)}"]
        if e.untraceable:
            lines.append(f"untraceable = {json.dumps(e.untraceable)}")
        lines.append("single = [")
        lines += [f'    {{ name = "{name}", shape = {_toml_list(shape)} }},' for name, shape in e.single]
        lines += ["]", f"multi = {_toml_list(e.multi)}", ""]
    return "\n".join(lines)


def update_catalogue(anchors: Iterable[str] | None = None, path: str | Path | None = None) -> Path:
    """Trace ``anchors`` (default: every anchor) and rewrite the catalogue, keeping other anchors' entries."""
    from ..anchors import list_anchors

    path = Path(path) if path else catalogue_path()
    names = list(anchors) if anchors else list_anchors()
    for n in names:
        check_type(n, str, "anchor")
    try:
        kept = dict(load_catalogue(path))
    except PlanError:
        kept = {}
    kept.update({n: trace_entry(n) for n in names})
    order = [a for a in list_anchors() if a in kept] + sorted(set(kept) - set(list_anchors()))
    text = format_catalogue(kept[a] for a in order)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    _load.cache_clear()
    return path
