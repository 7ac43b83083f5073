"""Where each reference entry lives: one page and one HTML id per anchor, dataset, method and check id.

The pages (:mod:`nnconform.docs`) put an ``<a id="...">`` before every entry, so the same link works on
GitHub, in a clone's Markdown viewer and on the MkDocs site; the report links to these ids.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: page file of each kind of entry (under ``docs/reference/``)
PAGES = {"anchor": "anchors.md", "dataset": "datasets.md", "method": "methods.md", "check": "checks.md"}


def entry_id(kind: str, *parts: str) -> str:
    """The HTML id of an entry: ``anchor-fmnist-lenet5``, ``method-compressor-aimet-ssvd``,
    ``check-compression.accuracy`` (letters, digits, ``.``, ``_`` and ``-`` only)."""
    if kind not in PAGES:
        raise KeyError(f"no reference page for entry kind {kind!r}; kinds: {sorted(PAGES)}")
    text = "-".join((kind, *parts)).lower()
    return re.sub(r"[^a-z0-9._-]+", "-", text).strip("-")


def entry_href(kind: str, *parts: str, base: str = "") -> str:
    """``<base>/<page>#<id>`` (``base`` empty: the page name alone, for links between reference pages)."""
    page = PAGES[kind]
    return f"{base.rstrip('/') + '/' if base else ''}{page}#{entry_id(kind, *parts)}"


def reference_base(run_dir: Path) -> str | None:
    """Where a report in ``run_dir`` finds the reference pages, or None when it cannot.

    ``NNCONFORM_DOCS_URL`` (the published site, or any folder) wins; otherwise, when the package runs
    from a clone that has ``docs/reference/``, the path relative to ``run_dir`` (so the links work in
    the clone the report was written in, and in a copy of the report kept beside the same clone).
    """
    url = os.environ.get("NNCONFORM_DOCS_URL", "").strip()
    if url:
        return url.rstrip("/")
    from ..paths import source_checkout

    root = source_checkout()
    if root is None or not (root / "docs" / "reference").is_dir():
        return None
    return Path(os.path.relpath(root / "docs" / "reference", Path(run_dir).resolve())).as_posix()
