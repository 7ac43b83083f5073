"""count_macs counts attention: the CPU scaled-dot-product kernel and nn.MultiheadAttention's fused fast
path, checked on torchvision transformers (built without weights) against their documented figures."""

from __future__ import annotations

import pytest
import torch
import torchvision

from nnconform.profile import count_macs


class _SelfAttention(torch.nn.Module):
    def __init__(self, embed: int, heads: int) -> None:
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("inference_mode", [False, True], ids=["no-grad", "inference-mode"])
def test_multihead_attention_macs_by_hand(inference_mode):
    """E=64, 4 heads, 10 tokens: q/k/v/out projections 4*10*64*64 plus QK^T and AV 2*4*10*10*16."""
    expected = 4 * 10 * 64 * 64 + 2 * 4 * 10 * 10 * 16
    assert count_macs(_SelfAttention(64, 4), (10, 64), inference_mode=inference_mode) == expected


def test_uncounted_attention_would_fail_the_check():
    """Torch's counter without nnconform's two formulas (the state before them) misses the fused fast
    path and the CPU attention kernel: the figures checked here are ones the old count failed."""
    from torch.utils.flop_counter import FlopCounterMode

    ours = (torch.ops.aten._native_multi_head_attention, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    expected = 4 * 10 * 64 * 64 + 2 * 4 * 10 * 10 * 16
    model = _SelfAttention(64, 4).eval()
    for grad_mode in (torch.inference_mode, torch.enable_grad):
        counter = FlopCounterMode(display=False)
        counter.flop_registry = {op: f for op, f in counter.flop_registry.items() if op not in ours}
        with grad_mode(), counter:
            model(torch.zeros(1, 10, 64))
        assert counter.get_total_flops() // 2 < expected, grad_mode


@pytest.mark.parametrize("arch,weights", [("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1"),
                                          ("swin_t", "Swin_T_Weights.IMAGENET1K_V1")])
def test_transformer_macs_match_torchvision(arch, weights):
    """Within 1% of torchvision's documented `_ops` (GMACs), on both paths (fast path taken or not)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()  # no weights: the architecture is what is counted
    documented = torchvision.models.get_weight(weights).meta["_ops"] * 1e9
    for inference_mode in (False, True):
        macs = count_macs(model, (3, 224, 224), inference_mode=inference_mode)
        assert abs(macs - documented) <= 0.01 * documented, (arch, inference_mode, macs, documented)
