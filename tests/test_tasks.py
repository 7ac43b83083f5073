"""Tasks (issue 13): the registry, anchors declaring their task, per-task tiers, WER, CTC decoding, and the
paired statistics of each task's gate."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from nnconform.anchors import ManifestError, get_anchor, parse_anchor
from nnconform.gates import _load_all_tiers, best_tier_met, get_tier, load_tiers, non_inferiority
from nnconform.tasks import (TASKS, AsrTask, ClassificationTask, SampleScores, ctc_greedy_decode, get_task,
                             normalize_text, task_names, word_errors)

REPO = Path(__file__).resolve().parents[1]


def _zoo_raw(name="fmnist-lenet5"):
    return tomllib.loads((REPO / "anchors" / "zoo.toml").read_text())["anchors"][name]


def test_registry_knows_classification_and_asr():
    assert {"classification", "asr"} <= set(task_names())
    assert isinstance(get_task(), ClassificationTask)
    assert isinstance(get_task("asr", vocabulary=["<pad>", "a"]), AsrTask)
    with pytest.raises(KeyError, match="did you mean 'asr'"):
        TASKS.get("asrr")


def test_anchors_default_to_classification_and_declare_their_task():
    assert get_anchor("fmnist-lenet5").task == "classification"
    raw = dict(_zoo_raw(), task="asr")
    assert parse_anchor("x", raw, "zoo.toml").task == "asr"


def test_unknown_task_in_a_manifest_names_file_and_field():
    raw = dict(_zoo_raw(), task="speech")
    with pytest.raises(ManifestError, match=re.escape("zoo.toml: anchors.x.task: 'speech' is not one of")):
        parse_anchor("x", raw, "zoo.toml")
    with pytest.raises(ManifestError, match=r"zoo.toml: anchors.x.task: expected a string"):
        parse_anchor("x", dict(_zoo_raw(), task=3), "zoo.toml")


def test_classification_tiers_unchanged_and_asr_tiers_in_wer_units():
    cls = load_tiers()
    assert [(t.name, t.relative_margin, t.require_no_significant_drop) for t in cls.values()] == [
        ("transparent", 0.001, True), ("99.9%", 0.001, False), ("99%", 0.01, False)]
    asr = load_tiers(task="asr")
    assert list(asr) == list(cls)
    assert get_tier("99%", "asr").margin(0.25) == 0.01  # absolute: 1 WER point whatever the reference WER
    assert get_tier("99%").margin(0.9) == pytest.approx(0.009)


@pytest.mark.parametrize("extra, message", [
    ('[tasks.asr.tiers.transparent]\nabsolute_margin = 0.001\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.asr.tiers: tiers \['transparent'\] differ from the classification tiers"),
    ('[tasks.speech.tiers.t]\nabsolute_margin = 0.001\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.speech: 'speech' is not a task"),
    ('[tasks.asr.tiers.t]\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.asr.tiers.t: give exactly one of relative_margin and absolute_margin"),
    ('[tasks.asr.tiers.t]\nabsolute_margin = -0.1\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.asr.tiers.t.absolute_margin: must be >= 0"),
])
def test_bad_task_tiers_name_file_and_field(tmp_path, extra, message):
    path = tmp_path / "tiers.toml"
    path.write_text('[tiers.t]\nrelative_margin = 0.01\nrequire_no_significant_drop = true\nrationale = "r"\n'
                    + extra)
    _load_all_tiers.cache_clear()
    with pytest.raises(ValueError, match=message):
        _load_all_tiers(path)
    _load_all_tiers.cache_clear()


# -- WER, normalization, CTC decoding ----------------------------------------------------------------

@pytest.mark.parametrize("ref, hyp, errors, words", [
    ("the cat sat", "the cat sat", 0, 3),
    ("the cat sat", "the bat sat", 1, 3),            # one substitution
    ("the cat sat", "the cat sat down", 1, 3),       # one insertion
    ("the cat sat down", "the sat down", 1, 4),      # one deletion
    ("a b c d", "x b d e f", 4, 4),                  # a->x, c deleted, e f inserted
    ("the cat", "", 2, 2),                           # empty hypothesis: every word deleted
    ("", "two words", 2, 0),                         # empty reference: hypothesis words are insertions
    ("", "", 0, 0),
])
def test_word_errors_on_known_edit_distances(ref, hyp, errors, words):
    e, w = word_errors([ref], [hyp])
    assert (int(e[0]), int(w[0])) == (errors, words)


def test_wer_is_total_errors_over_total_reference_words():
    task = get_task("asr", vocabulary=["<pad>", "|", "a"])
    e, w = word_errors(["the cat sat", "a b c d", "", "one"], ["the bat sat", "a b c d", "x", ""])
    scores = SampleScores("asr", {"errors": e, "ref_words": w})
    assert task.aggregate(scores) == pytest.approx((1 + 0 + 1 + 1) / (3 + 4 + 0 + 1))
    assert task.aggregate(scores, np.array([0, 0])) == pytest.approx(2 / 6)  # a bootstrap draw with a repeat
    with pytest.raises(ValueError, match="WER is undefined: the references hold no words"):
        task.aggregate(scores, np.array([2]))


def test_normalization_lowercases_drops_punctuation_and_collapses_spaces():
    assert normalize_text("  Hello,   WORLD!\tDon't  stop\u2014now. It\u2019s well-known. ") == \
        "hello world dont stop now its well known"
    assert word_errors(["HELLO, World."], ["hello world"])[0][0] == 0


def test_ctc_greedy_decoding_collapses_repeats_and_drops_blanks():
    vocab = ["<pad>", "|", "a", "b", "c"]
    frames = [2, 2, 0, 2, 1, 3, 3, 1, 1, 0, 4, 0]  # a a _ a | b b | | _ c _  ->  "aa b c"
    logp = torch.full((1, len(frames), len(vocab)), -10.0)
    for t, k in enumerate(frames):
        logp[0, t, k] = 0.0
    assert ctc_greedy_decode(logp, vocab) == ["aa b c"]
    with pytest.raises(ValueError, match=r"do not fit \[N, T, V\] with a vocabulary of 4 tokens"):
        ctc_greedy_decode(logp, vocab[:4])


def test_asr_outputs_of_different_lengths_pad_with_blank_frames():
    vocab = ["<pad>", "|", "a", "b"]
    task = get_task("asr", vocabulary=vocab)
    short, long = _one_hot([2, 1, 3], vocab), _one_hot([3, 3, 0, 2, 2], vocab)
    joined = task.concat_outputs([short, long])
    assert joined.shape == (2, 5, 4) and bool(torch.isfinite(joined).all())
    assert task.decode(joined) == ["a b", "ba"]
    with pytest.raises(ValueError, match=r"asr: model outputs have shape \(2, 5, 4\), expected \(3, T, 4\)"):
        task.check_outputs(joined, 3)


# -- the paired statistic on WER and its tier gate ----------------------------------------------------

VOCAB = ["<pad>", "|"] + list("abcdefghijklmnopqrstuvwxyz")


def _one_hot(tokens, vocab=VOCAB):
    logp = torch.full((1, len(tokens), len(vocab)), -20.0)
    for t, k in enumerate(tokens):
        logp[0, t, k] = 0.0
    return logp


def _encode(text: str) -> list[int]:
    """CTC frames spelling ``text``: a blank after every character (so doubled letters survive)."""
    out = []
    for ch in text:
        out += [VOCAB.index("|" if ch == " " else ch), 0]
    return out


def _utterances(n=400, seed=0):
    rng = np.random.default_rng(seed)
    words = ["speech", "model", "coded", "frame", "audio", "codec", "delta", "tier", "word", "error"]
    return [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(n)]


def _outputs(texts):
    task = get_task("asr", vocabulary=VOCAB)
    return task.concat_outputs([_one_hot(_encode(t)) for t in texts])


def _degrade(texts, every, seed=1):
    """Replace one word of every ``every``-th utterance with a wrong one (a planted degradation)."""
    out = list(texts)
    for i in range(0, len(out), every):
        w = out[i].split()
        w[len(w) // 2] = "wrong"
        out[i] = " ".join(w)
    return out


def test_identical_asr_model_meets_transparent_and_degraded_one_fails():
    refs = _utterances()
    task = get_task("asr", vocabulary=VOCAB)
    hyp_ref = _degrade(refs, 10)  # the anchor itself is not perfect: WER about 1.3%
    ref_scores = task.scores(_outputs(hyp_ref), refs)
    assert 0 < task.aggregate(ref_scores) < 0.03
    same = task.scores(_outputs(hyp_ref), refs)
    cmp = task.paired(ref_scores, same)
    assert cmp.delta == 0 and cmp.delta_ci95 == (0.0, 0.0)
    assert best_tier_met(cmp) == "transparent"
    assert non_inferiority(ref_scores, same, "transparent", task).passed

    worse = task.scores(_outputs(_degrade(hyp_ref, 2)), refs)  # about 5 more WER points
    cmp = task.paired(ref_scores, worse)
    assert cmp.drop > 0.02 and cmp.drop_ci95[0] > 0.02  # lower is better: the drop is the WER increase
    for tier in ("transparent", "99.9%", "99%"):
        result = non_inferiority(ref_scores, worse, tier, task)
        assert not result.passed and "exceeds" in result.reason and "WER points" in result.reason, result.reason
    assert best_tier_met(cmp) is None


def test_asr_bootstrap_is_reproducible_and_brackets_the_delta():
    refs = _utterances(120, seed=3)
    task = get_task("asr", vocabulary=VOCAB)
    a = task.scores(_outputs(_degrade(refs, 7)), refs)
    b = task.scores(_outputs(_degrade(refs, 3)), refs)
    one, two = task.paired(a, b), task.paired(a, b)
    assert one.delta_ci95 == two.delta_ci95
    assert one.delta_ci95[0] <= one.delta <= one.delta_ci95[1]
    with pytest.raises(ValueError, match="paired comparison needs the same samples, got 120 and 60"):
        task.paired(a, task.scores(_outputs(refs[:60]), refs[:60]))


def test_classification_task_gives_the_stats_module_figures():
    from nnconform.stats import paired_comparison

    rng = np.random.default_rng(0)
    labels = torch.as_tensor(rng.integers(0, 10, 2000))
    ref_logits, new_logits = torch.randn(2000, 10, generator=torch.Generator().manual_seed(1)), None
    new_logits = ref_logits.clone()
    new_logits[:300] = torch.randn(300, 10, generator=torch.Generator().manual_seed(2))
    task = get_task()
    r, n = task.scores(ref_logits, labels), task.scores(new_logits, labels)
    assert task.paired(r, n) == paired_comparison((ref_logits.argmax(1) == labels).numpy(),
                                                  (new_logits.argmax(1) == labels).numpy())
    assert task.aggregate(r) == float((ref_logits.argmax(1) == labels).double().mean())


def test_evaluator_scores_with_the_task_and_keeps_the_cache_key(tmp_path):
    from nnconform.data import Preprocess
    from nnconform.evaluate import Evaluator, cache_key

    class Speech:
        """A two-utterance dataset whose 'audio' is the CTC frames themselves."""

        def __init__(self, texts):
            self.labels = list(texts)
            self.frames = [_one_hot(_encode(t))[0] for t in texts]
            self.fingerprint = "f" * 64
            self.task = get_task("asr", vocabulary=VOCAB)

        def __len__(self):
            return len(self.labels)

        def batches(self, preprocess, batch_size):
            for i, f in enumerate(self.frames):
                yield f.unsqueeze(0), [self.labels[i]]

    data = Speech(["tier word", "coded audio frame"])
    pre = Preprocess(mean=(0.0,), std=(1.0,), scale=1.0, interpolation="bilinear", channels=1)
    model = torch.nn.Identity()
    ev = Evaluator(tmp_path)
    result = ev.evaluate(model, data, pre)
    assert result.task.name == "asr" and result.metric == 0.0 and result.outputs.shape[0] == 2
    with pytest.raises(TypeError, match="correct is a classification figure; this result is asr"):
        result.correct
    again = Evaluator(tmp_path).evaluate(model, data, pre)  # from disk: the transcripts come from the dataset
    assert torch.equal(again.outputs, result.outputs) and again.labels == tuple(data.labels) and again.metric == 0.0
    assert result.key == cache_key(model, data, pre, ev.batch_size)


# -- the criteria's accuracy gates on an ASR anchor ------------------------------------------------------

def _asr_pair(worse_every):
    refs = _utterances(300, seed=5)
    anchor_out = _outputs(_degrade(refs, 10))
    return refs, anchor_out, _outputs(_degrade(_degrade(refs, 10), worse_every) if worse_every else _degrade(refs, 10))


@pytest.mark.parametrize("worse_every, claim, passes", [(None, "transparent", True), (2, "99%", False)])
def test_compression_accuracy_gate_on_wer(worse_every, claim, passes):
    from nnconform.compress.checks import check_accuracy
    from nnconform.compress.metrics import compute_metrics

    refs, anchor_out, new_out = _asr_pair(worse_every)
    m = compute_metrics(anchor_out, new_out, refs, (), bytes_ref=400, nbytes=100, params_ref=1, params=1, macs_ref=1,
                        macs=1, task=get_task("asr", vocabulary=VOCAB))
    assert m.task == "asr" and m.metric_label == "WER" and m.mcnemar_p is None and m.agreement is None
    rec = check_accuracy("asr-anchor-int8", m, claim)
    assert rec.passed is passes, rec.message
    assert rec.measured["drop"] == pytest.approx(m.acc - m.acc_ref)  # WER increase, in WER units
    assert rec.message.startswith(f"claimed tier {claim!r} {'met' if passes else 'NOT met'}")
    assert "WER" in rec.message and "agreement" not in rec.message


@pytest.mark.parametrize("worse_every, passes", [(None, True), (2, False)])
def test_update_accuracy_gate_on_wer(worse_every, passes):
    from nnconform.updates.checks import check_update_accuracy

    task = get_task("asr", vocabulary=VOCAB)
    refs, target_out, recon_out = _asr_pair(worse_every)
    rec = check_update_accuracy("asr/epoch1->epoch2/nnc", target_correct=task.scores(target_out, refs),
                                recon_correct=task.scores(recon_out, refs), claim="99%", update_bytes=10,
                                full_bytes=100, agreement=None, task=task)
    assert rec.passed is passes, rec.message
    assert rec.measured == pytest.approx(task.aggregate(task.scores(recon_out, refs)))
    assert rec.details["task"] == "asr" and rec.details["tier"] == "99%"


def test_anchor_accuracy_on_wer_fails_outside_the_tolerance():
    from types import SimpleNamespace

    from nnconform.anchor_checks import check_documented_accuracy
    from nnconform.evaluate import EvalResult

    refs = _utterances(200, seed=7)
    task = get_task("asr", vocabulary=VOCAB)
    result = EvalResult(_outputs(_degrade(refs, 4)), tuple(refs), "k", task)
    wer = result.metric
    data = type("D", (), {"name": "speech", "split": "test", "smoke": False, "fingerprint": "f" * 64,
                          "__len__": lambda self: 200})()
    good = SimpleNamespace(name="asr-x", metrics={"wer": wer + 0.001}, tolerance=0.005)
    bad = SimpleNamespace(name="asr-x", metrics={"wer": wer + 0.02}, tolerance=0.005)
    assert check_documented_accuracy(good, data, result).passed
    rec = check_documented_accuracy(bad, data, result)
    assert not rec.passed and rec.measured == pytest.approx(wer) and "WER" in rec.message
    data.smoke = True  # smoke: judged by the bootstrap interval of the WER over utterances
    assert check_documented_accuracy(good, data, result).passed
    assert not check_documented_accuracy(SimpleNamespace(name="asr-x", metrics={"wer": 0.5}, tolerance=0.005),
                                         data, result).passed
