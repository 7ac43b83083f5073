"""One content store for every on-disk cache: entries that are verified on read and published atomically.

An entry is a folder ``root/<key>/`` holding named files and a ``MANIFEST.json`` written last: the
entry's key, its metadata (any JSON) and each file's size and sha256, sealed by a sha256 over the
manifest itself. :meth:`ContentStore.get` re-hashes everything it returns, so a bit flip, a truncated
file, an edited value or a missing file makes the entry *corrupt*: a warning names its folder and the
problem, the caller recomputes, and :meth:`ContentStore.put` replaces it. Nothing read from disk is
trusted before it verifies.

Several runs may share one cache folder. A writer fills a private temporary folder beside the entries
(a unique name, every file fsync'ed) and publishes it with one ``rename``. If the key is already there,
another writer won: its entry is kept once it verifies (a corrupt one is first renamed aside, so no
reader ever sees a half-removed entry). Readers read every file through a descriptor of the entry's
folder, so an entry swapped mid-read is read whole or not at all.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FORMAT = "nnconform-store/1"
MANIFEST = "MANIFEST.json"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")
_PUBLISH_TRIES = 5


class CorruptEntry(ValueError):
    """A stored entry does not verify; the message says what is wrong, ``inode`` which folder it was."""

    def __init__(self, message: str, inode: int | None = None) -> None:
        super().__init__(message)
        self.inode = inode


@dataclass(frozen=True)
class StoreEntry:
    """A verified entry: its key, its files' exact bytes, its metadata and its folder."""

    key: str
    files: Mapping[str, bytes]
    meta: dict
    path: Path


@dataclass
class StoreStats:
    """What a store did in this process: verified hits, misses, corrupt entries found and stores."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    stores: int = 0
    corrupt_entries: list[str] = field(default_factory=list)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == MANIFEST:
        raise ValueError(f"store {kind} {name!r} must be a plain file name (letters, digits, '_', '.', '+', '-'; "
                         f"not starting with '.', at most 200 characters, not {MANIFEST!r})")
    return name


def _seal(body: dict) -> str:
    """The sha256 of a manifest body (canonical JSON: sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_synced(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_all(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


class ContentStore:
    """Verified, atomically published entries under ``root`` (``put`` / ``get``).

    ``name`` is what warnings call the store (``"evaluation cache"``). Keys and file names are plain
    file names; metadata is any JSON value and is covered by the manifest's own sha256.
    """

    def __init__(self, root: str | Path, name: str = "cache") -> None:
        self.root = Path(root)
        self.name = name
        self.stats = StoreStats()

    def path(self, key: str) -> Path:
        """The folder of the entry ``key`` (present or not)."""
        return self.root / _check_name("key", key)

    # reading -----------------------------------------------------------------------------------

    def _read(self, key: str) -> StoreEntry | None:
        """The verified entry, None when absent; :class:`CorruptEntry` when present and wrong."""
        folder = self.path(key)
        try:
            dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:  # e.g. a file where the entry folder should be
            raise CorruptEntry(f"cannot open the entry folder: {exc.strerror}") from None
        inode = os.fstat(dir_fd).st_ino
        try:
            return StoreEntry(key, *self._verify(dir_fd, key), folder)
        except CorruptEntry as exc:
            raise CorruptEntry(str(exc), inode) from None
        except OSError as exc:
            raise CorruptEntry(f"cannot read the entry: {exc}", inode) from None
        finally:
            os.close(dir_fd)

    @staticmethod
    def _verify(dir_fd: int, key: str) -> tuple[dict[str, bytes], Any]:
        """(files, meta) of the entry folder open as ``dir_fd``, every byte checked against the manifest."""
        try:
            raw = _read_all(dir_fd, MANIFEST)
        except FileNotFoundError:
            raise CorruptEntry(f"{MANIFEST} is missing") from None
        try:
            manifest = json.loads(raw)
            body, seal = manifest["body"], manifest["sha256"]
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptEntry(f"{MANIFEST} does not parse ({type(exc).__name__}: {exc})") from None
        if not isinstance(body, dict) or _seal(body) != seal:
            raise CorruptEntry(f"{MANIFEST} does not match its sha256 (edited or damaged)")
        if body.get("format") != FORMAT or body.get("key") != key:
            raise CorruptEntry(f"{MANIFEST} is for {body.get('format')!r} key {body.get('key')!r}, "
                               f"not {FORMAT!r} key {key!r}")
        files = {}
        try:
            for name, spec in body["files"].items():
                try:
                    data = _read_all(dir_fd, _check_name("file", name))
                except FileNotFoundError:
                    raise CorruptEntry(f"file {name!r} listed in {MANIFEST} is missing") from None
                if len(data) != spec["bytes"]:
                    raise CorruptEntry(f"file {name!r} has {len(data)} bytes, the manifest says {spec['bytes']} "
                                       f"(truncated or extended)")
                if hashlib.sha256(data).hexdigest() != spec["sha256"]:
                    raise CorruptEntry(f"file {name!r} does not match its sha256 (changed bytes)")
                files[name] = data
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, CorruptEntry):
                raise
            raise CorruptEntry(f"{MANIFEST} lists files wrongly ({type(exc).__name__}: {exc})") from None
        return files, body.get("meta")

    def get(self, key: str) -> StoreEntry | None:
        """The entry ``key`` after verifying every byte; None when absent or corrupt (warned, naming it)."""
        try:
            entry = self._read(key)
        except CorruptEntry as exc:
            self.report_corrupt(key, str(exc))
            return None
        if entry is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return entry

    def report_corrupt(self, key: str, problem: str) -> None:
        """Warn that entry ``key`` is unusable (it will be recomputed and replaced); counted in ``stats``.

        Callers use it too when an entry verifies but its content is not what they need (a tensor file
        that does not parse, a sample count that does not match).
        """
        self.stats.corrupt += 1
        self.stats.misses += 1
        self.stats.corrupt_entries.append(key)
        warnings.warn(f"{self.name} entry {self.root / key} is corrupt ({problem}); recomputing and replacing it",
                      stacklevel=3)

    # writing -----------------------------------------------------------------------------------

    def put(self, key: str, files: Mapping[str, bytes], meta: Any = None) -> StoreEntry:
        """Store ``files`` (name -> bytes) and ``meta`` (JSON) as entry ``key``; returns the entry now stored.

        Publishing is one rename of a fully written folder. When another writer stored ``key`` first,
        its entry is kept if it verifies (entries are content-addressed: same key, same content) and
        replaced if it is corrupt.
        """
        body = {"format": FORMAT, "key": _check_name("key", key), "meta": meta,
                "files": {_check_name("file", n): {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                          for n, d in files.items()}}
        manifest = json.dumps({"body": body, "sha256": _seal(body)}, sort_keys=True, indent=1).encode()
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / key
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{key[:16]}-"))
        try:
            dir_fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                for name, data in files.items():
                    _write_synced(dir_fd, name, bytes(data))
                _write_synced(dir_fd, MANIFEST, manifest)  # last: an entry without it is incomplete
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            for _ in range(_PUBLISH_TRIES):
                try:
                    os.rename(tmp, final)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                        raise
                else:
                    _fsync_dir(self.root)
                    self.stats.stores += 1
                    return StoreEntry(key, {n: bytes(d) for n, d in files.items()}, meta, final)
                try:  # another writer won
                    theirs = self._read(key)
                except CorruptEntry as exc:
                    theirs = None
                    self._move_aside(final, exc.inode)
                if theirs is not None:
                    return theirs
            raise OSError(f"{self.name}: could not publish entry {final} after {_PUBLISH_TRIES} attempts "
                          f"(other writers keep replacing it)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _move_aside(self, folder: Path, inode: int | None) -> None:
        """Rename the corrupt entry found at ``folder`` out of the way (atomic), then delete it.

        Only the folder that was found corrupt (same inode) is moved: if another writer has replaced it
        meanwhile with a good entry, that one stays. Losing the race to another writer is fine.
        """
        trash = Path(tempfile.mkdtemp(dir=self.root, prefix=".trash-"))
        try:
            if inode is None or os.lstat(folder).st_ino == inode:
                os.rename(folder, trash / "entry")
        except FileNotFoundError:
            pass  # another writer moved it already
        finally:
            shutil.rmtree(trash, ignore_errors=True)
