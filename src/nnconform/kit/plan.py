"""One versioned loader for every criterion's plan file (``anchors/<criterion>.toml``).

A plan is data: which operating points run on which anchors, from which run tier, claiming which
accuracy tier. :func:`read_plan` checks the file's ``version`` and refuses unknown top-level tables;
:class:`Table` reads one table field by field with type and range checks and refuses the keys it
did not read, each error naming the file and the dotted field (``anchors/split.toml:
families.uniform.points[2].bits: expected an integer, got '8'``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..paths import anchors_dir, read_toml
from .runtier import RunTierError, parse_run_tier

_MISSING = object()


class PlanError(ValueError):
    """A plan file is malformed; the message names the file and the field."""


def _hint(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_keys_error(where: str, unknown: Iterable[str], valid: Iterable[str]) -> PlanError:
    """A :class:`PlanError` listing unknown keys, a close match for each, and the valid keys."""
    valid = sorted(valid)
    parts = [f"{k!r}{_hint(k, valid)}" for k in sorted(unknown)]
    return PlanError(f"{where}: unknown key(s) {', '.join(parts)} (valid: {', '.join(valid)})")


def _type_name(kind) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "an array",
             dict: "a table"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def check_type(value: Any, kind: type | tuple, where: str) -> Any:
    """``value`` if it is of ``kind``; TOML booleans are never numbers and integers are numbers."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is bool and isinstance(value, bool):
            return value
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if k not in (bool, int, float) and isinstance(value, k):
            return value
    expected = " or ".join(_type_name(k) for k in kinds)
    raise PlanError(f"{where}: expected {expected}, got {value!r}")


class Table:
    """One TOML table read field by field; :meth:`done` refuses the keys nobody read.

    >>> t = Table({"bits": 8}, "split.toml: families.u.points[0]")
    >>> t.int("bits", min=1, max=16)
    8
    >>> t.done()
    """

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise PlanError(f"{where}: expected a table, got {data!r}")
        self.data = dict(data)
        self.where = where
        self._read: set[str] = set()

    def at(self, key: str) -> str:
        """The dotted location of ``key`` (``file.toml: table.key``)."""
        return f"{self.where}{'.' if ': ' in self.where else ': '}{key}"

    def has(self, key: str) -> bool:
        """Whether the table has ``key``."""
        return key in self.data

    def get(self, key: str, kind: type | tuple = object, default: Any = _MISSING, *,
            check: Callable[[Any], str | None] | None = None) -> Any:
        """The value of ``key`` (``default`` when absent; required when no default), type-checked.

        ``check`` returns an error message for a bad value (or None).
        """
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise PlanError(f"{self.where}: missing {key!r}")
            return default
        value = self.data[key] if kind is object else check_type(self.data[key], kind, self.at(key))
        if check is not None:
            problem = check(value)
            if problem:
                raise PlanError(f"{self.at(key)}: {problem}, got {value!r}")
        return value

    def str(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None) -> str:
        """A string field, optionally one of ``choices``."""
        options = list(choices) if choices is not None else None
        return self.get(key, str, default, check=None if options is None else
                        (lambda v: None if v in options else f"must be one of {options}"))

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        """A boolean field (``"no"`` or ``0`` are refused, not read as true)."""
        return self.get(key, bool, default)

    def int(self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> int:
        """An integer field within ``[min, max]``."""
        return self.get(key, int, default, check=lambda v: _range(v, min, max))

    def float(self, key: str, default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
              min_open: bool = False) -> float:
        """A number field within ``[min, max]`` (``(min, max]`` with ``min_open``)."""
        return self.get(key, float, default, check=lambda v: _range(v, min, max, min_open))

    def list(self, key: str, item: type | tuple = object, default: Any = _MISSING, *,
             check: Callable[[Any], str | None] | None = None) -> list:
        """An array field whose items are of ``item`` (and pass ``check``, which returns a message or None)."""
        value = self.get(key, list, default)
        if value is default:
            return value
        out = []
        for i, v in enumerate(value):
            where = f"{self.at(key)}[{i}]"
            v = v if item is object else check_type(v, item, where)
            problem = check(v) if check is not None else None
            if problem:
                raise PlanError(f"{where}: {problem}, got {v!r}")
            out.append(v)
        return out

    def table(self, key: str, default: Any = _MISSING) -> "Table":
        """A sub-table as a :class:`Table` (an empty one when absent and ``default`` is ``{}``)."""
        value = self.get(key, dict, default)
        return Table(value, self.at(key))

    def tables(self, key: str, default: Any = _MISSING) -> list["Table"]:
        """An array of tables (``[[key]]``), each as a :class:`Table`."""
        value = self.get(key, list, default)
        return [Table(v, f"{self.at(key)}[{i}]") for i, v in enumerate(value)]

    def positive(self, value) -> str | None:
        """A ``check`` for :meth:`list`: the item must be > 0."""
        return None if value > 0 else "must be > 0"

    def run_tier(self, key: str = "run_tier", default: Any = _MISSING) -> str:
        """A run tier field (quick/default/full)."""
        value = self.get(key, str, default)
        try:
            return parse_run_tier(value, self.at(key))
        except RunTierError as exc:
            raise PlanError(str(exc)) from None

    def accuracy_tier(self, key: str = "claimed_tier", default: Any = None, *, none: str | None = "none") -> str | None:
        """An accuracy tier of ``anchors/tiers.toml`` claimed here (``none`` or absent: no claim)."""
        value = self.get(key, str, default)
        if value is None or value == none:
            return None
        from ..gates import load_tiers

        tiers = list(load_tiers())
        if value not in tiers:
            raise PlanError(f"{self.at(key)}: {value!r} is not an accuracy tier of anchors/tiers.toml "
                            f"({', '.join(tiers)}){' or ' + repr(none) if none else ''}")
        return value

    def rest(self) -> dict[str, Any]:
        """The keys not read yet (e.g. a method's config fields), marking them read."""
        out = {k: v for k, v in self.data.items() if k not in self._read}
        self._read.update(out)
        return out

    def done(self) -> None:
        """Refuse every key that was not read, with a close match."""
        unknown = set(self.data) - self._read
        if unknown:
            raise unknown_keys_error(self.where, unknown, self._read)


def _range(value, lo, hi, lo_open: bool = False) -> str | None:
    if lo is not None and (value <= lo if lo_open else value < lo):
        return f"must be {'>' if lo_open else '>='} {lo}"
    if hi is not None and value > hi:
        return f"must be <= {hi}"
    return None


def plan_path(criterion: str, path: str | Path | None = None) -> Path:
    """``path``, or the criterion's plan file ``anchors/<criterion>.toml``."""
    return Path(path) if path else anchors_dir() / f"{criterion}.toml"


def read_plan(criterion: str, path: str | Path | None = None, *, version: int, tables: Iterable[str]) -> Table:
    """A criterion's plan file as a :class:`Table`, with its ``version`` checked and the top-level keys limited
    to ``tables`` (a misspelt table is refused, never silently dropped)."""
    path = plan_path(criterion, path)
    try:
        data = read_toml(path, PlanError)
    except FileNotFoundError:
        raise PlanError(f"{path}: the {criterion} plan file is missing") from None
    root = Table(data, str(path))
    found = root.get("version", int, None)
    if found != version:
        raise PlanError(f"{path}: version = {found!r}; this nnconform reads {criterion} plans of version {version}")
    unknown = set(data) - set(tables) - {"version"}
    if unknown:
        raise unknown_keys_error(str(path), unknown, set(tables) | {"version"})
    return root
