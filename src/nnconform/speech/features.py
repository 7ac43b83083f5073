"""Speech features: 16 kHz int16 waveforms to log-mel spectrograms, computed here with ``torch.stft``.

The filterbank is built in this module (HTK mel scale, triangular filters, no area normalization),
so the features depend only on torch's STFT and the fields of :class:`SpeechPreprocess`, which go
into every cache key through :meth:`SpeechPreprocess.to_dict`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch


def hz_to_mel(hz: float) -> float:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: float) -> float:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (float32), equally spaced on the HTK mel scale."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel filterbank: need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    n_freqs = n_fft // 2 + 1
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lo, hi = hz_to_mel(f_min), hz_to_mel(f_max)
    edges = torch.tensor([mel_to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)],
                         dtype=torch.float64)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - left) / (centre - left)
    falling = (right - freqs[None, :]) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


#: "log-mel": features computed here; "waveform": the raw samples, normalized per utterance (wav2vec2)
KINDS = ("log-mel", "waveform")
#: the variance floor of Hugging Face's Wav2Vec2FeatureExtractor (do_normalize): x' = (x - mean) / sqrt(var + 1e-7)
WAVEFORM_EPS = 1e-7


def normalize_waveforms(x: torch.Tensor) -> torch.Tensor:
    """Float ``[N, L]`` end-padded with zeros -> each row's samples up to its last non-zero one scaled to zero
    mean and unit (population) variance, ``(x - mean) / sqrt(var + 1e-7)``, the padding after it left at 0:
    what ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does per utterance before zero-padding a batch.

    The utterance length is read from the padding (the batches carry no lengths): trailing exact-zero
    samples of the recording itself count as padding, which changes the statistics by those few zeros only.
    """
    n, length = x.shape
    nonzero = x != 0
    # index of the last non-zero sample + 1 (0 for an all-zero row)
    lengths = torch.where(nonzero.any(1), length - nonzero.flip(1).to(torch.int8).argmax(1), 0)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    count = lengths.clamp(min=1).to(torch.float64)[:, None]
    xd = x.to(torch.float64) * mask
    mean = xd.sum(1, keepdim=True) / count
    var = ((xd - mean) * mask).square().sum(1, keepdim=True) / count
    out = (xd - mean) / torch.sqrt(var + WAVEFORM_EPS)
    return (out * mask).to(torch.float32)


@dataclass(frozen=True)
class SpeechPreprocess:
    """How int16 waveforms become model input: log-mel frames, then ``(x - mean) / std``.

    Defaults: 16 kHz, 25 ms Hann window (``n_fft = win_length = 400``), 10 ms hop (160), 40 mel
    bands from 20 Hz to 7.6 kHz, power spectrum, ``log(mel + floor)``. ``center=True`` (reflect
    padding), so a waveform of ``L`` samples gives ``L // hop_length + 1`` frames. The output is
    ``[N, 1, n_mels, frames]``: a one-channel "image", so shapes look like the image anchors'.
    ``kind = "waveform"`` (wav2vec2 anchors) skips the features: ``[N, L]`` samples normalized per
    utterance (:func:`normalize_waveforms`); the log-mel fields are then unused.
    """

    sample_rate: int = 16_000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 7_600.0
    log_floor: float = 1e-6
    # mean and spread of log-mel values over the speech frames of the espeak-ng training corpus
    mean: float = -3.5
    std: float = 5.0
    kind: str = "log-mel"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SpeechPreprocess.kind: one of {KINDS}, got {self.kind!r}")
        if self.win_length > self.n_fft or self.hop_length <= 0 or self.n_mels <= 0 or self.std <= 0:
            raise ValueError(f"SpeechPreprocess: inconsistent fields {self.to_dict()}")

    @classmethod
    def from_dict(cls, d: dict) -> "SpeechPreprocess":
        """Build from a manifest table (unknown keys raise ``TypeError`` naming them)."""
        return cls(**dict(d))

    def to_dict(self) -> dict:
        """Plain dict for reports and cache keys."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the reference pages."""
        if self.kind == "waveform":
            return (f"waveform at {self.sample_rate} Hz: raw samples in [-1, 1], each utterance normalized to zero "
                    f"mean and unit variance over its own samples (var + {WAVEFORM_EPS:g}), padding kept at 0")
        return (f"{self.kind} at {self.sample_rate} Hz: {self.n_mels} mels {self.f_min:g}-{self.f_max:g} Hz, n_fft "
                f"{self.n_fft}, window {self.win_length}, hop {self.hop_length}, log(mel + {self.log_floor:g}), "
                f"mean {self.mean:g}, std {self.std:g}")

    def frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` samples (the ``waveform`` kind: the samples)."""
        if self.kind == "waveform":
            return num_samples
        return num_samples // self.hop_length + 1

    def apply(self, waveforms: torch.Tensor) -> torch.Tensor:
        """int16 (or float in [-1, 1]) ``[N, L]`` -> float32 ``[N, 1, n_mels, L // hop + 1]`` (log-mel) or
        ``[N, L]`` (waveform: :func:`normalize_waveforms`)."""
        if waveforms.ndim != 2:
            raise ValueError(f"SpeechPreprocess.apply: expected waveforms [N, samples], got {list(waveforms.shape)}")
        x = waveforms.to(torch.float32)
        if waveforms.dtype == torch.int16:
            x = x / 32768.0
        if self.kind == "waveform":
            return normalize_waveforms(x)
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32)
        spec = torch.stft(x, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=window, center=True, pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [N, freqs, frames]
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)
        mel = torch.matmul(fb, power)  # [N, n_mels, frames]
        logmel = torch.log(mel + self.log_floor)
        return ((logmel - self.mean) / self.std).unsqueeze(1)
