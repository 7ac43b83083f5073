"""``methods.md``: every registered method of every kind, from its class: what it does, its config, its
operating points in the plans, and (with ``--results``) what it measured."""

from __future__ import annotations

import dataclasses
import typing

from .. import kit
from .markdown import docstring, entry_heading, header, table
from .results import RESULT_HEADERS, method_results

KINDS = ("compressor", "update-codec", "feature-codec")
KIND_TITLES = {"compressor": "Compressors (criterion 1, `anchors/compression.toml`)",
               "update-codec": "Update codecs (criterion 2, `anchors/updates.toml`)",
               "feature-codec": "Feature codecs (criterion 3, `anchors/split.toml`)"}


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def config_rows(config_cls) -> list[list]:
    """``(field, type, default)`` of each field of a method's ``Config`` (``version`` first, as declared)."""
    hints = typing.get_type_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append([f"`{f.name}`", f"`{_type_name(hints.get(f.name, f.type))}`", f"`{default!r}`"])
    return rows


def _non_default(config) -> str:
    base = type(config)()
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(base, f.name)}
    return ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "defaults"


def plan_points(kind: str, name: str) -> tuple[list[str], list[list]]:
    """The operating points of the committed plan that use method ``name``: headers and sorted rows."""
    if kind == "compressor":
        from ..compress.plan import load_plan

        rows = [[p.anchor, p.label or "-", p.run_tier, p.claimed_tier, _non_default(p.config)]
                for p in load_plan().points if p.method == name]
        return ["anchor", "label", "run tier", "claimed tier", "config"], sorted(rows)
    if kind == "update-codec":
        from ..updates.plan import load_plan

        rows = [[p.label, p.run_tier, p.claimed_tier, ", ".join(f"{k}={v!r}" for k, v in sorted(p.params.items()))
                 or "defaults", ", ".join(p.anchors) if p.anchors else "all", p.description]
                for p in load_plan().points if p.codec == name]
        return ["label", "run tier", "claimed tier", "params", "anchors", "what"], sorted(rows)
    from ..split.plan import load_plan

    rows = [[p.label, p.family, p.run_tier, p.claimed_tier, ", ".join(f"{k}={v!r}" for k, v in p.params) or "defaults",
             ", ".join(p.anchors) if p.anchors else "all", p.description]
            for p in load_plan().points if p.codec == name]
    return ["label", "family", "run tier", "claimed tier", "params", "anchors", "what"], sorted(rows)


def method_section(kind: str, name: str, results: dict | None) -> list[str]:
    """One method's entry."""
    cls = kit.method_class(kind, name)
    lines = entry_heading(3, f"`{name}`", "method", kind, name)
    lines += [f"Class `{cls.__module__}.{cls.__qualname__}`.", "", docstring(cls) or "(no description)", ""]
    if getattr(cls, "description", None):
        lines += [f"In one line: {cls.description}.", ""]
    if getattr(cls, "reference", None):
        lines += ["**How nnconform runs it:**", "", cls.reference.strip(), ""]
    config_doc = docstring(cls.Config)
    lines += [f"**Config** (`{name}` version {cls.Config.VERSION})" + (f": {' '.join(config_doc.split())}"
                                                                      if config_doc else ""), "",
              table(["field", "type", "default"], config_rows(cls.Config)), ""]
    headers, rows = plan_points(kind, name)
    lines += ["**Operating points in the plan:**", "",
              table(headers, rows) if rows else "none in the committed plan (a proposal may use it).", ""]
    if results is not None:
        measured = method_results(results, kind, name)
        lines += [f"**Measured in run `{results.get('run_id', '?')}`:**", "",
                  table(RESULT_HEADERS[kind], measured) if measured else "no records of this method in that run.", ""]
    return lines


def reference_names(kind: str) -> list[str]:
    """The methods the reference pages document: nnconform's own (a third-party package's entry points, a
    proposal or a self-test registering a method in this process would make the committed pages depend on the
    machine)."""
    reg = kit.registry(kind)
    return sorted(n for n in kit.methods.installed_names(kind)
                  if str(getattr(reg.get(n), "__module__", "")).startswith("nnconform."))


def methods_page(results: dict | None = None) -> str:
    """The page: per method kind, each registered method (sorted by name)."""
    lines = header("Methods", "Every method registered in the criterion kit (`kit.registry(kind)`), described from "
                   "its class: what it does (the class docstring, with the paper or standard it implements), its "
                   "config (a frozen, versioned dataclass; a plan point that sets an unknown field is refused), "
                   "and the operating points of the committed plans that use it. "
                   + ("Measured figures are those of the run given with `--results`." if results else
                      "Measured figures are added with `--results RUN/results.json`."))
    for kind in KINDS:
        lines += [f"## {KIND_TITLES[kind]}", ""]
        for name in reference_names(kind):
            lines += method_section(kind, name, results)
    return "\n".join(lines).rstrip() + "\n"
