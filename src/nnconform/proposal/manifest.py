"""What a proposal submits, as frozen dataclasses read from its ``proposal.toml``.

A proposal is a manifest (name, version, contact, the anchors and criteria it applies to, the
claim at each operating point) plus either Python code that registers compressors, update codecs
or feature codecs, or artifacts with no code: compressed weights and update payloads, pinned by
sha256 and decoded with the reference decoders. :func:`nnconform.proposal.check.load_proposal`
validates a manifest and builds a :class:`Proposal`; this module only holds the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..records import CheckRecord, Status

#: The value of an update or split claim that measures without gating.
NO_CLAIM = "none"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission: the file, the field (a TOML path such as
    ``compression[0].claimed_tier``; empty for the whole file) and what would be valid."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}" if self.field else f"{self.file}: {self.message}"

    def record(self, proposal: str) -> CheckRecord:
        """A FAIL record of the ``proposal.manifest`` check for the report."""
        return CheckRecord("proposal.manifest", f"{proposal}/{self.field or 'manifest'}", Status.FAIL,
                           message=str(self), criterion="proposal",
                           details={"file": self.file, "field": self.field})


@dataclass(frozen=True)
class SubmittedFile:
    """A file of an artifact-only submission: its resolved path and the sha256 the manifest pins."""

    path: Path
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256}


@dataclass(frozen=True)
class CompressionClaim:
    """A compressor operating point: the method's config on one anchor and what it claims there."""

    proposal: str
    anchor: str
    method: str
    label: str
    config: Mapping[str, Any]
    claimed_tier: str | None  # None: a measured point of the size-accuracy curve, not gated
    claimed_bytes: int | None = None
    run_tier: str = "quick"


@dataclass(frozen=True)
class UpdateClaim:
    """An update-codec operating point, run on the lineage pairs of the proposal's anchors."""

    proposal: str
    codec: str
    label: str
    params: Mapping[str, Any]
    claims: Mapping[str, str]  # pair kind (or "*") -> accuracy tier or "none"
    anchors: tuple[str, ...]
    run_tier: str = "quick"


@dataclass(frozen=True)
class SplitClaim:
    """A feature-codec operating point, run at the coded cuts of the proposal's anchors."""

    proposal: str
    codec: str
    label: str
    params: Mapping[str, Any]
    claimed_tier: str | None
    anchors: tuple[str, ...]
    lossless: bool = False
    run_tier: str = "quick"


@dataclass(frozen=True)
class CompressionArtifact:
    """Compressed weights submitted as files, decoded by a reference decoder."""

    proposal: str
    anchor: str
    label: str
    files: tuple[SubmittedFile, ...]
    decoder: str
    decoder_config: Mapping[str, Any]
    claimed_tier: str
    claimed_bytes: int | None = None


@dataclass(frozen=True)
class UpdateArtifact:
    """An update payload submitted as a file: it must turn the anchor's ``base`` checkpoint into a model
    that meets ``claimed_tier`` against the ``target`` checkpoint."""

    proposal: str
    anchor: str
    label: str
    base: str
    target: str
    file: SubmittedFile
    claimed_tier: str
    claimed_bytes: int | None = None

    @property
    def id(self) -> str:
        """``acme-fmnist-lenet5-epoch8-finetune-q8``."""
        return f"{self.proposal}-{self.anchor}-{self.base}-{self.target}-{self.label}"


@dataclass(frozen=True)
class Proposal:
    """A checked proposal manifest. ``problems`` lists everything the checker found (empty: valid)."""

    manifest: Path
    name: str
    version: str = ""
    contact: str = ""
    organization: str = ""
    description: str = ""
    module: Path | None = None
    package: str | None = None
    anchors: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    compression: tuple[CompressionClaim, ...] = ()
    updates: tuple[UpdateClaim, ...] = ()
    split: tuple[SplitClaim, ...] = ()
    compression_artifacts: tuple[CompressionArtifact, ...] = ()
    update_artifacts: tuple[UpdateArtifact, ...] = ()
    manifest_sha256: str = ""
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the checker found nothing wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """What the report records about the proposal."""
        return {
            "name": self.name, "version": self.version, "contact": self.contact, "organization": self.organization,
            "description": self.description, "manifest": str(self.manifest), "manifest_sha256": self.manifest_sha256,
            "module": str(self.module) if self.module else None, "package": self.package,
            "anchors": list(self.anchors), "criteria": list(self.criteria),
            "operating_points": {
                "compression": [f"{c.anchor}/{c.method}/{c.label}" for c in self.compression]
                + [f"{a.anchor}/artifact/{a.label}" for a in self.compression_artifacts],
                "updates": [u.label for u in self.updates] + [a.id for a in self.update_artifacts],
                "split": [s.label for s in self.split]},
            "problems": [{"file": p.file, "field": p.field, "message": p.message} for p in self.problems],
        }
