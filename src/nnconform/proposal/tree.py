"""The files of a proposal folder: the tree pin, and paths confined to the folder.

A proposal pins its whole folder with ``tree_sha256``: the sha256 of a listing of every file (sorted
relative paths, the executable bit as git keeps it, the sha256 of the contents), so a data file
beside the module (a pickle, say) is covered as much as the module is. Symbolic links are hashed as
links (their target text), never followed, and refused when they lead out of the folder or loop.
``__pycache__`` folders are left out of the pin: the sandbox runs a copy of the folder without them
and compiles the pinned sources itself (see :mod:`nnconform.sandbox`).

:func:`confine` resolves a manifest's relative path inside the folder one component at a time and
refuses ``..``, absolute paths and links leading out **without touching anything outside the folder**
(no stat, no read, no hash of the target: the checker must not be a probe of the host).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from ..hashing import sha256_file

#: Folders left out of the tree pin (the interpreter's bytecode cache; never read in the sandbox).
SKIPPED_DIRS = ("__pycache__",)
#: Top-level files left out by default: the manifest holds the pin, so it cannot be under it (it has its
#: own hash, ``manifest_sha256``, in the report).
MANIFEST_NAME = "proposal.toml"
#: Links followed while resolving one path (Linux's own limit).
MAX_LINK_HOPS = 40
TREE_FORMAT = "nnconform-tree-v1"


class TreeError(ValueError):
    """A proposal folder that cannot be pinned (a link leaving it, a loop, a special file)."""


class PathEscape(ValueError):
    """A manifest path that does not stay inside the proposal folder."""


@dataclass(frozen=True)
class TreeEntry:
    """One file of a pinned folder: ``kind`` ``file`` or ``link``; ``sha256`` of contents or link text."""

    path: str
    kind: str
    mode: str
    sha256: str
    size: int

    def line(self) -> str:
        """The entry's line in the hashed listing."""
        return f"{self.mode} {self.kind} {self.sha256} {self.size} {self.path}\n"


def confine(root: str | Path, rel: str, *, where: str = "") -> Path:
    """The path ``rel`` names inside ``root``, with every link inside resolved; :class:`PathEscape` otherwise.

    Refused: empty and absolute paths (POSIX or Windows style), any ``..`` component, links whose
    target is absolute or climbs above ``root``, and link loops. Only paths inside ``root`` are ever
    looked at (``lstat``/``readlink``); the result may not exist (the caller says "no such file").
    """
    where = f"{where}: " if where else ""
    if not isinstance(rel, str) or not rel.strip():
        raise PathEscape(f"{where}an empty path")
    if "\x00" in rel or "\\" in rel:
        raise PathEscape(f"{where}{rel!r} holds a NUL or backslash (use '/' between folders)")
    parts = list(PurePosixPath(rel).parts)
    if PurePosixPath(rel).is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise PathEscape(f"{where}{rel!r} is an absolute path; give a path relative to the proposal folder")
    if ".." in parts:
        raise PathEscape(f"{where}{rel!r} climbs out with '..'; every file must be inside the proposal folder")
    base = Path(root).resolve()
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":  # only ever from a link's target
            if not resolved:
                raise PathEscape(f"{where}{rel!r} leads out of the proposal folder through a symbolic link")
            resolved.pop()
            continue
        candidate = base.joinpath(*resolved, part)  # inside base: resolved never leaves it
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise PathEscape(f"{where}{rel!r} runs into a symbolic link loop")
            target = os.readlink(candidate)
            if os.path.isabs(target):
                raise PathEscape(f"{where}{rel!r} goes through the symbolic link "
                                 f"{'/'.join([*resolved, part])} to an absolute path, out of the proposal folder")
            parts = list(PurePosixPath(target).parts) + parts
            continue
        resolved.append(part)
    return base.joinpath(*resolved)


def tree_entries(folder: str | Path, *, exclude: Iterable[str] = (MANIFEST_NAME,)) -> list[TreeEntry]:
    """Every file and link of ``folder`` (``__pycache__`` and the top-level ``exclude`` left out), sorted by path.

    :class:`TreeError` names a link that leaves the folder or loops, a special file (FIFO, device,
    socket) and a name the listing cannot hold (a newline).
    """
    root = Path(folder)
    if not root.is_dir() or root.is_symlink():
        raise TreeError(f"{folder}: not a folder (a proposal folder is pinned as a real folder, not a link)")
    entries: list[TreeEntry] = []
    excluded = set(exclude)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS or (here / d).is_symlink())
        names = list(filenames) + [d for d in dirnames if (here / d).is_symlink()]
        for name in names:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel in excluded:
                continue
            if "\n" in rel or "\r" in rel:
                raise TreeError(f"{folder}: {rel!r}: file names may not hold line breaks")
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                try:
                    confine(root, rel)
                except PathEscape as exc:
                    raise TreeError(f"{folder}: {exc}") from None
                target = os.readlink(path).encode("utf-8", "surrogateescape")
                entries.append(TreeEntry(rel, "link", "120000", hashlib.sha256(target).hexdigest(), len(target)))
            elif stat.S_ISREG(st.st_mode):
                mode = "100755" if st.st_mode & 0o111 else "100644"
                entries.append(TreeEntry(rel, "file", mode, sha256_file(path), st.st_size))
            else:
                raise TreeError(f"{folder}: {rel}: not a regular file, folder or link (a FIFO, device or socket)")
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return sorted(entries, key=lambda e: e.path)


def listing_sha256(entries: Iterable[TreeEntry]) -> str:
    """The tree hash of a listing (what :func:`tree_sha256` returns for the folder it came from)."""
    digest = hashlib.sha256(f"{TREE_FORMAT}\n".encode())
    for entry in entries:
        digest.update(entry.line().encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def tree_sha256(folder: str | Path, *, exclude: Iterable[str] = (MANIFEST_NAME,)) -> str:
    """The pin of a whole proposal folder (see the module docstring for what it covers)."""
    return listing_sha256(tree_entries(folder, exclude=exclude))


def tree_pin_problem(folder: str | Path, pinned: str, *, exclude: Iterable[str] = (MANIFEST_NAME,)) -> str | None:
    """Why ``folder`` does not match the pin ``pinned`` (a message naming both hashes), or ``None``."""
    try:
        actual = tree_sha256(folder, exclude=exclude)
    except TreeError as exc:
        return f"the folder cannot be pinned: {exc}"
    if actual != pinned:
        return f"the proposal folder hashes to {actual}, the manifest pins {pinned}: not the reviewed files"
    return None


def copy_tree(src: str | Path, dst: str | Path, *, exclude: Iterable[str] = (MANIFEST_NAME,)) -> str:
    """Copy a proposal folder (``__pycache__`` left out, links as links) and return the copy's tree hash.

    The sandbox runs the copy, so the code that runs is exactly the code whose hash was checked, even if
    the original changes meanwhile. Refuses (``TreeError``) what :func:`tree_entries` refuses.
    """
    src, dst = Path(src), Path(dst)
    exclude = tuple(exclude)
    for entry in tree_entries(src, exclude=exclude):
        out = dst / entry.path
        out.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            os.symlink(os.readlink(src / entry.path), out)
        else:
            shutil.copyfile(src / entry.path, out, follow_symlinks=False)
            os.chmod(out, 0o755 if entry.mode == "100755" else 0o644)
    dst.mkdir(parents=True, exist_ok=True)
    return tree_sha256(dst, exclude=exclude)


def _onnx_tensors(graph) -> Iterable:
    """Every tensor of an ONNX graph that can hold external data, subgraphs included."""
    import onnx

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _onnx_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _onnx_tensors(g)


def onnx_external_data_problems(root: str | Path, onnx_rel: str, listed: Iterable[str]) -> list[str]:
    """Why the ONNX file ``onnx_rel`` (inside ``root``) may not be accepted as submitted: one message per
    tensor whose external data file is not confined to ``root`` or not among the ``listed`` files (every
    byte a decoder reads must be listed, confined and counted in the size). Empty when all is well.

    The graph is read without its external data; no file a location names is opened here.
    """
    import onnx

    path = confine(root, onnx_rel)
    model = onnx.load(str(path), load_external_data=False)
    base = Path(root).resolve()
    listed_resolved = set()
    for rel in listed:
        try:
            listed_resolved.add(confine(base, rel))
        except PathEscape:
            continue  # refused on its own by the checker
    problems = []
    onnx_dir = PurePosixPath(onnx_rel).parent
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {kv.key: kv.value for kv in tensor.external_data}.get("location", "")
        rel = (onnx_dir / location).as_posix() if location and not PurePosixPath(location).is_absolute() else location
        try:
            target = confine(base, rel, where=f"{onnx_rel}: tensor {tensor.name!r}: external data")
        except PathEscape as exc:
            problems.append(str(exc))
            continue
        if target not in listed_resolved:
            problems.append(f"{onnx_rel}: tensor {tensor.name!r} keeps its data in {location!r}, which is not listed "
                            f"in `files` (every byte a decoder reads must be listed, pinned and counted in the size)")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m nnconform.proposal.tree DIR``: print the folder's ``tree_sha256`` (``-v``: every entry)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nnconform.proposal.tree",
                                     description="Print the tree_sha256 pin of a proposal folder.")
    parser.add_argument("folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every pinned entry")
    args = parser.parse_args(argv)
    try:
        entries = tree_entries(args.folder)
    except TreeError as exc:
        print(f"error: {exc}")
        return 1
    if args.verbose:
        for entry in entries:
            print(entry.line(), end="")
    print(listing_sha256(entries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
