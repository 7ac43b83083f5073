"""Structured results: every check yields one :class:`CheckRecord`.

Tests assert on records; the report renders all of them once, at the end of the session.
"""

from __future__ import annotations

import enum
import math
import traceback as _traceback
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # the subject under test raised or produced unusable output
    SKIP = "skip"  # something the user must supply is missing
    INFO = "info"  # a measurement with no gate (documentation of a model, a curve point)


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars, tuples and non-finite floats into plain JSON values."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return _jsonable(item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    return str(value)


@dataclass
class CheckRecord:
    """The outcome of one check on one subject.

    ``check_id`` names the check (``anchor.accuracy``); ``subject`` what it looked at
    (``fmnist-resnet8``, ``fmnist-resnet8/aimet-ssvd/0.5``). ``measured``, ``expected`` and
    ``tolerance`` are what a delegate needs to judge the result without running anything.
    """

    check_id: str
    subject: str
    status: Status
    measured: Any = None
    expected: Any = None
    tolerance: Any = None
    message: str = ""
    criterion: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None
    nodeid: str | None = None

    @property
    def passed(self) -> bool:
        """True for PASS and INFO (a measurement with nothing to fail)."""
        return self.status in (Status.PASS, Status.INFO)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this record."""
        out = asdict(self)
        out["status"] = self.status.value
        return _jsonable(out)

    @classmethod
    def from_exception(cls, check_id: str, subject: str, exc: BaseException, *, criterion: str = "", **kw) -> "CheckRecord":
        """An ERROR record that keeps the exception's message and traceback."""
        return cls(
            check_id=check_id,
            subject=subject,
            status=Status.ERROR,
            message=f"{type(exc).__name__}: {exc}",
            criterion=criterion,
            traceback="".join(_traceback.format_exception(exc)),
            **kw,
        )


def gate(check_id: str, subject: str, ok: bool, *, measured: Any, expected: Any, tolerance: Any = None,
         message: str = "", criterion: str = "", details: dict | None = None) -> CheckRecord:
    """Build a PASS/FAIL record from a boolean outcome."""
    return CheckRecord(
        check_id=check_id,
        subject=subject,
        status=Status.PASS if ok else Status.FAIL,
        measured=measured,
        expected=expected,
        tolerance=tolerance,
        message=message,
        criterion=criterion,
        details=details or {},
    )
