"""Split selection (Neurosurgeon, Kang et al., ASPLOS 2017): pick the (cut, codec) pair that
minimises end-to-end latency for a device, a server and a link, within an accuracy tier.

Latency of one sample = (head + encode) on the device, scaled by the device's speed factor
+ payload over the link + (decode + tail) on the server, scaled by the server's factor. Times
are measured on the test machine (pytest-benchmark); profiles say how much slower or faster
the real devices are. Two more candidates bound the choice: everything on the device, and the
raw input image (uint8) sent to the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .plan import ComputeProfile, LinkProfile

DEVICE_ONLY = "(device only)"
SERVER_ONLY = "(server only)"


@dataclass(frozen=True)
class Candidate:
    """One way to run a sample: measured times here (seconds) and payload bytes."""

    cut: str
    codec: str
    payload_bytes: float
    head_s: float
    encode_s: float
    decode_s: float
    tail_s: float
    tiers_met: frozenset[str] = frozenset()
    top1: float | None = None

    @property
    def label(self) -> str:
        """``cut/codec``, or the bound's name."""
        return self.cut if self.cut in (DEVICE_ONLY, SERVER_ONLY) else f"{self.cut}/{self.codec}"


@dataclass(frozen=True)
class Latency:
    """End-to-end latency of a candidate under a scenario, split by where it is spent."""

    candidate: Candidate
    device_s: float
    link_s: float
    server_s: float

    @property
    def total_s(self) -> float:
        """Device + link + server seconds."""
        return self.device_s + self.link_s + self.server_s

    def to_dict(self) -> dict:
        """Plain dict for records."""
        c = self.candidate
        return {"candidate": c.label, "cut": c.cut, "codec": c.codec, "payload_bytes": c.payload_bytes,
                "device_ms": 1e3 * self.device_s, "link_ms": 1e3 * self.link_s, "server_ms": 1e3 * self.server_s,
                "total_ms": 1e3 * self.total_s, "tiers_met": sorted(c.tiers_met), "top1": c.top1}


def end_to_end(c: Candidate, device: ComputeProfile, server: ComputeProfile, link: LinkProfile) -> Latency:
    """Latency of ``c``: nothing crosses the link for a device-only run."""
    device_s = (c.head_s + c.encode_s) * device.speed_factor
    server_s = (c.decode_s + c.tail_s) * server.speed_factor
    link_s = 0.0 if c.cut == DEVICE_ONLY else link.transfer_s(c.payload_bytes)
    return Latency(c, device_s, link_s, server_s)


@dataclass(frozen=True)
class Selection:
    """The chosen candidate and every candidate ranked (fastest first)."""

    best: Latency | None
    ranked: tuple[Latency, ...]
    rejected: tuple[Latency, ...]  # candidates that miss the accuracy tier
    tier: str

    def to_dict(self) -> dict:
        """Plain dict for records."""
        return {"tier": self.tier, "best": self.best.to_dict() if self.best else None,
                "ranked": [x.to_dict() for x in self.ranked],
                "rejected_for_accuracy": [x.candidate.label for x in self.rejected]}


def select_split(candidates: Iterable[Candidate], device: ComputeProfile, server: ComputeProfile,
                 link: LinkProfile, tier: str) -> Selection:
    """The fastest candidate that meets ``tier`` (ties go to the smaller payload, then the name)."""
    lat = [end_to_end(c, device, server, link) for c in candidates]
    key = lambda x: (x.total_s, x.candidate.payload_bytes, x.candidate.label)  # noqa: E731
    ok = sorted((x for x in lat if tier in x.candidate.tiers_met), key=key)
    bad = tuple(sorted((x for x in lat if tier not in x.candidate.tiers_met), key=key))
    return Selection(ok[0] if ok else None, tuple(ok), bad, tier)


def bounds(model_s: float, input_bytes: int, tiers: Sequence[str], top1: float | None = None) -> list[Candidate]:
    """The two trivial candidates: all on the device, and the uint8 input sent to the server."""
    met = frozenset(tiers)
    return [Candidate(DEVICE_ONLY, "-", 0.0, model_s, 0.0, 0.0, 0.0, met, top1),
            Candidate(SERVER_ONLY, "uint8 input", float(input_bytes), 0.0, 0.0, 0.0, model_s, met, top1)]
