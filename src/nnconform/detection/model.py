"""The embedded detector: a small fully convolutional one-stage detector with a three-level FPN.

Backbone (strides 2, 4, 8, 16) -> lateral 1x1 convolutions and a top-down path (FPN, Lin et al. 2017) ->
P3/P4/P5 at strides 4/8/16 -> one head shared by the levels (FCOS-style, Tian et al. 2019: per location,
class logits and the distances to the box's four sides). The output is one fixed-shape tensor
``[N, L, 4 + C]``: per location (P3, then P4, then P5, row-major) the decoded box (x1, y1, x2, y2 in input
pixels) and ``C`` class logits. No post-processing in the model (score threshold, NMS: the task's), so
torch.fx traces it and split cuts between backbone and head cross several tensors.
"""

from __future__ import annotations

import torch
from torch import nn

STRIDES = (4, 8, 16)


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


def _locations(size: int) -> torch.Tensor:
    """Centres (x, y) of every output location of every level, [L, 2], in the output's order."""
    points = []
    for s in STRIDES:
        n = size // s
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
    return torch.cat(points)


def _strides(size: int) -> torch.Tensor:
    """The stride of every output location, [L, 1]."""
    return torch.cat([torch.full(((size // s) ** 2, 1), float(s)) for s in STRIDES])


class TinyFPNDetector(nn.Module):
    """One-stage detector for ``size`` x ``size`` grey canvases; outputs ``[N, L, 4 + num_classes]``."""

    def __init__(self, num_classes: int = 10, size: int = 96, widths: tuple[int, int, int, int] = (16, 32, 48, 64),
                 fpn: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.size = size
        self.stem = _conv(1, widths[0], 2)                                            # stride 2
        self.layer1 = nn.Sequential(_conv(widths[0], widths[1], 2), _conv(widths[1], widths[1]))  # 4: C3
        self.layer2 = nn.Sequential(_conv(widths[1], widths[2], 2), _conv(widths[2], widths[2]))  # 8: C4
        self.layer3 = nn.Sequential(_conv(widths[2], widths[3], 2), _conv(widths[3], widths[3]))  # 16: C5
        self.lateral3 = nn.Conv2d(widths[1], fpn, 1)
        self.lateral4 = nn.Conv2d(widths[2], fpn, 1)
        self.lateral5 = nn.Conv2d(widths[3], fpn, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.smooth3 = _conv(fpn, fpn)
        self.smooth4 = _conv(fpn, fpn)
        self.smooth5 = _conv(fpn, fpn)
        self.tower = nn.Sequential(nn.Conv2d(fpn, fpn, 3, 1, 1), nn.ReLU())
        self.cls_head = nn.Conv2d(fpn, num_classes, 1)
        self.box_head = nn.Conv2d(fpn, 4, 1)
        # focal-loss prior (RetinaNet): start every location at p(object) = 0.01
        nn.init.constant_(self.cls_head.bias, -4.595)
        self.register_buffer("locations", _locations(size), persistent=False)
        self.register_buffer("location_strides", _strides(size), persistent=False)

    def _head(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tower(p)
        return self.cls_head(t).flatten(2), self.box_head(t).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.layer1(self.stem(x))
        c4 = self.layer2(c3)
        c5 = self.layer3(c4)
        l5 = self.lateral5(c5)
        l4 = self.lateral4(c4) + self.upsample(l5)
        l3 = self.lateral3(c3) + self.upsample(l4)
        p3, p4, p5 = self.smooth3(l3), self.smooth4(l4), self.smooth5(l5)
        outs = [self._head(p) for p in (p3, p4, p5)]
        logits = torch.cat([o[0] for o in outs], 2).transpose(1, 2)            # [N, L, C]
        dist = torch.cat([o[1] for o in outs], 2).transpose(1, 2)              # [N, L, 4]: l, t, r, b
        dist = torch.exp(dist.clamp(max=6.0)) * self.location_strides
        xy = self.locations
        boxes = torch.cat([xy - dist[..., :2], xy + dist[..., 2:]], 2).clamp(0.0, float(self.size))
        return torch.cat([boxes, logits], 2)
