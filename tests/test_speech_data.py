"""The LibriSpeech-layout loader, on a folder built from the pocketsphinx LibriVox utterances; malformed folders;
the hub path's offline message."""

from __future__ import annotations

import shutil
import wave

import numpy as np
import pytest
import torch

from nnconform.data import DatasetUnavailable
from nnconform.speech import SpeechPreprocess
from nnconform.speech.data import (POCKETSPHINX_LIBRIVOX, SpeechDataError, build_librivox_layout, load_librispeech,
                                   load_librispeech_folder, load_librivox_smoke, read_audio, write_wav)

EXPECTED = {  # from /usr/share/pocketsphinx/test/data/librivox/transcription
    "0-1-0870": "and mister john dashwood had then leisure to consider how much there might be prudently in his "
                "power to do for them",
    "0-1-0880": "he was not an ill disposed young man",
    "0-1-0890": "unless to be rather cold hearted and rather selfish is to be ill disposed",
    "0-1-0920": "had he married a more a amiable woman he might have been made still more respectable than he was",
    "0-1-0930": "he might even have been made amiable himself",
}


@pytest.fixture
def librivox(tmp_path):
    """A LibriSpeech-layout folder built from the pocketsphinx utterances."""
    if not (POCKETSPHINX_LIBRIVOX / "transcription").is_file():
        pytest.skip("pocketsphinx-testdata is not installed (sudo apt-get install pocketsphinx-testdata)")
    return build_librivox_layout(tmp_path / "LibriSpeech" / "test-clean")


def _frames(path) -> int:
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


def test_librispeech_loader_on_librivox(librivox):
    assert sorted(p.name for p in (librivox / "0" / "1").iterdir()) == sorted(
        [f"{u}.wav" for u in EXPECTED] + ["0-1.trans.txt"])
    ds = load_librispeech_folder(librivox, name="librivox-smoke", smoke=True)
    assert ds.utterance_ids == tuple(EXPECTED)
    assert ds.labels == tuple(EXPECTED.values())
    stems = {f"0-1-{n}": f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890", "0920", "0930")}
    expected_lengths = [_frames(POCKETSPHINX_LIBRIVOX / f"{stems[u]}.wav") for u in EXPECTED]
    assert ds.lengths.tolist() == expected_lengths
    assert ds.num_samples == max(expected_lengths)
    assert 20 < ds.seconds < 30 and ds.smoke
    # the same bytes give the same fingerprint; a subset has its own
    again = load_librispeech_folder(librivox, name="librivox-smoke", smoke=True)
    assert again.fingerprint == ds.fingerprint
    sub = ds.subset([1, 4])
    assert sub.labels == (EXPECTED["0-1-0880"], EXPECTED["0-1-0930"]) and sub.fingerprint != ds.fingerprint


def test_batches_are_fixed_shape(librivox):
    ds = load_librispeech_folder(librivox)
    pre = SpeechPreprocess()
    shapes, labels = [], []
    for x, y in ds.batches(pre, 2):
        shapes.append(tuple(x.shape))
        labels += y
    frames = pre.frames(ds.num_samples)
    assert shapes == [(2, 1, 40, frames), (2, 1, 40, frames), (1, 1, 40, frames)]
    assert tuple(labels) == ds.labels
    padded = ds.padded()
    assert padded.dtype == torch.int16 and bool((padded[1, ds.lengths[1]:] == 0).all())


def test_flac_reads_the_same_samples(librivox):
    soundfile = pytest.importorskip("soundfile")
    wav = librivox / "0" / "1" / "0-1-0880.wav"
    samples = read_audio(wav)
    soundfile.write(str(wav.with_suffix(".flac")), samples.numpy(), 16000, subtype="PCM_16")
    wav.unlink()
    assert torch.equal(read_audio(wav.with_suffix(".flac")), samples)
    ds = load_librispeech_folder(librivox)
    assert ds.labels[1] == EXPECTED["0-1-0880"] and torch.equal(ds.waveforms[1], samples)


def test_smoke_set_loader(tmp_path):
    if not (POCKETSPHINX_LIBRIVOX / "transcription").is_file():
        pytest.skip("pocketsphinx-testdata is not installed")
    ds = load_librivox_smoke(tmp_path)
    assert ds.name == "librivox-smoke" and ds.smoke and len(ds) == 5 and ds.labels == tuple(EXPECTED.values())


def test_missing_transcript_names_the_file(librivox):
    (librivox / "0" / "1" / "0-1.trans.txt").unlink()
    with pytest.raises(SpeechDataError, match=r"0-1-0870\.wav: its transcript file .*0-1\.trans\.txt is missing"):
        load_librispeech_folder(librivox)


def test_missing_transcript_line_names_the_file(librivox):
    trans = librivox / "0" / "1" / "0-1.trans.txt"
    trans.write_text("\n".join(line for line in trans.read_text().splitlines() if not line.startswith("0-1-0890")))
    with pytest.raises(SpeechDataError, match=r"0-1-0890\.wav: no line for 0-1-0890 in .*0-1\.trans\.txt"):
        load_librispeech_folder(librivox)


def test_transcript_without_audio_names_the_file(librivox):
    (librivox / "0" / "1" / "0-1-0920.wav").unlink()
    with pytest.raises(SpeechDataError, match=r"0-1\.trans\.txt: transcripts without an audio file: 0-1-0920"):
        load_librispeech_folder(librivox)


def test_bad_audio_file_names_the_file(librivox):
    bad = librivox / "0" / "1" / "0-1-0880.wav"
    bad.write_bytes(b"this is not audio" * 10)
    with pytest.raises(SpeechDataError, match=r"0-1-0880\.wav: not a readable WAV file"):
        load_librispeech_folder(librivox)


def test_bad_flac_file_names_the_file(librivox):
    pytest.importorskip("soundfile")
    wav = librivox / "0" / "1" / "0-1-0880.wav"
    wav.with_suffix(".flac").write_bytes(b"fLaC but not really")
    wav.unlink()
    with pytest.raises(SpeechDataError, match=r"0-1-0880\.flac: not a readable FLAC file"):
        load_librispeech_folder(librivox)


def test_wrong_sample_rate_and_misplaced_file(librivox, tmp_path):
    wav = librivox / "0" / "1" / "0-1-0880.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.zeros(800, "<i2").tobytes())
    with pytest.raises(SpeechDataError, match=r"0-1-0880\.wav: sample rate 8000 Hz; expected 16000 Hz"):
        load_librispeech_folder(librivox)
    write_wav(wav, np.zeros(1600, np.int16))
    shutil.move(str(wav), str(librivox / "0" / "1" / "7-1-0880.wav"))
    with pytest.raises(SpeechDataError, match=r"7-1-0880\.wav: expected <speaker>/<chapter>/"):
        load_librispeech_folder(librivox)


def test_empty_folder(tmp_path):
    with pytest.raises(SpeechDataError, match="no <speaker>/<chapter>/"):
        load_librispeech_folder(tmp_path)


def test_hub_path_offline_message(monkeypatch):
    monkeypatch.delenv("NNCONFORM_LIBRISPEECH_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable) as info:
        load_librispeech("test-other")
    msg = str(info.value)
    assert msg.startswith("LibriSpeech test-other is not available offline. Download "
                          "https://www.openslr.org/resources/12/test-other.tar.gz, extract it")
    for part in ("LibriSpeech/test-other/<speaker>/<chapter>/*.flac", "NNCONFORM_LIBRISPEECH_DIR",
                 "openslr/librispeech_asr", "config 'other'", "split 'test'"):
        assert part in msg


def test_local_folder_without_librispeech(tmp_path, librivox):
    with pytest.raises(DatasetUnavailable, match=r"no LibriSpeech test-other folder in it"):
        load_librispeech("test-other", tmp_path / "nothing-here")
    ds = load_librispeech("test-clean", librivox.parent.parent)  # <dir>/LibriSpeech/test-clean is found
    assert ds.name == "librispeech" and ds.split == "test-clean" and len(ds) == 5
    with pytest.raises(ValueError, match="test-clean"):
        load_librispeech("dev")
