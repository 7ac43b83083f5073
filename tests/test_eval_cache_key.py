"""The evaluation cache is keyed by what a model computes, never by its class and registered state alone
(issue 11 item 5): two decoded models that differ only in something the old key did not see get their own
logits, and a model whose content cannot be read is evaluated without the cache."""

from __future__ import annotations

import pytest
import torch

from nnconform.data import ImageDataset, Preprocess
from nnconform.evaluate import Evaluator, cache_key
from nnconform.model_identity import Uncacheable, model_content_sha256


class Scaled(torch.nn.Module):
    """A linear classifier whose output is multiplied by a plain (non-registered) attribute."""

    def __init__(self, gain: float, flip: torch.Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 3)
        self.gain = gain  # not a parameter or buffer: absent from the state dict
        self.flip = flip  # a tensor attribute, also absent from the state dict

    def forward(self, x):
        out = self.fc(x.flatten(1)) * self.gain
        return out if self.flip is None else out[:, self.flip]


class WithNonPersistent(torch.nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 3)
        self.register_buffer("offset", torch.tensor([offset, 0.0, 0.0]), persistent=False)

    def forward(self, x):
        return self.fc(x.flatten(1)) + self.offset


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    pre = Preprocess(mean=(0.5,), std=(0.5,), channels=1)
    ds = ImageDataset("synthetic", "test", torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=g),
                      torch.randint(0, 3, (20,), generator=g), ("a", "b", "c"), "test", "fp0")
    return ds, pre


@pytest.mark.parametrize("make_pair", [
    lambda: (Scaled(1.0), Scaled(-1.0)),
    lambda: (Scaled(1.0, torch.tensor([0, 1, 2])), Scaled(1.0, torch.tensor([2, 1, 0]))),
    lambda: (WithNonPersistent(0.0), WithNonPersistent(50.0)),
], ids=["plain-attribute", "tensor-attribute", "non-persistent-buffer"])
def test_models_with_the_same_state_dict_do_not_share_logits(make_pair, data, tmp_path):
    """Same class, same state dict, different forward: two keys, two forward passes, each its own logits (on
    disk and in memory)."""
    a, b = make_pair()
    ds, pre = data
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert cache_key(a, ds, pre, 250) != cache_key(b, ds, pre, 250)
    ev = Evaluator(tmp_path)
    la, lb = ev.evaluate(a, ds, pre).logits, ev.evaluate(b, ds, pre).logits
    assert ev.misses == 2 and ev.hits == 0
    assert not torch.equal(la, lb)
    fresh = Evaluator(tmp_path)  # from disk: each model finds its own entry
    assert torch.equal(fresh.evaluate(b, ds, pre).logits, lb) and fresh.hits == 1


def test_the_same_content_still_shares_one_pass(data, tmp_path):
    """Two separately built but identical models hit one cache entry (the cache still saves work)."""
    ds, pre = data
    ev = Evaluator(tmp_path)
    ev.evaluate(Scaled(2.0), ds, pre)
    ev.evaluate(Scaled(2.0), ds, pre)
    assert (ev.misses, ev.hits) == (1, 1)


def test_a_closure_attribute_makes_the_model_uncacheable(data, tmp_path):
    """A value the fingerprint cannot read (here a closure over a different factor) is never cached: each
    evaluation runs the model, and the reason is kept."""
    ds, pre = data

    def scaled_by(k):
        return lambda t: t * k

    a, b = Scaled(1.0), Scaled(1.0)
    a.post, b.post = scaled_by(1.0), scaled_by(-1.0)
    with pytest.raises(Uncacheable, match=r"Scaled\.post is a closure"):
        model_content_sha256(a)
    ev = Evaluator(tmp_path)
    ev.evaluate(a, ds, pre)
    ev.evaluate(a, ds, pre)
    assert (ev.misses, ev.hits) == (2, 0) and "Scaled.post" in ev.uncached[0]
    assert not list(tmp_path.rglob("logits.safetensors")), "an uncacheable model's logits were stored"


def test_a_forward_hook_makes_the_model_uncacheable():
    m = Scaled(1.0)
    m.fc.register_forward_hook(lambda mod, i, o: o * 0)
    with pytest.raises(Uncacheable, match="forward hooks"):
        model_content_sha256(m)


def test_the_architecture_source_is_part_of_the_key(monkeypatch):
    """The class's source file is hashed: an edited architecture is a different model."""
    import nnconform.model_identity as mi

    before = model_content_sha256(Scaled(1.0))
    monkeypatch.setattr(mi, "_file_sha256", lambda path: "edited")
    assert model_content_sha256(Scaled(1.0)) != before
