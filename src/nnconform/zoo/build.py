"""The committed, deterministic training recipe of the embedded zoo.

``python -m nnconform.zoo build`` trains every zoo architecture on Fashion-MNIST train (60,000),
writes one safetensors checkpoint per epoch plus a fine-tuned update under
``anchors/zoo/<anchor>/``, measures each on the test split (10,000) and writes the manifest
``anchors/zoo.toml`` with every file's sha256. Seeds, thread count and deterministic algorithms
are fixed; the same machine reproduces the same bytes. Another x86-64 machine may not: torch picks
its CPU kernels by instruction set (AVX2, AVX-512...), which changes the floating-point summation
order; a rebuild there stays within a stated top-1 band instead (``python -m nnconform.zoo compare``,
see :mod:`nnconform.zoo.cli`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..data import Preprocess, load_fashion_mnist
from ..hashing import sha256_file
from ..profile import count_macs, count_params
from .models import build_architecture

FMNIST_PREPROCESS = Preprocess(mean=(0.2860,), std=(0.3530,), channels=1)
SEED = 20261128


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one zoo anchor."""

    anchor: str
    architecture: str
    epochs: int
    lr: float
    finetune_modules: tuple[str, ...]  # what the fine-tuned update retrains; the rest is frozen
    batch_size: int = 128
    weight_decay: float = 5e-4
    finetune_lr: float = 0.005
    default: bool = True


RECIPES = (
    Recipe("fmnist-lenet5", "lenet5", epochs=8, lr=0.05, finetune_modules=("classifier",)),
    Recipe("fmnist-resnet8", "resnet8", epochs=5, lr=0.1, finetune_modules=("layer3", "fc")),
    Recipe("fmnist-mobilenetv2", "mobilenetv2_small", epochs=6, lr=0.1,
           finetune_modules=("features.7", "features.8", "classifier")),
)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random 2-pixel translation (pad and crop), on the batch."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap, enough
    return padded[:, :, dy:dy + 28, dx:dx + 28]


@torch.inference_mode()
def _test_accuracy(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y_test), 1000):
        correct += int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
    return correct / len(y_test)


def _train_epochs(model, params, x, y, *, epochs, lr, wd, batch_size, gen, on_epoch, frozen=()):
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(1, epochs + 1):
        model.train()
        for m in frozen:
            m.eval()  # frozen BatchNorm keeps its running statistics
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            xb = _augment(x[idx], gen)
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        on_epoch(epoch, float(loss.detach()))


def build_anchor(recipe: Recipe, out_root: Path, log=print) -> dict:
    """Train one recipe, write its checkpoints, return its manifest entry."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    # channels_last: about 1.5x faster training on CPU for the depthwise convolutions
    x = FMNIST_PREPROCESS.apply(train.images).contiguous(memory_format=torch.channels_last)
    y = train.labels
    x_test, y_test = FMNIST_PREPROCESS.apply(test.images), test.labels
    model = build_architecture(recipe.architecture).to(memory_format=torch.channels_last)
    folder = out_root / recipe.anchor
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = []

    def save(name: str, note: str, t0: float) -> None:
        path = folder / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        # One metadata key only: safetensors writes a multi-key metadata map in an order that
        # varies between processes, which would make the same weights hash differently.
        save_file(state, str(path), metadata={"nnconform": f"{recipe.anchor}/{name}"})
        acc = _test_accuracy(model, x_test, y_test)
        checkpoints.append({"name": name, "path": str(path.relative_to(out_root.parent)), "sha256": sha256_file(path),
                            "top1": round(acc, 6), "note": note})
        log(f"{recipe.anchor} {name}: test top-1 {acc:.4f} ({time.time() - t0:.0f}s)")

    t0 = time.time()
    _train_epochs(model, model.parameters(), x, y, epochs=recipe.epochs, lr=recipe.lr, wd=recipe.weight_decay,
                  batch_size=recipe.batch_size, gen=gen,
                  on_epoch=lambda e, loss: save(f"epoch{e}", f"end of epoch {e} of {recipe.epochs}", t0))

    # The update: retrain only the last block(s) and the classifier for one epoch.
    trainable = {n for n in recipe.finetune_modules}
    modules = dict(model.named_modules())
    frozen = [m for n, m in model.named_children() if n not in trainable]
    if "features" not in trainable and any(n.startswith("features.") for n in trainable):
        frozen = [m for n, m in model.named_children() if n not in trainable and n != "features"]
        frozen += [m for n, m in modules["features"].named_children() if f"features.{n}" not in trainable]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for n in trainable for p in modules[n].parameters()]
    for p in params:
        p.requires_grad_(True)
    _train_epochs(model, params, x, y, epochs=1, lr=recipe.finetune_lr, wd=recipe.weight_decay,
                  batch_size=recipe.batch_size, gen=gen, frozen=frozen,
                  on_epoch=lambda e, loss: save("finetune", f"one epoch retraining only {', '.join(recipe.finetune_modules)}", t0))
    for p in model.parameters():
        p.requires_grad_(True)

    final = checkpoints[recipe.epochs - 1]
    return {
        "family": "zoo",
        "architecture": f"nnconform.zoo.models:{type(model).__name__}",
        "weights": final["path"],
        "sha256": final["sha256"],
        "dataset": "fashion-mnist",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "default": recipe.default,
        "num_params": count_params(model),
        "macs": count_macs(model, (1, 28, 28)),
        "license": "Apache-2.0 weights trained by nnconform on Fashion-MNIST (MIT, Zalando Research)",
        "provenance": (f"python -m nnconform.zoo build: seed {SEED}, SGD nesterov, OneCycle max lr {recipe.lr}, "
                       f"{recipe.epochs} epochs, batch {recipe.batch_size}, weight decay {recipe.weight_decay}, "
                       f"flip + 2px shift, label smoothing 0.05"),
        "tolerance": 0.003,
        "preprocess": FMNIST_PREPROCESS.to_dict(),
        "metrics": {"top1": final["top1"]},
        "checkpoints": checkpoints,
    }


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if v is None:
        raise ValueError("TOML has no null")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(i)}" for k, i in v.items() if i is not None) + " }"
    raise TypeError(type(v))


def write_manifest(entries: dict[str, dict], path: Path) -> None:
    """Write the zoo manifest (a plain TOML writer: the standard library only reads TOML)."""
    from .cli import TOP1_BAND_FINAL, TOP1_BAND_INTERMEDIATE

    lines = [
        "# The embedded Fashion-MNIST zoo. Written by `python -m nnconform.zoo build`: do not edit by hand.",
        "# Reproducible to a band, not to the bit, across machines: a rebuild on the machine (CPU instruction",
        "# set) that built these files gives the same bytes; on another x86-64 machine torch's kernels sum in",
        "# another order, so the bytes differ and each checkpoint's test top-1 stays within "
        f"+/-{100 * TOP1_BAND_FINAL:.1f} percentage",
        "# points of `top1` below for the final checkpoints (the `weights` epoch and `finetune`) and "
        f"+/-{100 * TOP1_BAND_INTERMEDIATE:.1f} pp",
        "# for intermediate epochs. Check a rebuild: `python -m nnconform.zoo compare --into DIR`.",
        "",
    ]
    for name, entry in entries.items():
        lines.append(f"[anchors.{name}]")
        for k, v in entry.items():
            if k != "checkpoints":
                lines.append(f"{k} = {_toml_value(v)}")
        for ck in entry["checkpoints"]:
            lines += ["", f"[[anchors.{name}.checkpoints]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in ck.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def update_manifest(name: str, entry: dict, path: Path) -> None:
    """Replace one anchor's entry in the manifest, under a file lock (builds may run in parallel)."""
    import fcntl
    import tomllib

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = tomllib.loads(path.read_text())["anchors"] if path.exists() else {}
        entries[name] = entry
        order = [r.anchor for r in RECIPES]
        write_manifest(dict(sorted(entries.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)),
                       path)
