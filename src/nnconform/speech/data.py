"""Speech datasets: a LibriSpeech-layout loader, the hub path, and the LibriVox smoke set.

Every dataset is a :class:`SpeechDataset`: int16 16 kHz waveforms with their normalized transcripts,
padded (with silence) to one length per dataset, so that a batch is a fixed-shape tensor like a batch
of images. Its fingerprint is the sha256 of the decoded samples and transcripts.

Sources:
* a local LibriSpeech folder (``<root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` and
  ``<speaker>-<chapter>.trans.txt``; ``.wav`` is read too), found as ``<dir>``,
  ``<dir>/<split>`` or ``<dir>/LibriSpeech/<split>``, with ``<dir>`` from ``NNCONFORM_LIBRISPEECH_DIR``;
* the Hugging Face hub (``openslr/librispeech_asr``, config ``clean``/``other``, split ``test``)
  through ``datasets`` when online;
* ``librivox-smoke``: the five LibriVox utterances of Debian's ``pocketsphinx-testdata``
  (BSD-licensed), laid out as a LibriSpeech folder in the cache and read by the same loader.
  Five utterances of one speaker: a smoke check, not a benchmark.
"""

from __future__ import annotations

import os
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data import DatasetUnavailable
from ..hashing import arrays_sha256
from .features import SpeechPreprocess
from .text import VOCABULARY, normalize_transcript

SAMPLE_RATE = 16_000
LIBRISPEECH_HUB_ID = "openslr/librispeech_asr"
LIBRISPEECH_ENV = "NNCONFORM_LIBRISPEECH_DIR"
#: LibriSpeech split name -> (hub config, hub split, OpenSLR archive)
LIBRISPEECH_SPLITS = {
    "test-clean": ("clean", "test", "https://www.openslr.org/resources/12/test-clean.tar.gz"),
    "test-other": ("other", "test", "https://www.openslr.org/resources/12/test-other.tar.gz"),
}
POCKETSPHINX_LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class SpeechDataError(ValueError):
    """A speech data folder or file that is not what it should be; the message names the file."""


@dataclass(frozen=True)
class SpeechDataset:
    """Transcribed utterances: int16 waveforms (each its own length), padded to ``num_samples`` in batches."""

    name: str
    split: str
    waveforms: tuple[torch.Tensor, ...]  # int16 [samples] each
    labels: tuple[str, ...]              # normalized transcripts
    utterance_ids: tuple[str, ...]
    source: str
    fingerprint: str
    num_samples: int                     # the fixed padded length of every batch
    smoke: bool = False
    indices: tuple[int, ...] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def task(self):
        """The task the evaluator scores this data with: ASR (WER) decoding the embedded vocabulary."""
        from ..tasks import get_task

        return get_task("asr", vocabulary=VOCABULARY)

    @property
    def lengths(self) -> torch.Tensor:
        """Each utterance's length in samples (before padding)."""
        return torch.tensor([int(w.numel()) for w in self.waveforms], dtype=torch.long)

    @property
    def seconds(self) -> float:
        """Total speech duration, padding excluded."""
        return float(self.lengths.sum()) / SAMPLE_RATE

    def subset(self, indices: Sequence[int], name_suffix: str = "") -> "SpeechDataset":
        """A fixed subset with its own fingerprint (same padded length as the whole set)."""
        idx = [int(i) for i in indices]
        fp = arrays_sha256(np.frombuffer(self.fingerprint.encode(), np.uint8), np.asarray(idx, dtype=np.int64))
        return SpeechDataset(self.name + name_suffix, self.split, tuple(self.waveforms[i] for i in idx),
                             tuple(self.labels[i] for i in idx), tuple(self.utterance_ids[i] for i in idx),
                             self.source, fp, self.num_samples, self.smoke, tuple(idx), self.notes)

    def padded(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """int16 ``[n, num_samples]`` of utterances ``start:stop``, zero-padded at the end."""
        chunk = self.waveforms[start:stop]
        out = torch.zeros((len(chunk), self.num_samples), dtype=torch.int16)
        for row, w in enumerate(chunk):
            out[row, :w.numel()] = w
        return out

    def batches(self, preprocess: SpeechPreprocess, batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Yield ``(features [n, 1, n_mels, frames], transcripts)`` in dataset order; frames fixed per dataset."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield preprocess.apply(self.padded(start, stop)), list(self.labels[start:stop])


def make_dataset(name: str, split: str, waveforms: Sequence[torch.Tensor], transcripts: Sequence[str],
                 utterance_ids: Sequence[str], source: str, *, num_samples: int | None = None, smoke: bool = False,
                 extra_fingerprint: str = "", notes: tuple[str, ...] = ()) -> SpeechDataset:
    """A :class:`SpeechDataset` with its fingerprint computed from the samples and transcripts."""
    waves = tuple(w.to(torch.int16).contiguous() for w in waveforms)
    labels = tuple(normalize_transcript(t) for t in transcripts)
    longest = max((int(w.numel()) for w in waves), default=0)
    if num_samples is None:
        num_samples = longest
    elif longest > num_samples:
        raise SpeechDataError(f"{name}/{split}: an utterance of {longest} samples is longer than the fixed "
                              f"length {num_samples}")
    text = "\n".join(f"{u}\t{t}" for u, t in zip(utterance_ids, labels)).encode()
    fp = arrays_sha256(np.frombuffer(extra_fingerprint.encode(), np.uint8), np.frombuffer(text, np.uint8),
                       *(w.numpy() for w in waves))
    return SpeechDataset(name, split, waves, labels, tuple(utterance_ids), source, fp, num_samples, smoke,
                         notes=notes)


# ---------------------------------------------------------------------------------------------
# audio files


def read_audio(path: str | Path) -> torch.Tensor:
    """A mono 16 kHz audio file (16-bit PCM ``.wav``, or ``.flac`` through ``soundfile``) as int16 samples.

    Raises :class:`SpeechDataError` naming the file when it is unreadable, not mono, not 16 kHz or empty.
    """
    path = Path(path)
    if path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path), "rb") as w:
                channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
                raw = w.readframes(w.getnframes())
        except (wave.Error, EOFError, OSError) as exc:
            raise SpeechDataError(f"{path}: not a readable WAV file ({exc})") from None
        if width != 2:
            raise SpeechDataError(f"{path}: {8 * width}-bit samples; only 16-bit PCM WAV is read")
        samples = np.frombuffer(raw, dtype="<i2")
    elif path.suffix.lower() == ".flac":
        try:
            import soundfile
        except ImportError:
            raise SpeechDataError(f"{path}: reading FLAC needs the soundfile package (in requirements.lock: "
                                  f"`make setup`)") from None
        try:
            data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
        except Exception as exc:  # soundfile raises its own LibsndfileError and RuntimeError subclasses
            raise SpeechDataError(f"{path}: not a readable FLAC file ({exc})") from None
        channels, samples = data.shape[1], data.reshape(-1)
    else:
        raise SpeechDataError(f"{path}: unknown audio type {path.suffix!r} (expected .flac or .wav)")
    if channels != 1:
        raise SpeechDataError(f"{path}: {channels} channels; speech files must be mono")
    if rate != SAMPLE_RATE:
        raise SpeechDataError(f"{path}: sample rate {rate} Hz; expected {SAMPLE_RATE} Hz")
    if samples.size == 0:
        raise SpeechDataError(f"{path}: no audio samples")
    return torch.from_numpy(samples.astype(np.int16).copy())


def write_wav(path: str | Path, samples: torch.Tensor | np.ndarray) -> None:
    """Write int16 mono 16 kHz samples as a PCM WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


# ---------------------------------------------------------------------------------------------
# LibriSpeech layout


def read_transcripts(path: Path) -> dict[str, str]:
    """A LibriSpeech ``*.trans.txt``: one ``<utterance-id> <TRANSCRIPT>`` per line."""
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        if not _UTT.match(utt) or not text.strip():
            raise SpeechDataError(f"{path}:{n}: expected '<speaker>-<chapter>-<utterance> TRANSCRIPT', got {line!r}")
        out[utt] = text
    return out


def load_librispeech_folder(root: str | Path, *, name: str = "librispeech", split: str = "test",
                            smoke: bool = False, num_samples: int | None = None) -> SpeechDataset:
    """Every utterance under a LibriSpeech-layout folder, sorted by utterance id.

    Each audio file needs its line in its chapter's ``<speaker>-<chapter>.trans.txt`` and each
    transcript line its audio file; either missing raises :class:`SpeechDataError` naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpeechDataError(f"{root}: no such LibriSpeech folder")
    audio = sorted(p for p in root.glob("*/*/*") if p.suffix.lower() in (".flac", ".wav"))
    if not audio:
        raise SpeechDataError(f"{root}: no <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac or .wav files")
    transcripts: dict[Path, dict[str, str]] = {}
    waves, texts, ids = [], [], []
    for path in audio:
        utt = path.stem
        m = _UTT.match(utt)
        if not m or (m.group(1), m.group(2)) != (path.parent.parent.name, path.parent.name):
            raise SpeechDataError(f"{path}: expected <speaker>/<chapter>/<speaker>-<chapter>-<utterance>"
                                  f"{path.suffix} with the folder names")
        trans_path = path.parent / f"{m.group(1)}-{m.group(2)}.trans.txt"
        if trans_path not in transcripts:
            if not trans_path.is_file():
                raise SpeechDataError(f"{path}: its transcript file {trans_path} is missing")
            transcripts[trans_path] = read_transcripts(trans_path)
        if utt not in transcripts[trans_path]:
            raise SpeechDataError(f"{path}: no line for {utt} in {trans_path}")
        waves.append(read_audio(path))
        texts.append(transcripts[trans_path][utt])
        ids.append(utt)
    have = set(ids)
    for trans_path, lines in transcripts.items():
        orphans = sorted(set(lines) - have)
        if orphans:
            raise SpeechDataError(f"{trans_path}: transcripts without an audio file: {', '.join(orphans[:5])}")
    return make_dataset(name, split, waves, texts, ids, str(root), smoke=smoke, num_samples=num_samples)


def librispeech_howto(split: str) -> str:
    """What to download and where to put it for a LibriSpeech split."""
    config, hub_split, url = LIBRISPEECH_SPLITS[split]
    return (f"LibriSpeech {split} is not available offline. Download {url}, extract it (it unpacks to "
            f"LibriSpeech/{split}/<speaker>/<chapter>/*.flac with *.trans.txt), and point "
            f"{LIBRISPEECH_ENV} at the folder holding LibriSpeech/ (or at LibriSpeech/{split} itself); "
            f"online, the Hugging Face dataset {LIBRISPEECH_HUB_ID} (config {config!r}, split {hub_split!r}) "
            f"is used instead")


def _local_librispeech(split: str, folder: Path) -> Path | None:
    for candidate in (folder / "LibriSpeech" / split, folder / split, folder):
        if candidate.is_dir() and any(candidate.glob("*/*/*.trans.txt")):
            return candidate
    return None


def load_librispeech(split: str = "test-clean", data_dir: str | Path | None = None) -> SpeechDataset:
    """LibriSpeech ``test-clean``/``test-other``: a local folder (``data_dir`` or the env var), else the hub."""
    if split not in LIBRISPEECH_SPLITS:
        raise ValueError(f"LibriSpeech split must be one of {sorted(LIBRISPEECH_SPLITS)}, got {split!r}")
    folder = data_dir or os.environ.get(LIBRISPEECH_ENV)
    if folder:
        found = _local_librispeech(split, Path(folder))
        if found is None:
            raise DatasetUnavailable(f"{folder}: no LibriSpeech {split} folder in it (searched "
                                     f"{folder}/LibriSpeech/{split}, {folder}/{split} and {folder}). "
                                     + librispeech_howto(split))
        return load_librispeech_folder(found, name="librispeech", split=split)
    return _librispeech_from_hub(split)


def _librispeech_from_hub(split: str) -> SpeechDataset:
    howto = librispeech_howto(split)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("NNCONFORM_OFFLINE") == "1":
        raise DatasetUnavailable(howto)
    config, hub_split, _ = LIBRISPEECH_SPLITS[split]
    try:
        import datasets

        hf = datasets.load_dataset(LIBRISPEECH_HUB_ID, config, split=hub_split)
        hf = hf.cast_column("audio", datasets.Audio(sampling_rate=SAMPLE_RATE))
        waves, texts, ids = [], [], []
        for row in hf:
            waves.append(torch.from_numpy(np.round(np.asarray(row["audio"]["array"]) * 32768.0)
                                          .clip(-32768, 32767).astype(np.int16)))
            texts.append(row["text"])
            ids.append(str(row["id"]))
    except Exception as exc:  # no network, hub down, package missing: all end the same way
        raise DatasetUnavailable(f"{howto} (the Hugging Face hub failed: {type(exc).__name__}: {exc})") from exc
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return make_dataset("librispeech", split, [waves[i] for i in order], [texts[i] for i in order],
                        [ids[i] for i in order], f"hf://{LIBRISPEECH_HUB_ID}/{config}/{hub_split}")


# ---------------------------------------------------------------------------------------------
# LibriVox smoke set (pocketsphinx-testdata)

#: the pocketsphinx file stem -> the LibriSpeech-style id it gets (speaker 0, chapter 1: not LibriSpeech's)
_SMOKE_PATTERN = re.compile(r"^<s> (.*) </s> \((\S+)\)$")


def build_librivox_layout(target: str | Path, source: str | Path = POCKETSPHINX_LIBRIVOX) -> Path:
    """Lay the pocketsphinx LibriVox utterances out as a LibriSpeech folder under ``target``; returns it.

    ``source/transcription`` holds ``<s> text </s> (file-stem)`` lines; each ``file-stem.wav`` becomes
    ``target/0/1/0-1-<n>.wav`` (n = the stem's trailing number) and its line goes into ``0-1.trans.txt``.
    """
    source, target = Path(source), Path(target)
    listing = source / "transcription"
    if not listing.is_file():
        raise DatasetUnavailable(f"LibriVox smoke utterances not found ({listing} is missing): "
                                 f"`sudo apt-get install pocketsphinx-testdata`")
    chapter = target / "0" / "1"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _SMOKE_PATTERN.match(line.strip())
        if not m:
            raise SpeechDataError(f"{listing}:{n}: expected '<s> text </s> (file-stem)', got {line!r}")
        text, stem = m.groups()
        wav = source / f"{stem}.wav"
        if not wav.is_file():
            raise SpeechDataError(f"{listing}:{n}: {wav} is missing")
        utt = f"0-1-{int(stem.rsplit('-', 1)[-1]):04d}"
        _write_atomic(chapter / f"{utt}.wav", wav.read_bytes())
        lines.append(f"{utt} {text.upper()}")
    _write_atomic(chapter / "0-1.trans.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    return target


def _write_atomic(path: Path, data: bytes) -> None:
    """Write by rename, so runs sharing a cache folder never read a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_librivox_smoke(cache_dir: str | Path) -> SpeechDataset:
    """The five pocketsphinx LibriVox utterances, through the LibriSpeech loader (a smoke set)."""
    folder = build_librivox_layout(Path(cache_dir) / "speech" / "librivox-smoke")
    ds = load_librispeech_folder(folder, name="librivox-smoke", split="test", smoke=True)
    return ds
