"""Where nnconform finds its manifests and writes caches.

The anchor manifests, tiers and embedded weights live in the repository's ``anchors/``
folder. ``NNCONFORM_ANCHORS_DIR`` points elsewhere (an installed copy, a test fixture).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def anchors_dir() -> Path:
    """The folder holding anchor manifests (``*.toml``), ``tiers.toml`` and zoo weights."""
    return Path(os.environ.get("NNCONFORM_ANCHORS_DIR", REPO_ROOT / "anchors"))


def default_cache_dir() -> Path:
    """Evaluation cache: ``NNCONFORM_CACHE_DIR``, else ``.cache/nnconform`` in the repository."""
    return Path(os.environ.get("NNCONFORM_CACHE_DIR", REPO_ROOT / ".cache" / "nnconform"))


def default_report_dir() -> Path:
    """Where runs write ``<run-id>/`` folders."""
    return Path(os.environ.get("NNCONFORM_REPORT_DIR", REPO_ROOT / "reports"))


def read_toml(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """A manifest as a dict; a malformed file raises ``error`` naming the file and the parse error."""
    import tomllib

    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{path}: not valid TOML: {exc}") from None
