"""The split result cache: a warm study reads every (cut, point) back instead of coding it again, gives
bit-identical results, recodes when anything in the key changes, and ignores damaged files."""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

import pytest
import torch

from nnconform import kit
from nnconform.split import FEATURE_CODECS, RawCodec, SplitGraph, run_study
from nnconform.hashing import class_source_sha256
from nnconform.split.cache import SplitResultCache
from nnconform.split.runs import torch_threads
from nnconform.zoo import build_architecture
from nnconform.split.codecs import FeatureCodec
from nnconform.split.plan import SplitPoint

FMNIST = (1, 28, 28)
CALLS = {"encode": 0}


def _point(label, family, codec, **fields):
    """A split operating point (the kit's points are keyword-only)."""
    return SplitPoint(label=label, family=family, codec=codec, **fields)


class CountingRaw(FeatureCodec):
    """The raw codec, counting encodes (so a test can tell a cache hit from a recode)."""

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """No parameters."""

    def __init__(self, config=None):
        super().__init__(config)
        self.inner = RawCodec()

    def encode(self, tensor):
        CALLS["encode"] += 1
        return self.inner.encode(tensor)

    def decode(self, payload):
        return self.inner.decode(payload)


@pytest.fixture(autouse=True)
def _setup():
    FEATURE_CODECS.register("test-counting-raw", CountingRaw)
    with torch_threads(1):
        yield
    FEATURE_CODECS.unregister("test-counting-raw")


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return SplitGraph.trace(build_architecture("lenet5").eval(), FMNIST)


def _batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn((8, *FMNIST), generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]


def _study(graph, cache):
    points = [_point("c", "c", "test-counting-raw", lossless=True),
              _point("uq4", "uq", "uniform", params=(("bits", 4),))]
    return run_study("t", graph, _batches(), coded={"features": points}, cache=cache)


def test_warm_study_reads_back_identical_results(graph, tmp_path):
    cache = SplitResultCache(tmp_path, {"model": "m", "dataset": "d"}, 16)
    CALLS["encode"] = 0
    cold = _study(graph, cache)
    assert CALLS["encode"] >= 16
    files = sorted((tmp_path / "split").glob("*/result.safetensors"))
    assert len(files) == 2
    CALLS["encode"] = 0
    warm = _study(graph, cache)
    assert CALLS["encode"] == 0, "a warm study must not code again"
    for key, r in cold.coded.items():
        w = warm.coded[key]
        assert torch.equal(r.logits, w.logits) and r.payload_bytes == w.payload_bytes
        assert (r.agreement, r.kl, r.max_abs_error, r.sq_error, r.determinism_checked) == \
               (w.agreement, w.kl, w.max_abs_error, w.sq_error, w.determinism_checked)
    # another stream (other weights or samples) misses
    CALLS["encode"] = 0
    _study(graph, SplitResultCache(tmp_path, {"model": "other", "dataset": "d"}, 16))
    assert CALLS["encode"] >= 16


def test_damaged_or_short_files_are_recomputed(graph, tmp_path):
    cache = SplitResultCache(tmp_path, {"model": "m"}, 16)
    _study(graph, cache)
    for f in (tmp_path / "split").glob("*/result.safetensors"):
        f.write_bytes(f.read_bytes()[:40])
    CALLS["encode"] = 0
    with pytest.warns(UserWarning, match=r"split result cache entry .* is corrupt \(file 'result.safetensors' has"):
        again = _study(graph, cache)
    assert CALLS["encode"] >= 16 and all(r.ok for r in again.coded.values())
    # a cache that expects more samples than a stored result holds ignores it
    CALLS["encode"] = 0
    with pytest.warns(UserWarning, match="covers 16 samples, this stream has 17"):
        _study(graph, SplitResultCache(tmp_path, {"model": "m"}, 17))
    assert CALLS["encode"] >= 16


def test_codec_source_is_part_of_the_key():
    assert class_source_sha256(CountingRaw()) != class_source_sha256(RawCodec())
    assert class_source_sha256(CountingRaw()) == class_source_sha256(CountingRaw())
    assert Path(__file__).exists()
