"""One protocol shape for every kind of method: a registered class with a nested frozen ``Config``.

A *method kind* (``compressor``, ``update-codec``, ``feature-codec``) has one :class:`Registry`.
Every method of every kind is a class with

* a nested ``Config``: a frozen dataclass derived from :class:`MethodConfig`, with a ``version``
  checked on construction and its own ``__post_init__`` checks, round-tripping to a plain dict;
* ``__init__(self, config)`` storing it as ``self.config``;
* the kind's own operations (``compress``/``decode``, ``encode``/``decode``...).

``make(kind, name, params)`` builds one from a plan file's parameters; reference methods and
proposals go through the same door.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..registry import Registry


class ConfigError(ValueError):
    """A method config is invalid; the message names the method and the field."""


def _is_tuple_type(tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_type(a) for a in typing.get_args(tp))
    return False


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: frozen, versioned, validated, round-trips to a plain dict.

    ``VERSION`` is the config schema version the method reads; a config written for another version is
    refused by name. ``method`` is set when the class is registered. Claims never live here: the accuracy
    or size a point claims is the operating point's (:class:`nnconform.kit.points.OperatingPoint`).
    """

    VERSION: ClassVar[int] = 1
    method: ClassVar[str] = ""

    version: int = 1

    def __post_init__(self) -> None:
        if self.version != self.VERSION:
            raise ConfigError(f"{self.method or type(self).__name__}: config version {self.version!r} is not "
                              f"supported; this method reads version {self.VERSION}")

    # helpers for subclasses' __post_init__ ---------------------------------------------------

    def _check_range(self, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not ok:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise ConfigError(f"{self.method}: {name}={value!r} must be in {left}{lo}, {hi}{right}")

    def _check_choice(self, name: str, choices) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(f"{self.method}: {name}={value!r} must be one of {list(choices)}")

    # round trip ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, field: value, ...}`` with tuples as lists (JSON/TOML ready)."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "MethodConfig":
        """Build from :meth:`to_dict` output or a plan table; unknown fields are refused by name."""
        data = dict(data or {})
        method = data.pop("method", cls.method)
        if cls.method and method != cls.method:
            raise ConfigError(f"config for method {method!r} given to {cls.method!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.method or cls.__name__}: unknown config field(s) {unknown}; valid: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        for key, value in list(data.items()):
            if isinstance(value, list) and _is_tuple_type(hints.get(key)):
                data[key] = tuple(value)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{cls.method or cls.__name__}: {exc}") from None

    def replace(self, **changes) -> "MethodConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: kind name -> its registry (filled by the criterion packages when they are imported)
KINDS: dict[str, Registry] = {}
#: kind name -> module that registers the kind and its reference methods (imported on first use)
_KIND_MODULES = {"compressor": "nnconform.compress", "update-codec": "nnconform.updates",
                 "feature-codec": "nnconform.split.codecs"}


def method_kind(kind: str, entry_point_group: str) -> Registry:
    """The registry of a method kind (created once)."""
    if kind not in KINDS:
        KINDS[kind] = Registry(kind.replace("-", " "), entry_point_group)
    return KINDS[kind]


def registry(kind: str) -> Registry:
    """The registry of ``kind``; a KeyError listing the kinds otherwise."""
    if kind not in KINDS and kind in _KIND_MODULES:
        import importlib

        importlib.import_module(_KIND_MODULES[kind])
    try:
        return KINDS[kind]
    except KeyError:
        raise KeyError(f"no method kind {kind!r}; kinds: {sorted(set(KINDS) | set(_KIND_MODULES))}") from None


def check_method_class(cls: type, kind: str, name: str) -> type:
    """Refuse a class that is not a method: it needs a nested ``Config`` derived from :class:`MethodConfig`."""
    config = getattr(cls, "Config", None)
    if not isinstance(cls, type) or not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"{kind} {name!r}: {cls!r} must be a class with a nested `Config` derived from "
                        f"nnconform.kit.MethodConfig")
    if not dataclasses.is_dataclass(config) or not config.__dataclass_params__.frozen:
        raise TypeError(f"{kind} {name!r}: {config.__qualname__} must be a frozen dataclass")
    return cls


def register_method(kind: str, name: str):
    """Class decorator: register a method class of ``kind`` under ``name`` (binds ``Config.method``)."""

    def add(cls: type) -> type:
        check_method_class(cls, kind, name)
        if "Config" in cls.__dict__:
            cls.Config.method = name
        cls.name = name
        registry(kind).register(name, cls)
        return cls

    return add


#: the module-name prefix of a proposal's code imported by ``--proposal`` (nnconform.proposal.check)
PROPOSAL_MODULE_PREFIX = "nnconform_proposal_"


def installed_names(kind: str) -> list[str]:
    """The methods of ``kind`` that are built in or installed (entry points), leaving out those a ``--proposal``
    module registered in this process: a proposal's methods run at its own operating points only, and a proposal
    loaded earlier in the same process (a self-test, a checker call) must not add cases to a later run."""
    reg = registry(kind)
    return [n for n in reg.names()
            if not str(getattr(reg.get(n), "__module__", "")).startswith(PROPOSAL_MODULE_PREFIX)]


def method_class(kind: str, name: str) -> type:
    """The class registered as ``name`` in ``kind`` (entry points included), checked."""
    cls = registry(kind).get(name)
    check_method_class(cls, kind, name)
    if not cls.Config.method:
        cls.Config.method = name
    return cls


def make(kind: str, name: str, params: Mapping[str, Any] | None = None):
    """A method instance from its name and config fields: ``make("update-codec", "quant", {"bits": 4})``."""
    cls = method_class(kind, name)
    return cls(cls.Config.from_dict({**dict(params or {}), "method": cls.Config.method}))
