"""The criterion kit: the parts every criterion (compression, updates, split, and those to come) is built from.

* :mod:`.runtier` — run tiers (``quick``/``default``/``full``) and ``runs_in``;
* :mod:`.points` — :class:`OperatingPoint`, the base of every criterion's points (``run_tier``,
  ``claimed_tier``, ``claimed_bytes``, ``proposal``);
* :mod:`.plan` — :func:`read_plan`, the versioned loader of ``anchors/<criterion>.toml`` that refuses
  unknown keys, and :class:`Table` for typed, range-checked fields;
* :mod:`.methods` — one protocol shape per method kind: a registered class with a nested frozen,
  versioned ``Config``; :func:`make` builds one;
* :mod:`.curves` — :class:`RateCurve`, its JSON files and one plotter;
* :mod:`.checks` — the catalogue of check ids (description, direction);
* :mod:`.state` — per-criterion session state behind one fixture; :mod:`.errors` — ``PayloadError``.

See ``docs/architecture.md`` ("The criterion kit") for how a new criterion plugs in.
"""

from .checks import CheckInfo, catalogue, check, describe, register_check
from .errors import PayloadError
from .curves import RateCurve, plot_curves, read_curves, write_curves
from .methods import ConfigError, MethodConfig, make, method_class, method_kind, register_method, registry
from .plan import PlanError, Table, read_plan
from .points import OperatingPoint, PointError, unique_ids
from .runtier import RUN_TIERS, RunTierError, later, parse_run_tier, runs_in
from .state import criterion_state

__all__ = ["CheckInfo", "catalogue", "check", "describe", "register_check", "RateCurve", "plot_curves", "read_curves",
           "write_curves", "ConfigError", "MethodConfig", "make", "method_class", "method_kind", "register_method",
           "registry", "PlanError", "Table", "read_plan", "OperatingPoint", "PointError", "unique_ids", "RUN_TIERS",
           "RunTierError", "later", "parse_run_tier", "runs_in", "PayloadError", "criterion_state"]
