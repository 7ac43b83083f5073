"""The criterion kit: plan loader, typed fields, points, method kinds, rate curves, check catalogue."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from nnconform import kit
from nnconform.anchor_checks import latency_record
from nnconform.kit.checks import CHECKS
from nnconform.registry import Registry


def _plan(tmp_path, text: str):
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return path


def test_read_plan_checks_version_and_refuses_a_misspelt_table(tmp_path):
    with pytest.raises(kit.PlanError, match=r"toy.toml: version = 1; this nnconform reads toy plans of version 2"):
        kit.read_plan("toy", _plan(tmp_path, "version = 1\n"), version=2, tables=["points"])
    with pytest.raises(kit.PlanError, match=r"unknown key\(s\) 'pionts'; did you mean 'points'\?"):
        kit.read_plan("toy", _plan(tmp_path, "version = 2\n[[pionts]]\nlabel = 'a'\n"), version=2, tables=["points"])
    root = kit.read_plan("toy", _plan(tmp_path, "version = 2\n[[points]]\nlabel = 'a'\n"), version=2, tables=["points"])
    assert [t.str("label") for t in root.tables("points")] == ["a"]


@pytest.mark.parametrize("field,value,reader,message", [
    ("tolerance", "'0.01'", lambda t: t.float("tolerance", min=0), r"tolerance: expected a number, got '0.01'"),
    ("tolerance", "-0.5", lambda t: t.float("tolerance", min=0), r"tolerance: must be >= 0, got -0.5"),
    ("lossless", "'no'", lambda t: t.bool("lossless"), r"lossless: expected true or false, got 'no'"),
    ("bits", "true", lambda t: t.int("bits"), r"bits: expected an integer, got True"),
    ("resolutions", "[224, -1]", lambda t: t.list("resolutions", int, check=t.positive),
     r"resolutions\[1\]: must be > 0, got -1"),
    ("run_tier", "'fast'", lambda t: t.run_tier(), r"run_tier: 'fast' is not a run tier"),
    ("claimed_tier", "'99.5%'", lambda t: t.accuracy_tier(), r"claimed_tier: '99.5%' is not an accuracy tier"),
])
def test_table_fields_are_type_and_range_checked(tmp_path, field, value, reader, message):
    root = kit.read_plan("toy", _plan(tmp_path, f"version = 1\n[p]\n{field} = {value}\n"), version=1, tables=["p"])
    with pytest.raises(kit.PlanError, match=message) as info:
        reader(root.table("p"))
    assert f"toy.toml: p.{field}" in str(info.value)  # names the file and the dotted field


def test_table_refuses_keys_nobody_read():
    t = kit.Table({"label": "a", "clamied_tier": "99%"}, "x.toml: points[0]")
    t.str("label")
    t.accuracy_tier()
    with pytest.raises(kit.PlanError, match=r"points\[0\]: unknown key\(s\) 'clamied_tier'; did you mean 'claimed_tier'"):
        t.done()


def test_operating_point_checks_its_tiers_and_claims():
    @dataclass(frozen=True)
    class Point(kit.OperatingPoint):
        codec: str

    p = Point("c", label="a", run_tier="default", claimed_tier="99%")
    assert p.runs_in("full") and not p.runs_in("quick")
    assert Point("c", label="b", run_tier="full", proposal="acme").runs_in("quick")  # a proposal's claim always runs
    for bad in ({"run_tier": "fast"}, {"claimed_tier": "98%"}, {"claimed_bytes": 0}, {"claimed_bytes": True}):
        with pytest.raises(kit.PointError):
            Point("c", label="x", **bad)
    with pytest.raises(kit.PointError, match="taken twice"):
        kit.unique_ids([p, Point("d", label="a", proposal="acme")], id_of=lambda q: q.label)


def test_method_kind_make_and_config_round_trip():
    kind = "toy-kind"
    kit.method_kind(kind, "nnconform.toy_methods")

    @kit.register_method(kind, "scale")
    class Scale:
        @dataclass(frozen=True)
        class Config(kit.MethodConfig):
            VERSION = 2
            version: int = 2
            factor: float = 1.0
            dims: tuple[int, ...] = (1,)

            def __post_init__(self):
                super().__post_init__()
                self._check_range("factor", 0, 10, lo_open=True)

        def __init__(self, config):
            self.config = config

    m = kit.make(kind, "scale", {"factor": 2.5, "dims": [1, 2]})
    assert m.config.dims == (1, 2) and m.config.to_dict() == {"method": "scale", "version": 2, "factor": 2.5,
                                                              "dims": [1, 2]}
    assert Scale.Config.from_dict(m.config.to_dict()) == m.config
    with pytest.raises(kit.ConfigError, match=r"scale: factor=0 must be in \(0, 10\]"):
        kit.make(kind, "scale", {"factor": 0})
    with pytest.raises(kit.ConfigError, match=r"unknown config field\(s\) \['fatcor'\]"):
        kit.make(kind, "scale", {"fatcor": 1})
    with pytest.raises(kit.ConfigError, match="config version 1 is not supported; this method reads version 2"):
        kit.make(kind, "scale", {"version": 1})
    with pytest.raises(TypeError, match="nested `Config`"):
        kit.register_method(kind, "bare")(type("Bare", (), {}))


def test_rate_curve_round_trip_and_length_check(tmp_path):
    c = kit.RateCurve("fmnist-lenet5", "nnc", "NNC QP sweep", {"bytes": [3, 1, 2], "top1": [0.9, 0.5, 0.8]},
                      {"proposal": ""})
    assert kit.RateCurve.from_dict(c.to_dict()) == c and c.name == "fmnist-lenet5/nnc" and len(c) == 3
    sorted_c = kit.RateCurve.from_rows("a", "m", [{"bytes": 3, "top1": 1}, {"bytes": 1, "top1": 0}],
                                       ["bytes", "top1"], rate="bytes")
    assert sorted_c.results["bytes"] == [1, 3]
    paths = kit.write_curves([c, sorted_c], tmp_path)
    assert sorted(kit.read_curves(tmp_path), key=lambda x: x.name) == sorted([c, sorted_c], key=lambda x: x.name)
    assert all(p.suffix == ".json" for p in paths)
    png = kit.plot_curves([c, kit.RateCurve("a", "p", "", {"bytes": [1], "top1": [1]}, {"proposal": "acme"})],
                          tmp_path / "p.png", x="bytes", y="top1", xlabel="bytes", ylabel="top-1", reference=(4, 0.9))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="different lengths"):
        kit.RateCurve("a", "m", "", {"bytes": [1, 2], "top1": [1]})


def test_check_catalogue_registers_every_criterion_and_refuses_conflicts():
    catalogue = kit.catalogue()
    assert {"anchor.weights_sha256", "anchor.latency", "input.available"} <= set(catalogue)
    assert all(info.description and info.direction in kit.checks.DIRECTIONS for info in catalogue.values())
    with pytest.raises(ValueError, match="already registered"):
        kit.register_check("anchor.latency", "something else", "info")
    with pytest.raises(ValueError, match="'<criterion>.<name>'"):
        kit.register_check("nodot", "x")
    with pytest.raises(ValueError, match="one non-empty line"):
        kit.register_check("toy.two_lines", "a\nb")
    assert "toy.two_lines" not in CHECKS


def test_latency_record_measures_time_and_fails_on_a_wrong_output():
    bench = SimpleNamespace(stats=SimpleNamespace(stats=SimpleNamespace(mean=0.002, median=0.002, stddev=0.0, rounds=5)))
    good = latency_record("a", bench, torch.zeros(32, 10), (32, 10))
    assert good.passed and good.measured == 0.002 and good.details["output_shape"] == [32, 10]
    assert not latency_record("a", bench, torch.zeros(32, 7), (32, 10)).passed
    assert not latency_record("a", bench, torch.full((32, 10), float("nan")), (32, 10)).passed


def test_a_broken_entry_point_does_not_hide_the_others(monkeypatch):
    class EP:
        def __init__(self, name, value, obj=None):
            self.name, self.value, self._obj = name, value, obj

        def load(self):
            if self._obj is None:
                raise ImportError("No module named 'acme_codec'")
            return self._obj

    eps = [EP("broken", "acme_codec:Codec"), EP("good", "ok:Codec", obj="the good codec")]
    monkeypatch.setattr("nnconform.registry.metadata.entry_points", lambda group: eps)
    reg = Registry("widget", "nnconform.widgets")
    assert reg.get("good") == "the good codec"
    with pytest.raises(KeyError, match=r"'broken' is unavailable: entry point 'broken' = 'acme_codec:Codec'.*"
                                       r"ImportError: No module named 'acme_codec'"):
        reg.get("broken")
    assert reg.names() == ["good"]


def test_criterion_state_is_made_once_per_run(pytestconfig):
    made = []
    first = kit.criterion_state(pytestconfig, "toy-state", lambda: made.append(1) or object())
    assert kit.criterion_state(pytestconfig, "toy-state", object) is first and made == [1]


def test_a_proposal_loaded_in_process_adds_no_default_points_and_no_reference_entry():
    """A proposal imported earlier in the same process (a self-test, a checker call) registers its methods; they
    must not become default operating points of a later run, nor entries of the reference pages."""
    from nnconform.kit.methods import installed_names
    from nnconform.paths import REPO_ROOT
    from nnconform.proposal import load_proposal
    from nnconform.split.plan import load_plan as load_split_plan
    from nnconform.updates.plan import load_plan as load_update_plan

    load_proposal(REPO_ROOT / "fixtures" / "proposals" / "good-feature-codec")
    load_proposal(REPO_ROOT / "fixtures" / "proposals" / "good-update-codec")
    proposal_codecs = set(kit.registry("feature-codec").names()) - set(installed_names("feature-codec"))
    assert proposal_codecs, "the proposal registered its codec"
    assert not proposal_codecs & {p.codec for p in load_split_plan().points_for("full")}
    updates = set(kit.registry("update-codec").names()) - set(installed_names("update-codec"))
    assert updates and not updates & {p.codec for p in load_update_plan().with_proposals(()).points}
