"""Parameter and MAC counts, from torch's own ``torch.utils.flop_counter``.

The flop counter has no formula for two attention kernels a CPU forward pass takes:
``aten._scaled_dot_product_flash_attention_for_cpu`` (``F.scaled_dot_product_attention`` on CPU) and
``aten._native_multi_head_attention`` (``nn.MultiheadAttention``'s fused fast path in eval mode
without gradients). Uncounted, a ViT-B/16 comes out at 11.3 GMACs instead of torchvision's 17.56.
Both formulas are registered here (through the counter's own ``register_flop_formula``), so a
transformer is counted the same whichever path it takes.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

_aten = torch.ops.aten


def attention_flops(batch_heads: int, q_len: int, kv_len: int, qk_dim: int, v_dim: int) -> int:
    """FLOPs of softmax(Q K^T) V without the softmax: two matrix products (2 FLOPs per multiply-add)."""
    return 2 * batch_heads * q_len * kv_len * qk_dim + 2 * batch_heads * q_len * kv_len * v_dim


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``[B, H, L, E]`` query, ``[B, H, S, E]`` key, ``[B, H, S, Ev]`` value."""
    *lead, q_len, qk_dim = query_shape
    kv_len, v_dim = key_shape[-2], value_shape[-1]
    batch_heads = 1
    for d in lead:
        batch_heads *= d
    return attention_flops(batch_heads, q_len, kv_len, qk_dim, v_dim)


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_head, *args, out_shape=None,
                      **kwargs) -> int:
    """The fused fast path of ``nn.MultiheadAttention`` (batch first ``[B, L, E]``): the q, k and v
    projections, the attention products and the output projection."""
    if len(query_shape) == 3:
        batch, q_len, _ = query_shape
        kv_len = key_shape[1]
    else:  # unbatched [L, E]
        batch, q_len, kv_len = 1, query_shape[0], key_shape[0]
    projections = 2 * batch * embed_dim * embed_dim * (2 * q_len + 2 * kv_len)  # q, out on L; k, v on S
    head_dim = embed_dim // num_head
    return projections + attention_flops(batch * num_head, q_len, kv_len, head_dim, head_dim)


for _op, _formula in ((_aten._scaled_dot_product_flash_attention_for_cpu, _sdpa_cpu_flops),
                      (_aten._native_multi_head_attention, _native_mha_flops)):
    if _op not in flop_registry:  # a later torch may count it itself
        register_flop_formula(_op)(_formula)


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters (shared parameters counted once), buffers excluded."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
               inference_mode: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``(batch, *input_shape)``.

    FlopCounterMode counts a multiply-add as two FLOPs; torchvision's published "GFLOPS"
    (e.g. 4.089 for ResNet-50) are in fact MACs, so this returns FLOPs / 2 per sample. The pass runs
    under ``torch.no_grad`` (``inference_mode=True`` for ``torch.inference_mode``); attention is counted
    on either path (see the module doc).
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros((batch, *input_shape))
        context = torch.inference_mode() if inference_mode else torch.no_grad()
        with context, FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2 // batch)
