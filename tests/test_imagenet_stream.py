"""The decoded cache and the run's handling of --nnc-imagenet: batches streamed from the cache are
bit-identical to the per-image path, a damaged cache is rebuilt, a source that does not load fails the
ImageNet cases (no fall-back), and a set smaller than the documented 50,000 is judged as a subset."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnconform import decoded_cache as dc
from nnconform.data import DatasetLoadError, DatasetUnavailable, ImageDataset, Preprocess, load_imagenet_samples
from nnconform.imagenet import load_imagenet_val
from test_imagenet_labels import make_folder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TORCHVISION = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=224,
                         interpolation="bilinear")
LITE0 = Preprocess(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=1.0, resize=256, crop=224,
                   interpolation="bicubic")


@pytest.fixture
def folder(tmp_path):
    dc.forget_open_caches()
    yield make_folder(tmp_path / "imagenet", "wnid")
    dc.forget_open_caches()


@pytest.mark.parametrize("preprocess", [TORCHVISION, LITE0], ids=["torchvision", "lite0"])
def test_streamed_batches_bit_identical_to_per_image(folder, tmp_path, preprocess):
    """Cache + per-batch normalisation == today's per-image resize, crop and normalisation (any batch size)."""
    smoke = load_imagenet_samples()
    mean = torch.tensor(preprocess.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std).view(1, -1, 1, 1)
    # the per-image path as it was written before the decoded cache (resize, crop, then out-of-place maths)
    per_image = torch.cat([(preprocess.geometry(img.unsqueeze(0)).to(torch.float32) * preprocess.scale - mean) / std
                           for img in smoke.images])
    assert torch.equal(per_image, torch.cat([preprocess.apply(img.unsqueeze(0)) for img in smoke.images]))
    ds = load_imagenet_val(str(folder), cache_dir=tmp_path / "cache", workers=0)
    for batch in (7, 20):
        streamed = torch.cat([x for x, _ in ds.batches(preprocess, batch)])
        assert torch.equal(streamed, per_image)


def test_worker_processes_write_the_same_bytes(folder, tmp_path):
    ds0 = load_imagenet_val(str(folder), cache_dir=tmp_path / "c0", workers=0)
    ds2 = load_imagenet_val(str(folder), cache_dir=tmp_path / "c2", workers=2)
    a = dc.decoded_cache(ds0.index, LITE0, tmp_path / "c0", 0)
    b = dc.decoded_cache(ds2.index, LITE0, tmp_path / "c2", 2)
    assert b.built is not None and b.built.workers == 2
    assert np.array_equal(a.memmap(), b.memmap())


def test_cache_is_reused_and_a_damaged_array_is_rebuilt(folder, tmp_path):
    ds = load_imagenet_val(str(folder), cache_dir=tmp_path / "cache", workers=0)
    first = dc.decoded_cache(ds.index, LITE0, tmp_path / "cache", 0)
    assert first.built is not None
    good = np.array(first.memmap())
    dc.forget_open_caches()
    again = dc.decoded_cache(ds.index, LITE0, tmp_path / "cache", 0)
    assert again.built is None and again.path == first.path  # verified, not rebuilt
    dc.forget_open_caches()
    with open(first.path, "r+b") as f:  # one flipped byte
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="does not match its sha256"):
        rebuilt = dc.decoded_cache(ds.index, LITE0, tmp_path / "cache", 0)
    assert rebuilt.built is not None and np.array_equal(np.array(rebuilt.memmap()), good)
    dc.forget_open_caches()
    os.truncate(rebuilt.path, 1000)
    with pytest.warns(UserWarning, match="bytes"):
        assert dc.decoded_cache(ds.index, LITE0, tmp_path / "cache", 0).built is not None


def test_subset_rows_read_from_the_same_cache(folder, tmp_path):
    ds = load_imagenet_val(str(folder), cache_dir=tmp_path / "cache", workers=0)
    full = torch.cat([x for x, _ in ds.batches(LITE0, 20)])
    sub = ds.subset([3, 1, 17])
    x, y = next(sub.batches(LITE0, 20))
    assert torch.equal(x, full[[3, 1, 17]]) and y.tolist() == ds.labels[[3, 1, 17]].tolist()
    assert sub.fingerprint != ds.fingerprint


def test_memory_does_not_hold_the_images(folder, tmp_path):
    """The dataset keeps paths and labels only; the decoded pixels live in the file, read batch by batch."""
    ds = load_imagenet_val(str(folder), cache_dir=tmp_path / "cache", workers=0)
    assert not isinstance(ds.images, torch.Tensor) and not any(isinstance(v, torch.Tensor) for v in ds.index.items)
    cache = dc.decoded_cache(ds.index, LITE0, tmp_path / "cache", 0)
    assert os.path.getsize(cache.path) == 20 * 3 * 224 * 224


def _session(imagenet, subset=None, cache_dir=None):
    from nnconform.session import ConformanceSession, RunConfig

    return ConformanceSession(RunConfig(anchors="efficientnet-lite0", imagenet=imagenet, imagenet_subset=subset,
                                        cache_dir=cache_dir, write_report=False))


def test_failing_imagenet_source_fails_never_falls_back(tmp_path):
    """A --nnc-imagenet that does not load raises its reason (a failure, not a skip) on every call."""
    bad = tmp_path / "imagenet"
    (bad / "val" / "cats").mkdir(parents=True)
    (bad / "val" / "cats" / "a.JPEG").write_bytes(b"x")
    session = _session(str(bad), cache_dir=tmp_path / "cache")
    for _ in range(2):
        with pytest.raises(DatasetLoadError, match="cats") as info:
            session.dataset("efficientnet-lite0")
        assert not isinstance(info.value, DatasetUnavailable)  # load_or_skip would turn that into a skip
    assert session.datasets_used == {}
    with pytest.raises(DatasetLoadError, match="no such folder or parquet file"):
        _session(str(tmp_path / "missing")).dataset("efficientnet-lite0")


def test_no_imagenet_source_uses_the_smoke_set():
    ds = _session(None).dataset("efficientnet-lite0")
    assert ds.smoke and len(ds) == 20


def test_subset_option_reaches_the_loader(folder, tmp_path):
    ds = _session(str(folder), subset=7, cache_dir=tmp_path / "cache").dataset("efficientnet-lite0")
    assert len(ds) == 7 and ds.notes and "subset" in ds.notes[0]


def _accuracy(correct: int, n: int, name="imagenet-1k", smoke=False):
    from nnconform.anchor_checks import check_documented_accuracy
    from nnconform.anchors import get_anchor

    labels = torch.zeros(n, dtype=torch.long)
    logits = torch.zeros(n, 1000)
    logits[:correct, 0] = 1.0
    logits[correct:, 1] = 1.0
    result = SimpleNamespace(correct=(logits.argmax(1) == labels).numpy(), top1=correct / n, top5=None,
                             logits=logits, outputs=logits, task=SimpleNamespace(name="classification", metric="top1"))
    ds = ImageDataset(name, "val", [], labels, (), "test", "0" * 64, smoke=smoke)
    return check_documented_accuracy(get_anchor("efficientnet-lite0"), ds, result)


def test_small_set_judged_by_its_interval():
    """EfficientNet-Lite0 documents 75.1%: 700 of 1000 (70.0%) lies outside +-1% yet its interval holds the
    documented figure, so the subset passes as a subset; 600 of 1000 fails; the full 50,000 keeps +-1%."""
    rec = _accuracy(730, 1000)
    assert rec.check_id == "anchor.accuracy_subset" and rec.passed and "SUBSET of 1,000 of the 50,000" in rec.message
    assert rec.details["subset"] and rec.details["documented_samples"] == 50_000
    bad = _accuracy(600, 1000)
    assert bad.check_id == "anchor.accuracy_subset" and not bad.passed
    full = _accuracy(35_000, 50_000)
    assert full.check_id == "anchor.accuracy" and not full.passed
    assert _accuracy(37_560, 50_000).passed


def test_conformance_run_with_a_bad_source_fails(tmp_path):
    """End to end: the anchor's accuracy case fails with the loader's message; no smoke check is recorded."""
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "imagenet" / "val" / "cats"
    bad.mkdir(parents=True)
    (bad / "a.JPEG").write_bytes(b"x")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", str(root / "conformance" / "test_anchors.py"),
                           "-p", "no:cacheprovider", "-q", "--nnc-anchors", "efficientnet-lite0", "--nnc-threads", "1",
                           "--nnc-cache-dir", str(tmp_path / "cache"), "--nnc-no-report", "-k", "documented_accuracy",
                           "--nnc-imagenet", str(tmp_path / "imagenet")],
                          capture_output=True, text=True, cwd=root, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "DatasetLoadError" in proc.stdout and "['cats']" in proc.stdout and "verdict: FAIL" in proc.stdout
    assert "SMOKE CHECK" not in proc.stdout


def test_parquet_rows_decoded_by_worker_processes(folder, tmp_path):
    """Parquet rows are read inside each worker (the table is opened per process): same pixels as the folder."""
    from test_imagenet_labels import make_parquet

    by_folder = load_imagenet_val(str(folder), cache_dir=tmp_path / "c0", workers=0)
    by_rows = load_imagenet_val(str(make_parquet(tmp_path / "pq", "wnid")), cache_dir=tmp_path / "c2", workers=2)
    assert by_rows.labels.tolist() == by_folder.labels.tolist()
    a = dc.decoded_cache(by_folder.index, LITE0, tmp_path / "c0", 0)
    b = dc.decoded_cache(by_rows.index, LITE0, tmp_path / "c2", 2)
    assert np.array_equal(a.memmap(), b.memmap())
