"""The real-path ASR anchor hf-wav2vec2-base-960h: offline skip message, sha256 pin, the waveform preprocessing,
and a tiny random Wav2Vec2ForCTC folder through the anchor builder and the Evaluator on the LibriVox smoke set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nnconform.anchors import WeightsIntegrityError, WeightsUnavailable, get_anchor, parse_anchor
from nnconform.hashing import sha256_file
from nnconform.paths import anchors_dir, read_toml
from nnconform.speech import SpeechPreprocess, load_speech_dataset
from nnconform.speech.features import normalize_waveforms
from nnconform.speech.hf import REQUIRED_FILES, anchor_dataset, anchor_task, read_vocabulary

transformers = pytest.importorskip("transformers")

NAME = "hf-wav2vec2-base-960h"
REPO = "wav2vec2-base-960h"
# vocab.json of facebook/wav2vec2-base-960h: token -> id
REAL_VOCAB = {tok: i for i, tok in enumerate(
    ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ"))}


def _tiny_folder(folder: Path) -> Path:
    """A randomly initialised Wav2Vec2ForCTC (hidden 32, 2 layers) saved with config.json, model.safetensors and
    the real vocab.json."""
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(REAL_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, pad_token_id=0, feat_extract_norm="group", do_stable_layer_norm=False)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(str(folder))
    (folder / "vocab.json").write_text(json.dumps(REAL_VOCAB), encoding="utf-8")
    assert (folder / "model.safetensors").is_file()
    return folder


def _anchor_pinned(sha256: str, num_params: int):
    """The manifest's anchor with another pinned sha256 and parameter count (the tiny folder's own)."""
    raw = read_toml(anchors_dir() / "speech.toml", ValueError)["anchors"][NAME]
    return parse_anchor(NAME, dict(raw, sha256=sha256, num_params=num_params), "test")


def _tiny_params(folder: Path) -> int:
    return sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())


def test_manifest_entry():
    anchor = get_anchor(NAME)
    assert (anchor.family, anchor.task, anchor.dataset, anchor.default) == ("huggingface", "asr", "librispeech", False)
    assert anchor.weights == f"hf:{REPO}/model.safetensors"
    assert anchor.preprocess.kind == "waveform"


def test_offline_skip_names_files_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCONFORM_HF_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as info:
        get_anchor(NAME).build()
    msg = str(info.value)
    assert str(tmp_path / REPO) in msg and "NNCONFORM_HF_DIR" in msg and "facebook/wav2vec2-base-960h" in msg
    for name in REQUIRED_FILES:
        assert name in msg
    # one file present: the message names the two still missing
    (tmp_path / REPO).mkdir()
    (tmp_path / REPO / "config.json").write_text("{}")
    with pytest.raises(WeightsUnavailable, match=r"model\.safetensors, vocab\.json missing in"):
        get_anchor(NAME).build()


def test_wrong_sha256_fails_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCONFORM_HF_DIR", str(tmp_path))
    _tiny_folder(tmp_path / REPO)
    with pytest.raises(WeightsIntegrityError) as info:  # a failure, not a skip (WeightsUnavailable)
        get_anchor(NAME).build()  # the manifest pins the public checkpoint's sha256, not the tiny model's
    assert str(tmp_path / REPO / "model.safetensors") in str(info.value)
    assert get_anchor(NAME).sha256 in str(info.value)


def test_tiny_checkpoint_end_to_end_on_librivox_smoke(tmp_path, monkeypatch):
    from nnconform.evaluate import Evaluator

    monkeypatch.setenv("NNCONFORM_HF_DIR", str(tmp_path / "hf"))
    folder = _tiny_folder(tmp_path / "hf" / REPO)
    anchor = _anchor_pinned(sha256_file(folder / "model.safetensors"), _tiny_params(folder))
    model = anchor.build()
    assert not model.training
    task = anchor_task(anchor)
    assert task.vocabulary == read_vocabulary(folder) and len(task.vocabulary) == 32
    assert task.vocabulary[task.blank] == "<pad>" and task.word_delimiter == "|"
    smoke = load_speech_dataset("librivox-smoke", cache_dir=tmp_path / "cache")
    data = anchor_dataset(anchor, smoke)
    assert data.task.vocabulary == task.vocabulary and data.subset([0, 1]).task is data.task
    assert len(data) == len(smoke) == 5
    saved = load_file(str(folder / "model.safetensors"))  # the builder loaded the file, not a random init
    loaded = model.ctc.state_dict()
    assert set(saved) == set(loaded) and "lm_head.weight" in saved
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    result = Evaluator(None, batch_size=2).evaluate(model, data, anchor.preprocess)
    n, t, v = result.outputs.shape
    assert (n, v) == (5, 32) and t > 0
    assert torch.allclose(result.outputs.exp().sum(-1), torch.ones(n, t), atol=1e-4)  # log-probabilities
    wer = result.metric
    assert math.isfinite(wer) and wer >= 0  # random weights: just a number
    assert int(result.scores["ref_words"].sum()) > 0


def test_waveform_normalization_matches_feature_extractor():
    gen = torch.Generator().manual_seed(3)
    lengths = [16000, 9000, 12345]
    waves = [(torch.randn(n, generator=gen) * 3000 + 200).round().clamp(-32768, 32767).to(torch.int16)
             for n in lengths]
    padded = torch.zeros((3, max(lengths)), dtype=torch.int16)
    for row, w in enumerate(waves):
        padded[row, :w.numel()] = w
    out = SpeechPreprocess(kind="waveform").apply(padded)
    assert out.shape == (3, max(lengths)) and out.dtype == torch.float32
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000, feature_size=1,
                                               padding_value=0.0, return_attention_mask=False)
    for row, (w, n) in enumerate(zip(waves, lengths)):
        real = out[row, :n].double()
        assert abs(float(real.mean())) < 1e-5 and abs(float(real.var(unbiased=False)) - 1) < 1e-4
        assert torch.count_nonzero(out[row, n:]) == 0  # the padding stays silent
        ref = fe(w.numpy().astype(np.float32) / 32768.0, sampling_rate=16000, return_tensors="np").input_values[0]
        np.testing.assert_allclose(out[row, :n].numpy(), ref, rtol=0, atol=1e-4)


def test_waveform_kind_leaves_log_mel_alone_and_refuses_unknown_kinds():
    x = (torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 2000).to(torch.int16)
    assert SpeechPreprocess().apply(x).shape == (2, 1, 40, 4000 // 160 + 1)
    assert torch.equal(normalize_waveforms(torch.zeros(1, 10)), torch.zeros(1, 10))  # silence: no NaN
    with pytest.raises(ValueError, match="'mfcc'"):
        SpeechPreprocess(kind="mfcc")


def test_bad_vocabulary_is_refused_naming_the_file(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "|": 2}))
    with pytest.raises(ValueError, match=r"vocab\.json: token ids must be 0\.\.1"):
        read_vocabulary(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "|": 1}))
    with pytest.raises(ValueError, match=r"vocab\.json: the token '<pad>' is missing"):
        read_vocabulary(tmp_path)


def test_documented_params_and_macs_match_the_pinned_architecture(tmp_path, monkeypatch):
    from nnconform.anchor_checks import check_params_macs

    monkeypatch.setenv("NNCONFORM_HF_DIR", str(tmp_path))  # empty: the architecture needs no file
    record = check_params_macs(get_anchor(NAME))
    assert record.status.name == "PASS", record.message


def test_checkpoint_of_another_architecture_fails_naming_config(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCONFORM_HF_DIR", str(tmp_path))
    folder = _tiny_folder(tmp_path / REPO)
    anchor = _anchor_pinned(sha256_file(folder / "model.safetensors"), _tiny_params(folder) + 1)
    with pytest.raises(WeightsIntegrityError, match=r"config\.json builds a model of [\d,]+ parameters"):
        anchor.build()
