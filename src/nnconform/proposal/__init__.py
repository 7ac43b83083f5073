"""Proposals: third-party methods (or artifacts) run against the anchors and the reference methods.

``pytest conformance/ --proposal path/to/proposal.toml`` checks the manifest
(:func:`load_proposal`), imports the proposal's code so its compressors and codecs register, and
adds its operating points to the criteria it applies to, each with the claim it makes there. The
run's exit code is the CI gate: non-zero when the manifest has a problem or a claim is not met.
``python -m nnconform.proposal check MANIFEST`` runs the checker alone.

The plugin activates the run's proposals in ``pytest_configure``, before the conformance files are
collected; those files read the operating points with the ``*_points`` functions below (a process
holds one pytest run's proposals; xdist workers configure, and so activate, on their own).
"""

from __future__ import annotations

from typing import Iterable

from . import artifacts  # noqa: F401  (registers the `submitted-artifact` compressor)
from .check import MANIFEST_NAME, SCHEMA_PATH, import_proposal_module, load_proposal, proposal_schema, resolve_manifest
from .manifest import (NO_CLAIM, CompressionArtifact, CompressionClaim, Problem, Proposal, SplitClaim, SubmittedFile,
                       UpdateArtifact, UpdateClaim)

_ACTIVE: list[Proposal] = []


def activate(proposals: Iterable[Proposal]) -> None:
    """Make ``proposals`` the ones this process's conformance run applies (replaces any before)."""
    _ACTIVE[:] = list(proposals)


def active_proposals() -> tuple[Proposal, ...]:
    """Every proposal of this run, valid or not (the manifest cases report the invalid ones)."""
    return tuple(_ACTIVE)


def _runnable() -> list[Proposal]:
    return [p for p in _ACTIVE if p.ok]


def compression_points():
    """The compression operating points of the run's valid proposals (code and artifact-only)."""
    from ..compress import get_compressor
    from ..compress.suite import OperatingPoint
    from .artifacts import METHOD, config_for

    out = []
    for p in _runnable():
        for c in p.compression:
            config = get_compressor(c.method).config_cls.from_dict(
                {**c.config, "method": c.method, "claimed_tier": c.claimed_tier})
            out.append(OperatingPoint(c.anchor, c.method, c.label, c.run_tier, config, proposal=p.name,
                                      claimed_bytes=c.claimed_bytes))
        for a in p.compression_artifacts:
            config = config_for(a.files, a.decoder, a.decoder_config, a.claimed_tier)
            out.append(OperatingPoint(a.anchor, METHOD, f"{p.name}-{a.label}", "quick", config, proposal=p.name,
                                      claimed_bytes=a.claimed_bytes))
    return out


def update_points():
    """The update-codec operating points of the run's valid proposals."""
    from ..updates.plan import OperatingPoint

    return [OperatingPoint(u.codec, dict(u.params), dict(u.claims), u.run_tier, f"proposal {p.name} {p.version}",
                           name=u.label, anchors=u.anchors, proposal=p.name)
            for p in _runnable() for u in p.updates]


def update_artifacts() -> list[UpdateArtifact]:
    """The update payloads the run's valid proposals submitted."""
    return [a for p in _runnable() for a in p.update_artifacts]


def split_points():
    """The feature-codec operating points of the run's valid proposals."""
    from ..split.manifest import OperatingPoint

    return [OperatingPoint(id=s.label, family=s.codec, codec=s.codec, params=tuple(sorted(s.params.items())),
                           claim=s.claimed_tier, lossless=s.lossless, tier=s.run_tier,
                           description=f"proposal {p.name} {p.version}", anchors=s.anchors, proposal=p.name)
            for p in _runnable() for s in p.split]


__all__ = ["MANIFEST_NAME", "NO_CLAIM", "SCHEMA_PATH", "CompressionArtifact", "CompressionClaim", "Problem",
           "Proposal", "SplitClaim", "SubmittedFile", "UpdateArtifact", "UpdateClaim", "activate",
           "active_proposals", "compression_points", "import_proposal_module", "load_proposal", "proposal_schema",
           "resolve_manifest", "split_points", "update_artifacts", "update_points"]
