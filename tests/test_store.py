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


# --- every cache on the store: damage to one entry is detected, named and recomputed ----------

class _EvalCache:
    """The evaluation cache, through ``Evaluator.evaluate`` (a miss runs the model again)."""

    data_file, folder = "logits.safetensors", "eval"

    def __init__(self):
        import torch

        from nnconform.data import ImageDataset, Preprocess

        g = torch.Generator().manual_seed(0)
        self.pre = Preprocess(mean=(0.5,), std=(0.5,), channels=1)
        self.data = ImageDataset("synthetic", "test", torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8,
                                 generator=g), torch.randint(0, 3, (20,), generator=g), ("a", "b", "c"), "test", "fp0")
        self.models = []
        for i in range(2):
            torch.manual_seed(i)
            self.models.append(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval())

    def write(self, root, i):
        from nnconform.evaluate import Evaluator

        return Evaluator(root).evaluate(self.models[i], self.data, self.pre).logits

    def read(self, root, i):
        from nnconform.evaluate import Evaluator

        ev = Evaluator(root)
        logits = ev.evaluate(self.models[i], self.data, self.pre).logits
        return logits if ev.hits == 1 else None

    def same(self, a, b):
        import torch

        return torch.equal(a, b)


class _CompressionCache:
    """The compression artifact cache (artifact files, probe logits and the former meta.json)."""

    data_file, folder = "model.bin", "compress"

    def _result(self, i):
        import torch

        from nnconform.compress.base import Artifact, CompressedModel

        artifact = Artifact({"model.bin": bytes([i]) * 300, "structure.json": b'{"layers": 2}'}, "test")
        return CompressedModel(None, artifact, artifact.nbytes, 10 + i, 100, {"rank": i}), torch.full((4, 3), i + 0.5)

    def write(self, root, i):
        from nnconform.compress.runner import CompressionCache

        result, probe = self._result(i)
        CompressionCache(root).store(f"key{i}", result, probe, {"method": "test"})
        return self.read(root, i)

    def read(self, root, i):
        from nnconform.compress.runner import CompressionCache

        hit = CompressionCache(root).load(f"key{i}")
        if hit is None:
            return None
        result, probe = hit
        return result.artifact.files, result.reported_bytes, result.params, result.metadata, probe.tolist()

    def same(self, a, b):
        return a == b


class _SplitCache:
    """The split result cache (coded logits, payload sizes, error statistics)."""

    data_file, folder = "result.safetensors", "split"

    class Codec:
        pass

    def _cache(self, root):
        from nnconform.split.cache import SplitResultCache

        return SplitResultCache(root, {"model": "m", "dataset": "d"}, 5)

    def write(self, root, i):
        from types import SimpleNamespace

        import torch

        result = SimpleNamespace(logits=torch.arange(15.0).reshape(5, 3) * (i + 1), payload_bytes=[10 + i] * 5,
                                 max_abs_error=0.25 * i, sq_error=1.5, elements=40, determinism_checked=2)
        self._cache(root).store("cut", {"id": f"p{i}"}, self.Codec(), result)
        return self.read(root, i)

    def read(self, root, i):
        hit = self._cache(root).load("cut", {"id": f"p{i}"}, self.Codec())
        return None if hit is None else {**hit, "logits": hit["logits"].tolist()}

    def same(self, a, b):
        return a == b


class _AimetScores:
    """The AIMET greedy eval-score cache (per-layer scores reused across target ratios)."""

    data_file, folder = "scores.json", "aimet-eval-scores"

    def _store(self, root):
        from nnconform.compress.aimet_compression import _scores_store

        return _scores_store(type("Ctx", (), {"cache_dir": root})())

    def write(self, root, i):
        from decimal import Decimal

        from nnconform.compress.aimet_compression import _write_eval_scores

        _write_eval_scores(self._store(root), f"aimet-ssvd-{i}", {"conv1": {Decimal("0.5"): 0.8 - i / 10,
                                                                            Decimal("0.25"): 0.5}})
        return self.read(root, i)

    def read(self, root, i):
        from nnconform.compress.aimet_compression import _read_eval_scores

        return _read_eval_scores(self._store(root), f"aimet-ssvd-{i}")

    def same(self, a, b):
        return a == b


CACHES = {"evaluation": _EvalCache, "compression": _CompressionCache, "split": _SplitCache,
          "aimet-eval-scores": _AimetScores}
CACHE_DAMAGE = {
    "bit flip": lambda e, f: _flip(e / f, 7),
    "truncated": lambda e, f: _truncate(e / f),
    "edited value": lambda e, f: _edit_manifest_value(e / MANIFEST),
}


def _edit_manifest_value(path: Path) -> None:
    """Change one recorded value (a size, or a number in the metadata) and leave the seal as it was."""
    manifest = json.loads(path.read_text())
    body = manifest["body"]
    name = next(iter(body["files"]))
    body["files"][name]["bytes"] += 1
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
@pytest.mark.parametrize("cache", list(CACHES))
def test_each_cache_detects_damage_recomputes_and_keeps_other_entries(tmp_path, cache, damage):
    c = CACHES[cache]()
    first = c.write(tmp_path, 0)
    (damaged,) = _entries(tmp_path / c.folder)
    other = c.write(tmp_path, 1)
    assert first is not None and other is not None and len(_entries(tmp_path / c.folder)) == 2
    assert c.same(c.read(tmp_path, 0), first), "a stored entry reads back"
    CACHE_DAMAGE[damage](damaged, c.data_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert c.read(tmp_path, 0) is None, f"a damaged {cache} entry must not be trusted"
    messages = [str(w.message) for w in caught]
    assert any(str(damaged) in m and "corrupt" in m for m in messages), messages
    assert c.same(c.read(tmp_path, 1), other), "the other entry is unaffected"
    again = c.write(tmp_path, 0)  # recompute and store: the damaged entry is replaced
    assert c.same(again, first) and c.same(c.read(tmp_path, 0), first)
    assert len(_entries(tmp_path / c.folder)) == 2


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]
