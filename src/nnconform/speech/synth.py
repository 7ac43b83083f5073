"""The synthetic speech corpus of the embedded ASR anchor, produced offline with Debian's ``espeak-ng``.

Sentences of 2 to 6 words are drawn (seeded) from a small fixed vocabulary and spoken by espeak-ng
voices: an accent (``-v en-us``, ``en-gb``, ...) with a voice variant (``+m1``, ``+f2``, ...), a
speaking rate (words per minute) and a pitch, each drawn per utterance. The *training* split uses
the train accents and variants; the *test* split uses HELD-OUT voices, none of whose accents or
variants is heard in training (:data:`TEST_ACCENTS` x :data:`TEST_VARIANTS`).

espeak-ng writes 22,050 Hz; the samples are resampled to 16 kHz (``scipy.signal.resample_poly``,
320/441), silence trimmed at both ends and every utterance kept to at most 3 s (a sentence that
runs longer loses its last word until it fits). The corpus is generated once into the cache
(``<cache>/speech/``, a verified :class:`~nnconform.store.ContentStore` entry) under a key that
hashes the whole recipe *and the espeak-ng version*: another espeak-ng release speaks differently,
so it makes another corpus with another fingerprint (the version is in the dataset's ``source``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import DatasetUnavailable
from ..store import ContentStore
from .data import SAMPLE_RATE, SpeechDataset, make_dataset

#: 93 common English words; one homophone pair (right/write) that no acoustic model can tell apart (<= 1% WER)
WORDS = tuple("""
the a one two three four five six seven eight nine ten red green blue black white yellow big small
old new good bad hot cold fast slow open close left right up down stop go turn play find take make
give bring call move show keep put look help run walk read write sing cat dog bird fish horse cow
house door window table chair book phone car bus train boat street city river tree garden water
light music video picture voice world morning evening night today please now then here there
""".split())

TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan")
#: espeak-ng's numbered variants and many of its named ones (not the novelty ones: whisper, robots, croak)
TRAIN_VARIANTS = ("m1", "m2", "m3", "m5", "m6", "m8", "f1", "f2", "f4", "f5", "klatt2", "klatt4", "Alex", "Andy",
                  "Annie", "anika", "announcer", "belinda", "boris", "ed", "john", "linda", "max", "michel",
                  "norbert", "paul", "pablo", "robert", "steph", "quincy", "rob")
TEST_ACCENTS = ("en-029", "en-us-nyc", "en-gb-x-gbcwmd")
TEST_VARIANTS = ("m4", "m7", "f3")


@dataclass(frozen=True)
class CorpusRecipe:
    """Everything that decides the corpus' content (hashed, with the espeak-ng version, into its key)."""

    split: str
    count: int
    seed: int
    accents: tuple[str, ...]
    variants: tuple[str, ...]
    words: tuple[str, ...] = WORDS
    min_words: int = 2
    max_words: int = 6
    rate_wpm: tuple[int, int] = (130, 200)
    pitch: tuple[int, int] = (25, 75)
    max_seconds: float = 3.0
    silence_threshold: int = 64  # |sample| below this at the ends is trimmed as silence
    version: int = 1             # bump when the generation code changes what it produces

    def key(self, espeak_version: str) -> str:
        """The cache key: the split and a sha256 of the recipe and the espeak-ng version."""
        blob = json.dumps({"recipe": asdict(self), "espeak_ng": espeak_version}, sort_keys=True).encode()
        return f"espeak-{self.split}-{hashlib.sha256(blob).hexdigest()[:24]}"


RECIPES = {
    # training speaks faster, slower, higher and lower than the test set: more variety to generalize from
    "train": CorpusRecipe("train", 4000, 1301, TRAIN_ACCENTS, TRAIN_VARIANTS, rate_wpm=(120, 210), pitch=(20, 80)),
    "test": CorpusRecipe("test", 300, 1302, TEST_ACCENTS, TEST_VARIANTS),
}
DATASET_NAME = "espeak-synth"


def espeak_version() -> str:
    """The installed espeak-ng's version (``DatasetUnavailable`` when it is not installed)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetUnavailable("espeak-ng is not installed; the embedded ASR anchor's speech is generated with "
                                 "it: `sudo apt-get install espeak-ng`")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def speak(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """espeak-ng's 16-bit output for ``text``, resampled to 16 kHz, as int16 samples."""
    from scipy.signal import resample_poly

    proc = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                          capture_output=True, check=True)
    with wave.open(io.BytesIO(proc.stdout), "rb") as w:
        rate_in = w.getframerate()
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    g = np.gcd(SAMPLE_RATE, rate_in)
    y = resample_poly(raw, SAMPLE_RATE // g, rate_in // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def _trim(samples: np.ndarray, threshold: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= threshold)
    if loud.size == 0:
        return samples[:0]
    pad = SAMPLE_RATE // 20  # keep 50 ms around the speech: the model sees a little silence
    return samples[max(0, loud[0] - pad):loud[-1] + 1 + pad]


def _utterance(words: list[str], voice: str, rate: int, pitch: int, limit: int, threshold: int):
    """Speak ``words``; a sentence longer than ``limit`` samples loses its last word until it fits."""
    while True:
        samples = _trim(speak(" ".join(words), voice, rate, pitch), threshold)
        if samples.size <= limit or len(words) == 1:
            return samples[:limit], " ".join(words)
        words = words[:-1]


def generate(recipe: CorpusRecipe, workers: int | None = None) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Speak the recipe's utterances: (int16 samples, transcripts, utterance ids with their voice).

    Every utterance's words, voice, rate and pitch are drawn first, in order, from the seeded generator; then the
    espeak-ng processes run ``workers`` at a time (default: one per CPU), so the corpus does not depend on them."""
    rng = random.Random(recipe.seed)
    limit = int(recipe.max_seconds * SAMPLE_RATE)
    jobs, ids = [], []
    for n in range(recipe.count):
        words = [rng.choice(recipe.words) for _ in range(rng.randint(recipe.min_words, recipe.max_words))]
        voice = f"{rng.choice(recipe.accents)}+{rng.choice(recipe.variants)}"
        rate, pitch = rng.randint(*recipe.rate_wpm), rng.randint(*recipe.pitch)
        jobs.append((words, voice, rate, pitch, limit, recipe.silence_threshold))
        ids.append(f"{recipe.split}-{n:05d}-{voice}-s{rate}-p{pitch}")
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:  # each job waits on a process
        spoken = list(pool.map(lambda job: _utterance(*job), jobs))
    return [w for w, _ in spoken], [t for _, t in spoken], ids


def load_synthetic(split: str, cache_dir: str | Path, recipe: CorpusRecipe | None = None) -> SpeechDataset:
    """The espeak-ng corpus ``train`` or ``test`` (held-out voices), generated once into ``cache_dir``."""
    if recipe is None:
        if split not in RECIPES:
            raise ValueError(f"{DATASET_NAME} split must be one of {sorted(RECIPES)}, got {split!r}")
        recipe = RECIPES[split]
    version = espeak_version()
    key = recipe.key(version)
    store = ContentStore(Path(cache_dir) / "speech", "speech corpus cache")
    entry = store.get(key)
    if entry is None:
        waves, texts, ids = generate(recipe)
        lengths = np.asarray([w.size for w in waves], dtype=np.int64)
        entry = store.put(key, {"samples.bin": np.concatenate(waves).astype("<i2").tobytes(),
                                "lengths.bin": lengths.astype("<i8").tobytes(),
                                "utterances.json": json.dumps({"ids": ids, "texts": texts}).encode()},
                          {"recipe": asdict(recipe), "espeak_ng": version})
    samples = np.frombuffer(entry.files["samples.bin"], dtype="<i2")
    lengths = np.frombuffer(entry.files["lengths.bin"], dtype="<i8")
    meta = json.loads(entry.files["utterances.json"])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    waves = [torch.from_numpy(samples[a:b].astype(np.int16)) for a, b in zip(bounds[:-1], bounds[1:])]
    return make_dataset(DATASET_NAME, recipe.split, waves, meta["texts"], meta["ids"],
                        f"espeak-ng {version}, recipe {key}", num_samples=int(recipe.max_seconds * SAMPLE_RATE),
                        extra_fingerprint=json.dumps({"recipe": asdict(recipe), "espeak_ng": version},
                                                     sort_keys=True))
