"""Speech recognition (TR 26.847 scenario 1): CTC log-probabilities [N, T, V] over a vocabulary, greedy
CTC decoding to text, word error rate from ``jiwer`` on normalized text.

Per utterance the task keeps the word errors (substitutions + deletions + insertions of the minimum edit
alignment) and the reference word count; WER = total errors / total reference words, so the paired
bootstrap resamples utterances and recomputes that ratio of sums on each draw.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np
import torch

from .base import SampleScores, Task, register_task

_SPACES = re.compile(r"\s+")
_APOSTROPHES = frozenset("'\u2019")


def normalize_text(text: str) -> str:
    """The WER text normalization, applied to references and hypotheses alike: lower case (Unicode
    ``str.lower``); apostrophes (' and U+2019) deleted, so "Don't" and "dont" are one word; every other
    punctuation character (Unicode categories P*: hyphens, dashes, commas, quotes, ...) replaced by a space;
    runs of whitespace collapsed to one space and leading/trailing whitespace stripped."""
    lowered = text.lower()
    kept = "".join("" if ch in _APOSTROPHES else " " if unicodedata.category(ch).startswith("P") else ch
                   for ch in lowered)
    return _SPACES.sub(" ", kept).strip()


def ctc_greedy_decode(log_probs: torch.Tensor, vocabulary: Sequence[str], *, blank: int = 0,
                      word_delimiter: str = "|") -> list[str]:
    """Best-path CTC decoding of [N, T, V] (or [T, V]) scores: argmax per frame, repeats collapsed, blanks
    dropped, tokens joined; ``word_delimiter`` tokens become spaces (wav2vec2's ``|``), whitespace collapsed."""
    if log_probs.ndim == 2:
        log_probs = log_probs.unsqueeze(0)
    if log_probs.ndim != 3 or log_probs.shape[2] != len(vocabulary):
        raise ValueError(f"CTC decoding: scores of shape {tuple(log_probs.shape)} do not fit [N, T, V] with a "
                         f"vocabulary of {len(vocabulary)} tokens")
    if not 0 <= blank < len(vocabulary):
        raise ValueError(f"CTC decoding: blank index {blank} outside the vocabulary of {len(vocabulary)} tokens")
    best = log_probs.argmax(2)
    texts = []
    for row in best.tolist():
        tokens, prev = [], None
        for idx in row:
            if idx != prev and idx != blank:
                tokens.append(vocabulary[idx])
            prev = idx
        text = "".join(" " if t == word_delimiter else t for t in tokens)
        texts.append(_SPACES.sub(" ", text).strip())
    return texts


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance word errors (S + D + I of jiwer's minimum edit alignment) and reference word counts, on
    normalized text. An utterance whose normalized reference is empty has 0 reference words and counts every
    hypothesis word as an insertion (jiwer refuses empty references, so it is counted here)."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"WER: {len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    errors = np.zeros(len(refs), dtype=np.int64)
    ref_words = np.array([len(r.split()) for r in refs], dtype=np.int64)
    scored = [i for i, r in enumerate(refs) if r]
    for i, r in enumerate(refs):
        if not r:
            errors[i] = len(hyps[i].split())
    if scored:
        out = jiwer.process_words([refs[i] for i in scored], [hyps[i] for i in scored])
        for i, chunks in zip(scored, out.alignments):
            for c in chunks:
                if c.type in ("substitute", "delete"):
                    errors[i] += c.ref_end_idx - c.ref_start_idx
                elif c.type == "insert":
                    errors[i] += c.hyp_end_idx - c.hyp_start_idx
        total = out.substitutions + out.deletions + out.insertions
        if int(errors[scored].sum()) != total:  # the per-utterance split must add up to jiwer's own total
            raise RuntimeError(f"WER: per-utterance errors sum to {int(errors[scored].sum())}, jiwer counts {total}")
    return errors, ref_words


@register_task
class AsrTask(Task):
    """Speech recognition: word error rate (lower is better) of greedy-CTC-decoded hypotheses."""

    name = "asr"
    metric = "wer"
    metric_label = "WER"
    higher_is_better = False
    outputs_description = "CTC log-probabilities [N, T, V] over the model's vocabulary (padded frames: blank)"

    def __init__(self, vocabulary: Sequence[str] | None = None, *, blank: int = 0, word_delimiter: str = "|") -> None:
        self.vocabulary = tuple(vocabulary) if vocabulary is not None else None
        self.blank = blank
        self.word_delimiter = word_delimiter

    def _vocab(self) -> tuple[str, ...]:
        if self.vocabulary is None:
            raise ValueError("asr: decoding needs the model's vocabulary: get_task('asr', vocabulary=[...])")
        return self.vocabulary

    def check_outputs(self, outputs: torch.Tensor, num_samples: int) -> None:
        """CTC scores must be [N, T, V] with V the vocabulary's size (when known)."""
        v = len(self.vocabulary) if self.vocabulary is not None else None
        if outputs.ndim != 3 or outputs.shape[0] != num_samples or (v is not None and outputs.shape[2] != v):
            raise ValueError(f"asr: model outputs have shape {tuple(outputs.shape)}, expected ({num_samples}, T, "
                             f"{v if v is not None else 'V'}) CTC log-probabilities")

    def concat_outputs(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """Batches of different lengths T padded at the end with frames certain of the blank (log-prob 0 on
        blank, the float32 minimum elsewhere: finite, and greedy decoding drops them)."""
        batches = list(batches)
        t_max = max(b.shape[1] for b in batches)
        low = torch.finfo(torch.float32).min
        out = []
        for b in batches:
            if b.shape[1] < t_max:
                pad = torch.full((b.shape[0], t_max - b.shape[1], b.shape[2]), low, dtype=b.dtype)
                pad[:, :, self.blank] = 0.0
                b = torch.cat([b, pad], dim=1)
            out.append(b)
        return torch.cat(out)

    def decode(self, outputs: torch.Tensor) -> list[str]:
        """Greedy CTC hypotheses of every utterance."""
        return ctc_greedy_decode(outputs, self._vocab(), blank=self.blank, word_delimiter=self.word_delimiter)

    def scores(self, outputs: torch.Tensor, labels: Sequence[str]) -> SampleScores:
        """Per-utterance word errors and reference words (and the hypothesis text, for the report)."""
        hyps = self.decode(outputs)
        errors, ref_words = word_errors(list(labels), hyps)
        return SampleScores(self.name, {"errors": errors, "ref_words": ref_words,
                                        "hypothesis": np.array(hyps, dtype=object)})

    def aggregate(self, scores: SampleScores, indices: np.ndarray | None = None) -> float:
        """WER = total word errors / total reference words (over ``indices`` when given)."""
        e, w = scores["errors"], scores["ref_words"]
        if indices is not None:
            e, w = e[indices], w[indices]
        total = int(w.sum())
        if total == 0:
            raise ValueError("asr: WER is undefined: the references hold no words after normalization")
        return float(e.sum() / total)

    def aggregate_resamples(self, scores: SampleScores, draws: np.ndarray) -> np.ndarray:
        """WER of each resample row (vectorized; a draw with no reference words gives NaN)."""
        words = scores["ref_words"][draws].sum(axis=1).astype(np.float64)
        errs = scores["errors"][draws].sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(words > 0, errs / np.where(words > 0, words, 1), np.nan)

    def format_value(self, value: float) -> str:
        """WER in percent ("4.21%"); a difference reads as WER points."""
        return f"{value * 100:.2f}%"
