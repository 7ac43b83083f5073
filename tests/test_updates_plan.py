"""The update plan (anchors/updates.toml), lineage pairs and rate-accuracy curves."""

from __future__ import annotations

import json

import pytest

from nnconform.anchors import all_anchors
from nnconform.updates.curves import (RateCurve, curves_from_points, plot_rate_accuracy, plot_trajectory,
                                      read_curves, write_curves)
from nnconform.updates.plan import (PlanError, lineage_pairs, load_plan, parse_plan)

TIERS = {"transparent", "99.9%", "99%"}


def test_repository_plan_is_valid_and_covers_every_reference_codec():
    plan = load_plan()
    codecs = {p.codec for p in plan.points}
    assert {"full", "zstd-delta", "topk", "quant", "nnc"} <= codecs
    assert plan.pair_run_tier("latest") == "quick" and plan.pair_run_tier("span") == "default"
    assert plan.pair_run_tier("consecutive") == "full"
    labels = [p.label for p in plan.points]
    assert len(labels) == len(set(labels))
    # lossless points claim the strictest tier; every claim names a real tier
    for p in plan.points:
        for claim in p.claims.values():
            assert claim in TIERS | {"none"}
        if p.codec in ("full", "zstd-delta"):
            assert p.claim_for("span") == "transparent"
    # the quick tier covers one point of each codec
    assert {p.codec for p in plan.points if p.run_tier == "quick"} == codecs


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


def _doc(**point):
    return {"version": 1, "pairs": {"quick": ["latest"]}, "points": [{"codec": "topk", **point}]}


@pytest.mark.parametrize("doc,match", [
    ({"version": 2}, r"version = 2; this reader understands version 1"),
    ({"version": 1, "pairs": {"nightly": ["latest"]}}, r"pairs.nightly: not a run tier"),
    ({"version": 1, "pairs": {"quick": ["newest"]}}, r"unknown pair kind\(s\) \['newest'\]"),
    (_doc(claim="98%"), r"claim: '98%' is not an accuracy tier"),
    (_doc(claim={"sideways": "99%"}), r"pair kind 'sideways' is not one of"),
    (_doc(run_tier="nightly"), r"run_tier: 'nightly' is not one of"),
    (_doc(params={"fraction": 2.0}), r"points\[0\]: update codec 'topk': fraction=2.0"),
    (_doc(colour="red"), r"unknown field\(s\) \['colour'\]"),
    ({"version": 1, "points": [{"params": {}}]}, r"missing field 'codec'"),
    ({"version": 1, "points": [{"codec": "full"}, {"codec": "full"}]}, r"duplicate operating point label\(s\) \['full'\]"),
])
def test_bad_plans_name_the_field(doc, match):
    with pytest.raises(PlanError, match=match):
        parse_plan(doc, "updates.toml", accuracy_tiers=TIERS)


def test_claims_per_pair_kind():
    plan = parse_plan(_doc(params={"fraction": 0.01}, claim={"latest": "99%", "*": "none"}), "x", accuracy_tiers=TIERS)
    point = plan.points[0]
    assert point.label == "topk-0.01"
    assert point.claim_for("latest") == "99%" and point.claim_for("span") is None


def test_curves_group_sort_and_round_trip(tmp_path):
    rows = [
        {"pair": "p", "codec": "topk", "label": "topk-0.1", "bytes": 900, "ratio_to_full": 0.9, "top1": 0.88,
         "agreement": 0.99, "delta_vs_target": 0.0},
        {"pair": "p", "codec": "topk", "label": "topk-0.01", "bytes": 90, "ratio_to_full": 0.09, "top1": 0.85,
         "agreement": 0.95, "delta_vs_target": -0.03},
        {"pair": "p", "codec": "quant", "label": "quant-8", "bytes": 300, "ratio_to_full": 0.3, "top1": 0.88,
         "agreement": 1.0, "delta_vs_target": 0.0},
    ]
    curves = curves_from_points(rows)
    assert [c.name for c in curves] == ["p/quant", "p/topk"]
    assert curves[1].results["bytes"] == [90, 900] and curves[1].results["label"] == ["topk-0.01", "topk-0.1"]
    paths = write_curves(curves, tmp_path)
    assert json.loads(paths[1].read_text())["results"]["top1"] == [0.85, 0.88]
    assert read_curves(tmp_path) == curves
    png = plot_rate_accuracy(curves, tmp_path / "p.png", target_top1=0.88, full_bytes=1000)
    assert png.stat().st_size > 1000
    traj = plot_trajectory("a", [{"checkpoint": "e1", "top1": 0.8, "ci95": [0.79, 0.81]},
                                 {"checkpoint": "e2", "top1": 0.85, "ci95": [0.84, 0.86]}], tmp_path / "t.png")
    assert traj.stat().st_size > 1000


def test_malformed_curve_is_refused():
    with pytest.raises(ValueError, match="different lengths"):
        RateCurve.from_dict({"name": "x", "results": {"bytes": [1, 2], "top1": [0.5]}})
    with pytest.raises(ValueError, match="needs a string 'name'"):
        RateCurve.from_dict({"results": {}})


def test_quick_tier_evaluates_only_the_listed_lineages():
    plan = parse_plan({"version": 1, "pairs": {"quick": ["latest"], "quick_eval_lineages": ["small"]}}, "x",
                      accuracy_tiers=TIERS)
    assert plan.eval_run_tier("small", "quick") == "quick"
    assert plan.eval_run_tier("big", "quick") == "default"
    assert plan.eval_run_tier("big", "full") == "full"
    assert load_plan().quick_eval_lineages == ("fmnist-lenet5",)
    with pytest.raises(PlanError, match="quick_eval_lineages must be a list of anchor names"):
        parse_plan({"version": 1, "pairs": {"quick_eval_lineages": "small"}}, "x", accuracy_tiers=TIERS)


def test_registered_proposal_codecs_join_the_plan():
    from nnconform.updates import UPDATE_CODECS

    class ProposalCodec:
        name = "test-proposal"
        lossless = False
        claim = "99%"

    UPDATE_CODECS.register("test-proposal", ProposalCodec)
    try:
        points = {p.label: p for p in load_plan().points_with_proposals()}
        assert points["test-proposal"].claim_for("span") == "99%" and points["test-proposal"].run_tier == "quick"
        assert "full" in points and len([p for p in points.values() if p.codec == "topk"]) == 4
    finally:
        UPDATE_CODECS.unregister("test-proposal")
    assert "test-proposal" not in {p.label for p in load_plan().points_with_proposals()}
