"""Transcripts: the character vocabulary of the embedded ASR anchor and the text normalization.

Normalization (stated in every report that shows a WER): lower case; every character outside
``a-z``, the apostrophe and the space becomes a space; runs of spaces collapse; ends trimmed.
LibriSpeech transcripts are upper case with apostrophes, so they pass through unchanged but for case.
"""

from __future__ import annotations

import re

import torch

BLANK = "<blank>"
#: index 0 is the CTC blank, then space, apostrophe and a-z (29 symbols)
VOCABULARY: tuple[str, ...] = (BLANK, " ", "'") + tuple("abcdefghijklmnopqrstuvwxyz")
NORMALIZATION = "lower case; characters other than a-z, apostrophe and space become spaces; spaces collapsed"
_OTHER = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")


def normalize_transcript(text: str) -> str:
    """The normalized form compared for WER (see the module docstring)."""
    return _SPACES.sub(" ", _OTHER.sub(" ", text.lower())).strip()


def encode(text: str) -> list[int]:
    """Vocabulary indices of a normalized transcript; ``ValueError`` names a character outside it."""
    index = {c: i for i, c in enumerate(VOCABULARY)}
    try:
        return [index[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"transcript {text!r}: character {exc.args[0]!r} is not in the vocabulary "
                         f"(normalize it first: nnconform.speech.text.normalize_transcript)") from None


def greedy_decode(logits: torch.Tensor, vocabulary: tuple[str, ...] = VOCABULARY) -> list[str]:
    """Best-path CTC decoding of ``[N, classes, frames]`` logits: argmax, merge repeats, drop blanks."""
    best = logits.argmax(1)
    texts = []
    for row in best.tolist():
        chars, prev = [], None
        for i in row:
            if i != prev and i != 0:
                chars.append(vocabulary[i])
            prev = i
        texts.append(_SPACES.sub(" ", "".join(chars)).strip())
    return texts
