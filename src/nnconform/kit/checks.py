"""The catalogue of check ids: each registered once with a one-line description and a direction.

A check is a function of the engine that returns a :class:`~nnconform.records.CheckRecord`; its id
(``compression.accuracy``) is registered here with what it checks and how its measured value is
judged against the expected one. The report explains every id it shows from this catalogue, and a
run that records an unregistered id fails that record.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

#: how ``measured`` is judged against ``expected``
DIRECTIONS = {
    "higher": "higher is better: passes when measured is at least what is expected",
    "lower": "lower is better: passes when measured is at most what is expected",
    "equal": "must match: passes when measured equals what is expected",
    "pass-fail": "passes or fails on the condition the description states",
    "info": "a measurement reported without a gate",
}


@dataclass(frozen=True)
class CheckInfo:
    """One check id: what it checks (one line), how it is judged, and its criterion."""

    id: str
    description: str
    direction: str
    criterion: str

    def to_dict(self) -> dict[str, str]:
        """Plain dict for the report."""
        return {"id": self.id, "description": self.description, "direction": self.direction,
                "criterion": self.criterion}


CHECKS: dict[str, CheckInfo] = {}
#: modules that register check ids (imported by :func:`catalogue`)
CHECK_MODULES = ("nnconform.anchor_checks", "nnconform.compress.checks", "nnconform.updates.checks",
                 "nnconform.split.checks", "nnconform.proposal.checks")


def register_check(check_id: str, description: str, direction: str = "pass-fail") -> CheckInfo:
    """Register ``check_id`` (``<criterion>.<name>``); registering it again with other text is an error."""
    criterion, dot, name = check_id.partition(".")
    if not dot or not criterion or not name:
        raise ValueError(f"check id {check_id!r} must read '<criterion>.<name>'")
    if direction not in DIRECTIONS:
        raise ValueError(f"check {check_id!r}: direction {direction!r} is not one of {sorted(DIRECTIONS)}")
    if "\n" in description.strip() or not description.strip():
        raise ValueError(f"check {check_id!r}: the description must be one non-empty line")
    info = CheckInfo(check_id, description.strip(), direction, criterion)
    old = CHECKS.get(check_id)
    if old is not None and old != info:
        raise ValueError(f"check {check_id!r} is already registered as {old}")
    CHECKS[check_id] = info
    return info


def check(check_id: str, description: str, direction: str = "pass-fail"):
    """Decorator for a check function: registers its id (the function returns that id's records)."""
    register_check(check_id, description, direction)

    def mark(fn):
        fn.check_id = check_id
        return fn

    return mark


def catalogue() -> dict[str, CheckInfo]:
    """Every registered check id (importing the modules that register them)."""
    for module in CHECK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return dict(sorted(CHECKS.items()))


def describe(check_id: str) -> CheckInfo | None:
    """The catalogue entry of ``check_id`` (None when it is not registered)."""
    return CHECKS.get(check_id) or catalogue().get(check_id)
