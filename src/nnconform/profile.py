"""Parameter and MAC counts, from torch's own ``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters (shared parameters counted once), buffers excluded."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...], *, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``(batch, *input_shape)``.

    FlopCounterMode counts a multiply-add as two FLOPs; torchvision's published "GFLOPS"
    (e.g. 4.089 for ResNet-50) are in fact MACs, so this returns FLOPs / 2 per sample.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros((batch, *input_shape))
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2 // batch)
