"""Self-tests of BD-rate, split selection and the KPI check (the plan: test_split_plan.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnconform.split import bd_quality, bd_rate, end_to_end, select_split, upper_envelope
from nnconform.split.plan import ComputeProfile, Kpi, LinkProfile, load_plan
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
    kpi = load_plan().kpis["ts22261-split-image-recognition"]
    assert kpi.transfer_ms(270_000) == pytest.approx(15.0)
    assert kpi.met_by(270_000) and not kpi.met_by(270_001)
    assert Kpi("k", "", 1000, 8.0, 0.5).met_by(500) and not Kpi("k", "", 1000, 8.0, 0.5).met_by(600)


def _study_with_latencies():
    """A small study (random ResNet-8, random data) and the latencies the selection case measures for it."""
    import torch

    from nnconform.split import SplitGraph, run_study
    from nnconform.split.plan import SplitPoint
    from nnconform.split.runs import measure_latencies, torch_threads
    from nnconform.zoo import build_architecture

    with torch_threads(1):
        torch.manual_seed(0)
        model = build_architecture("resnet8").eval()
        graph = SplitGraph.trace(model, (1, 28, 28))
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn((16, 1, 28, 28), generator=g), torch.randint(0, 10, (16,), generator=g))]
        points = [SplitPoint(label="raw", family="raw", codec="raw", lossless=True),
                  SplitPoint(label="uq8", family="uq", codec="uniform", params=(("bits", 8),))]
        study = run_study("toy", graph, data, coded={"layer2": points, "layer1": points[:1]})
        return study, measure_latencies(model, graph, study, data[0][0][:1], rounds=2)


def test_selection_measures_every_latency_it_needs_itself():
    """The selection case depends on no other case's timings: it measures what :func:`candidates` reads."""
    from nnconform.split.checks import candidates, check_selection
    from nnconform.split.plan import Scenario

    study, timings = _study_with_latencies()
    assert {"model", "layer1/head", "layer1/tail", "layer1/raw/encode", "layer2/uq8/decode"} <= set(timings)
    assert all(t > 0 for t in timings.values())
    cands = candidates(study, timings, 28 * 28)
    assert {c.label for c in cands} == {"layer1/raw", "layer2/raw", "layer2/uq8", DEVICE_ONLY, SERVER_ONLY}
    scenario = Scenario("s", DEVICE, SERVER, LINK, "99%")
    rec = check_selection("toy", scenario, study, cands)
    assert rec.passed, rec.message
    with pytest.raises(KeyError, match=r"no timings for \['layer2/uq8/decode'\]"):
        candidates(study, {k: v for k, v in timings.items() if k != "layer2/uq8/decode"}, 28 * 28)


def test_selection_gate_fails_a_choice_that_is_not_the_fastest(monkeypatch):
    from nnconform.split import checks
    from nnconform.split.plan import Scenario
    from nnconform.split.selection import Selection

    study, timings = _study_with_latencies()
    cands = checks.candidates(study, timings, 28 * 28)
    scenario = Scenario("s", DEVICE, SERVER, LINK, "99%")
    ranked = sorted((end_to_end(c, DEVICE, SERVER, LINK) for c in cands), key=lambda x: x.total_s)
    monkeypatch.setattr(checks, "select_split", lambda *a: Selection(ranked[-1], tuple(ranked[::-1]), (), "99%"))
    rec = checks.check_selection("toy", scenario, study, cands)
    assert not rec.passed and rec.measured > rec.expected
