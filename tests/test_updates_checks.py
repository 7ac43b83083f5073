"""Each gate of the model-update criterion passes on a good input and fails on a bad one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnconform.records import Status
from nnconform.updates import BaseMismatchError, apply_update, encode_update, make_codec
from nnconform.updates.checks import (check_lineage_accuracy, check_payload_safety, check_reconstruction,
                                      check_update_accuracy, comparison_record, tamper_cases)
from nnconform.updates.compare import compare_predictions, weight_changes
from nnconform.updates.payload import unpack_payload


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(64, generator=g), "n": torch.tensor(3)}
    target = {"w": base["w"] + 0.1 * torch.randn(64, generator=g), "n": torch.tensor(4)}
    return base, target


def _correct(n=10_000, acc=0.9, flips=0, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.random(n) < acc
    new = ref.copy()
    new[np.flatnonzero(ref)[:flips]] = False
    return ref, new


# -- lineage accuracy --------------------------------------------------------------------------------


def test_lineage_accuracy_passes_within_tolerance_and_fails_outside():
    assert check_lineage_accuracy("a/epoch1", 0.8821, 0.882, n=10_000, tolerance=0.003).status is Status.PASS
    bad = check_lineage_accuracy("a/epoch1", 0.87, 0.882, n=10_000, tolerance=0.003)
    assert bad.status is Status.FAIL and "diff -1.2000%" in bad.message
    assert check_lineage_accuracy("a/x", 0.5, None, n=10, tolerance=0.003).status is Status.INFO


# -- reconstruction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["full", "zstd-delta"])
def test_reconstruction_passes_for_lossless_codecs(codec):
    base, target = _pair()
    c = make_codec(codec)
    rec, state = check_reconstruction("s", c, base, target, encode_update(c, base, target))
    assert rec.status is Status.PASS and state is not None


def test_reconstruction_passes_for_lossy_codec_that_pins_its_output():
    base, target = _pair()
    c = make_codec("quant", {"bits": 4})
    rec, _ = check_reconstruction("s", c, base, target, encode_update(c, base, target))
    assert rec.status is Status.PASS and "pins" in rec.message


def test_reconstruction_fails_when_a_lossless_codec_is_not():
    """A lossy payload presented as the output of a lossless codec fails the bit-exact gate, naming the tensor."""
    base, target = _pair()
    payload = encode_update(make_codec("quant", {"bits": 2}), base, target)
    rec, _ = check_reconstruction("s", make_codec("zstd-delta"), base, target, payload)
    assert rec.status is Status.FAIL
    assert "w: " in rec.message and "element(s) differ" in rec.message


def test_reconstruction_fails_on_a_payload_for_another_base():
    base, target = _pair()
    other, _ = _pair(seed=5)
    c = make_codec("full")
    rec, state = check_reconstruction("s", c, base, target, encode_update(c, other, target))
    assert rec.status is Status.FAIL and "BaseMismatchError" in str(rec.measured) and state is None


# -- accuracy ----------------------------------------------------------------------------------------------


def test_accuracy_gate_passes_identical_predictions_at_the_strictest_tier():
    ref, _ = _correct()
    rec = check_update_accuracy("s", target_correct=ref, recon_correct=ref, claim="transparent", update_bytes=10,
                                full_bytes=1000, agreement=1.0)
    assert rec.status is Status.PASS
    assert rec.details["ratio_to_full"] == 0.01 and rec.details["best_tier_met"] == "transparent"


def test_accuracy_gate_fails_a_planted_drop():
    ref, new = _correct(flips=150)  # 1.5 points lost
    rec = check_update_accuracy("s", target_correct=ref, recon_correct=new, claim="99%", update_bytes=10,
                                full_bytes=1000, agreement=0.985)
    assert rec.status is Status.FAIL and "exceeds the 99% margin" in rec.message


def test_accuracy_gate_fails_a_small_significant_drop_at_transparent_only():
    ref, new = _correct(flips=20)
    strict = check_update_accuracy("s", target_correct=ref, recon_correct=new, claim="transparent", update_bytes=1,
                                   full_bytes=2, agreement=0.998)
    loose = check_update_accuracy("s", target_correct=ref, recon_correct=new, claim="99%", update_bytes=1,
                                  full_bytes=2, agreement=0.998)
    assert strict.status is Status.FAIL and loose.status is Status.PASS


def test_unclaimed_point_is_reported_not_gated():
    ref, new = _correct(flips=500)
    rec = check_update_accuracy("s", target_correct=ref, recon_correct=new, claim=None, update_bytes=1,
                                full_bytes=2, agreement=0.95)
    assert rec.status is Status.INFO and rec.details["best_tier_met"] is None and "no claim" in rec.message


def test_accuracy_gate_on_a_real_lineage(fmnist_test):
    """End to end on the zoo's LeNet-5 (epoch1 -> finetune, 1000 test images): the lossless update passes
    the strictest tier; keeping only 0.1% of this large update fails the loosest."""
    from nnconform.anchors import WeightsUnavailable, get_anchor
    from nnconform.evaluate import forward_logits

    anchor = get_anchor("fmnist-lenet5")
    try:
        base, target = anchor.state_dict("epoch1"), anchor.state_dict("finetune")
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
    data = fmnist_test.subset(range(1000))
    model = anchor.build_architecture().eval()

    def correct(state):
        model.load_state_dict(state)
        logits = forward_logits(model, data, anchor.preprocess)
        return (logits.argmax(1) == data.labels).numpy(), logits

    target_correct, target_logits = correct(target)
    records = {}
    for name, params, claim in [("zstd-delta", {}, "transparent"), ("topk", {"fraction": 0.001}, "99%")]:
        payload = encode_update(make_codec(name, params), base, target)
        recon_correct, logits = correct(apply_update(base, payload).state)
        agreement = float((logits.argmax(1) == target_logits.argmax(1)).double().mean())
        records[name] = check_update_accuracy(name, target_correct=target_correct, recon_correct=recon_correct,
                                              claim=claim, update_bytes=len(payload), full_bytes=250_000,
                                              agreement=agreement)
    assert records["zstd-delta"].status is Status.PASS, records["zstd-delta"].message
    assert records["topk"].status is Status.FAIL, records["topk"].message


# -- payload safety -----------------------------------------------------------------------------------------


def test_payload_safety_passes_with_the_real_container():
    base, target = _pair()
    rec = check_payload_safety("s", base, target, encode_update("topk", base, target))
    assert rec.status is Status.PASS, rec.message
    assert set(rec.details["outcomes"]) == {"wrong-base", *tamper_cases(b"x" * 100)}


def test_payload_safety_fails_with_a_naive_applier():
    """An applier that skips verification (decodes whatever it is given) fails the safety gate."""
    base, target = _pair()

    def naive_apply(b, payload):
        body = unpack_payload(payload).body if payload[:4] == b"NNCU" else payload
        return make_codec("full").decode(b, body)

    rec = check_payload_safety("s", base, target, encode_update("full", base, target), apply=naive_apply)
    assert rec.status is Status.FAIL
    assert "wrong base was accepted" in rec.message


def test_payload_safety_fails_when_the_wrong_error_is_raised():
    base, target = _pair()

    def vague_apply(b, payload):
        raise RuntimeError("something went wrong")

    rec = check_payload_safety("s", base, target, encode_update("full", base, target), apply=vague_apply)
    assert rec.status is Status.FAIL and "instead of BaseMismatchError" in rec.message


def test_payload_safety_refusals_carry_the_messages():
    base, target = _pair()
    rec = check_payload_safety("s", base, target, encode_update("quant", base, target))
    assert rec.details["outcomes"]["wrong-version"].startswith("refused: payload format version 2")
    with pytest.raises(BaseMismatchError):
        apply_update(target, encode_update("quant", base, target))


# -- comparison ---------------------------------------------------------------------------------------------


def test_weight_changes_count_and_measure_each_tensor():
    base = {"a": torch.zeros(10), "b": torch.ones(4), "n": torch.tensor(1)}
    target = {"a": torch.cat([torch.full((3,), 2.0), torch.zeros(7)]), "b": torch.ones(4), "n": torch.tensor(2)}
    changes = {c.name: c for c in weight_changes(base, target)}
    assert changes["a"].changed == 3 and changes["a"].changed_fraction == 0.3
    assert changes["a"].delta_l2 == pytest.approx(np.sqrt(12)) and changes["a"].relative_l2 == float("inf")
    assert changes["b"].changed == 0 and changes["b"].relative_l2 == 0.0
    assert changes["n"].changed == 1 and changes["n"].delta_l2 == 0.0


def test_weight_changes_count_signed_zero_and_nan_bits():
    base = {"a": torch.tensor([0.0, float("nan"), 1.0])}
    target = {"a": torch.tensor([-0.0, float("nan"), 1.0])}
    assert weight_changes(base, target)[0].changed == 1


def test_comparison_finds_improved_and_regressed_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 1000)
    base_pred = labels.copy()
    target_pred = labels.copy()
    base_pred[rng.choice(1000, 200, replace=False)] = 1  # class 0: base wrong on 200, target right -> improved
    target_pred[1000 + rng.choice(1000, 150, replace=False)] = 0  # class 1: target wrong on 150 -> regressed
    cmp = compare_predictions("b", "t", labels=labels, base_pred=base_pred, target_pred=target_pred,
                              classes=["zero", "one", "two"])
    assert [c.name for c in cmp.improved()] == ["zero"]
    assert [c.name for c in cmp.regressed()] == ["one"]
    assert cmp.classes[2].delta == 0 and cmp.classes[2].mcnemar_p == 1.0
    assert cmp.comparison.delta == pytest.approx((200 - 150) / 3000)
    rec = comparison_record("pair", cmp, weight_changes({"w": torch.zeros(2)}, {"w": torch.ones(2)}))
    assert rec.status is Status.INFO and "1 class(es) improved, 1 regressed" in rec.message
    assert rec.details["regressed"] == ["one"] and rec.details["weights"]["changed_fraction"] == 1.0


def test_comparison_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one entry per sample"):
        compare_predictions("b", "t", labels=[0, 1], base_pred=[0], target_pred=[0, 1], classes=["a", "b"])


# -- checks moved out of the conformance file ------------------------------------------------------


def _comparison(delta_flips: int):
    labels = np.repeat(np.arange(2), 500)
    base_pred, target_pred = labels.copy(), labels.copy()
    base_pred[:delta_flips] = 1  # the target fixes ``delta_flips`` of the base's mistakes
    return compare_predictions("b", "t", labels=labels, base_pred=base_pred, target_pred=target_pred,
                               classes=["x", "y"])


def test_documented_change_passes_when_reproduced_and_fails_when_not():
    from nnconform.updates.checks import check_documented_change

    cmp = _comparison(100)  # measured change +10%
    ok = check_documented_change("p", cmp, 0.10, n=1000, tolerance=0.005, smoke=False)
    bad = check_documented_change("p", cmp, 0.05, n=1000, tolerance=0.005, smoke=False)
    assert ok.status is Status.PASS and bad.status is Status.FAIL and "documented +5.0000%" in bad.message
    smoke_bad = check_documented_change("p", cmp, -0.2, n=1000, tolerance=0.005, smoke=True)
    assert smoke_bad.status is Status.FAIL and smoke_bad.message.startswith("SMOKE CHECK")


def test_smoke_lineage_accuracy_fails_outside_the_wilson_interval():
    from nnconform.updates.checks import check_smoke_lineage_accuracy

    ok = check_smoke_lineage_accuracy("a/ck", 0.8, 0.75, hits=16, n=20, ci95=(0.58, 0.92), dataset="imagenet")
    bad = check_smoke_lineage_accuracy("a/ck", 0.8, 0.2, hits=16, n=20, ci95=(0.58, 0.92), dataset="imagenet")
    assert ok.status is Status.PASS and bad.status is Status.FAIL and bad.tolerance == [0.58, 0.92]


def test_deterministic_encoding_fails_on_different_bytes():
    from nnconform.updates.checks import check_deterministic_encoding

    base, target = _pair()
    first = encode_update(make_codec("quant"), base, target)
    again = encode_update(make_codec("quant"), base, target)
    assert check_deterministic_encoding("s", first, again).status is Status.PASS
    bad = check_deterministic_encoding("s", first, first + b"\0", proposal="acme")
    assert bad.status is Status.FAIL and bad.message == "two encodings of the same update differ"
    assert bad.details["proposal"] == "acme"


def test_submitted_file_decode_and_size_checks_fail_on_bad_inputs(tmp_path):
    from pathlib import Path

    from nnconform.hashing import sha256_bytes
    from nnconform.updates.checks import check_size_claim, check_submitted_decode, check_submitted_file

    data = b"payload"
    path = Path(tmp_path / "u.update")
    assert check_submitted_file("s", path, data, sha256_bytes(data), proposal="p").status is Status.PASS
    bad = check_submitted_file("s", path, data, "0" * 64, proposal="p")
    assert bad.status is Status.FAIL and "differs from the manifest's" in bad.message
    assert check_size_claim("s", 10, 10, proposal="p").status is Status.PASS
    assert check_size_claim("s", 11, 10, proposal="p").status is Status.FAIL
    refused = check_submitted_decode("s", path, proposal="p", base="epoch8", error=BaseMismatchError("other base"))
    assert refused.status is Status.FAIL and "BaseMismatchError: other base" in refused.message
    assert check_submitted_decode("s", path, proposal="p", base="epoch8", codec="quant").status is Status.PASS


def test_every_check_id_the_criterion_records_is_registered():
    """The report explains ids from the kit catalogue (an unregistered id fails its record): every
    ``updates.*`` id written in the criterion's engine or conformance file must be registered, with a
    direction, and nothing else may be registered under ``updates.``."""
    import re
    from pathlib import Path

    from nnconform import kit

    src = Path(__file__).resolve().parents[1]
    texts = [p.read_text() for p in (src / "src/nnconform/updates").glob("*.py")]
    texts.append((src / "conformance/test_updates.py").read_text())
    used = {m for t in texts for m in re.findall(r"\"(updates\.[a-z_]+)\"", t)}
    registered = {k: v for k, v in kit.catalogue().items() if k.startswith("updates.")}
    assert used and used == set(registered), (used ^ set(registered))
    assert all(info.direction in kit.checks.DIRECTIONS for info in registered.values())
    assert "updates.decoded_loads" not in registered  # removed: it could not fail (see test_updates_payload)
