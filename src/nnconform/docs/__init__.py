"""Reference documents generated from the code: ``python -m nnconform.docs [--out DIR] [--results FILE] [--check]``.

Four Markdown pages under ``docs/reference/``: ``anchors.md`` (the manifests), ``datasets.md``
(:mod:`nnconform.data` and the calibration lists), ``methods.md`` (every registered method: its class
docstring, config, plan points and, with ``--results``, measured figures) and ``checks.md`` (the check
catalogue). Output is deterministic (sorted, no timestamps), so ``--check`` compares byte for byte and
fails when a page is stale; the self-test ``tests/test_docs.py`` runs it.
"""

from __future__ import annotations

from pathlib import Path

from .links import PAGES, entry_href, entry_id, reference_base

__all__ = ["PAGES", "entry_href", "entry_id", "reference_base", "generate", "write_pages", "stale_pages",
           "default_out"]


def default_out() -> Path:
    """``docs/reference`` of the clone (the folder the committed pages live in)."""
    from ..paths import source_checkout

    root = source_checkout()
    if root is None:
        raise FileNotFoundError("not a clone of nnconform: give --out DIR")
    return root / "docs" / "reference"


def committed_results() -> dict | None:
    """The committed snapshot of a run's measured figures (``docs/reference/measured.json``), if any."""
    from .results import MEASURED, read_results

    try:
        path = default_out() / MEASURED
    except FileNotFoundError:
        return None
    return read_results(path) if path.is_file() else None


def generate(results: dict | None = None) -> dict[str, str]:
    """Every page's text by file name, from the manifests, registries and plans, and the measured figures of
    ``results`` (a run's, or by default the committed snapshot ``measured.json``)."""
    if results is None:
        results = committed_results()
    from ..anchors import all_anchors
    from .anchors_page import anchors_page
    from .checks_page import checks_page
    from .datasets_page import datasets_page
    from .methods_page import methods_page

    import importlib

    from ..kit import catalogue

    # every module that registers methods or check ids, imported before any page is written: the proposal
    # package registers the `submitted-artifact` compressor, so a page must not depend on import order
    catalogue()
    importlib.import_module("nnconform.proposal")
    anchors = all_anchors()
    return {"anchors.md": anchors_page(anchors),
            "datasets.md": datasets_page(anchors, (results or {}).get("datasets")),
            "methods.md": methods_page(results),
            "checks.md": checks_page()}


def write_pages(pages: dict[str, str], out: Path) -> list[Path]:
    """Write the pages into ``out`` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(pages.items()):
        (out / name).write_bytes(text.encode())
        written.append(out / name)
    return written


def stale_pages(pages: dict[str, str], out: Path) -> list[str]:
    """The pages whose file in ``out`` is missing or differs byte for byte, each with the first differing line."""
    problems = []
    for name, text in sorted(pages.items()):
        path = out / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        have = path.read_bytes().decode(errors="replace")
        if have != text:
            old, new = have.splitlines(), text.splitlines()
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            shown = new[line] if line < len(new) else "(end of page)"
            problems.append(f"{path}: stale from line {line + 1} (regenerated: {shown[:120]!r})")
    return problems
