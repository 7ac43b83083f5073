"""Where nnconform finds its manifests and conformance suite, and where runs write.

Read-only data (anchor manifests, ``tiers.toml``, embedded zoo weights) comes from, in order:
``NNCONFORM_ANCHORS_DIR``; the copy an installed wheel carries (``nnconform/_anchors``, made from
the repository's ``anchors/`` when the wheel is built); the repository's ``anchors/`` (a clone
with an editable install). The repository folder stays the one source of truth.

What a run writes (reports, caches) goes under the folder pytest runs in, its *rootdir*, as
pytest-benchmark's ``.benchmarks/`` does, so an installed nnconform never writes into
``site-packages`` or into a clone the user is not working in. ``NNCONFORM_REPORT_DIR`` and
``NNCONFORM_CACHE_DIR`` (and the ``--nnc-*-dir`` options) override it.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The source checkout the package sits in (``src/nnconform`` -> the clone); meaningful only when
#: :func:`source_checkout` says it is one. Self-tests use it to reach ``conformance/`` and ``docs/``.
REPO_ROOT = PACKAGE_DIR.parents[1]
#: Where a wheel carries its copies of ``anchors/`` and ``conformance/`` (see setup.py).
PACKAGED_ANCHORS = PACKAGE_DIR / "_anchors"
PACKAGED_SUITE = PACKAGE_DIR / "conformance"


def source_checkout() -> Path | None:
    """The repository root when the package runs from a clone (editable install), else ``None``."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "anchors" / "tiers.toml").is_file():
        return REPO_ROOT
    return None


def anchors_dir() -> Path:
    """The folder holding anchor manifests (``*.toml``), ``tiers.toml`` and zoo weights."""
    if os.environ.get("NNCONFORM_ANCHORS_DIR"):
        return Path(os.environ["NNCONFORM_ANCHORS_DIR"])
    if (PACKAGED_ANCHORS / "tiers.toml").is_file():
        return PACKAGED_ANCHORS
    return REPO_ROOT / "anchors"


def conformance_dir() -> Path:
    """The conformance suite: the installed copy, else the clone's ``conformance/``.

    An installed nnconform runs it as ``pytest --pyargs nnconform.conformance``.
    """
    if (PACKAGED_SUITE / "conftest.py").is_file():
        return PACKAGED_SUITE
    return REPO_ROOT / "conformance"


def _base(rootdir: str | Path | None) -> Path:
    # Without a rootdir (a script, not pytest) the current folder plays its part.
    return Path(rootdir) if rootdir is not None else Path.cwd()


def default_cache_dir(rootdir: str | Path | None = None) -> Path:
    """Evaluation cache: ``NNCONFORM_CACHE_DIR``, else ``<rootdir>/.cache/nnconform``.

    ``rootdir`` is pytest's ``config.rootdir``; ``None`` means the current folder.
    """
    if os.environ.get("NNCONFORM_CACHE_DIR"):
        return Path(os.environ["NNCONFORM_CACHE_DIR"])
    return _base(rootdir) / ".cache" / "nnconform"


def default_report_dir(rootdir: str | Path | None = None) -> Path:
    """Where runs write ``<run-id>/`` folders: ``NNCONFORM_REPORT_DIR``, else ``<rootdir>/reports``.

    ``rootdir`` is pytest's ``config.rootdir``; ``None`` means the current folder.
    """
    if os.environ.get("NNCONFORM_REPORT_DIR"):
        return Path(os.environ["NNCONFORM_REPORT_DIR"])
    return _base(rootdir) / "reports"


def read_toml(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """A manifest as a dict; a malformed file raises ``error`` naming the file and the parse error."""
    import tomllib

    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{path}: not valid TOML: {exc}") from None
