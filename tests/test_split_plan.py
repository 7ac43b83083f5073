"""Self-tests of the split plan (``anchors/split.toml`` v2 on the criterion kit), the committed cut catalogue and
case derivation without tracing: every bad value is refused at load naming the file and field."""

from __future__ import annotations

import copy

import pytest

from nnconform import kit
from nnconform.kit import PlanError, Table
from nnconform.split import catalogue
from nnconform.split.catalogue import CatalogueEntry, format_catalogue, parse_catalogue
from nnconform.split.checks import check_catalogue_current
from nnconform.split.plan import SplitPoint, load_plan, parse_plan
from nnconform.split.runs import auto_cuts, coded_cases, coded_cuts

BASE = {
    "run": {t: {"samples": 10, "stats_samples": 5, "batch_size": 5, "timing_rounds": 1, "identity": "all",
                "onnx": "coded"} for t in ("quick", "default", "full")},
    "families": {"uq": {"codec": "uniform", "anchor": True, "points": [{"label": "uq8", "bits": 8}]}},
}


def _with(**changes) -> dict:
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def _parse(raw):
    return parse_plan(Table(raw, "split.toml"))


def test_shipped_plan():
    plan = load_plan()
    assert plan.anchor_family == "uq-per-tensor"
    assert all(isinstance(p, SplitPoint) and isinstance(p, kit.OperatingPoint) for p in plan.points)
    for p in plan.points:
        p.build()  # every operating point names a registered codec with valid parameters
    assert sorted(p.kwargs["bits"] for p in plan.families["uq-per-tensor"]) == [2, 4, 6, 8]
    assert plan.cuts_for("fmnist-resnet8", "quick") == ("layer2",)
    assert plan.cuts_for("fmnist-resnet8", "full") is None
    assert plan.run("quick").samples_for("fashion-mnist") == 500
    with pytest.raises(PlanError, match="no entry for dataset 'cifar10'"):
        plan.run("quick").samples_for("cifar10")


def test_run_tiers_and_claims_are_as_before_the_kit():
    """Every point keeps its effective run tier and accuracy claim (plan v1 had `tier` and `claim`)."""
    plan = load_plan()
    default_only = {"uq6-per-tensor", "uq6-per-channel", "topk-0.5", "topk-0.25", "topk-0.1", "topk-0.05", "png16",
                    "webp-q90", "webp-q50", "webp-q25", "jpeg-q95", "jpeg-q50", "jpeg-q25"}
    assert {p.label: p.run_tier for p in plan.points} == {
        p.label: ("default" if p.label in default_only else "quick") for p in plan.points}
    claims = {p.label: p.claimed_tier for p in plan.points if p.claimed_tier}
    assert claims == {"raw": "transparent", "fp16": "99.9%", "uq8-per-tensor": "99%", "uq8-per-channel": "99%",
                      "png16": "99.9%", "png8": "99%"}
    assert [p.label for p in plan.points if p.lossless] == ["raw"]


def test_old_plan_version_is_refused_by_name(tmp_path):
    path = tmp_path / "split.toml"
    path.write_text("version = 1\n")
    with pytest.raises(PlanError, match=r"split.toml: version = 1; this nnconform reads split plans of version 2"):
        load_plan(path)


@pytest.mark.parametrize("raw, match", [
    (_with(families__uq__points=[{"label": "a", "bits": 8, "tier": "default"}]),
     r"families.uq.points\[0\]: unknown key\(s\) 'tier' \(did you mean 'run_tier'\?\)"),
    (_with(families__uq__points=[{"label": "a", "bits": 8, "claim": "99%"}]), r"'claim' \(did you mean 'claimed_tier'"),
    (_with(families__uq__points=[{"label": "a", "bitz": 8}]), r"points\[0\]: unknown key\(s\) 'bitz' \(did you mean 'bits'"),
    (_with(families__uq__points=[{"id": "a", "bits": 8}]), r"points\[0\]: missing 'label'"),
    (_with(families__uq__points=[{"label": "a", "bits": "8"}]), r"points\[0\]: uniform: bits must be an integer"),
    (_with(families__uq__points=[{"label": "a", "lossless": "no"}]),
     r"points\[0\].lossless: expected true or false, got 'no'"),
    (_with(families__uq__points=[{"label": "a", "claimed_tier": "99.5%"}]), "'99.5%' is not an accuracy tier"),
    (_with(families__uq__points=[{"label": "a", "run_tier": "nightly"}]), "'nightly' is not a run tier"),
    (_with(families__uq__points=[{"label": "a", "bits": 8}, {"label": "a", "bits": 4}]), "families: case id 'a' is taken twice"),
    (_with(families__uq__params={"granularty": "per-channel"}), r"families.uq.params: unknown field\(s\) \['granularty'\]"),
    (_with(families__uq__codec="unifrom"), r"families.uq.codec: no feature codec named 'unifrom'; did you mean"),
    (_with(families__uq__anchor=False), "exactly one family must have `anchor = true`"),
    (_with(run__quick__onnx="some"), r"run.quick.onnx: must be one of"),
    (_with(run__quick__samples=-1), r"run.quick.samples: must be >= 0"),
    (_with(run__quick__samples={"fashion-mnist": "all"}), r"run.quick.samples.fashion-mnist: expected an integer"),
    (_with(run__weekly=dict(BASE["run"]["quick"])), r"run.weekly: 'weekly' is not a run tier"),
    (_with(resolutions={"fashion-mnist": [28, -56]}), r"resolutions.fashion-mnist: .*positive integers"),
    (_with(profiles={"device": {"d": {"speed_factor": "4"}}}), r"profiles.device.d.speed_factor: expected a number"),
    (_with(profiles={"device": {"d": {"speed_factor": -4.0}}}), r"profiles.device.d.speed_factor: must be > 0"),
    (_with(profiles={"link": {"l": {"uplink_mbps": 10.0, "latency_ms": -1}}}), r"latency_ms: must be >= 0"),
    (_with(scenarios=[{"name": "s", "device": "phone", "server": "x", "link": "y", "accuracy_tier": "99%"}]),
     r"scenarios\[0\].device: must be one of \[\]"),
    (_with(kpi={"k": {"source": "s", "payload_bytes": 10, "uplink_mbps": 1.0, "max_latency_ms": 1.0, "tier": "99%"}}),
     r"kpi.k: unknown key\(s\) 'tier'"),
    (_with(cuts={"a": {"weekly": ["x"]}}), r"cuts.a.weekly: 'weekly' is not a run tier with a cut list"),
    (_with(cuts={"a": {"quick": "layer2"}}), r"cuts.a.quick: expected an array"),
    (_with(familes={}), r"split.toml: unknown key\(s\) 'familes'; did you mean 'families'"),
])
def test_bad_plan_names_the_field(raw, match):
    with pytest.raises(PlanError, match=match):
        _parse(raw)


def test_proposal_points_join_and_a_taken_label_is_refused():
    plan = load_plan()
    mine = SplitPoint(label="acme-8", family="acme", codec="uniform", proposal="acme", run_tier="full")
    joined = plan.with_proposals([mine])
    assert joined.point("acme-8") is mine and mine in joined.points_for("quick")  # proposals run in every run tier
    with pytest.raises(kit.PointError, match="case id 'uq8-per-tensor' is taken twice"):
        plan.with_proposals([SplitPoint(label="uq8-per-tensor", family="acme", codec="uniform", proposal="acme")])
    with pytest.raises(kit.PointError, match="family 'png' is a family of the plan"):
        plan.with_proposals([SplitPoint(label="x", family="png", codec="uniform", proposal="acme")])


def test_cases_come_from_the_plan_and_catalogue_without_tracing(monkeypatch):
    from nnconform.split.cuts import SplitGraph

    def no_tracing(*args, **kwargs):
        raise AssertionError("collection traced a model")

    monkeypatch.setattr(SplitGraph, "trace", no_tracing)
    plan = load_plan()
    quick = coded_cases(plan, "fmnist-resnet8", "quick")
    assert {c.cut for c in quick} == {"layer2"} and all(c.run_tier == "quick" for c in quick)
    assert "fmnist-resnet8-layer2-uq8-per-channel" in {c.id for c in quick}
    assert {c.run_tier for c in coded_cases(plan, "fmnist-resnet8", "default") if c.cut == "layer1"} == {"default"}
    full = coded_cuts(plan, "fmnist-resnet8", "full")
    assert list(full) [:1] == ["layer2"] and set(catalogue.entry("fmnist-resnet8").single_names) <= set(full)
    assert {t for c, t in full.items() if c not in ("layer1", "layer2", "layer3")} == {"full"}


def test_anchor_without_a_cut_table_gets_spread_cuts_from_the_catalogue():
    entry = CatalogueEntry("toy", (1, 8, 8), tuple((f"c{i}", (4, 8, 8)) for i in range(9)) + (("fc", (10,)),))
    assert auto_cuts(entry.spatial_names, 4) == ("c2", "c4", "c6", "c8")
    plan = load_plan()
    cuts = coded_cuts(plan, "toy", "default", entry=lambda name: entry)
    assert cuts == {"c5": "quick", "c2": "default", "c4": "default", "c6": "default", "c8": "default"}


def test_committed_catalogue_is_current_for_a_zoo_anchor():
    """The committed file matches a fresh trace (the run-time case does the same for every anchor)."""
    for name in ("fmnist-lenet5", "fmnist-resnet8"):
        assert catalogue.entry(name).differences(catalogue.trace_entry(name)) == []


def test_stale_catalogue_fails_its_case():
    traced = catalogue.trace_entry("fmnist-lenet5")
    assert check_catalogue_current("fmnist-lenet5", traced, traced).passed
    renamed = CatalogueEntry(traced.anchor, traced.input_shape, (("features.99", (1, 1, 1)),) + traced.single[1:],
                             traced.multi)
    rec = check_catalogue_current("fmnist-lenet5", renamed, traced)
    assert not rec.passed and "features.99" in rec.message and catalogue.UPDATE_COMMAND in rec.message
    rec = check_catalogue_current("fmnist-lenet5", None, traced, "no entry for anchor 'fmnist-lenet5'")
    assert not rec.passed and "no entry" in rec.message


def test_catalogue_round_trips_and_bad_files_name_the_field(tmp_path):
    import tomllib

    entry = catalogue.trace_entry("fmnist-lenet5")
    text = format_catalogue([entry])
    assert parse_catalogue(tomllib.loads(text), "c.toml") == {"fmnist-lenet5": entry}
    with pytest.raises(PlanError, match="c.toml: version = 2"):
        parse_catalogue(tomllib.loads(text.replace("version = 1", "version = 2")), "c.toml")
    with pytest.raises(PlanError, match=r"single\[0\]: missing 'shape'"):
        parse_catalogue(tomllib.loads(text.replace(", shape =", ", shap =", 1)), "c.toml")
    path = tmp_path / "split-catalogue.toml"
    path.write_text(text)
    with pytest.raises(PlanError, match="no entry for anchor 'fmnist-resnet8'; add it with"):
        catalogue.entry("fmnist-resnet8", path)


def test_catalogue_cli_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    from nnconform.split.__main__ import main

    stale = catalogue.trace_entry("fmnist-lenet5")
    stale = CatalogueEntry(stale.anchor, stale.input_shape, stale.single[:-1], stale.multi)
    path = tmp_path / "split-catalogue.toml"
    path.write_text(format_catalogue([stale]))
    monkeypatch.setattr(catalogue, "catalogue_path", lambda: path)
    catalogue._load.cache_clear()
    try:
        assert main(["catalogue", "fmnist-lenet5"]) == 1
        assert "STALE" in capsys.readouterr().out
        assert main(["catalogue", "--update", "fmnist-lenet5"]) == 0
        assert main(["catalogue", "fmnist-lenet5"]) == 0
    finally:
        catalogue._load.cache_clear()


def test_every_split_check_id_is_registered_with_a_description():
    """The report explains each id from the catalogue (an unregistered id fails its record): every id the split
    checks record is registered, with a one-line description and a direction."""
    import inspect
    import re

    from nnconform.split import checks

    recorded = set(re.findall(r'"(split\.[a-z_]+)"', inspect.getsource(checks)))
    catalogue_ = kit.catalogue()
    assert len(recorded) >= 14 and recorded <= set(catalogue_), recorded - set(catalogue_)
    assert all(catalogue_[i].criterion == "split" and catalogue_[i].description for i in recorded)


def test_an_untraceable_anchor_is_recorded_with_its_reason_and_has_no_cuts(monkeypatch):
    """An architecture torch.fx cannot trace (a hub wav2vec2 checkpoint) gets a catalogue entry saying why, so the
    split criterion collects no coded cases for it instead of stopping collection; the reason round-trips through
    the file, and a traceable architecture's fresh trace differs from such an entry."""
    import tomllib

    import torch

    from nnconform.split import cuts

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow

    class FakeAnchor:
        input_shape = (1, 4)

        def build_architecture(self):
            return Branchy()

    monkeypatch.setattr("nnconform.anchors.get_anchor", lambda name: FakeAnchor())
    entry = catalogue.trace_entry("branchy")
    assert entry.single == () and entry.multi == ()
    assert "torch.fx cannot trace it" in entry.untraceable
    parsed = parse_catalogue(tomllib.loads(format_catalogue([entry])), "c.toml")["branchy"]
    assert parsed == entry
    traced = CatalogueEntry.from_graph("branchy", cuts.SplitGraph.trace(torch.nn.Sequential(torch.nn.Linear(4, 4)),
                                                                         (4,)))
    assert any("traceable" in d for d in entry.differences(traced))
