"""Log-mel features: shape, determinism, the filterbank, and that a tone lands in its mel band."""

from __future__ import annotations

import math

import pytest
import torch

from nnconform.speech.features import SpeechPreprocess, hz_to_mel, mel_filterbank, mel_to_hz


def _tone(hz: float, seconds: float = 1.0, amplitude: int = 8000) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds), dtype=torch.float64) / 16000
    return (amplitude * torch.sin(2 * math.pi * hz * t)).round().to(torch.int16)


def test_shape_and_determinism():
    pre = SpeechPreprocess()
    gen = torch.Generator().manual_seed(0)
    wav = (torch.randn(3, 48000, generator=gen) * 2000).to(torch.int16)
    a, b = pre.apply(wav), pre.apply(wav.clone())
    assert a.shape == (3, 1, 40, 301) == (3, 1, pre.n_mels, pre.frames(48000))
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.numpy().tobytes() == b.numpy().tobytes()  # bit-identical on repeat
    # batching does not change an utterance's features
    assert torch.allclose(pre.apply(wav[1:2]), a[1:2], atol=1e-5)


def test_fields_change_the_cache_key_and_the_output():
    base, other = SpeechPreprocess(), SpeechPreprocess(n_mels=64)
    assert base.to_dict() != other.to_dict() and SpeechPreprocess.from_dict(base.to_dict()) == base
    assert other.apply(_tone(440).unsqueeze(0)).shape[2] == 64
    with pytest.raises(ValueError, match=r"one of \('log-mel', 'waveform'\), got 'mfcc'"):
        SpeechPreprocess(kind="mfcc")
    with pytest.raises(ValueError, match="inconsistent"):
        SpeechPreprocess(win_length=800)
    with pytest.raises(ValueError, match=r"expected waveforms \[N, samples\]"):
        base.apply(_tone(440))


def test_mel_filterbank():
    fb = mel_filterbank(16000, 400, 40, 20.0, 7600.0)
    assert fb.shape == (40, 201) and bool((fb >= 0).all())
    peaks = fb.argmax(1)
    assert bool((peaks[1:] >= peaks[:-1]).all())  # centres rise with the band index
    assert float(fb.max()) <= 1.0 + 1e-6
    assert mel_to_hz(hz_to_mel(1234.5)) == pytest.approx(1234.5)
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)  # the HTK scale's anchor point
    with pytest.raises(ValueError, match="f_min < f_max"):
        mel_filterbank(16000, 400, 40, 100.0, 9000.0)


@pytest.mark.parametrize("hz", [300.0, 1000.0, 4000.0])
def test_a_tone_lands_in_its_band(hz):
    pre = SpeechPreprocess()
    feats = pre.apply(_tone(hz).unsqueeze(0))[0, 0]  # [mels, frames]
    band = int(feats[:, 10:-10].mean(1).argmax())
    lo, hi = hz_to_mel(pre.f_min), hz_to_mel(pre.f_max)
    centres = [mel_to_hz(lo + (hi - lo) * (i + 1) / (pre.n_mels + 1)) for i in range(pre.n_mels)]
    nearest = min(range(pre.n_mels), key=lambda i: abs(centres[i] - hz))
    assert abs(band - nearest) <= 1
