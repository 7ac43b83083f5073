"""Documentation of the intermediate data at every cut: sizes, sparsity, entropy, channel
statistics (as MPEG FCM's conformance data gives them), head/tail cost, resolution scaling.

Statistics accumulate batch by batch from the one forward pass that also feeds the codecs, so
no cut costs a pass of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import fx
from torch.utils.flop_counter import FlopCounterMode

from .cuts import CutPoint, SplitGraph

#: Bytes per element of the three storage types the issue tabulates.
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class CutProfile:
    """Cost on each side of a cut: MACs per sample and parameter counts."""

    head_macs: int
    tail_macs: int
    head_params: int
    tail_params: int
    shared_params: int = 0  # read on both sides: a head shared by every FPN level, applied before and after the cut


def profile_cuts(graph: SplitGraph) -> dict[str, CutProfile]:
    """Head and tail MACs and parameters of every cut, from one counted forward pass.

    MACs come from ``torch.utils.flop_counter`` (FLOPs / 2, as :func:`nnconform.profile.count_macs`),
    accumulated node by node, so head MACs are the running total at the cut and tail MACs the
    rest. Parameters are counted once per side, by identity, like ``count_params``. (An ONNX anchor's graph counts
    its cut graphs itself: ``graph.profiles()`` reads either kind.)
    """
    order = graph._order
    positions = graph._positions
    running: dict[fx.Node, int] = {}
    counter = FlopCounterMode(display=False)

    class _Counting(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in positions:
                running[n] = counter.get_total_flops()
            return out

    with torch.inference_mode(), counter:
        _Counting(graph.gm).run(torch.zeros((1, *graph.input_shape)))
    total_macs = counter.get_total_flops() // 2

    # parameters read by each computation node (call_module: the module's; get_attr: the tensor)
    node_params: dict[fx.Node, list[torch.Tensor]] = {}
    for n in order:
        params: list[torch.Tensor] = []
        if n.op == "call_module":
            params = list(graph.gm.get_submodule(n.target).parameters())
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                obj = graph.gm
                for part in a.target.split("."):
                    obj = getattr(obj, part)
                if isinstance(obj, torch.nn.Parameter):
                    params.append(obj)
        node_params[n] = params

    def params_of(nodes: Sequence[fx.Node]) -> dict[int, int]:
        seen: dict[int, int] = {}
        for n in nodes:
            for p in node_params[n]:
                seen[id(p)] = p.numel()
        return seen

    out = {}
    for cut in graph.cuts:
        pos = graph._boundaries[cut.name]
        head_macs = running[order[pos]] // 2
        head, tail = params_of(order[: pos + 1]), params_of(order[pos + 1:])
        out[cut.name] = CutProfile(
            head_macs=int(head_macs),
            tail_macs=int(total_macs - head_macs),
            head_params=sum(head.values()),
            tail_params=sum(tail.values()),
            shared_params=sum(v for k, v in head.items() if k in tail),
        )
    return out


@dataclass(frozen=True)
class FeatureStats:
    """What crosses one cut, summarised over the samples seen.

    ``entropy_bits`` is the empirical entropy (bits per element) of the levels after 8-bit
    min-max quantisation of each sample's tensor (the anchor codec's first step). Channel
    statistics follow MPEG FCM's conformance data: per-channel mean and variance over all
    samples and positions, summarised by their mean, minimum and maximum.
    """

    cut: str
    kind: str
    num_tensors: int
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    numel: int
    n_samples: int
    zero_fraction: float
    entropy_bits: float
    value_min: float
    value_max: float
    channels: int
    channel_mean: dict[str, float]
    channel_var: dict[str, float]
    profile: CutProfile | None = None
    resolution_numel: dict[str, int] = field(default_factory=dict)

    def bytes_as(self, storage: str) -> int:
        """Bytes per sample when stored as ``fp32``, ``fp16`` or ``int8``."""
        return self.numel * ELEMENT_BYTES[storage]

    def kib_as(self, storage: str) -> float:
        """KiB per sample when stored as ``fp32``, ``fp16`` or ``int8``."""
        return self.bytes_as(storage) / 1024

    def to_dict(self) -> dict:
        """Plain dict for records and the report."""
        d = {
            "cut": self.cut, "kind": self.kind, "num_tensors": self.num_tensors,
            "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes), "numel": self.numel,
            "bytes": {k: self.bytes_as(k) for k in ELEMENT_BYTES}, "n_samples": self.n_samples,
            "zero_fraction": self.zero_fraction, "entropy_bits": self.entropy_bits,
            "value_min": self.value_min, "value_max": self.value_max, "channels": self.channels,
            "channel_mean": dict(self.channel_mean), "channel_var": dict(self.channel_var),
            "resolution_numel": dict(self.resolution_numel),
        }
        if self.profile is not None:
            d.update(head_macs=self.profile.head_macs, tail_macs=self.profile.tail_macs,
                     head_params=self.profile.head_params, tail_params=self.profile.tail_params)
        return d


class FeatureStatsAccumulator:
    """Streaming statistics of one cut's tensors; call :meth:`update` per batch."""

    def __init__(self, cut: CutPoint) -> None:
        self.cut = cut
        self.n = 0
        self.zeros = 0
        self.elements = 0
        self.hist = np.zeros(256, dtype=np.int64)
        self.vmin = np.inf
        self.vmax = -np.inf
        self._sum: list[np.ndarray | None] = [None] * cut.num_tensors
        self._sumsq: list[np.ndarray | None] = [None] * cut.num_tensors
        self._count = [0] * cut.num_tensors

    def update(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Add a batch: ``[B, ...]`` for a single cut, a tuple of them for a multi cut."""
        tensors = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        b = int(tensors[0].shape[0])
        rows = []
        for i, t in enumerate(tensors):
            a = t.detach().cpu().to(torch.float64).numpy()
            rows.append(a.reshape(b, -1))
            ch = a.reshape(b, a.shape[1], -1) if a.ndim >= 2 else a.reshape(b, 1, 1)
            s, sq = ch.sum(axis=(0, 2)), (ch * ch).sum(axis=(0, 2))
            self._sum[i] = s if self._sum[i] is None else self._sum[i] + s
            self._sumsq[i] = sq if self._sumsq[i] is None else self._sumsq[i] + sq
            self._count[i] += b * ch.shape[2]
        x = np.concatenate(rows, axis=1)
        self.n += b
        self.elements += x.size
        self.zeros += int(np.count_nonzero(x == 0))
        self.vmin = min(self.vmin, float(x.min()))
        self.vmax = max(self.vmax, float(x.max()))
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        q = np.rint((x - lo) / span * 255).astype(np.int64)
        self.hist += np.bincount(q.reshape(-1), minlength=256)

    def result(self, profile: CutProfile | None = None, resolution_numel: dict[str, int] | None = None) -> FeatureStats:
        """The summary of everything added so far."""
        if self.n == 0:
            raise ValueError(f"cut {self.cut.name}: no samples were added")
        p = self.hist[self.hist > 0] / self.hist.sum()
        means = np.concatenate([s / c for s, c in zip(self._sum, self._count)])
        vars_ = np.concatenate([np.maximum(sq / c - (s / c) ** 2, 0.0)
                                for s, sq, c in zip(self._sum, self._sumsq, self._count)])

        def summary(v: np.ndarray) -> dict[str, float]:
            return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}

        return FeatureStats(
            cut=self.cut.name, kind=self.cut.kind, num_tensors=self.cut.num_tensors, shapes=self.cut.shapes,
            dtypes=self.cut.dtypes, numel=self.cut.numel, n_samples=self.n,
            zero_fraction=self.zeros / self.elements, entropy_bits=float(-(p * np.log2(p)).sum()),
            value_min=self.vmin, value_max=self.vmax, channels=int(means.size),
            channel_mean=summary(means), channel_var=summary(vars_), profile=profile,
            resolution_numel=dict(resolution_numel or {}),
        )


def resolution_scaling(graph: SplitGraph, resolutions: Sequence[int]) -> dict[str, dict[str, int]]:
    """Elements per sample at every cut for inputs of each resolution: {cut: {"224": n}}. A square input (an
    image) is scaled on both axes; any other (log-mel [1, mels, frames]) on its last axis only: a speech
    anchor's "resolution" is its number of feature frames, i.e. the audio's duration."""
    channels = graph.input_shape[0]
    square = len(graph.input_shape) == 3 and graph.input_shape[1] == graph.input_shape[2]
    out: dict[str, dict[str, int]] = {c.name: {} for c in graph.cuts}
    for r in resolutions:
        shape = (channels, int(r), int(r)) if square else (*graph.input_shape[:-1], int(r))
        shapes = graph.shapes_at(shape)
        for name, per_tensor in shapes.items():
            out[name][str(int(r))] = int(sum(int(np.prod(s)) for s in per_tensor))
    return out
