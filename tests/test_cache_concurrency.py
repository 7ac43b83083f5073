"""Caches shared by concurrent runs: two writer processes and a reader on one store folder never fail a
store and never read a wrong or partial entry (also while they replace entries that were corrupted), and
two conformance runs started together on one cold cache folder report exactly what a serial run does."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from nnconform.report.compare import TIMED_CHECKS, compare_results
from nnconform.store import MANIFEST, ContentStore

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"k{i:03d}" for i in range(100)]
ROUNDS = 3  # each writer stores every key this many times: 2 x 3 x 100 = 600 stores a phase
DEADLINE_S = 240


def _content(key: str) -> tuple[dict[str, bytes], dict]:
    """The one content a key has (caches are content-addressed): two files of key-dependent size."""
    seed = hashlib.sha256(key.encode()).digest()
    size = 1000 + int.from_bytes(seed[:2], "big") % 60_000
    files = {"artifact.bin": (seed * (size // 32 + 1))[:size], "probe.safetensors": seed * 3}
    return files, {"key": key, "size": size}


def _same(entry, key: str) -> bool:
    files, meta = _content(key)
    return dict(entry.files) == files and entry.meta == meta


def _writer(root: str, seed: int, queue) -> None:
    """Like a cache: read, and store when the entry is absent or unusable; every put is checked."""
    store, rng, failures, stores = ContentStore(root, "stress"), random.Random(seed), [], 0
    warnings.simplefilter("ignore")  # corrupt entries are expected in the replacement phase
    for _ in range(ROUNDS):
        for key in rng.sample(KEYS, len(KEYS)):
            try:
                entry = store.get(key)
                if entry is not None and not _same(entry, key):
                    failures.append(f"writer {seed}: get({key}) returned wrong content")
                files, meta = _content(key)
                stored = store.put(key, files, meta)
                stores += 1
                if not _same(stored, key):
                    failures.append(f"writer {seed}: put({key}) returned wrong content")
            except Exception as exc:  # a failed store is what this test counts
                failures.append(f"writer {seed}: {key}: {type(exc).__name__}: {exc}")
    queue.put({"who": f"writer {seed}", "stores": stores, "failures": failures})


def _reader(root: str, stop, queue) -> None:
    """Reads every key over and over until the writers stop: an entry it gets must be exactly right."""
    store, failures, reads, hits = ContentStore(root, "stress"), [], 0, 0
    warnings.simplefilter("ignore")
    while not stop.is_set():
        for key in KEYS:
            try:
                entry = store.get(key)
                reads += 1
                if entry is not None:
                    hits += 1
                    if not _same(entry, key):
                        failures.append(f"reader: get({key}) returned wrong content")
            except Exception as exc:
                failures.append(f"reader: {key}: {type(exc).__name__}: {exc}")
    queue.put({"who": "reader", "reads": reads, "hits": hits, "failures": failures,
               "corrupt_seen": store.stats.corrupt})


def _stress(root: Path) -> list[dict]:
    ctx = mp.get_context("fork")
    queue, stop = ctx.Queue(), ctx.Event()
    writers = [ctx.Process(target=_writer, args=(str(root), seed, queue)) for seed in (1, 2)]
    reader = ctx.Process(target=_reader, args=(str(root), stop, queue))
    for p in (reader, *writers):
        p.start()
    results = [queue.get(timeout=DEADLINE_S) for _ in writers]
    stop.set()
    results.append(queue.get(timeout=60))
    for p in (reader, *writers):
        p.join(timeout=30)
        assert p.exitcode == 0, f"a stress process ended with exit code {p.exitcode}"
    return results


def _damage_every_entry(root: Path) -> None:
    for i, key in enumerate(KEYS):
        entry = root / key
        if i % 3 == 0:
            raw = bytearray((entry / "artifact.bin").read_bytes())
            raw[len(raw) // 2] ^= 0x10
            (entry / "artifact.bin").write_bytes(bytes(raw))
        elif i % 3 == 1:
            (entry / "probe.safetensors").write_bytes(b"")
        else:
            manifest = json.loads((entry / MANIFEST).read_text())
            manifest["body"]["meta"]["size"] += 1
            (entry / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.skipif(sys.platform != "linux", reason="the stress test forks its processes (Linux)")
def test_two_writers_and_a_reader_never_fail(tmp_path):
    root = tmp_path / "store"
    start = time.monotonic()
    cold = _stress(root)
    _damage_every_entry(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert all(ContentStore(root).get(k) is None for k in KEYS), "every damaged entry must be refused"
    assert len(caught) == len(KEYS)
    replace = _stress(root)
    seconds = time.monotonic() - start
    failures = [f for r in cold + replace for f in r["failures"]]
    stores = sum(r.get("stores", 0) for r in cold + replace)
    reads = sum(r.get("reads", 0) for r in cold + replace)
    print(f"stress: {stores} stores and {reads} reads by 2 writers + 1 reader in {seconds:.1f} s, "
          f"{len(failures)} failures")
    assert stores == 2 * 2 * ROUNDS * len(KEYS)
    assert failures == [], failures[:20]
    final = ContentStore(root)
    assert all(_same(final.get(k), k) for k in KEYS) and final.stats.corrupt == 0
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary folders left behind: {leftovers[:5]}"


# --- two conformance runs at once on one cold cache folder -----------------------------------

SUITE = ["conformance/test_compression.py", "conformance/test_anchors.py", "--nnc-tier", "quick",
         "--nnc-anchors", "fmnist-lenet5", "-k", "not latency and not benchmark"]


def _start(tmp_path: Path, run_id: str, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", *SUITE, "--rootdir", str(REPO), "-p", "no:cacheprovider", "-q",
           "--nnc-cache-dir", str(cache), "--nnc-report-dir", str(tmp_path / "reports"), "--nnc-run-id", run_id]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / f"{run_id}.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(tmp_path: Path, run_id: str, proc: subprocess.Popen) -> Path:
    code = proc.wait(timeout=1800)
    log = (tmp_path / f"{run_id}.log").read_text()
    assert code == 0, f"run {run_id} exited {code}:\n{log[-3000:]}"
    return tmp_path / "reports" / run_id


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnconform.report.compare", str(a), str(b)], capture_output=True,
                          text=True, timeout=120)


def test_two_concurrent_runs_on_one_cold_cache_match_a_serial_run(tmp_path):
    # all three start together (so they read the same plan files); the reference run has a cache of its own
    shared = tmp_path / "cache-shared"
    procs = {"serial": _start(tmp_path, "serial", tmp_path / "cache-serial")}
    procs.update({rid: _start(tmp_path, rid, shared) for rid in ("concurrent-1", "concurrent-2")})
    runs = {rid: _finish(tmp_path, rid, proc) for rid, proc in procs.items()}
    serial = runs.pop("serial")
    for rid, run in runs.items():
        result = _compare(serial, run)
        assert result.returncode == 0, f"{rid} differs from the serial run:\n{result.stdout}{result.stderr}"
        assert "the same results" in result.stdout
    # neither run saw a corrupt entry, and the shared cache holds only complete entries
    for rid in runs:
        assert "is corrupt" not in (tmp_path / f"{rid}.log").read_text()
    for kind in ("eval", "compress"):
        folder = shared / kind
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        assert entries and all((p / MANIFEST).is_file() for p in entries), kind
        assert not [p for p in folder.iterdir() if p.name.startswith(".")], f"temporary folders left in {folder}"
    records = json.loads((serial / "results.json").read_text())["records"]
    assert len(records) > 20
    # and the comparison can fail: one changed value in a copy of a run is a difference (exit 1)
    changed = json.loads((runs["concurrent-1"] / "results.json").read_text())
    rec = next(r for r in changed["records"] if r["check_id"] not in TIMED_CHECKS
               and isinstance(r.get("measured"), (int, float)) and not isinstance(r.get("measured"), bool))
    rec["measured"] = rec["measured"] + 1
    assert compare_results(json.loads((serial / "results.json").read_text()), changed)
