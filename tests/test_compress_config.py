"""Compressor configs, the method kind and the plan file: round trips, and errors that name the file, field and value."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from nnconform import kit
from nnconform.compress import (COMPRESSORS, Compressor, compressor_class, config_from_dict, make_compressor,
                                make_config)
from nnconform.compress.calibration import CalibrationSpec
from nnconform.compress.plan import PLAN_VERSION, CompressionPlan, CompressionPoint, load_plan
from nnconform.kit import PlanError, PointError

BUILTINS = ("aimet-ssvd", "aimet-cp", "aimet-wsvd", "aimet-quant", "fp16", "torch-int8", "magnitude-prune", "nnc")


def test_builtins_are_kit_methods_with_a_nested_frozen_config():
    assert set(BUILTINS) <= set(COMPRESSORS.names())
    assert kit.registry("compressor") is COMPRESSORS
    for name in BUILTINS:
        cls = compressor_class(name)
        assert issubclass(cls, Compressor) and cls.name == name and cls.description
        assert "Config" in cls.__dict__ and issubclass(cls.Config, kit.MethodConfig)
        cfg = cls.Config()
        assert dataclasses.is_dataclass(cfg) and cfg.version == cls.Config.VERSION and cfg.method == name
        assert "claimed_tier" not in {f.name for f in dataclasses.fields(cfg)}, "claims are the point's"
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.version = 2  # type: ignore[misc]
        method = kit.make("compressor", name, {})
        assert isinstance(method, cls) and method.config == cfg


def test_a_method_refuses_another_methods_config():
    with pytest.raises(kit.ConfigError, match="needs a"):
        compressor_class("fp16")(make_config("nnc"))


@pytest.mark.parametrize("name", BUILTINS)
def test_default_config_round_trips_through_a_dict(name):
    cfg = compressor_class(name).Config()
    d = cfg.to_dict()
    assert d["method"] == name
    assert config_from_dict(d) == cfg


@given(ratio=st.floats(0.01, 0.99), ignore=st.lists(st.sampled_from(["conv1", "layer1.conv1", "fc"]), unique=True))
def test_aimet_config_round_trip_keeps_tuples(ratio, ignore):
    cfg = make_config("aimet-ssvd", target_ratio=ratio, ignore=ignore)
    assert isinstance(cfg.ignore, tuple)
    assert config_from_dict(cfg.to_dict()) == cfg


@given(qp=st.integers(-128, 0), sparsity=st.floats(0.0, 0.99))
def test_nnc_and_pruning_configs_round_trip(qp, sparsity):
    for cfg in (make_config("nnc", qp=qp), make_config("magnitude-prune", sparsity=sparsity)):
        assert config_from_dict(cfg.to_dict()) == cfg
        assert make_compressor(cfg.method, cfg.to_dict()).config == cfg


@pytest.mark.parametrize("method,fields,words", [
    ("aimet-ssvd", {"target_ratio": 1.5}, "target_ratio=1.5"),
    ("aimet-ssvd", {"cost_metric": "flops"}, "cost_metric='flops'"),
    ("aimet-quant", {"param_bw": 3}, "param_bw=3"),
    ("magnitude-prune", {"sparsity": 1.0}, "sparsity=1.0"),
    ("nnc", {"qp": 5}, "qp=5"),
    ("fp16", {"compute_dtype": "bfloat16"}, "compute_dtype='bfloat16'"),
    ("fp16", {"claimed_tier": "99%"}, "unknown config field(s) ['claimed_tier']"),
    ("fp16", {"version": 2}, "version 2 is not supported"),
    ("fp16", {"colour": "red"}, "unknown config field(s) ['colour']"),
])
def test_bad_config_values_are_named(method, fields, words):
    with pytest.raises(ValueError) as info:
        make_config(method, **fields)
    assert words in str(info.value)


def test_unknown_method_suggests_close_names():
    with pytest.raises(KeyError, match="aimet-ssvd"):
        compressor_class("aimet-svd")
    with pytest.raises(ValueError, match="needs a 'method'"):
        config_from_dict({"qp": -30})


def test_points_carry_claims_and_validate_them():
    cfg = make_config("nnc", qp=-32)
    point = CompressionPoint("fmnist-lenet5", "nnc", cfg, label="qp-32", run_tier="quick", claimed_tier="99%")
    assert point.id == "fmnist-lenet5-nnc-qp-32" and point.subject == "fmnist-lenet5/nnc/qp-32"
    assert point.to_dict()["claimed_tier"] == "99%" and "claimed_tier" not in point.to_dict()["config"]
    with pytest.raises(PointError, match="claimed_tier '99.5%'"):
        CompressionPoint("fmnist-lenet5", "nnc", cfg, label="x", claimed_tier="99.5%")
    with pytest.raises(PointError, match="run_tier"):
        CompressionPoint("fmnist-lenet5", "nnc", cfg, label="x", run_tier="nightly")
    with pytest.raises(PointError, match="config is for method 'nnc'"):
        CompressionPoint("fmnist-lenet5", "fp16", cfg, label="x")


def test_proposal_points_taking_a_plan_id_are_refused_naming_both():
    plan = load_plan()
    taken = plan.points[0]
    clash = dataclasses.replace(taken, proposal="acme")
    with pytest.raises(PointError, match=r"taken twice \(the plan file and proposal 'acme'\)"):
        plan.with_proposals([clash])
    assert isinstance(plan.with_proposals([dataclasses.replace(taken, label="acme-x", proposal="acme")]),
                      CompressionPlan)


def test_repository_plan_is_valid_and_covers_every_method_with_three_aimet_ratios():
    plan = load_plan()
    ids = [p.id for p in plan.points]
    assert len(ids) == len(set(ids))
    lenet = plan.for_anchor("fmnist-lenet5")
    assert {p.method for p in lenet} >= set(BUILTINS)
    for method in ("aimet-ssvd", "aimet-cp", "aimet-wsvd"):
        ratios = {p.config.target_ratio for p in lenet if p.method == method}
        assert len(ratios) >= 3, (method, ratios)
    assert len({p.config.qp for p in lenet if p.method == "nnc"}) >= 3
    quick = plan.up_to("quick")
    assert 0 < len(quick) < len(plan.up_to("default")) <= len(plan.points)
    assert "fmnist-lenet5-aimet-ssvd-0.6" in ids
    claims = {p.id: p.claimed_tier for p in plan.points}
    assert claims["fmnist-lenet5-fp16"] == "transparent" and claims["fmnist-lenet5-nnc-qp-20"] is None


def test_calibration_list_is_training_data_with_a_pinned_hash():
    spec = load_plan().calibration["fashion-mnist"]
    assert spec.split == "train" and len(spec.indices) == 2000 and len(set(spec.indices)) == 2000
    with pytest.raises(PlanError, match="test split"):
        CalibrationSpec("fashion-mnist", "test", (1, 2), "rule")
    with pytest.raises(PlanError, match="duplicate"):
        CalibrationSpec("fashion-mnist", "train", (1, 1), "rule")


# ---------------------------------------------------------------------------------------------
# The plan file: every value checked at load, each error naming the file and the dotted field

CALIBRATION = '''
[calibration.fashion-mnist]
split = "train"
rule = "r"
indices = [1, 2, 3]
'''


def _plan(tmp_path: Path, body: str, version: int = PLAN_VERSION) -> Path:
    path = tmp_path / "compression.toml"
    path.write_text(f"version = {version}\n" + CALIBRATION + textwrap.dedent(body))
    return path


GROUP = '''
[[suite.fmnist-lenet5]]
method = "nnc"
points = [{ label = "a", run_tier = "quick", qp = -32 }]
'''


def test_a_well_formed_plan_loads(tmp_path):
    plan = load_plan(_plan(tmp_path, GROUP))
    (point,) = plan.points
    assert point.config == make_config("nnc", qp=-32) and point.run_tier == "quick" and point.claimed_tier is None


@pytest.mark.parametrize("body,words", [
    # a misspelt top-level table used to drop every case silently
    (GROUP.replace("[[suite.", "[[suites."), "unknown key(s) 'suites'; did you mean 'suite'?"),
    (GROUP.replace("method = \"nnc\"", "method = \"no-such-method\""), "suite.fmnist-lenet5[0].method: no compressor"),
    (GROUP.replace("qp = -32", "qp = 10"), "points[0]: nnc: qp=10"),
    (GROUP.replace("qp = -32", "qp = \"-32\""), "points[0].qp: expected an integer, got '-32'"),
    (GROUP.replace("qp = -32", "use_dq = \"no\""), "points[0].use_dq: expected true or false, got 'no'"),
    (GROUP.replace("qp = -32", "qpp = -32"), "unknown key(s) 'qpp'; did you mean 'qp'?"),
    (GROUP.replace("run_tier = \"quick\"", "run_tier = \"nightly\""), "points[0].run_tier: 'nightly' is not a run tier"),
    (GROUP.replace("run_tier = \"quick\"", "tier = \"quick\""), "unknown key(s) 'tier'"),
    (GROUP.replace("qp = -32", "claimed_tier = \"99.5%\""), "points[0].claimed_tier: '99.5%' is not an accuracy tier"),
    (GROUP.replace("qp = -32", "claimed_bytes = -5"), "points[0].claimed_bytes: must be >= 1"),
    (GROUP.replace("method = \"nnc\"", "method = \"nnc\"\nconfig = { claimed_tier = \"99%\" }"),
     "config: unknown key(s) 'claimed_tier'"),
    (GROUP.replace("method = \"nnc\"", "method = \"nnc\"\ncolour = \"red\""), "unknown key(s) 'colour'"),
    (GROUP.replace("fmnist-lenet5", "fmnist-lenet6"), "no anchor 'fmnist-lenet6'; did you mean 'fmnist-lenet5'?"),
    (GROUP.replace("{ label = \"a\"", "{ label = \"a\" }, { label = \"a\""), "case id 'fmnist-lenet5-nnc-a' is taken twice"),
])
def test_plan_errors_name_the_file_and_field(tmp_path, body, words):
    path = _plan(tmp_path, body)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_the_old_plan_layout_is_refused_by_version(tmp_path):
    with pytest.raises(PlanError, match="version = 1; this nnconform reads compression plans of version 2"):
        load_plan(_plan(tmp_path, GROUP, version=1))


@pytest.mark.parametrize("calibration,words", [
    (CALIBRATION.replace("indices = [1, 2, 3]", "indices = [1, \"2\"]"), "indices[1]: expected an integer"),
    (CALIBRATION.replace("indices = [1, 2, 3]", "indices = [1, 2, 3]\nindex_sha256 = \"" + "0" * 64 + "\""),
     "the list was edited"),
    (CALIBRATION.replace("split = \"train\"", "split = \"test\""), "must not come from the test split"),
    (CALIBRATION.replace("rule = \"r\"", "rule = \"r\"\nevaluate_on_rest = \"no\""),
     "evaluate_on_rest: expected true or false"),
])
def test_calibration_errors_name_the_file_and_field(tmp_path, calibration, words):
    path = tmp_path / "compression.toml"
    path.write_text(f"version = {PLAN_VERSION}\n" + calibration)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert words in str(info.value) and str(path) in str(info.value)
