"""The embedded ASR anchor end to end: committed checkpoints, their WER on the held-out voices through the
Evaluator and the ASR task, fx-traceability, and the LibriVox smoke set."""

from __future__ import annotations

import shutil

import pytest
import torch

from nnconform.anchors import get_anchor
from nnconform.data import load_dataset
from nnconform.evaluate import Evaluator
from nnconform.speech.data import POCKETSPHINX_LIBRIVOX

ANCHOR = "espeak-convctc"
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the corpus is generated once (about 10 s for the 300 test utterances)."""
    return tmp_path_factory.mktemp("asr-cache")


@pytest.fixture(scope="module")
def heldout(cache):
    return load_dataset("espeak-synth", "test", cache_dir=cache)


def test_manifest_entry():
    anchor = get_anchor(ANCHOR)
    assert anchor.task == "asr" and anchor.family == "zoo" and anchor.dataset == "espeak-synth"
    assert [c.name for c in anchor.checkpoints][-1] == "finetune" and all(c.wer is not None for c in anchor.checkpoints)
    assert 100_000 <= anchor.num_params <= 300_000


def test_committed_weights_reproduce_the_documented_wer(cache, heldout):
    from nnconform.anchor_checks import check_documented_accuracy

    anchor = get_anchor(ANCHOR)
    evaluator = Evaluator(cache)
    model = anchor.build()
    result = evaluator.evaluate(model, heldout, anchor.preprocess)
    assert result.task.name == "asr" and result.outputs.shape[:2] == (300, anchor.preprocess.frames(48000) // 2 + 1)
    assert abs(result.metric - anchor.metrics["wer"]) <= anchor.tolerance, (result.metric, anchor.metrics["wer"])
    rec = check_documented_accuracy(anchor, heldout, result)
    assert rec.passed, rec.message
    # a bad input fails the same gate: the first milestone is far worse than the documented anchor
    early = evaluator.evaluate(anchor.build(anchor.checkpoints[0].name), heldout, anchor.preprocess)
    assert early.metric > anchor.metrics["wer"] + anchor.tolerance
    bad = check_documented_accuracy(anchor, heldout, early)
    assert not bad.passed and "WER" in bad.message


def test_every_checkpoint_reproduces_its_wer(cache, heldout):
    anchor = get_anchor(ANCHOR)
    evaluator = Evaluator(cache)
    for ck in anchor.checkpoints:
        result = evaluator.evaluate(anchor.build(ck.name), heldout, anchor.preprocess)
        assert abs(result.metric - ck.wer) <= anchor.tolerance, (ck.name, result.metric, ck.wer)


def test_fx_traceable_and_shapes():
    anchor = get_anchor(ANCHOR)
    model = anchor.build()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *anchor.input_shape)
    assert torch.equal(traced(x), model(x))
    out = model(torch.randn(1, 1, 40, 1001))  # fully convolutional: any length
    assert out.shape == (1, 501, anchor.num_classes)


def test_librivox_smoke_set(cache):
    if not (POCKETSPHINX_LIBRIVOX / "transcription").is_file():
        pytest.skip("pocketsphinx-testdata is not installed")
    anchor = get_anchor(ANCHOR)
    smoke = load_dataset("librivox-smoke", cache_dir=cache)
    result = Evaluator(None).evaluate(anchor.build(), smoke, anchor.preprocess)
    # Synthetic training speech does not carry over to a real reader: a smoke check that the path runs,
    # with a WER that is defined (and expected to be poor).
    assert smoke.smoke and len(result.scores["errors"]) == 5 and 0.0 <= result.metric
