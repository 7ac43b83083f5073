"""The update plan (anchors/updates.toml), lineage pairs and rate-accuracy curves."""

from __future__ import annotations

import json

import pytest

from nnconform import kit
from nnconform.anchors import all_anchors
from nnconform.updates.curves import curves_from_points, plot_trajectory
from nnconform.updates.plan import (PLAN_VERSION, PlanError, UpdatePoint, lineage_pairs, lineages, load_plan)


def test_repository_plan_is_valid_and_covers_every_reference_codec():
    plan = load_plan()
    codecs = {p.codec for p in plan.points}
    assert {"full", "zstd-delta", "topk", "quant", "nnc"} <= codecs
    assert plan.pair_run_tier("latest") == "quick" and plan.pair_run_tier("span") == "default"
    assert plan.pair_run_tier("consecutive") == "full"
    labels = [p.label for p in plan.points]
    assert len(labels) == len(set(labels))
    for p in plan.points:
        assert isinstance(p, kit.OperatingPoint) and p.run_tier in kit.RUN_TIERS
        if p.codec in ("full", "zstd-delta"):  # lossless points claim the strictest tier on every pair
            assert p.claim_for("span") == p.claim_for("latest") == "transparent"
    # the quick tier covers one point of each codec
    assert {p.codec for p in plan.points if p.run_tier == "quick"} == codecs


def test_run_tiers_and_claims_of_the_repository_plan_are_those_of_version_1():
    """Version 2 renamed ``claim`` to ``claimed_tier`` and writes every run tier: nothing may have moved."""
    points = {p.label: p for p in load_plan().points}
    run_tiers = {"full": "quick", "full-zstd19": "default", "zstd-delta": "quick", "quant-8": "quick",
                 "quant-4": "default", "quant-2": "full", "topk-0.001": "default", "topk-0.01": "quick",
                 "topk-0.05": "default", "topk-0.2": "full", "nnc-qp38": "default", "nnc-qp32": "quick",
                 "nnc-qp26": "default", "nnc-qp20": "full"}
    assert {k: p.run_tier for k, p in points.items()} == run_tiers
    latest_only = {"quant-4", "quant-2", "topk-0.001", "topk-0.01", "topk-0.05", "topk-0.2", "nnc-qp20"}
    for label, p in points.items():
        expected = "transparent" if p.codec in ("full", "zstd-delta") else "99%"
        assert p.claim_for("latest") == expected
        assert p.claim_for("span") == (None if label in latest_only else expected), label


def test_every_lineage_has_a_latest_pair():
    lineages = {n: a for n, a in all_anchors().items() if len(a.checkpoints) >= 2}
    assert "tv-resnet50-v1" in lineages and "fmnist-lenet5" in lineages
    for name, anchor in lineages.items():
        pairs = lineage_pairs(name, [c.name for c in anchor.checkpoints])
        assert [p.kind for p in pairs].count("latest") == 1


def test_lineage_pairs_of_a_zoo_lineage():
    pairs = lineage_pairs("fmnist-resnet8", ["epoch1", "epoch2", "epoch3", "finetune"])
    assert [(p.base, p.target, p.kind) for p in pairs] == [
        ("epoch1", "epoch2", "consecutive"), ("epoch2", "epoch3", "consecutive"),
        ("epoch3", "finetune", "latest"), ("epoch1", "finetune", "span")]
    assert pairs[2].id == "fmnist-resnet8-epoch3-finetune"


def test_two_checkpoint_lineage_has_no_separate_span():
    pairs = lineage_pairs("tv-resnet50-v1", ["IMAGENET1K_V1", "IMAGENET1K_V2"])
    assert [(p.id, p.kind) for p in pairs] == [("tv-resnet50-v1-IMAGENET1K_V1-IMAGENET1K_V2", "latest")]


def test_duplicate_checkpoints_are_refused():
    with pytest.raises(ValueError, match="duplicate checkpoint names"):
        lineage_pairs("a", ["e1", "e1"])


LINEAGES = {"small": ("e1", "e2"), "big": ("e1", "e2", "e3")}
POINT = """
[[points]]
codec = "topk"
params = { fraction = 0.01 }
claimed_tier = "99%"
run_tier = "quick"
"""


def _plan(tmp_path, text: str, *, version: int = PLAN_VERSION):
    path = tmp_path / "updates.toml"
    path.write_text(f"version = {version}\n" + text)
    from nnconform.updates.plan import parse_plan

    root = kit.read_plan("updates", path, version=PLAN_VERSION, tables=("pairs", "points", "benchmark"))
    return parse_plan(root, known_lineages=LINEAGES)


PAIRS = '[pairs]\nquick = ["latest"]\n'


@pytest.mark.parametrize("text,match", [
    # the version 1 layout is refused by name
    ("", None),
    # a misspelt table, run tier or pair kind
    (PAIRS + "[benchmarks]\nrounds = 3\n", r"unknown key\(s\) 'benchmarks'; did you mean 'benchmark'\?"),
    ('[pairs]\nnightly = ["latest"]\n', r"pairs: unknown key\(s\) 'nightly'"),
    ('[pairs]\nquick = ["lates"]\n', r"pairs.quick\[0\]: 'lates' is not a pair kind; did you mean 'latest'\?"),
    ('[pairs]\nquick = "latest"\n', r"pairs.quick: expected an array, got 'latest'"),
    # quick_eval_lineages: an unknown name is refused, never silently dropping its cases
    (PAIRS + 'quick_eval_lineages = ["smal"]\n',
     r"pairs.quick_eval_lineages\[0\]: 'smal' is not an anchor with a lineage .*did you mean 'small'\?"),
    (PAIRS + 'quick_eval_lineages = "small"\n', r"pairs.quick_eval_lineages: expected an array, got 'small'"),
    # points: claims, run tiers, codecs, params, keys
    (PAIRS + POINT.replace('"99%"', '"98%"'), r"points\[0\].claimed_tier: '98%' is not an accuracy tier"),
    (PAIRS + POINT.replace('"99%"', '{ sideways = "99%" }'),
     r"points\[0\].claimed_tier: unknown key\(s\) 'sideways'"),
    (PAIRS + POINT.replace('"99%"', '{ lates = "99%", "*" = "none" }'),
     r"points\[0\].claimed_tier: unknown key\(s\) 'lates'; did you mean 'latest'\?"),
    (PAIRS + POINT.replace('"99%"', '0.99'), r"points\[0\].claimed_tier: expected a string, got 0.99"),
    (PAIRS + POINT.replace('claimed_tier = "99%"\n', ""), r"points\[0\]: missing 'claimed_tier'"),
    (PAIRS + POINT.replace('"quick"', '"nightly"'), r"points\[0\].run_tier: 'nightly' is not a run tier"),
    (PAIRS + POINT.replace('run_tier = "quick"\n', ""), r"points\[0\]: missing 'run_tier'"),
    (PAIRS + POINT.replace('"topk"', '"topkk"'), r"points\[0\].codec: no update codec 'topkk' .*did you mean 'topk'\?"),
    (PAIRS + POINT.replace("0.01", "2.0"), r"points\[0\].params: topk: fraction=2.0 must be in \(0, 1\]"),
    (PAIRS + POINT.replace("0.01", '"0.01"'), r"points\[0\].params: topk: fraction='0.01' must be in"),
    (PAIRS + POINT.replace("fraction = 0.01", 'fraction = 0.01, dense_1d = "no"'),
     r"points\[0\].params: update codec 'topk': dense_1d='no' must be true or false"),
    (PAIRS + POINT + 'colour = "red"\n', r"points\[0\]: unknown key\(s\) 'colour'"),
    (PAIRS + POINT + 'tier = "default"\n', r"points\[0\]: unknown key\(s\) 'tier'; did you mean 'run_tier'\?"),
    (PAIRS + POINT + POINT, r"case id 'topk-0.01' is taken twice"),
    (PAIRS + POINT + 'label = 7\n', r"points\[0\].label: expected a string, got 7"),
    # benchmark rounds
    (PAIRS + POINT + "[benchmark]\nrounds = 0\n", r"benchmark.rounds: must be >= 1, got 0"),
    (PAIRS + POINT + '[benchmark]\nrounds = "3"\n', r"benchmark.rounds: expected an integer, got '3'"),
    (PAIRS, r"updates.toml: missing 'points'"),
])
def test_bad_plans_name_the_file_and_field(tmp_path, text, match):
    if match is None:  # the version-1 layout
        with pytest.raises(PlanError, match=r"updates.toml: version = 1; this nnconform reads updates plans of version 2"):
            _plan(tmp_path, PAIRS + POINT.replace("claimed_tier", "claim"), version=1)
        return
    with pytest.raises(PlanError, match=match) as info:
        _plan(tmp_path, text)
    assert str(tmp_path / "updates.toml") in str(info.value)


def test_claims_per_pair_kind(tmp_path):
    plan = _plan(tmp_path, PAIRS + POINT.replace('"99%"', '{ latest = "99%", "*" = "none" }'))
    point = plan.points[0]
    assert point.label == "topk-0.01" and point.claimed_tier is None and dict(point.pair_claims) == {"latest": "99%"}
    assert point.claim_for("latest") == "99%" and point.claim_for("span") is None
    plan = _plan(tmp_path, PAIRS + POINT.replace('"99%"', '{ span = "none", "*" = "99%" }'))
    assert plan.points[0].claim_for("span") is None and plan.points[0].claim_for("consecutive") == "99%"


def test_a_point_refuses_a_bad_pair_claim():
    with pytest.raises(kit.PointError, match="pair_claims: 'sideways' is not a pair kind"):
        UpdatePoint("topk", {}, pair_claims={"sideways": "99%"})
    with pytest.raises(kit.PointError, match="pair_claims.latest: '98%' is not an accuracy tier"):
        UpdatePoint("topk", {}, pair_claims={"latest": "98%"})


def test_curves_group_sort_and_go_through_the_kit(tmp_path):
    rows = [
        {"pair": "p", "codec": "topk", "label": "topk-0.1", "bytes": 900, "ratio_to_full": 0.9, "top1": 0.88,
         "agreement": 0.99, "delta_vs_target": 0.0},
        {"pair": "p", "codec": "topk", "label": "topk-0.01", "bytes": 90, "ratio_to_full": 0.09, "top1": 0.85,
         "agreement": 0.95, "delta_vs_target": -0.03},
        {"pair": "p", "codec": "quant", "label": "quant-8", "bytes": 300, "ratio_to_full": 0.3, "top1": 0.88,
         "agreement": 1.0, "delta_vs_target": 0.0, "proposal": "acme"},
    ]
    curves = curves_from_points(rows)
    assert all(isinstance(c, kit.RateCurve) for c in curves)
    assert [c.name for c in curves] == ["p/quant", "p/topk"] and curves[0].proposal == "acme"
    assert curves[1].results["bytes"] == [90, 900] and curves[1].results["label"] == ["topk-0.01", "topk-0.1"]
    paths = kit.write_curves(curves, tmp_path)
    assert json.loads(paths[1].read_text())["results"]["top1"] == [0.85, 0.88]
    assert kit.read_curves(tmp_path) == curves
    traj = plot_trajectory("a", [{"checkpoint": "e1", "top1": 0.8, "ci95": [0.79, 0.81]},
                                 {"checkpoint": "e2", "top1": 0.85, "ci95": [0.84, 0.86]}], tmp_path / "t.png")
    assert traj.stat().st_size > 1000


def test_quick_tier_evaluates_only_the_listed_lineages(tmp_path):
    plan = _plan(tmp_path, PAIRS + 'quick_eval_lineages = ["small"]\n' + POINT)
    assert plan.eval_run_tier("small", "quick") == "quick"
    assert plan.eval_run_tier("big", "quick") == "default"
    assert plan.eval_run_tier("big", "full") == "full"
    assert load_plan().quick_eval_lineages == ("fmnist-lenet5",)
    assert set(load_plan().quick_eval_lineages) <= set(lineages())


def test_registered_codecs_join_the_plan_with_a_default_point():
    from dataclasses import dataclass

    from nnconform.updates import UPDATE_CODECS

    @kit.register_method("update-codec", "test-proposal")
    class ProposalCodec:
        lossless = False
        claimed_tier = "99%"

        @dataclass(frozen=True)
        class Config(kit.MethodConfig):
            """No parameters."""

    try:
        points = {p.label: p for p in load_plan().with_proposals().points}
        assert points["test-proposal"].claim_for("span") == "99%" and points["test-proposal"].run_tier == "quick"
        assert "full" in points and len([p for p in points.values() if p.codec == "topk"]) == 4
    finally:
        UPDATE_CODECS.unregister("test-proposal")
    assert "test-proposal" not in {p.label for p in load_plan().with_proposals().points}


def test_a_proposal_point_may_not_take_a_plan_label():
    taken = UpdatePoint("topk", {"fraction": 0.01}, proposal="acme")
    with pytest.raises(kit.PointError, match=r"case id 'topk-0.01' is taken twice \(the plan file and proposal 'acme'\)"):
        load_plan().with_proposals([taken])
