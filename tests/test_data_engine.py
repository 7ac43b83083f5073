from __future__ import annotations

import gzip
import struct
import warnings

import pytest
import torch

from nnconform.data import DatasetUnavailable, Preprocess, _read_idx, load_dataset, load_fashion_mnist
from nnconform.evaluate import Evaluator, forward_logits
from nnconform.zoo.models import LeNet5

PRE = Preprocess(mean=(0.286,), std=(0.353,), channels=1)


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBBIII", 0, 8, 3, 10, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: truncated IDX file"):
        _read_idx(path)


def test_missing_data_dir_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        load_fashion_mnist("test", data_dir=tmp_path / "nope")
    monkeypatch.setenv("NNCONFORM_OFFLINE", "1")
    monkeypatch.setattr("nnconform.data.FMNIST_SYSTEM_DIR", tmp_path)
    with pytest.raises(DatasetUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_imagenet_without_source_explains_options():
    with pytest.raises(DatasetUnavailable, match="--nnc-imagenet"):
        load_dataset("imagenet-1k")


def test_fashion_mnist_fingerprint_and_subset(fmnist_test):
    assert len(fmnist_test) == 10_000 and fmnist_test.images.shape == (10_000, 1, 28, 28)
    sub = fmnist_test.subset(range(100))
    assert len(sub) == 100 and sub.fingerprint != fmnist_test.fingerprint
    assert sub.fingerprint == fmnist_test.subset(range(100)).fingerprint


def test_cache_hits_and_recomputes_corrupt_entries(fmnist_test, tmp_path):
    torch.manual_seed(0)
    model, data = LeNet5().eval(), fmnist_test.subset(range(300))
    first = Evaluator(tmp_path).evaluate(model, data, PRE)
    fresh = Evaluator(tmp_path)
    again = fresh.evaluate(model, data, PRE)
    assert fresh.hits == 1 and torch.equal(first.logits, again.logits)
    entry = next((tmp_path / "eval").glob("*/logits.safetensors"))
    raw = bytearray(entry.read_bytes())
    raw[-5] ^= 0xFF  # flip a bit in the stored logits
    entry.write_bytes(bytes(raw))
    ev = Evaluator(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        redone = ev.evaluate(model, data, PRE)
    assert ev.recomputed == 1 and ev.misses == 1
    assert any("corrupt" in str(w.message) for w in caught)
    assert torch.equal(redone.logits, first.logits)


def test_cache_key_follows_the_weights(fmnist_test, tmp_path):
    torch.manual_seed(0)
    model, data = LeNet5().eval(), fmnist_test.subset(range(50))
    ev = Evaluator(tmp_path)
    a = ev.evaluate(model, data, PRE)
    with torch.no_grad():
        model.classifier[-1].bias.add_(1.0)
    b = ev.evaluate(model, data, PRE)
    assert a.key != b.key and ev.misses == 2


def test_wrong_output_shape_is_named(fmnist_test):
    with pytest.raises(ValueError, match="output has shape"):
        forward_logits(torch.nn.Flatten(0), fmnist_test.subset(range(10)), PRE)
