"""The committed, deterministic training recipe of the embedded ASR anchor (issue 13, TR 26.847 scenario 1).

``python -m nnconform.zoo build --only espeak-convctc`` generates the espeak-ng corpus into the cache
(:mod:`nnconform.speech.synth`: 4,000 training utterances from train voices, 300 test utterances from
held-out voices), trains :class:`~nnconform.zoo.asr_model.ConvCTC` with CTC loss (seeded, one thread,
deterministic algorithms), writes a checkpoint lineage (epoch milestones and a fine-tuned update) as
safetensors under ``anchors/zoo/espeak-convctc/`` and measures each checkpoint's WER on the held-out
voices (greedy CTC decoding, :mod:`nnconform.tasks.asr` for the word errors). Like the image zoo, the
bytes are reproducible on the machine that built them and the WER to a band elsewhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..hashing import sha256_file
from ..profile import count_macs, count_params
from ..speech.features import SpeechPreprocess
from ..speech.text import NORMALIZATION, VOCABULARY, encode
from .asr_model import ConvCTC

ASR_PREPROCESS = SpeechPreprocess()
SEED = 20261130


@dataclass(frozen=True)
class AsrRecipe:
    """Training hyper-parameters of the embedded ASR anchor."""

    anchor: str = "espeak-convctc"
    epochs: int = 16
    milestones: tuple[int, ...] = (4, 8, 12, 16)  # epochs saved as checkpoints (the last is the anchor)
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    finetune_modules: tuple[str, ...] = ("blocks.6", "head")
    finetune_lr: float = 5e-4
    freq_mask: int = 8    # SpecAugment: one band of up to this many mel bins per utterance
    time_mask: int = 25   # ... and two spans of up to this many frames
    # a default anchor: the three criteria run on it (anchors/zoo.toml says so too; a rebuild must not flip it)
    default: bool = True


ASR_RECIPES = (AsrRecipe(),)


def _spec_augment(x: torch.Tensor, recipe: AsrRecipe, gen: torch.Generator) -> torch.Tensor:
    """Zero (the features' mean) one random mel band and two random time spans per utterance."""
    n, _, mels, frames = x.shape
    f_width = torch.randint(0, recipe.freq_mask + 1, (n, 1), generator=gen)
    f_start = (torch.rand(n, 1, generator=gen) * (mels - f_width)).long()
    bins = torch.arange(mels).view(1, -1)
    keep = ~((bins >= f_start) & (bins < f_start + f_width))  # [n, mels]
    mask = keep.view(n, 1, mels, 1).expand(n, 1, mels, frames).clone()
    steps = torch.arange(frames).view(1, -1)
    for _ in range(2):
        t_width = torch.randint(0, recipe.time_mask + 1, (n, 1), generator=gen)
        t_start = (torch.rand(n, 1, generator=gen) * (frames - t_width)).long()
        hit = (steps >= t_start) & (steps < t_start + t_width)  # [n, frames]
        mask &= ~hit.view(n, 1, 1, frames)
    return x * mask


def features(dataset, preprocess: SpeechPreprocess = ASR_PREPROCESS, chunk: int = 256) -> torch.Tensor:
    """The whole dataset's padded log-mel features ``[N, 1, n_mels, frames]`` (float32)."""
    return torch.cat([x for x, _ in dataset.batches(preprocess, chunk)])


@torch.inference_mode()
def evaluate_wer(model: nn.Module, x: torch.Tensor, transcripts, batch_size: int = 100) -> tuple[float, list[str]]:
    """WER (total word errors / reference words) of greedy CTC decoding, and the hypotheses."""
    from ..tasks.asr import ctc_greedy_decode, word_errors

    model.eval()
    hyps: list[str] = []
    for i in range(0, len(x), batch_size):
        hyps += ctc_greedy_decode(model(x[i:i + batch_size]), VOCABULARY)
    errors, words = word_errors(list(transcripts), hyps)
    return float(errors.sum() / words.sum()), hyps


def _length_batches(frames: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Batches of similar length (sorted after a seeded shuffle, so ties break differently each epoch), in
    shuffled order: about half the compute of padding every batch to the corpus' 3 s."""
    perm = torch.randperm(len(frames), generator=gen)
    order = perm[torch.argsort(frames[perm], stable=True)]
    batches = list(order.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _train_epochs(model, params, x, frames, targets, target_lengths, recipe: AsrRecipe, *, epochs, lr, gen,
                  on_epoch, frozen=()):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), target_lengths.cumsum(0)])
    for epoch in range(1, epochs + 1):
        model.train()
        for m in frozen:
            m.eval()  # frozen BatchNorm keeps its running statistics
        for idx in _length_batches(frames, recipe.batch_size, gen):
            # cut the batch to its longest utterance plus a random 0-50 frames of the padding silence, so the
            # model keeps learning that silence after speech is blank (evaluation pads to 3 s)
            keep = min(x.shape[3], int(frames[idx].max()) + int(torch.randint(0, 51, (1,), generator=gen)))
            xb = _spec_augment(x[idx][..., :keep], recipe, gen)
            tb = torch.cat([targets[offsets[j]:offsets[j + 1]] for j in idx.tolist()])
            log_probs = model(xb)  # [n, T, V]
            lengths = torch.full((len(idx),), log_probs.shape[1], dtype=torch.long)
            loss = ctc(log_probs.permute(1, 0, 2), tb, lengths, target_lengths[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
        on_epoch(epoch, float(loss.detach()))


def build_asr_anchor(recipe: AsrRecipe, out_root: Path, cache_dir: Path, log=print) -> dict:
    """Train the ASR recipe, write its checkpoints under ``out_root/<anchor>``, return its manifest entry."""
    from ..speech.synth import load_synthetic

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    train, test = load_synthetic("train", cache_dir), load_synthetic("test", cache_dir)
    x, x_test = features(train), features(test)
    frames = torch.tensor([ASR_PREPROCESS.frames(n) for n in train.lengths.tolist()], dtype=torch.long)
    encoded = [encode(t) for t in train.labels]
    targets = torch.tensor([i for e in encoded for i in e], dtype=torch.long)
    target_lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    log(f"{recipe.anchor}: corpus ready ({len(train)} train, {len(test)} held-out test utterances, "
        f"{train.source}; {time.time() - t0:.0f}s)")
    model = ConvCTC(n_mels=ASR_PREPROCESS.n_mels, vocab_size=len(VOCABULARY))
    folder = out_root / recipe.anchor
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = []

    def save(name: str, note: str) -> None:
        path = folder / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        # One metadata key only: a multi-key map is written in an order that varies between processes.
        save_file(state, str(path), metadata={"nnconform": f"{recipe.anchor}/{name}"})
        wer, hyps = evaluate_wer(model, x_test, test.labels)
        checkpoints.append({"name": name, "path": str(path.relative_to(out_root.parent)),
                            "sha256": sha256_file(path), "wer": round(wer, 6), "note": note})
        log(f"{recipe.anchor} {name}: held-out WER {100 * wer:.2f}% (e.g. {test.labels[0]!r} -> {hyps[0]!r}; "
            f"{time.time() - t0:.0f}s)")

    def on_epoch(epoch: int, loss: float) -> None:
        log(f"{recipe.anchor} epoch {epoch}: last batch CTC loss {loss:.3f} ({time.time() - t0:.0f}s)")
        if epoch in recipe.milestones:
            save(f"epoch{epoch}", f"end of epoch {epoch} of {recipe.epochs}")

    _train_epochs(model, list(model.parameters()), x, frames, targets, target_lengths, recipe, epochs=recipe.epochs,
                  lr=recipe.lr, gen=gen, on_epoch=on_epoch)

    # The update: retrain only the last block and the head for one epoch, the rest frozen.
    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for n in recipe.finetune_modules for p in modules[n].parameters()]
    for p in params:
        p.requires_grad_(True)
    frozen = [m for n, m in model.named_modules()
              if isinstance(m, nn.BatchNorm1d) and not any(n.startswith(f) for f in recipe.finetune_modules)]
    _train_epochs(model, params, x, frames, targets, target_lengths, recipe, epochs=1, lr=recipe.finetune_lr, gen=gen,
                  frozen=frozen, on_epoch=lambda e, loss: save(
                      "finetune", f"one epoch retraining only {', '.join(recipe.finetune_modules)}"))
    for p in model.parameters():
        p.requires_grad_(True)
    log(f"{recipe.anchor}: trained in {time.time() - t0:.0f}s")

    final = next(c for c in checkpoints if c["name"] == f"epoch{recipe.epochs}")
    frames = ASR_PREPROCESS.frames(test.num_samples)
    return {
        "family": "zoo",
        "task": "asr",
        "architecture": f"nnconform.zoo.asr_model:{type(model).__name__}",
        "weights": final["path"],
        "sha256": final["sha256"],
        "dataset": "espeak-synth",
        "input_shape": [1, ASR_PREPROCESS.n_mels, frames],
        "num_classes": len(VOCABULARY),
        "default": recipe.default,
        "num_params": count_params(model),
        "macs": count_macs(model, (1, ASR_PREPROCESS.n_mels, frames)),
        "license": "Apache-2.0 weights trained by nnconform on speech generated with espeak-ng (GPL-3.0 program; "
                   "its output is not covered)",
        "provenance": (f"python -m nnconform.zoo build --only {recipe.anchor}: seed {SEED}, AdamW, OneCycle max lr "
                       f"{recipe.lr}, {recipe.epochs} epochs, batch {recipe.batch_size}, weight decay "
                       f"{recipe.weight_decay}, CTC loss, SpecAugment (1 band <= {recipe.freq_mask} mels, "
                       f"2 spans <= {recipe.time_mask} frames); {train.source}; WER on {len(test)} held-out-voice "
                       f"utterances, greedy CTC, text normalization: {NORMALIZATION}"),
        "tolerance": 0.01,
        "preprocess": ASR_PREPROCESS.to_dict(),
        "metrics": {"wer": final["wer"]},
        "checkpoints": checkpoints,
    }
