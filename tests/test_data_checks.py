"""Fashion-MNIST files are checked on load: planted bad IDX files fail, naming the file."""

from __future__ import annotations

import gzip
import struct
import warnings

import numpy as np
import pytest

from nnconform import data
from nnconform.data import (DatasetFormatError, DatasetMismatchWarning, DatasetUnavailable, load_fashion_mnist,
                            read_idx_file)

N = data._FMNIST_SIZES["test"]
SYSTEM_DIR = data.FMNIST_SYSTEM_DIR  # before the fixture below points it elsewhere


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(f">HBB{array.ndim}I", 0, 8, array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def _plant(folder, images: np.ndarray, labels: np.ndarray, *, gz: bool = True):
    """Write a test split into ``folder``; returns the (images, labels) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, array in zip(data._FMNIST_FILES["test"], (images, labels)):
        path = folder / (stem + (".gz" if gz else ""))
        raw = _idx(array)
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        paths.append(path)
    return paths


@pytest.fixture
def good_arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 28, 28), dtype=np.uint8), rng.integers(0, 10, N, dtype=np.uint8)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No system copy, no hub, no loader cache shared with other tests."""
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.delenv("NNCONFORM_FMNIST_DIR", raising=False)
    monkeypatch.setenv("NNCONFORM_OFFLINE", "1")


def test_wrong_magic_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(100))  # 0x0d: float data, not unsigned bytes
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: not an unsigned-byte IDX file \(magic 00000d03"):
        read_idx_file(path)


def test_truncated_gz_names_its_file(tmp_path, good_arrays):
    img, _ = _plant(tmp_path / "d", *good_arrays)
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    with pytest.raises(DatasetFormatError, match=rf"{img}: truncated or corrupt gzip archive"):
        load_fashion_mnist("test", data_dir=tmp_path / "d")


def test_header_larger_than_data_is_named(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 8, 1, N) + bytes(N - 1)))
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte\.gz: truncated IDX file"):
        read_idx_file(path)


def test_swapped_image_and_label_files_are_named(tmp_path, good_arrays):
    images, labels = good_arrays
    _plant(tmp_path / "d", labels, images)  # labels written under the image file's name and vice versa
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte\.gz holds a 1-D IDX array .*"
                                                 r"t10k-labels-idx1-ubyte\.gz a 3-D one .*look swapped"):
        load_fashion_mnist("test", data_dir=tmp_path / "d")


def test_labels_out_of_range_fail(tmp_path, good_arrays):
    images, labels = good_arrays
    labels = labels.copy()
    labels[[3, 7]] = 10
    _plant(tmp_path / "d", images, labels)
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte\.gz: 2 labels outside 0\.\.9 \(largest 10\)"):
        load_fashion_mnist("test", data_dir=tmp_path / "d")


def test_count_mismatch_and_wrong_image_size_fail(tmp_path, good_arrays):
    images, labels = good_arrays
    _plant(tmp_path / "a", images, labels[:-1])
    with pytest.raises(DatasetFormatError, match=rf"{N} images but .*t10k-labels-idx1-ubyte\.gz has {N - 1} labels"):
        load_fashion_mnist("test", data_dir=tmp_path / "a")
    _plant(tmp_path / "b", images.reshape(N, 14, 56), labels)
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte\.gz: Fashion-MNIST images must be "
                                                 r"\[N, 28, 28\], the file holds \[10000, 14, 56\]"):
        load_fashion_mnist("test", data_dir=tmp_path / "b")


def test_a_copy_differing_from_the_pinned_one_is_reported(tmp_path, good_arrays):
    images, labels = good_arrays
    _, lbl = _plant(tmp_path / "d", images, labels, gz=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_fashion_mnist("test", data_dir=tmp_path / "d")
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetMismatchWarning)]
    pinned = data.FMNIST_SHA256["t10k-labels-idx1-ubyte"]
    actual = read_idx_file(lbl)[1]
    assert any(str(lbl) in m and pinned in m and actual in m for m in messages), messages
    assert len(ds.notes) == 2 and ds.subset(range(5)).notes == ds.notes


def test_empty_data_dir_never_falls_back(tmp_path, good_arrays, monkeypatch):
    # A complete "system" copy exists, but the user named an empty folder: that folder is the only one used.
    system = tmp_path / "system"
    _plant(system, *good_arrays)
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", system)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetUnavailable, match=rf"searched {empty}, {empty}/fashion-mnist .*only one searched"):
        load_fashion_mnist("test", data_dir=empty)
    monkeypatch.setenv("NNCONFORM_FMNIST_DIR", str(empty))
    with pytest.raises(DatasetUnavailable, match="only one searched"):
        load_fashion_mnist("test")
    monkeypatch.delenv("NNCONFORM_FMNIST_DIR")
    with pytest.warns(DatasetMismatchWarning):  # planted random data: not the pinned copy
        assert load_fashion_mnist("test").source == str(system)  # the control: without a named folder it is found


def test_the_installed_copy_matches_the_pins():
    """The system copy, when installed, is the pinned one (so a default run reports no mismatch)."""
    for split in ("test", "train"):
        for stem in data._FMNIST_FILES[split]:
            path = data._find_idx(SYSTEM_DIR, stem)
            if path is None:
                pytest.skip(f"Fashion-MNIST not installed in {SYSTEM_DIR}")
            assert read_idx_file(path)[1] == data.FMNIST_SHA256[stem], path
