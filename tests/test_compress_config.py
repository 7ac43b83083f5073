"""Compressor configs, the registry and the suite manifest: round trips and errors that name the bad value."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, strategies as st

from nnconform.compress import COMPRESSORS, config_from_dict, get_compressor, make_config
from nnconform.compress.suite import CalibrationSpec, SuiteError, load_suite, parse_suite

BUILTINS = ("aimet-ssvd", "aimet-cp", "aimet-wsvd", "aimet-quant", "fp16", "torch-int8", "magnitude-prune", "nnc")


def test_builtins_are_registered_and_follow_the_protocol():
    assert set(BUILTINS) <= set(COMPRESSORS.names())
    for name in BUILTINS:
        handler = get_compressor(name)
        assert handler.name == name and handler.description
        cfg = handler.config_cls()
        assert dataclasses.is_dataclass(cfg) and cfg.version == handler.config_cls.VERSION
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.version = 2  # type: ignore[misc]


@pytest.mark.parametrize("name", BUILTINS)
def test_default_config_round_trips_through_a_dict(name):
    cfg = get_compressor(name).config_cls()
    d = cfg.to_dict()
    assert d["method"] == name
    assert config_from_dict(d) == cfg


@given(ratio=st.floats(0.01, 0.99), ignore=st.lists(st.sampled_from(["conv1", "layer1.conv1", "fc"]), unique=True),
       tier=st.sampled_from([None, "transparent", "99.9%", "99%"]))
def test_aimet_config_round_trip_keeps_tuples_and_claims(ratio, ignore, tier):
    cfg = make_config("aimet-ssvd", target_ratio=ratio, ignore=ignore, claimed_tier=tier)
    assert isinstance(cfg.ignore, tuple)
    assert config_from_dict(cfg.to_dict()) == cfg


@given(qp=st.integers(-128, 0), sparsity=st.floats(0.0, 0.99))
def test_nnc_and_pruning_configs_round_trip(qp, sparsity):
    for cfg in (make_config("nnc", qp=qp), make_config("magnitude-prune", sparsity=sparsity)):
        assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("method,fields,words", [
    ("aimet-ssvd", {"target_ratio": 1.5}, "target_ratio=1.5"),
    ("aimet-ssvd", {"cost_metric": "flops"}, "cost_metric='flops'"),
    ("aimet-quant", {"param_bw": 3}, "param_bw=3"),
    ("magnitude-prune", {"sparsity": 1.0}, "sparsity=1.0"),
    ("nnc", {"qp": 5}, "qp=5"),
    ("fp16", {"compute_dtype": "bfloat16"}, "compute_dtype='bfloat16'"),
    ("fp16", {"claimed_tier": "99.5%"}, "claimed_tier '99.5%' is not a tier"),
    ("fp16", {"version": 2}, "version 2 is not supported"),
    ("fp16", {"colour": "red"}, "unknown config field(s) ['colour']"),
])
def test_bad_config_values_are_named(method, fields, words):
    with pytest.raises(ValueError) as info:
        make_config(method, **fields)
    assert words in str(info.value)


def test_unknown_method_suggests_close_names():
    with pytest.raises(KeyError, match="aimet-ssvd"):
        get_compressor("aimet-svd")
    with pytest.raises(ValueError, match="needs a 'method'"):
        config_from_dict({"qp": -30})


def test_repository_suite_is_valid_and_covers_every_method_with_three_aimet_ratios():
    suite = load_suite()
    ids = [p.id for p in suite.points]
    assert len(ids) == len(set(ids))
    lenet = suite.for_anchor("fmnist-lenet5")
    assert {p.method for p in lenet} >= set(BUILTINS)
    for method in ("aimet-ssvd", "aimet-cp", "aimet-wsvd"):
        ratios = {p.config.target_ratio for p in lenet if p.method == method}
        assert len(ratios) >= 3, (method, ratios)
    assert len({p.config.qp for p in lenet if p.method == "nnc"}) >= 3
    quick = suite.up_to("quick")
    assert 0 < len(quick) < len(suite.up_to("default")) <= len(suite.points)
    assert "fmnist-lenet5-aimet-ssvd-0.5" in ids


def test_calibration_list_is_training_data_with_a_pinned_hash():
    spec = load_suite().calibration["fashion-mnist"]
    assert spec.split == "train" and len(spec.indices) == 1000 and len(set(spec.indices)) == 1000
    with pytest.raises(SuiteError, match="test split"):
        CalibrationSpec("fashion-mnist", "test", (1, 2), "rule")
    with pytest.raises(SuiteError, match="duplicate"):
        CalibrationSpec("fashion-mnist", "train", (1, 1), "rule")


def _manifest(**group):
    return {"suite": {"fmnist-lenet5": [group]}}


@pytest.mark.parametrize("data,words", [
    (_manifest(method="no-such-method"), "no compressor named 'no-such-method'"),
    (_manifest(method="nnc", points=[{"label": "a", "qp": 10}]), "points[0]: nnc: qp=10"),
    (_manifest(method="nnc", points=[{"label": "a", "run_tier": "nightly"}]), "run_tier: 'nightly'"),
    (_manifest(method="nnc", points=[{"label": "a"}, {"label": "a"}]), "duplicate case id"),
    (_manifest(method="nnc", colour="red"), "unknown key(s) ['colour']"),
    ({"calibration": {"fashion-mnist": {"split": "train", "indices": [1, 2], "rule": "r",
                                        "index_sha256": "0" * 64}}}, "the list was edited"),
])
def test_suite_errors_name_the_table_and_field(data, words):
    with pytest.raises(SuiteError) as info:
        parse_suite(data, "compression.toml")
    assert words in str(info.value)
