"""NNC incremental coding along a lineage: the base coded through NNC first, then each update referencing
the previous ones (ISO/IEC 15938-17 2nd edition: parameter update tree and temporal context adaptation).

:class:`LineageEncoder` turns the checkpoints of a lineage, in order, into payloads; the first one codes the
base against the architecture's all-zero state, each later one codes ``checkpoint - decoded predecessor``.
NNCodec's update tree (:func:`nnconform.updates.nnc.fresh_tree`) is kept across the calls
(``keep_tree=True``), so TCA adapts each tensor's contexts to its levels in the previous update; with
``keep_tree=False`` each update starts a fresh tree (the "independent" coding the incremental one is
measured against). :class:`LineageDecoder` keeps the same tree across the payloads, in order only.

Payloads are the ordinary container (:mod:`.payload`) with codec ``nnc-lineage``. Its pins say what the
base of an incremental update is: ``base_sha256`` is the hash of the *decoded* state after the previous
payload (for the first payload, of the architecture's all-zero state), ``target_sha256`` the hash of the
state this payload decodes to, ``source_sha256`` the true checkpoint's; the config carries the NNC
settings, ``step`` (0 = the base) and ``keep_tree``. NNC is lossy: the decoded states are bit-exact to
the encoder's reconstructions, not to the checkpoints. These payloads are not update-codec payloads:
:func:`nnconform.updates.apply_update` cannot decode them without the tree and refuses them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..data import Preprocess
from ..hashing import state_dict_sha256
from ..progress import progress
from .codec import BaseMismatchError, ReconstructionError, codec_config_dict
from .nnc import NNCDeltaCodec, fresh_tree
from .payload import PayloadHeader, pack_payload, unpack_payload
from .state import StateDict, canonical_state, check_compatible

#: the header's codec name of lineage payloads (not a registered update codec: it needs the decoder's tree)
LINEAGE_CODEC = "nnc-lineage"


class LineageOrderError(BaseMismatchError):
    """A lineage payload was given to a decoder that has not decoded its predecessor (or holds another lineage)."""


def zero_state(template: Mapping[str, torch.Tensor]) -> StateDict:
    """The architecture's all-zero state (keys, shapes and dtypes of ``template``): the first payload's base."""
    return {k: torch.zeros_like(v) for k, v in canonical_state(template, "template").items()}


def _settings(config: NNCDeltaCodec.Config) -> NNCDeltaCodec.Config:
    if not config.incremental:
        raise ValueError("nnc-lineage: the codec config must have incremental=True (an update tree needs "
                         "NNCodec's differential mode)")
    return config


@dataclass(frozen=True)
class LineageStep:
    """One payload of a lineage as the encoder made it: its bytes, body bytes and the state it decodes to."""

    step: int
    payload: bytes
    body_bytes: int
    state: StateDict

    @property
    def nbytes(self) -> int:
        """Length of the payload (container included)."""
        return len(self.payload)


class LineageEncoder:
    """Codes a lineage's checkpoints in order; ``reconstruction`` is the state a receiver holds after the last one.

    The encoder decodes each body once with a mirror of the receiver's tree, so the pinned
    ``target_sha256`` is that of the state a receiver will get.
    """

    def __init__(self, config: NNCDeltaCodec.Config | None = None, *, keep_tree: bool = True) -> None:
        self.codec = NNCDeltaCodec(_settings(config or NNCDeltaCodec.Config(tca=True)))
        self.keep_tree = keep_tree
        self._enc_tree, self._dec_tree = fresh_tree(), fresh_tree()
        self.reconstruction: StateDict | None = None
        self.steps: list[LineageStep] = []

    def encode(self, checkpoint: Mapping[str, torch.Tensor], *, preprocess: Preprocess | None = None) -> LineageStep:
        """The next payload: the base on the first call, then ``checkpoint`` as an update of the last reconstruction."""
        target = canonical_state(checkpoint, f"checkpoint {len(self.steps)}")
        base = zero_state(target) if self.reconstruction is None else self.reconstruction
        check_compatible(base, target)
        if not self.keep_tree:
            self._enc_tree, self._dec_tree = fresh_tree(), fresh_tree()
        body = bytes(self.codec.encode(base, target, tree=self._enc_tree))
        recon = canonical_state(self.codec.decode(base, body, tree=self._dec_tree), "nnc-lineage decoder output")
        check_compatible(target, recon)
        step = len(self.steps)
        header = PayloadHeader(
            codec=LINEAGE_CODEC,
            config={**codec_config_dict(self.codec), "step": step, "keep_tree": self.keep_tree},
            base_sha256=state_dict_sha256(base),
            target_sha256=state_dict_sha256(recon),
            source_sha256=state_dict_sha256(target),
            body_bytes=len(body),
            preprocess=preprocess.to_dict() if preprocess is not None else None,
        )
        out = LineageStep(step, pack_payload(header, body), len(body), recon)
        self.reconstruction = recon
        self.steps.append(out)
        return out


def _codec_of(header: PayloadHeader) -> tuple[NNCDeltaCodec, int, bool]:
    cfg = dict(header.config)
    step, keep = cfg.pop("step", None), cfg.pop("keep_tree", None)
    if header.codec != LINEAGE_CODEC:
        raise ValueError(f"payload codec {header.codec!r} is not {LINEAGE_CODEC!r}: decode it with apply_update")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(keep, bool):
        raise ValueError(f"{LINEAGE_CODEC} payload header: config.step={step!r} must be a step number and "
                         f"config.keep_tree={keep!r} a bool")
    return NNCDeltaCodec(_settings(NNCDeltaCodec.Config.from_dict(cfg))), step, keep


class LineageDecoder:
    """Decodes a lineage's payloads in order, keeping NNCodec's update tree across them.

    ``template`` gives the architecture (keys, shapes, dtypes; values unused): the first payload applies to
    its all-zero state. ``state`` is the decoded state after the last payload, ``step`` how many were decoded.
    """

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        self.state: StateDict = zero_state(template)
        self.step = 0
        self.keep_tree: bool | None = None
        self._tree = fresh_tree()
        self._history: list[str] = [state_dict_sha256(self.state)]

    def decode(self, payload: bytes) -> StateDict:
        """The state after ``payload``; refuses damaged bytes, a payload out of order or of another lineage, and a
        result other than the pinned one (the decoder is then left as it was)."""
        parsed = unpack_payload(payload)
        header = parsed.header
        try:
            codec, step, keep = _codec_of(header)
        except (TypeError, ValueError) as exc:
            raise ReconstructionError(f"{LINEAGE_CODEC} payload: {exc}") from None
        if step != self.step:
            done = f"holds the state after {self.step} payload(s) (steps 0..{self.step - 1})" if self.step else \
                "has decoded nothing yet"
            missing = (f"its predecessor, step {step - 1} (the decoded state with sha256 {header.base_sha256}), has "
                       f"not been decoded; decode steps {self.step}..{step - 1} first") if step > self.step else \
                f"step {step} was already decoded"
            raise LineageOrderError(f"{LINEAGE_CODEC} payload is step {step} of its lineage, but this decoder {done}: "
                                    f"{missing}")
        if header.base_sha256 != self._history[-1]:
            raise LineageOrderError(f"{LINEAGE_CODEC} payload step {step} applies to the decoded state with sha256 "
                                    f"{header.base_sha256}, but this decoder holds {self._history[-1]} (another "
                                    f"lineage or another coding of it); refusing to apply it")
        if self.keep_tree is not None and keep != self.keep_tree:
            raise ReconstructionError(f"{LINEAGE_CODEC} payload step {step} has keep_tree={keep}, the earlier "
                                      f"payloads keep_tree={self.keep_tree}")
        tree = copy.deepcopy(self._tree) if keep else fresh_tree()
        try:
            state = canonical_state(codec.decode(self.state, parsed.body, tree=tree), "nnc-lineage decoder output")
            check_compatible(self.state, state)
        except Exception as exc:
            raise ReconstructionError(f"{LINEAGE_CODEC} step {step}: decoding the {len(parsed.body)}-byte body "
                                      f"failed: {type(exc).__name__}: {exc}") from exc
        got = state_dict_sha256(state)
        if got != header.target_sha256:
            raise ReconstructionError(f"{LINEAGE_CODEC} step {step}: decoded a state with sha256 {got}, but the "
                                      f"payload promises {header.target_sha256}; the result is discarded")
        self.state, self._tree, self.keep_tree = state, tree, keep
        self.step += 1
        self._history.append(got)
        return state


def lineage_sizes(steps: list[LineageStep]) -> dict[str, list[int]]:
    """Per-payload and cumulative (base + updates so far) payload bytes, and per-payload body bytes."""
    per = [s.nbytes for s in steps]
    return {"payload_bytes": per, "cumulative_bytes": [sum(per[:i + 1]) for i in range(len(per))],
            "body_bytes": [s.body_bytes for s in steps]}


def code_lineage(checkpoints: list[Mapping[str, torch.Tensor]], config: NNCDeltaCodec.Config, *,
                 keep_tree: bool) -> tuple[LineageEncoder, list[LineageStep]]:
    """Every checkpoint of a lineage through one :class:`LineageEncoder` (base first)."""
    enc = LineageEncoder(config, keep_tree=keep_tree)
    steps = []
    with progress(f"nnc lineage ({'update tree kept' if keep_tree else 'fresh tree'}): checkpoints coded",
                  total=len(checkpoints)) as line:
        for c in checkpoints:
            steps.append(enc.encode(c))
            line.update()
    return enc, steps


def state_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Bit-exact equality of two states (same keys, dtypes, shapes and bytes)."""
    return state_dict_sha256(canonical_state(a)) == state_dict_sha256(canonical_state(b))


def summary(incremental: list[LineageStep], independent: list[LineageStep]) -> dict[str, Any]:
    """Sizes of both codings, per payload and cumulative, and the relative saving of each update."""
    inc, ind = lineage_sizes(incremental), lineage_sizes(independent)
    saving = [1 - a / b if b else 0.0 for a, b in zip(inc["payload_bytes"], ind["payload_bytes"])]
    return {"incremental": inc, "independent": ind, "saving": saving}


@dataclass(frozen=True)
class LineagePlan:
    """The ``[nnc_lineage]`` table of ``anchors/updates.toml``: which ``nnc`` operating points code every lineage
    whole (base first, update tree kept), and the lineages that run from the quick tier (others: default)."""

    points: tuple[str, ...] = ()
    quick_lineages: tuple[str, ...] = ()


def parse_lineage_plan(t, points, known_lineages: Mapping[str, Any]) -> LineagePlan:
    """Read the ``nnc_lineage`` table (a :class:`nnconform.kit.Table`); ``points`` are the plan's operating points.
    Each label must name an ``nnc`` point with ``incremental`` on; an error names the field and the value."""
    from .. import kit

    labels = t.list("points", str, [])
    by_label = {p.label: p for p in points}
    for i, label in enumerate(labels):
        p = by_label.get(label)
        if p is None or p.codec != "nnc" or not p.params.get("incremental", True):
            nnc = sorted(q.label for q in points if q.codec == "nnc")
            raise kit.PlanError(f"{t.at('points')}[{i}]: {label!r} is not an incremental 'nnc' operating point of "
                                f"the plan; known: {nnc}")
    quick = t.list("quick_lineages", str, [])
    for i, name in enumerate(quick):
        if name not in known_lineages:
            raise kit.PlanError(f"{t.at('quick_lineages')}[{i}]: {name!r} is not an anchor with a lineage; known: "
                                f"{sorted(known_lineages)}")
    t.done()
    return LineagePlan(tuple(labels), tuple(quick))
