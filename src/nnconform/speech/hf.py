"""Hugging Face ``transformers`` wav2vec2 CTC checkpoints as ASR anchors, read from a local folder only.

An anchor's ``weights = "hf:<repo-name>/model.safetensors"`` names ``$NNCONFORM_HF_DIR/<repo-name>/``
(default ``<nnconform cache>/hf/<repo-name>/``), which must hold the checkpoint's ``config.json``,
``model.safetensors`` and ``vocab.json``, copied by hand from the hub repository named in the anchor's
``architecture_kwargs.hub_id``. Nothing is downloaded at run time: a missing file is a
:class:`~nnconform.anchors.WeightsUnavailable` (a skip) naming the files and the folder; a
``model.safetensors`` whose sha256 is not the pinned one is a
:class:`~nnconform.anchors.WeightsIntegrityError` (a failure) naming the file. Only safetensors are
read (``use_safetensors=True``): a pickled ``pytorch_model.bin`` in the folder is never loaded.

The model is wrapped so that it maps the waveform batch ``[N, L]`` (``SpeechPreprocess(kind="waveform")``)
to CTC log-probabilities ``[N, T, V]``, the ASR task's output; its vocabulary, blank (``<pad>``) and
word delimiter (``|``) come from the folder's ``vocab.json`` (:func:`anchor_task`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import SpeechDataset

HF_DIR_ENV = "NNCONFORM_HF_DIR"
#: the files a checkpoint folder must hold (config, weights, vocabulary); never a pickle
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.json")
BLANK_TOKEN = "<pad>"
WORD_DELIMITER = "|"


def hf_root() -> Path:
    """The folder holding one sub-folder per checkpoint: ``NNCONFORM_HF_DIR``, else ``<nnconform cache>/hf``."""
    if os.environ.get(HF_DIR_ENV):
        return Path(os.environ[HF_DIR_ENV])
    from ..paths import default_cache_dir

    return default_cache_dir() / "hf"


def _split_source(source: str) -> tuple[str, str]:
    repo, _, filename = source.removeprefix("hf:").partition("/")
    if not repo or filename != "model.safetensors":
        from ..anchors import ManifestError

        raise ManifestError(f"weights {source!r}: expected 'hf:<repo-name>/model.safetensors'")
    return repo, filename


def hf_folder(repo: str) -> Path:
    """The local folder of checkpoint ``repo`` (e.g. ``wav2vec2-base-960h``)."""
    return hf_root() / repo


def hf_weights_path(source: str) -> Path:
    """The local ``model.safetensors`` that ``hf:<repo-name>/model.safetensors`` stands for."""
    repo, filename = _split_source(source)
    return hf_folder(repo) / filename


def check_folder(repo: str, hub_id: str) -> Path:
    """The checkpoint folder when it holds every file of :data:`REQUIRED_FILES`; else ``WeightsUnavailable``
    naming the missing files, the folder to place them in and the hub repository they come from."""
    from ..anchors import WeightsUnavailable

    folder = hf_folder(repo)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise WeightsUnavailable(
            f"Hugging Face checkpoint {hub_id}: {', '.join(missing)} missing in {folder}. Place "
            f"{', '.join(REQUIRED_FILES)} of https://huggingface.co/{hub_id} there (set {HF_DIR_ENV} to the folder "
            f"holding {repo}/); nnconform never downloads them at run time")
    return folder


class Wav2Vec2CtcLogProbs(nn.Module):
    """A ``transformers.Wav2Vec2ForCTC`` returning CTC log-probabilities ``[N, T, V]`` for waveforms ``[N, L]``
    (``[N, 1, L]`` or ``[N, 1, 1, L]``, the anchor's ``input_shape`` with a batch axis, are flattened to it)."""

    def __init__(self, ctc: nn.Module) -> None:
        super().__init__()
        self.ctc = ctc

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Normalized waveforms -> log-softmax of the CTC head's logits."""
        if waveforms.ndim > 2:
            if any(d != 1 for d in waveforms.shape[1:-1]):
                raise ValueError(f"Wav2Vec2CtcLogProbs: expected waveforms [N, L], got {list(waveforms.shape)}")
            waveforms = waveforms.reshape(waveforms.shape[0], waveforms.shape[-1])
        return torch.log_softmax(self.ctc(input_values=waveforms).logits, dim=-1)


def wav2vec2_ctc(repo: str, hub_id: str, config: dict | None = None) -> Wav2Vec2CtcLogProbs:
    """The architecture with random weights (the anchor's ``architecture``), from the manifest's pinned
    ``Wav2Vec2Config`` fields (``config``, over transformers' defaults): no file needed, so parameter/MAC
    counts and split points work offline. ``repo``/``hub_id`` name the checkpoint the weights come from."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    return Wav2Vec2CtcLogProbs(Wav2Vec2ForCTC(Wav2Vec2Config(**dict(config or {})))).eval()


def build_pretrained(anchor) -> Wav2Vec2CtcLogProbs:
    """The anchor's checkpoint in eval mode: files present, ``model.safetensors`` of the pinned sha256, loaded by
    ``Wav2Vec2ForCTC.from_pretrained`` from the local folder with safetensors only and no network."""
    from transformers import Wav2Vec2ForCTC

    from ..anchors import WeightsIntegrityError
    from ..hashing import sha256_file

    repo, filename = _split_source(anchor.weights)
    folder = check_folder(repo, dict(anchor.architecture_kwargs).get("hub_id", repo))
    actual = sha256_file(folder / filename)
    if actual != anchor.sha256:
        raise WeightsIntegrityError(f"{anchor.name}: {folder / filename} has sha256 {actual}, but the manifest pins "
                                    f"{anchor.sha256}; the file is corrupt, truncated or not the published one")
    read_vocabulary(folder)  # refuse a malformed vocab.json before any evaluation
    try:
        ctc = Wav2Vec2ForCTC.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise WeightsIntegrityError(f"{anchor.name}: {folder} could not be loaded by Wav2Vec2ForCTC: "
                                    f"{type(exc).__name__}: {exc}") from exc
    model = Wav2Vec2CtcLogProbs(ctc).eval()
    params = sum(p.numel() for p in model.parameters())
    if params != anchor.num_params:  # the folder's config.json is not the pinned architecture
        raise WeightsIntegrityError(f"{anchor.name}: {folder / 'config.json'} builds a model of {params:,} parameters, "
                                    f"the manifest documents {anchor.num_params:,}")
    return model


def read_vocabulary(folder: str | Path) -> tuple[str, ...]:
    """The tokens of ``<folder>/vocab.json`` (``{token: id}``) in id order; ids must be exactly 0..V-1 and the
    blank ``<pad>`` and word delimiter ``|`` present."""
    path = Path(folder) / "vocab.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON vocabulary: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
        raise ValueError(f"{path}: expected an object of token -> integer id")
    ids = sorted(table.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{path}: token ids must be 0..{len(ids) - 1} without gaps or repeats")
    tokens = tuple(sorted(table, key=table.__getitem__))
    for needed in (BLANK_TOKEN, WORD_DELIMITER):
        if needed not in table:
            raise ValueError(f"{path}: the token {needed!r} is missing")
    return tokens


def anchor_task(anchor):
    """The ASR task decoding the anchor's vocabulary (blank ``<pad>``, word delimiter ``|``)."""
    from ..tasks import get_task

    repo, _ = _split_source(anchor.weights)
    tokens = read_vocabulary(check_folder(repo, dict(anchor.architecture_kwargs).get("hub_id", repo)))
    return get_task("asr", vocabulary=tokens, blank=tokens.index(BLANK_TOKEN), word_delimiter=WORD_DELIMITER)


@dataclasses.dataclass(frozen=True)
class VocabSpeechDataset(SpeechDataset):
    """A :class:`SpeechDataset` scored with a given ASR task (the anchor's vocabulary), subsets included."""

    asr_task: Any = None

    @property
    def task(self):
        """The ASR task of the anchor whose data this is."""
        return self.asr_task

    def subset(self, indices, name_suffix: str = "") -> "VocabSpeechDataset":
        """As :meth:`SpeechDataset.subset`, keeping the task."""
        base = SpeechDataset.subset(self, indices, name_suffix)
        return VocabSpeechDataset(**{f.name: getattr(base, f.name) for f in dataclasses.fields(SpeechDataset)},
                                  asr_task=self.asr_task)


def anchor_dataset(anchor, dataset: SpeechDataset) -> VocabSpeechDataset:
    """``dataset`` (e.g. ``load_speech_dataset(anchor.dataset)`` or the ``librivox-smoke`` set) scored with the
    anchor's own vocabulary."""
    fields = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(SpeechDataset)}
    return VocabSpeechDataset(**fields, asr_task=anchor_task(anchor))
