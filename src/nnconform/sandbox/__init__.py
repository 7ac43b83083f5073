"""Proposal code in a sandbox: a fresh process per call, data in and data out.

``run_sandboxed(entry, inputs=..., params=..., proposal_dir=..., tree_sha256=..., timeout_s=...,
memory_bytes=...)`` runs one function of a proposal under bubblewrap (no network, a read-only view of
the Python environment, the proposal folder and the call's inputs, one scratch folder; nothing else of
the host) and returns a :class:`SandboxResult`. Encoding and decoding are separate calls, so a decoder
never sees the encoder's memory. Where bubblewrap cannot run, calls fall back to a plain subprocess
with the same interface, a :class:`SandboxWarning` says so once, and :func:`isolation` tells the report.
Calls are forks of a pre-warmed server per proposal copy and settings (:mod:`.server`), cleaned between
calls; :func:`close_servers` ends them (atexit does too); ``NNCONFORM_SANDBOX_SERVER=0`` turns them off.
"""

from .dataio import DataError
from .runner import (BUBBLEWRAP, SUBPROCESS, SandboxError, SandboxResult, SandboxWarning, isolation, isolation_note,
                     run_sandboxed)
from .server import close_servers

__all__ = ["BUBBLEWRAP", "SUBPROCESS", "DataError", "SandboxError", "SandboxResult", "SandboxWarning", "close_servers",
           "isolation", "isolation_note", "run_sandboxed"]
