"""The committed, deterministic training recipe of the embedded detector (issue 14).

``python -m nnconform.zoo build --only fmnist-mosaic-det`` builds the Fashion-MNIST mosaics
(:mod:`nnconform.detection.data`: train canvases from Fashion-MNIST train, evaluation canvases from its
test split), trains :class:`~nnconform.detection.model.TinyFPNDetector` FCOS-style (each object assigned
to the FPN level whose distance range holds its box, positives within 1.5 strides of the box centre;
sigmoid focal loss on the class logits, GIoU loss on the decoded boxes; seeded, one thread, deterministic
algorithms), writes one safetensors checkpoint per epoch and a fine-tuned update (head only) under
``anchors/zoo/fmnist-mosaic-det/`` and measures each checkpoint's COCO mAP@[.5:.95] and mAP@.5 on the
evaluation canvases (:class:`~nnconform.tasks.detection.DetectionTask`). Like the rest of the zoo, the
bytes are reproducible on the machine that built them and the mAP to a band elsewhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..data import Preprocess
from ..hashing import sha256_file
from ..profile import count_macs, count_params

DET_PREPROCESS = Preprocess(mean=(0.1,), std=(0.25,), channels=1)
SEED = 20261201
#: per level (P3, P4, P5): the range of a positive location's largest distance to its box's sides (FCOS)
LEVEL_RANGES = ((0.0, 12.0), (12.0, 24.0), (24.0, float("inf")))
CENTER_RADIUS = 1.5


@dataclass(frozen=True)
class DetRecipe:
    """Training hyper-parameters of the embedded detector."""

    anchor: str = "fmnist-mosaic-det"
    epochs: int = 8
    milestones: tuple[int, ...] = (2, 4, 6, 8)  # epochs saved as checkpoints (the last is the anchor)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    finetune_modules: tuple[str, ...] = ("tower", "cls_head", "box_head")
    finetune_lr: float = 5e-4
    default: bool = False


DET_RECIPES = (DetRecipe(),)


def assign_targets(model, truths) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS targets of every canvas: class per location (-1: background) [N, L] and its box [N, L, 4]."""
    from ..detection.model import STRIDES

    points = model.locations                      # [L, 2]
    strides = model.location_strides[:, 0]        # [L]
    lo = torch.cat([torch.full(((model.size // s) ** 2,), LEVEL_RANGES[i][0]) for i, s in enumerate(STRIDES)])
    hi = torch.cat([torch.full(((model.size // s) ** 2,), LEVEL_RANGES[i][1]) for i, s in enumerate(STRIDES)])
    n, L = len(truths), len(points)
    classes = torch.full((n, L), -1, dtype=torch.long)
    boxes = torch.zeros((n, L, 4))
    for i, gt in enumerate(truths):
        if len(gt) == 0:
            continue
        b = torch.from_numpy(gt.boxes).float()                                   # [k, 4]
        ltrb = torch.cat([points[:, None] - b[None, :, :2], b[None, :, 2:] - points[:, None]], 2)  # [L, k, 4]
        centre = (b[:, :2] + b[:, 2:]) / 2
        near = ((points[:, None] - centre[None]).abs() < CENTER_RADIUS * strides[:, None, None]).all(2)
        reach = ltrb.max(2).values
        ok = (ltrb.min(2).values > 0) & near & (reach > lo[:, None]) & (reach <= hi[:, None])
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None].expand(L, -1).masked_fill(~ok, float("inf"))
        best_area, best = area.min(1)
        pos = torch.isfinite(best_area)
        classes[i, pos] = torch.from_numpy(gt.classes)[best[pos]]
        boxes[i, pos] = b[best[pos]]
    return classes, boxes


def detection_loss(outputs: torch.Tensor, classes: torch.Tensor, boxes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sigmoid focal loss over every location and class + GIoU loss of the positives' boxes, per positive."""
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    logits = outputs[..., 4:]
    onehot = nn.functional.one_hot(classes.clamp(min=0), num_classes).float() * (classes >= 0)[..., None]
    pos = classes >= 0
    num_pos = max(1.0, float(pos.sum()))
    cls_loss = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / num_pos
    box_loss = generalized_box_iou_loss(outputs[..., :4][pos], boxes[pos], reduction="sum") / num_pos
    return cls_loss + 2.0 * box_loss


@torch.inference_mode()
def evaluate_map(model: nn.Module, dataset, batch_size: int = 100) -> tuple[float, float]:
    """COCO mAP@[.5:.95] and mAP@.5 of ``model`` on ``dataset`` (the task's decoding and matching)."""
    from ..tasks.detection import DetectionTask

    model.eval()
    outputs = torch.cat([model(x) for x, _ in dataset.batches(DET_PREPROCESS, batch_size)])
    task = DetectionTask(num_classes=dataset.num_classes)
    scores = task.scores(outputs, dataset.labels)
    return task.aggregate(scores), task.map50(scores)


def _train_epochs(model, params, x, classes, boxes, recipe: DetRecipe, *, epochs, lr, gen, on_epoch, frozen=()):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    steps = math.ceil(len(x) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    for epoch in range(1, epochs + 1):
        model.train()
        for m in frozen:
            m.eval()  # frozen BatchNorm keeps its running statistics
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe.batch_size):
            idx = perm[i:i + recipe.batch_size]
            loss = detection_loss(model(x[idx]), classes[idx], boxes[idx], model.num_classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
        on_epoch(epoch, float(loss.detach()))


def build_det_anchor(recipe: DetRecipe, out_root: Path, log=print) -> dict:
    """Train the detection recipe, write its checkpoints under ``out_root/<anchor>``, return its manifest entry."""
    from ..detection.data import MOSAIC_DATASET, SIZE, load_mosaic_dataset
    from ..detection.model import TinyFPNDetector

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    train, test = load_mosaic_dataset("train"), load_mosaic_dataset("test")
    model = TinyFPNDetector(num_classes=train.num_classes, size=SIZE)
    x = DET_PREPROCESS.apply(train.images)
    classes, boxes = assign_targets(model, train.labels)
    log(f"{recipe.anchor}: {len(train)} train / {len(test)} test canvases, {int((classes >= 0).sum())} positive "
        f"locations ({time.time() - t0:.0f}s)")
    folder = out_root / recipe.anchor
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = []

    def save(name: str, note: str) -> None:
        path = folder / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        # One metadata key only: a multi-key map is written in an order that varies between processes.
        save_file(state, str(path), metadata={"nnconform": f"{recipe.anchor}/{name}"})
        m, m50 = evaluate_map(model, test)
        checkpoints.append({"name": name, "path": str(path.relative_to(out_root.parent)),
                            "sha256": sha256_file(path), "map": round(m, 6), "map50": round(m50, 6), "note": note})
        log(f"{recipe.anchor} {name}: mAP@[.5:.95] {100 * m:.2f}%, mAP@.5 {100 * m50:.2f}% ({time.time() - t0:.0f}s)")

    _train_epochs(model, list(model.parameters()), x, classes, boxes, recipe, epochs=recipe.epochs, lr=recipe.lr,
                  gen=gen, on_epoch=lambda e, loss: save(f"epoch{e}", f"end of epoch {e} of {recipe.epochs}")
                  if e in recipe.milestones else None)

    # The update: retrain only the head (shared tower and predictors) for one epoch, the rest frozen.
    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for n in recipe.finetune_modules for p in modules[n].parameters()]
    for p in params:
        p.requires_grad_(True)
    frozen = [m for n, m in model.named_children() if n not in recipe.finetune_modules]
    _train_epochs(model, params, x, classes, boxes, recipe, epochs=1, lr=recipe.finetune_lr, gen=gen, frozen=frozen,
                  on_epoch=lambda e, loss: save("finetune",
                                                f"one epoch retraining only {', '.join(recipe.finetune_modules)}"))
    for p in model.parameters():
        p.requires_grad_(True)
    log(f"{recipe.anchor}: trained in {time.time() - t0:.0f}s")

    final = next(c for c in checkpoints if c["name"] == f"epoch{recipe.epochs}")
    return {
        "family": "zoo",
        "task": "detection",
        "architecture": f"nnconform.detection.model:{type(model).__name__}",
        "weights": final["path"],
        "sha256": final["sha256"],
        "dataset": MOSAIC_DATASET,
        "input_shape": [1, SIZE, SIZE],
        "num_classes": train.num_classes,
        "default": recipe.default,
        "num_params": count_params(model),
        "macs": count_macs(model, (1, SIZE, SIZE)),
        "license": "Apache-2.0 weights trained by nnconform on Fashion-MNIST mosaics (Fashion-MNIST: MIT, Zalando "
                   "Research)",
        "provenance": (f"python -m nnconform.zoo build --only {recipe.anchor}: seed {SEED}, AdamW, OneCycle max lr "
                       f"{recipe.lr}, {recipe.epochs} epochs, batch {recipe.batch_size}, weight decay "
                       f"{recipe.weight_decay}, FCOS assignment (levels {LEVEL_RANGES[:2]}.., centre radius "
                       f"{CENTER_RADIUS}), focal + 2 x GIoU loss; {train.source}; mAP (COCO) on {len(test)} "
                       f"test canvases"),
        "tolerance": 0.01,
        "preprocess": DET_PREPROCESS.to_dict(),
        "metrics": {"map": final["map"], "map50": final["map50"]},
        "checkpoints": checkpoints,
    }
