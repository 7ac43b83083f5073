"""A new criterion plugs in through the kit: a plan file, a point type, a method kind, a check, one thin
conformance file. The toy criterion below (under 60 lines) runs as a real conformance suite, and its gate
fails on a bad operating point."""

from __future__ import annotations

import json
import textwrap

TOY_ENGINE = '''
from dataclasses import dataclass
import torch
from nnconform import kit
from nnconform.records import gate

ROUNDERS = kit.method_kind("toy-rounder", "nnconform.toy_rounders")
kit.register_check("toy.max_error", "Rounding a fixed tensor errs by at most the point's tolerance", "lower")

@kit.register_method("toy-rounder", "decimals")
class Decimals:
    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        digits: int = 2
        def __post_init__(self):
            super().__post_init__()
            self._check_range("digits", 0, 8)
    def __init__(self, config):
        self.config = config
    def apply(self, x):
        return torch.round(x, decimals=self.config.digits)

@dataclass(frozen=True)
class ToyPoint(kit.OperatingPoint):
    method: str
    params: dict
    tolerance: float

def load_plan(path=None):
    root = kit.read_plan("toy", path, version=1, tables=["points"])
    points = []
    for t in root.tables("points"):
        points.append(ToyPoint(t.str("method"), t.table("params", {}).rest(), t.float("tolerance", min=0),
                               label=t.str("label"), run_tier=t.run_tier("run_tier", "quick")))
        t.done()
    return points

def check_max_error(point):
    x = torch.linspace(-1, 1, 1001)
    err = float((kit.make("toy-rounder", point.method, point.params).apply(x) - x).abs().max())
    return gate("toy.max_error", point.label, err <= point.tolerance, measured=err, expected=point.tolerance,
                message=f"max error {err:.2e} against tolerance {point.tolerance:.2e}")
'''

TOY_TEST = '''
import pytest
import toy_engine

@pytest.mark.criterion("toy")
@pytest.mark.parametrize("point", toy_engine.load_plan(), ids=lambda p: p.label)
def test_max_error(point, nnc_record):
    rec = nnc_record(toy_engine.check_max_error(point))
    assert rec.passed, rec.message

@pytest.mark.criterion("toy")
def test_an_unregistered_check_id_is_an_error(nnc_record):
    from nnconform.records import Status, gate
    rec = nnc_record(gate("toy.not_in_catalogue", "x", True, measured=1, expected=1))
    assert rec.status is Status.ERROR and "not registered in the check catalogue" in rec.message
'''

TOY_PLAN = '''
version = 1
[[points]]
label = "two-digits"
method = "decimals"
params = { digits = 2 }
tolerance = 0.005
[[points]]
label = "claims-too-much"
method = "decimals"
params = { digits = 1 }
tolerance = 0.001
'''


def toy_suite(pytester, monkeypatch) -> None:
    """Lay the toy criterion out in a pytester folder (plan, engine, conformance file)."""
    import shutil

    from nnconform.paths import anchors_dir

    anchors = pytester.mkdir("anchors")
    shutil.copy(anchors_dir() / "tiers.toml", anchors / "tiers.toml")
    (anchors / "toy.toml").write_text(textwrap.dedent(TOY_PLAN))
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(anchors))
    pytester.makepyfile(toy_engine=TOY_ENGINE)
    pytester.mkdir("conformance")
    (pytester.path / "conformance" / "test_toy.py").write_text(TOY_TEST)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))


def test_a_toy_criterion_plugs_in_through_the_kit(pytester, monkeypatch):
    toy_suite(pytester, monkeypatch)
    result = pytester.runpytest_subprocess("conformance", "-p", "no:cacheprovider", "--nnc-report-dir",
                                           str(pytester.path / "reports"), "--nnc-run-id", "toy")
    result.assert_outcomes(passed=2, failed=1)
    records = json.loads((pytester.path / "reports" / "toy" / "results.json").read_text())["records"]
    by_label = {r["subject"]: r for r in records if r["check_id"] == "toy.max_error"}
    assert by_label["two-digits"]["status"] == "pass" and by_label["claims-too-much"]["status"] == "fail"
    assert by_label["claims-too-much"]["measured"] > 0.001
    unregistered = [r for r in records if r["check_id"] == "toy.not_in_catalogue"]
    assert [r["status"] for r in unregistered] == ["error"]  # and the verdict counts it
