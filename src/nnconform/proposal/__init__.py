"""Proposals: third-party methods (or artifacts) run against the anchors and the reference methods.

``pytest conformance/ --proposal path/to/proposal.toml`` checks the manifest
(:func:`load_proposal`), runs the proposal's code in the sandbox to learn the compressors and codecs it
registers (each becomes a proxy whose calls are sandboxed processes: :mod:`.sandboxed`), and
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
from .check import MANIFEST_NAME, SCHEMA_PATH, load_proposal, proposal_schema, resolve_manifest
from .manifest import NO_CLAIM, Problem, Proposal, SubmittedFile

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
    """The compression operating points (``CompressionPoint``) of the run's valid proposals, code and
    artifact-only: the checker parsed them straight into the criterion's points."""
    return [point for p in _runnable() for point in p.compression + p.compression_artifacts]


def update_points():
    """The update-codec operating points (``UpdatePoint``) of the run's valid proposals: the checker parsed
    them straight into the criterion's points."""
    return [point for p in _runnable() for point in p.updates]


def update_artifacts():
    """The update payloads (``UpdateArtifact`` points) the run's valid proposals submitted."""
    return [a for p in _runnable() for a in p.update_artifacts]


def split_points():
    """The feature-codec operating points (``SplitPoint``) of the run's valid proposals: the checker parsed
    them straight into the criterion's points."""
    return [point for p in _runnable() for point in p.split]


__all__ = ["MANIFEST_NAME", "NO_CLAIM", "SCHEMA_PATH", "Problem",
           "Proposal", "SubmittedFile", "activate",
           "active_proposals", "compression_points", "load_proposal", "proposal_schema",
           "resolve_manifest", "split_points", "update_artifacts", "update_points"]
