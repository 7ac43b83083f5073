"""One generic registry per kind of pluggable thing (compressors, update and feature codecs).

Built-in reference methods and third-party proposals go through the same door: the
``register`` decorator, or an entry point in the registry's group.
"""

from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping that refuses duplicates and suggests close names on a miss."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False
        #: entry points that failed to import: name -> message (raised when the name is asked for)
        self.broken: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by proposals that replace a method)."""
        self._items.pop(name, None)

    def load_entry_points(self) -> list[str]:
        """Import every entry point of this registry's group once; return the names loaded.

        One entry point that fails to import does not hide the others: its error is kept and raised,
        naming the entry point and its target, when that name is asked for (:meth:`get`).
        """
        if self._entry_points_loaded or not self.entry_point_group:
            return []
        self._entry_points_loaded = True
        loaded = []
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party package must not take the registry down with it
                self.broken[ep.name] = (f"entry point {ep.name!r} = {ep.value!r} of group {self.entry_point_group!r} "
                                        f"failed to import: {type(exc).__name__}: {exc}")
                continue
            if ep.name not in self._items:
                self.register(ep.name, obj)
            loaded.append(ep.name)
        return loaded

    def get(self, name: str) -> T:
        """The object registered as ``name``; a KeyError naming close matches otherwise."""
        self.load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            if name in self.broken:
                raise KeyError(f"{self.kind} {name!r} is unavailable: {self.broken[name]}") from None
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"no {self.kind} named {name!r}{hint} (known: {sorted(self._items)})") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self.load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
