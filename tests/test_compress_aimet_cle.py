"""AIMET cross-layer equalization runs as AIMET documents it: BN fold, cross-layer scaling, then high-bias
fold *with the folded BN pairs* (the order that used to hand high-bias fold none), and its effect is recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("aimet_torch", reason="AIMET needs aimet-torch==2.42.0")

from nnconform.compress.aimet_quant import cle_effect, describe_cle  # noqa: E402


class ConvBnReluConv(nn.Module):
    """conv-BN-ReLU-conv with large BN shifts: high-bias fold has something to absorb."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = act()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.bn1(self.conv1(x))))


def _model(act=nn.ReLU) -> nn.Module:
    torch.manual_seed(3)
    m = ConvBnReluConv(act).eval()
    with torch.no_grad():
        m.bn1.bias.uniform_(2.0, 4.0)  # beta - 3 gamma > 0 on some channels: biases to fold
        m.bn1.weight.uniform_(0.2, 0.6)
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m


def _equalize(model: nn.Module, dummy: torch.Tensor, *, documented: bool) -> dict:
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.cross_layer_equalization import equalize_bn_folded_model, equalize_model

    with cle_effect() as effect:
        if documented:  # what aimet_quant does: the folded pairs go to high-bias fold
            pairs = fold_all_batch_norms(model, input_shapes=None, dummy_input=dummy)
            equalize_bn_folded_model(model, None, pairs, dummy_input=dummy)
        else:  # the old order: fold first, then equalize_model, which folds nothing and hands no pairs on
            fold_all_batch_norms(model, input_shapes=None, dummy_input=dummy)
            equalize_model(model, dummy_input=dummy)
    return effect


def test_high_bias_fold_receives_the_bn_pairs():
    model, dummy = _model(), torch.randn(4, 3, 16, 16)
    effect = _equalize(model, dummy, documented=True)
    assert effect["scaled_pairs"] == 1 and effect["hbf_bn_pairs"] == 1 and effect["hbf_eligible_pairs"] == 1
    assert effect["hbf_channels_folded"] > 0, effect
    assert describe_cle(effect).startswith("CLE scaled 1 layer pairs")


def test_the_old_order_starves_high_bias_fold():
    """The bad input: folding before equalize_model leaves high-bias fold no BN pairs; the record shows it."""
    effect = _equalize(_model(), torch.randn(4, 3, 16, 16), documented=False)
    assert effect["hbf_bn_pairs"] == 0 and effect["hbf_channels_folded"] == 0


def test_relu6_pairs_are_reported_inert():
    effect = _equalize(_model(nn.ReLU6), torch.randn(4, 3, 16, 16), documented=True)
    assert effect["scaled_pairs"] == 0 and effect["relu6_warning"]
    assert describe_cle(effect).startswith("CLE inert (conv-ReLU6-conv pairs are not scaled")
