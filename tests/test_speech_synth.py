"""The espeak-ng corpus: its key and fingerprint follow its recipe and the espeak-ng version; held-out voices."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from nnconform.speech import synth
from nnconform.speech.synth import RECIPES, CorpusRecipe, load_synthetic

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (sudo apt-get install espeak-ng)")


def _tiny(**changes) -> CorpusRecipe:
    return dataclasses.replace(CorpusRecipe("test", 3, 7, ("en-us",), ("m1",)), **changes)


def test_key_follows_recipe_and_espeak_version():
    recipe = _tiny()
    assert recipe.key("1.51") == _tiny().key("1.51")
    assert recipe.key("1.51") != recipe.key("1.52")  # another espeak-ng release: another corpus
    for change in ({"seed": 8}, {"count": 4}, {"variants": ("f1",)}, {"rate_wpm": (120, 200)}, {"version": 2}):
        assert _tiny(**change).key("1.51") != recipe.key("1.51"), change


def test_held_out_voices_are_unseen_in_training():
    train, test = RECIPES["train"], RECIPES["test"]
    assert not set(train.accents) & set(test.accents)
    assert not set(train.variants) & set(test.variants)
    assert train.seed != test.seed and test.count == 300 and test.max_seconds == 3.0


@needs_espeak
def test_corpus_generation_and_fingerprint(tmp_path, monkeypatch):
    ds = load_synthetic("test", tmp_path, _tiny())
    assert len(ds) == 3 and ds.num_samples == 48000 and ds.source.startswith("espeak-ng ")
    assert all(0 < int(n) <= 48000 for n in ds.lengths) and all(ds.labels)
    assert all(set(t.split()) <= set(synth.WORDS) for t in ds.labels)
    assert all("-en-us+m1-" in u for u in ds.utterance_ids)
    # stored once: a second load reads the cache (no espeak-ng call) and gives the same bytes
    monkeypatch.setattr(synth, "speak", lambda *a: pytest.fail("the cached corpus was generated again"))
    again = load_synthetic("test", tmp_path, _tiny())
    assert again.fingerprint == ds.fingerprint
    monkeypatch.undo()
    other = load_synthetic("test", tmp_path, _tiny(seed=8))
    assert other.fingerprint != ds.fingerprint
    # the same samples under another espeak-ng version string are another corpus
    monkeypatch.setattr(synth, "espeak_version", lambda: "0.0-test")
    assert load_synthetic("test", tmp_path, _tiny()).fingerprint != ds.fingerprint


def test_missing_espeak_says_what_to_install(monkeypatch):
    from nnconform.data import DatasetUnavailable

    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(DatasetUnavailable, match="apt-get install espeak-ng"):
        synth.espeak_version()


@needs_espeak
def test_the_corpus_does_not_depend_on_how_many_espeak_processes_run_at_once():
    """Every utterance's words and voice are drawn before espeak-ng runs in parallel: one worker and four give the
    same samples, transcripts and ids in the same order (the corpus key does not know the worker count)."""
    recipe = _tiny(count=12, max_seconds=1.0)  # short enough that some sentences lose words: that path too
    one, four = synth.generate(recipe, workers=1), synth.generate(recipe, workers=4)
    assert [w.tobytes() for w in one[0]] == [w.tobytes() for w in four[0]]
    assert one[1:] == four[1:] and len(one[2]) == 12
