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
from typing import TYPE_CHECKING, Any, Mapping

from ..records import CheckRecord, Status

if TYPE_CHECKING:  # the compression package imports torch; the manifest shapes do not need it
    from ..compress.plan import CompressionPoint
    from ..updates.plan import UpdateArtifact, UpdatePoint

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
    #: compressor operating points, parsed straight into the criterion's points (claims on the point)
    compression: tuple["CompressionPoint", ...] = ()
    #: update-codec operating points, parsed straight into the criterion's points (claims on the point)
    updates: tuple["UpdatePoint", ...] = ()
    split: tuple = ()  # nnconform.split.plan.SplitPoint, one per [[split]] entry
    #: artifact-only compressed weights: points of the ``submitted-artifact`` method
    compression_artifacts: tuple["CompressionPoint", ...] = ()
    #: artifact-only update payloads, as the criterion's points of submitted payloads
    update_artifacts: tuple["UpdateArtifact", ...] = ()
    manifest_sha256: str = ""
    problems: tuple[Problem, ...] = field(default=())
    #: the tree hash of the folder the proposal's code ran from (the pin, or what the checker hashed)
    tree_sha256: str = ""
    #: how the proposal's code was isolated (``bubblewrap`` or ``subprocess``; empty: no code ran)
    isolation: str = ""

    def _isolation(self) -> dict[str, Any] | None:
        if not self.isolation:
            return None
        from ..sandbox import isolation_note

        return {"mode": self.isolation, "note": isolation_note(),
                "rule": "the proposal's code ran only in sandboxed processes, never in the gate's"}

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
                "compression": [c.subject for c in self.compression + self.compression_artifacts],
                "updates": [u.label for u in self.updates] + [a.id for a in self.update_artifacts],
                "split": [s.label for s in self.split]},
            "problems": [{"file": p.file, "field": p.field, "message": p.message} for p in self.problems],
            "tree_sha256": self.tree_sha256 or None,
            "code_isolation": self._isolation(),
        }
