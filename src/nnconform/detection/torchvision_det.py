"""torchvision's COCO detectors as anchors (issue 14, the real path): SSDlite320-MobileNetV3-Large,
RetinaNet-ResNet50-FPN-v2, Faster R-CNN MobileNetV3-Large FPN.

A torchvision detector takes a list of images of any size (float in [0, 1]; it resizes and normalizes
inside its own ``transform``) and returns a list of dicts (``boxes`` xyxy in the original image's pixels,
``scores``, ``labels`` in the 91-index COCO label space), already post-processed with torchvision's
defaults: SSDlite score > 0.001, NMS 0.55, 300 per image; RetinaNet score > 0.05, 1000 candidates per
level, NMS 0.5, 300 per image; Faster R-CNN score > 0.05, NMS 0.5, 100 per image. :class:`TorchvisionDetector`
packs them into one fixed-shape tensor ``[N, K, 6]`` (x1, y1, x2, y2, score, label; label -1 pads), K the
model's detections per image, so the evaluator caches and compares them like any output, and
:class:`TorchvisionDetectionTask` reads them back without a second threshold or NMS. COCO mAP then keeps
at most 100 detections per image and class, as COCOeval (maxDets 100) does in torchvision's reference
evaluation (references/detection/coco_eval.py).

The builders make the architecture torchvision builds for its COCO weights, with no file: Faster R-CNN
MobileNetV3's backbone then has frozen batch norms (``FrozenBatchNorm2d``, eps 1e-5), so the pinned state
dict loads strictly; the weights come from the pinned file (``anchors/detection.toml``), never a download.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..tasks.detection import DetectionTask

#: images the wrapper hands torchvision at once (memory: a batch of 250 COCO images is ~1 GB as float32)
CHUNK = 8


class TorchvisionDetector(nn.Module):
    """A torchvision detector whose outputs are one tensor ``[N, max_detections, 6]``: x1, y1, x2, y2 (input
    image pixels), score, label (COCO category id); rows past an image's detections are 0 with label -1."""

    def __init__(self, model: nn.Module, max_detections: int) -> None:
        super().__init__()
        self.model = model
        self.max_detections = int(max_detections)

    def forward(self, images: Any) -> torch.Tensor:
        """``images``: an :class:`~nnconform.detection.coco.ImageBatch`, a list of float [3, H, W] tensors, or
        a float batch [N, 3, H, W] (each image alone, as the parameter/MAC count and split tracing pass it)."""
        if hasattr(images, "chunks"):
            chunks = images.chunks(CHUNK)
        else:
            seq = list(images)
            chunks = (seq[i:i + CHUNK] for i in range(0, len(seq), CHUNK))
        packed = []
        for chunk in chunks:
            for det in self.model(chunk):
                out = torch.zeros(self.max_detections, 6, device=det["boxes"].device)
                out[:, 5] = -1
                k = min(len(det["scores"]), self.max_detections)
                out[:k, :4] = det["boxes"][:k]
                out[:k, 4] = det["scores"][:k]
                out[:k, 5] = det["labels"][:k].to(out.dtype)
                packed.append(out)
        return torch.stack(packed)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a torchvision checkpoint (keys without the wrapper's ``model.`` prefix) or the wrapper's own."""
        if state_dict and not any(k.startswith("model.") for k in state_dict):
            state_dict = {f"model.{k}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` with torchvision's FrozenBatchNorm2d (default eps 1e-5), as
    torchvision builds a pretrained detector's backbone (its state dict has no ``num_batches_tracked``)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            _freeze_batchnorm(child)


def ssdlite320_mobilenet_v3_large(**kwargs) -> TorchvisionDetector:
    """SSDlite320 with a MobileNetV3-Large backbone, COCO's 91 labels, random weights (300 detections per image)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large as build

    model = build(weights=None, weights_backbone=None, num_classes=91, **kwargs)
    return TorchvisionDetector(model, model.detections_per_img)


def retinanet_resnet50_fpn_v2(**kwargs) -> TorchvisionDetector:
    """RetinaNet ResNet-50 FPN v2 (GroupNorm heads), COCO's 91 labels, random weights (300 per image)."""
    from torchvision.models.detection import retinanet_resnet50_fpn_v2 as build

    model = build(weights=None, weights_backbone=None, num_classes=91, **kwargs)
    return TorchvisionDetector(model, model.detections_per_img)


def fasterrcnn_mobilenet_v3_large_fpn(**kwargs) -> TorchvisionDetector:
    """Faster R-CNN MobileNetV3-Large FPN (800 px), COCO's 91 labels, frozen backbone batch norms as torchvision
    builds it for its COCO weights, random weights (100 per image)."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn as build

    model = build(weights=None, weights_backbone=None, num_classes=91, **kwargs)
    _freeze_batchnorm(model.backbone.body)
    return TorchvisionDetector(model, model.roi_heads.detections_per_img)


class TorchvisionDetectionTask(DetectionTask):
    """Detection on outputs a detector decoded itself (``[N, K, 6]``: box, score, label; label -1 pads): COCO
    mAP@[.5:.95] as the detection task computes it, without a second score threshold or NMS."""

    outputs_description = ("decoded detections [N, K, 6]: x1, y1, x2, y2 in image pixels, score, label (COCO "
                           "category id, -1 for padding rows)")

    def __init__(self, num_classes: int = 91, *, max_detections: int = 100) -> None:
        super().__init__(num_classes, score_threshold=0.0, max_detections=max_detections)

    def check_outputs(self, outputs: torch.Tensor, num_samples: int) -> None:
        """Outputs must be [N, K, 6] with labels in -1..num_classes-1."""
        if outputs.ndim != 3 or outputs.shape[0] != num_samples or outputs.shape[2] != 6:
            raise ValueError(f"detection: model outputs have shape {tuple(outputs.shape)}, expected ({num_samples}, "
                             f"K, 6): {self.outputs_description}")
        labels = outputs[..., 5]
        if len(labels.reshape(-1)) and (labels.min() < -1 or labels.max() >= self.num_classes):
            raise ValueError(f"detection: labels outside -1..{self.num_classes - 1} in the model outputs")

    def output_classes(self, outputs: torch.Tensor) -> int:
        """The label space (not read from the output's width)."""
        return int(self.num_classes)

    def decode(self, outputs: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image (boxes float32 [k, 4], scores float32 [k], labels int64 [k]), by descending score (stable)."""
        found = []
        for out in outputs.float():
            out = out[out[:, 5] >= 0]
            order = torch.from_numpy(np.argsort(-out[:, 4].numpy(), kind="mergesort"))
            out = out[order]
            found.append((out[:, :4].numpy(), out[:, 4].numpy(), out[:, 5].numpy().astype(np.int64)))
        return found
