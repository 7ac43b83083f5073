import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from nnconform.gates import best_tier_met, get_tier, load_tiers, non_inferiority
from nnconform.stats import (mcnemar_exact, mean_kl_divergence, paired_comparison, top1_agreement,
                             worst_class_drop)


def _vectors(n, acc, flips, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.random(n) < acc
    new = ref.copy()
    idx = np.flatnonzero(ref)[:flips]
    new[idx] = False
    return ref, new


def test_identical_models_meet_every_tier():
    ref, _ = _vectors(10_000, 0.9, 0)
    comp = paired_comparison(ref, ref)
    assert comp.delta == 0 and comp.delta_ci95 == (0.0, 0.0) and comp.mcnemar_p == 1.0
    assert best_tier_met(comp) == "transparent"
    for tier in load_tiers():
        assert non_inferiority(ref, ref, tier).passed


def test_planted_two_percent_drop_fails_every_tier():
    ref, new = _vectors(10_000, 0.9, 200)  # 2 points lost, none gained
    for tier in load_tiers():
        result = non_inferiority(ref, new, tier)
        assert not result.passed, tier
        assert "exceeds" in result.reason
    assert best_tier_met(paired_comparison(ref, new)) is None


def test_small_drop_passes_99_but_not_transparent():
    ref, new = _vectors(10_000, 0.9, 20)  # 0.2 points lost: significant (McNemar p < 0.05)
    comp = paired_comparison(ref, new)
    assert comp.mcnemar_p < 0.05
    assert non_inferiority(ref, new, "99%").passed
    assert not non_inferiority(ref, new, "transparent").passed


def test_mcnemar_matches_known_value():
    # b=10, c=0: p = 2 * 0.5**10
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5 ** 10)


def test_unknown_tier_names_valid_ones():
    with pytest.raises(KeyError, match="valid tiers"):
        get_tier("99.99%")


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_interval_brackets_delta_and_is_reproducible(pairs):
    ref = np.array([p[0] for p in pairs])
    new = np.array([p[1] for p in pairs])
    a, b = paired_comparison(ref, new), paired_comparison(ref, new)
    assert a == b
    lo, hi = a.delta_ci95
    assert -1 <= lo <= hi <= 1
    assert a.ref_only + a.new_only <= a.n
    assert a.delta == pytest.approx((a.new_only - a.ref_only) / a.n)


def test_agreement_kl_and_worst_class():
    ref = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert top1_agreement(ref, ref) == 1.0 and mean_kl_divergence(ref, ref) == pytest.approx(0.0, abs=1e-12)
    flipped = ref.flip(1)
    assert top1_agreement(ref, flipped) == 0.0 and mean_kl_divergence(ref, flipped) > 0.5
    labels = np.array([0, 1, 0])
    k, drop = worst_class_drop([True, True, True], [False, True, True], labels, 2)
    assert (k, drop) == (0, 0.5)
