"""``checks.md``: the check catalogue (``kit.catalogue()``), one entry per id."""

from __future__ import annotations

from ..kit import catalogue
from ..kit.checks import DIRECTIONS
from .markdown import entry_heading, header, table


def checks_page() -> str:
    """Every registered check id by criterion: what it checks and how its measured value is judged."""
    cat = catalogue()
    lines = header("Check ids", "Every check id a run can record, from the criterion kit's catalogue "
                   "(`nnconform.kit.catalogue()`); a record with an id that is not here fails.")
    lines += [table(["direction", "meaning"], sorted(DIRECTIONS.items())), ""]
    for criterion in sorted({c.criterion for c in cat.values()}):
        lines += [f"## {criterion}", ""]
        for check_id in sorted(i for i, c in cat.items() if c.criterion == criterion):
            info = cat[check_id]
            lines += entry_heading(3, f"`{check_id}`", "check", check_id)
            lines += [f"{info.description}", "", f"Direction: `{info.direction}`.", ""]
    return "\n".join(lines).rstrip() + "\n"
