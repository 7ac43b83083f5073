"""The content store every cache uses: entries read back exactly, and any damage to an entry (a bit
flip, a truncated or missing file, an edited manifest value, a file where the folder should be) is
detected, warned about by name, and replaced by the next store, leaving the other entries alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from nnconform.store import MANIFEST, ContentStore

FILES = {"weights.bin": bytes(range(256)) * 40, "probe.safetensors": b"probe-bytes"}
META = {"reported_bytes": 10240, "format": "raw", "nested": {"a": [1, 2.5, None]}}


def _flip(path: Path, offset: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 0x01
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_meta(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["body"]["meta"]["reported_bytes"] = 1  # a changed value, the seal left as it was
    path.write_text(json.dumps(manifest))


def _get_warned(store: ContentStore, key: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = store.get(key)
    return entry, [str(w.message) for w in caught]


def test_round_trip_and_miss(tmp_path):
    store = ContentStore(tmp_path, "test cache")
    assert store.get("k1") is None and store.stats.misses == 1
    put = store.put("k1", FILES, META)
    got = store.get("k1")
    assert got is not None and dict(got.files) == FILES and got.meta == META == put.meta
    assert store.stats.hits == 1 and store.stats.stores == 1 and store.stats.corrupt == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folders left behind"


DAMAGE = {
    "bit flip in a file": lambda e: _flip(e / "weights.bin"),
    "truncated file": lambda e: _truncate(e / "weights.bin"),
    "missing file": lambda e: (e / "probe.safetensors").unlink(),
    "bit flip in the manifest": lambda e: _flip(e / MANIFEST, 40),
    "truncated manifest": lambda e: _truncate(e / MANIFEST),
    "edited metadata value": lambda e: _edit_meta(e / MANIFEST),
    "manifest removed": lambda e: (e / MANIFEST).unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_named_and_replaced_others_unaffected(tmp_path, damage):
    store = ContentStore(tmp_path, "test cache")
    store.put("good", {"x.bin": b"other entry"}, {"n": 1})
    store.put("k1", FILES, META)
    DAMAGE[damage](tmp_path / "k1")
    entry, messages = _get_warned(store, "k1")
    assert entry is None and store.stats.corrupt == 1
    assert any("test cache entry" in m and str(tmp_path / "k1") in m and "corrupt" in m for m in messages), messages
    # the next store replaces the damaged entry (no error although the folder exists)
    store.put("k1", FILES, META)
    again, messages = _get_warned(store, "k1")
    assert again is not None and dict(again.files) == FILES and again.meta == META and not messages
    assert store.get("good").files == {"x.bin": b"other entry"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folders left behind"


def test_a_file_in_place_of_an_entry_is_corrupt_and_replaced(tmp_path):
    store = ContentStore(tmp_path)
    tmp_path.joinpath("k1").write_bytes(b"not a folder")
    entry, messages = _get_warned(store, "k1")
    assert entry is None and any("corrupt" in m for m in messages)
    store.put("k1", FILES, META)
    assert store.get("k1").files == FILES


def test_an_existing_good_entry_is_kept(tmp_path):
    """Another writer won: its (verified) entry stays, the second put returns it."""
    store = ContentStore(tmp_path)
    first = store.put("k1", FILES, META)
    inode = (tmp_path / "k1").stat().st_ino
    second = store.put("k1", FILES, META)
    assert (tmp_path / "k1").stat().st_ino == inode and second.meta == first.meta


@pytest.mark.parametrize("bad", ["", "../up", ".hidden", "a/b", MANIFEST, "x" * 300])
def test_unsafe_keys_and_file_names_are_refused_by_name(tmp_path, bad):
    store = ContentStore(tmp_path)
    with pytest.raises(ValueError, match="plain file name"):
        store.put(bad, {"f": b""})
    with pytest.raises(ValueError, match="plain file name"):
        store.put("ok", {bad: b""})
    assert not (tmp_path / "ok").exists()
