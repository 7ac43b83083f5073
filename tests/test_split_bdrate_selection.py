"""Self-tests of BD-rate, split selection, the KPI check and the split manifest."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnconform.split import bd_quality, bd_rate, end_to_end, load_split_manifest, select_split, upper_envelope
from nnconform.split.manifest import (ComputeProfile, Kpi, LinkProfile, SplitManifestError, parse_split_manifest)
from nnconform.split.runs import auto_cuts, coded_cases, coded_cuts
from nnconform.split.selection import DEVICE_ONLY, SERVER_ONLY, Candidate, bounds

curves = st.lists(st.tuples(st.floats(10, 1e6), st.floats(0.05, 0.99)), min_size=2, max_size=8)


def monotone(n_points: int, seed: float):
    """A strictly increasing rate-accuracy curve."""
    return [(100 * 2**i * (1 + seed), 0.5 + 0.4 * (1 - 0.6**i)) for i in range(n_points)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), seed=st.floats(0, 1), factor=st.floats(0.05, 20))
def test_scaled_rates_give_exact_bd_rate(n, seed, factor):
    anchor = monotone(n, seed)
    test = [(r * factor, q) for r, q in anchor]
    result = bd_rate(anchor, test)
    assert result.value == pytest.approx(factor - 1, rel=1e-9, abs=1e-12)
    assert bd_rate(anchor, anchor).value == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(points=curves)
def test_upper_envelope_is_strictly_increasing(points):
    env = upper_envelope(points)
    assert all(r1 < r2 and q1 < q2 for (r1, q1), (r2, q2) in zip(env, env[1:]))
    assert set(env) <= {(float(r), float(q)) for r, q in points}
    if env:
        assert env[-1][1] == max(q for _, q in points)


def test_saturated_and_noisy_points_are_dropped():
    anchor = [(100, 0.6), (200, 0.8), (400, 0.9), (800, 0.89), (1600, 0.9)]
    assert upper_envelope(anchor) == [(100, 0.6), (200, 0.8), (400, 0.9)]


def test_undefined_bd_rate_says_why():
    one_point = bd_rate([(100, 0.5), (200, 0.6)], [(100, 0.55)])
    assert one_point.value is None and "test has 1" in one_point.reason
    disjoint = bd_rate([(100, 0.5), (200, 0.6)], [(100, 0.7), (200, 0.8)])
    assert disjoint.value is None and "do not overlap" in disjoint.reason
    assert bd_rate([(0, 0.5), (math.inf, 0.6)], [(1, 0.5), (2, 0.6)]).value is None


def test_better_codec_has_negative_bd_rate_and_positive_bd_quality():
    anchor = monotone(4, 0)
    better = [(r * 0.7, min(q + 0.01, 0.99)) for r, q in anchor]
    assert bd_rate(anchor, better).value < -0.3
    assert bd_quality(anchor, better) > 0


DEVICE, SERVER = ComputeProfile("d", 4.0), ComputeProfile("s", 0.1)
LINK = LinkProfile("l", uplink_mbps=8.0, latency_ms=10.0)


def test_end_to_end_latency_arithmetic():
    c = Candidate("layer2", "uq8", 1000.0, head_s=0.01, encode_s=0.002, decode_s=0.003, tail_s=0.02,
                  tiers_met=frozenset({"99%"}))
    lat = end_to_end(c, DEVICE, SERVER, LINK)
    assert lat.device_s == pytest.approx(0.048)
    assert lat.link_s == pytest.approx(1000 * 8 / 8e6 + 0.010)
    assert lat.server_s == pytest.approx(0.0023)
    assert lat.total_s == pytest.approx(0.048 + 0.011 + 0.0023)


def test_selection_respects_the_accuracy_tier_and_the_bounds():
    fast_but_lossy = Candidate("layer3", "uq2", 10.0, 0.001, 0.0, 0.0, 0.001, frozenset())
    good = Candidate("layer2", "uq8", 5000.0, 0.002, 0.001, 0.001, 0.001, frozenset({"99%", "99.9%"}))
    cands = [fast_but_lossy, good, *bounds(0.05, 3 * 224 * 224, ["transparent", "99.9%", "99%"])]
    sel = select_split(cands, DEVICE, SERVER, LINK, "99%")
    assert sel.best.candidate is good
    assert [x.candidate for x in sel.rejected] == [fast_but_lossy]
    device_only = next(x for x in sel.ranked if x.candidate.cut == DEVICE_ONLY)
    assert device_only.link_s == 0 and device_only.total_s == pytest.approx(0.2)
    server_only = next(x for x in sel.ranked if x.candidate.cut == SERVER_ONLY)
    assert server_only.device_s == 0 and server_only.candidate.payload_bytes == 3 * 224 * 224
    slow_link = LinkProfile("slow", uplink_mbps=0.01, latency_ms=100)
    assert select_split(cands, DEVICE, SERVER, slow_link, "99%").best.candidate.cut == DEVICE_ONLY


def test_ts22261_kpi_boundary():
    kpi = load_split_manifest().kpis["ts22261-split-image-recognition"]
    assert kpi.transfer_ms(270_000) == pytest.approx(15.0)
    assert kpi.met_by(270_000) and not kpi.met_by(270_001)
    assert Kpi("k", "", 1000, 8.0, 0.5).met_by(500) and not Kpi("k", "", 1000, 8.0, 0.5).met_by(600)


def test_shipped_manifest():
    m = load_split_manifest()
    assert m.anchor_family == "uq-per-tensor"
    ids = [p.id for p in m.points]
    assert len(ids) == len(set(ids))
    for p in m.points:
        p.build()  # every operating point names a registered codec with valid parameters
    anchor_bits = sorted(p.kwargs["bits"] for p in m.families["uq-per-tensor"])
    assert anchor_bits == [2, 4, 6, 8]
    webp, jpeg = m.families["webp"], m.families["jpeg"]
    assert len(webp) >= 3 and len(jpeg) >= 3
    assert {p.id for p in m.points_for("quick")} < {p.id for p in m.points_for("default")}
    assert m.cuts_for("fmnist-resnet8", "quick") == ("layer2",)
    assert m.cuts_for("fmnist-resnet8", "full") is None


def test_cases_per_tier_and_readable_ids():
    m = load_split_manifest()
    quick = coded_cases(m, "fmnist-resnet8", "quick")
    assert {c.cut for c in quick} == {"layer2"} and all(c.tier == "quick" for c in quick)
    assert "fmnist-resnet8-layer2-uq8-per-channel" in {c.id for c in quick}
    default = coded_cases(m, "fmnist-resnet8", "default")
    assert {c.tier for c in default if c.cut == "layer1"} == {"default"}
    with pytest.raises(ValueError, match="pass the graph"):
        coded_cuts(m, "fmnist-resnet8", "full")


def test_auto_cuts_are_spread_over_spatial_cuts():
    from nnconform.split import SplitGraph
    from nnconform.zoo import build_architecture

    g = SplitGraph.trace(build_architecture("mobilenetv2_small").eval(), (1, 28, 28))
    picks = auto_cuts(g, 3)
    assert len(picks) == 3 and all(len(g.cut(p).shapes[0]) == 3 for p in picks)
    order = [c.name for c in g.cuts]
    assert [order.index(p) for p in picks] == sorted(order.index(p) for p in picks)


BASE = {
    "version": 1,
    "run": {t: {"samples": 10, "stats_samples": 5, "batch_size": 5, "timing_rounds": 1, "identity": "all",
                "onnx": "coded"} for t in ("quick", "default", "full")},
    "families": {"uq": {"codec": "uniform", "anchor": True, "points": [{"id": "uq8", "bits": 8}]}},
}


def _with(**changes):
    import copy

    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("raw, match", [
    (_with(version="1"), r"split.toml.version: expected int"),
    (_with(run__quick__onnx="some"), r"run.quick.onnx: 'some' is not one of"),
    (_with(families__uq__anchor=False), "exactly one family must have `anchor = true`"),
    (_with(families__uq__points=[{"id": "a", "bits": 8}, {"id": "a", "bits": 4}]), "duplicate operating point id 'a'"),
    (_with(families__uq__points=[{"id": "a", "claim": "99.5%"}]), "claim '99.5%' is not an accuracy tier"),
    (_with(families__uq__points=[{"id": "a", "tier": "nightly"}]), "tier 'nightly' is not one of"),
    (_with(scenarios=[{"name": "s", "device": "phone", "server": "x", "link": "y", "tier": "99%"}]),
     "unknown profile 'phone'"),
    (_with(cuts__a__weekly=["x"]), "cuts.a.weekly: expected a tier name"),
])
def test_bad_manifest_names_the_field(raw, match):
    with pytest.raises(SplitManifestError, match=match):
        parse_split_manifest(raw)


def test_bad_profiles_name_the_value():
    with pytest.raises(SplitManifestError, match="speed_factor must be > 0, got 0"):
        ComputeProfile("x", 0)
    with pytest.raises(SplitManifestError, match="uplink_mbps must be > 0"):
        LinkProfile("x", 0)


def test_samples_per_dataset():
    m = load_split_manifest()
    assert m.run("quick").samples_for("fashion-mnist") == 500
    assert m.run("full").samples_for("imagenet-1k") == 0
    with pytest.raises(SplitManifestError, match="no entry for dataset 'cifar10'"):
        m.run("quick").samples_for("cifar10")
    with pytest.raises(SplitManifestError, match="samples >= 0"):
        parse_split_manifest(_with(run__quick__samples={"fashion-mnist": -1}))
