"""Run one function of untrusted proposal code in a fresh, sandboxed process and get data back.

Each call stages its inputs as files (tensors as safetensors, bytes as files, parameters as JSON),
copies the proposal folder (checking its tree pin on the copy, so what runs is what was hashed),
starts ``python -m nnconform.sandbox.worker`` under bubblewrap (or, where bubblewrap cannot run, a
plain subprocess, said once and recorded by :func:`isolation`), waits at most ``timeout_s`` and
reads back only data. Every way a call can go wrong is one :class:`SandboxError` with a ``kind``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import bwrap, dataio
from .dataio import RESULT, STARTED

BUBBLEWRAP, SUBPROCESS = "bubblewrap", "subprocess"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MEMORY_BYTES = 8 << 30
DEFAULT_FILE_BYTES = 4 << 30
#: Signs of an allocation refused under the memory limit (Python's and torch's CPU allocator's).
_MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "DefaultCPUAllocator", "std::bad_alloc",
                 "Cannot allocate memory")


class SandboxWarning(UserWarning):
    """Proposal code runs without the OS sandbox (bubblewrap unavailable)."""


class SandboxError(RuntimeError):
    """A sandboxed call that gave no result. ``kind``: ``raised`` (the proposal's exception, with its
    ``error_type`` and ``traceback``), ``timeout``, ``crashed`` (killed by a signal), ``memory`` (over
    the limit), ``no-output`` (exited without a result), ``bad-output`` (not data), ``pin`` (the folder's
    tree hash is not the pinned one; nothing ran), ``unavailable`` (bubblewrap required but missing)."""

    def __init__(self, kind: str, proposal: str, call: str, message: str, *, error_type: str = "",
                 traceback: str = "", isolation: str = "") -> None:
        self.kind, self.proposal, self.call = kind, proposal, call
        self.error_type, self.error_message, self.traceback = error_type, message, traceback
        self.isolation = isolation
        super().__init__(f"proposal {proposal or '?'}: {call}: {kind}: {message}")


@dataclass(frozen=True)
class SandboxResult:
    """What came back: ``outputs`` maps names to tensor dicts, bytes or plain values.

    ``peak_rss_bytes`` is what ``wait4`` reports: with a server, for the call's own (forked) process,
    the server's imported modules included; for a fresh process under bubblewrap, for bwrap, whose
    init reaps the worker, so it undercounts there."""

    outputs: dict[str, Any]
    isolation: str
    seconds: float
    peak_rss_bytes: int
    tree_sha256: str | None = None
    stderr: str = field(default="", repr=False)


_NOTICE_GIVEN = False


def isolation() -> str:
    """Which isolation proposal calls get in this process: ``"bubblewrap"`` or ``"subprocess"``."""
    return BUBBLEWRAP if bwrap.probe()[0] else SUBPROCESS


def isolation_note() -> str:
    """One line for the report's environment section: the isolation and, for the fallback, why."""
    ok, reason = bwrap.probe()
    return ("bubblewrap: no network, read-only Python environment and proposal folder, one scratch folder"
            if ok else f"subprocess (no OS sandbox: {reason})")


def _choose_isolation(proposal: str, call: str) -> str:
    global _NOTICE_GIVEN
    ok, reason = bwrap.probe()
    if ok:
        return BUBBLEWRAP
    if os.environ.get(bwrap.MODE_ENV, "").lower() == BUBBLEWRAP:
        raise SandboxError("unavailable", proposal, call, f"{bwrap.MODE_ENV}=bubblewrap, but {reason}",
                           isolation=SUBPROCESS)
    if not _NOTICE_GIVEN:
        _NOTICE_GIVEN = True
        warnings.warn(f"nnconform sandbox: {reason}; proposal code runs in a plain subprocess (data-only exchange "
                      f"and separate processes, but no filesystem or network isolation)", SandboxWarning, stacklevel=3)
    return SUBPROCESS


def stage_inputs(in_dir: Path, inputs: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[Path, str]]:
    """Write tensors and bytes into ``in_dir``; files given as paths are bound (bubblewrap) or copied."""
    spec, bound = {}, {}
    for name, value in inputs.items():
        where = f"input {name!r}"
        if isinstance(value, Path):
            suffix = dataio.TENSORS_SUFFIX if value.name.endswith(dataio.TENSORS_SUFFIX) else dataio.BYTES_SUFFIX
            file = dataio.check_name(name, where) + suffix
            if not value.is_file():
                raise dataio.DataError(f"{where}: no such file {value}")
            (in_dir / file).touch()  # the mount point (bubblewrap) or the copy's place (subprocess)
            bound[value.resolve()] = file
            spec[name] = ["tensors" if suffix == dataio.TENSORS_SUFFIX else "bytes", file]
            continue
        written = dataio.write_value(in_dir, name, value, where)
        if written is None:
            raise dataio.DataError(f"{where}: give tensors (a dict of torch tensors), bytes or a file path; plain "
                                   f"values go in params")
        spec[name] = list(written)
    return spec, bound


def limits(memory_bytes: int, file_bytes: int):
    """A ``preexec_fn`` applying the call's memory, file-size and core limits (inherited by every child)."""
    def apply() -> None:
        # RLIMIT_DATA (heap and private mappings) rather than RLIMIT_AS: torch alone maps gigabytes of
        # address space it never touches, so an address-space limit would refuse honest code
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[int, Any, bool]:
    """Wait for ``proc`` (polling wait4, for its resource usage); kill its process group at the deadline."""
    deadline = time.monotonic() + timeout_s
    pause = 0.002
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, False
        if time.monotonic() >= deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap's sandbox dies with it (pid namespace, die-with-parent)
            except ProcessLookupError:
                pass
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, True
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _signal_of(returncode: int, mode: str) -> int | None:
    if returncode < 0:
        return -returncode
    if mode == BUBBLEWRAP and returncode > 128 and returncode - 128 in signal.valid_signals():
        return returncode - 128  # bwrap reports its child's death by signal N as 128 + N
    return None


FOLDERS = ("in", "out", "scratch", "ctl", "proposal", "shm")


def make_folders(work: Path) -> dict[str, Path]:
    """A call's host folders under ``work``: inputs, outputs, scratch (with its ``tmp``), control, proposal, shm."""
    dirs = {k: work / k for k in FOLDERS}
    for d in dirs.values():
        d.mkdir()
    (dirs["scratch"] / "tmp").mkdir()
    return dirs


def inside_paths(dirs: Mapping[str, Path], mode: str) -> dict[str, Path]:
    """Where each folder appears to proposal code (under bubblewrap, never a host path)."""
    return {k: bwrap.INSIDE / k for k in dirs} if mode == BUBBLEWRAP else dict(dirs)


def call_environment(inside: Mapping[str, Path], threads: int | None) -> dict[str, str]:
    """The whole environment of the process beside proposal code (nothing of the host's)."""
    env = {"HOME": str(inside["scratch"]), "TMPDIR": str(inside["scratch"] / "tmp"), "LANG": "C.UTF-8",
           "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    return env


def call_document(entry: str, params: dict, spec: dict, threads: int | None, inside: Mapping[str, Path],
                  has_proposal: bool) -> dict:
    """The worker's call document (``ctl/call.json``)."""
    return {"entry": entry, "params": params, "inputs": spec, "threads": threads, "in_dir": str(inside["in"]),
            "out_dir": str(inside["out"]), "proposal_dir": str(inside["proposal"]) if has_proposal else None}


def sandbox_command(mode: str, dirs: Mapping[str, Path], inside: Mapping[str, Path], env: dict[str, str],
                    argv: list[str], hidden: Iterable[str | Path], bound: Mapping[Path, str] | None = None,
                    as_pid_1: bool = False) -> tuple[list[str], dict[str, str]]:
    """The command line and its environment: ``argv`` under bubblewrap with the call's view, or as is."""
    if mode != BUBBLEWRAP:
        return argv, env
    readonly = {p: p for p in bwrap.python_environment()}
    readonly.update({dirs[k]: inside[k] for k in ("in", "ctl", "proposal")})
    readonly.update({host: inside["in"] / file for host, file in (bound or {}).items()})
    writable = {dirs["out"]: inside["out"], dirs["scratch"]: inside["scratch"]}
    tmp = Path("/tmp")
    if not any(view == tmp or tmp in view.parents for view in readonly.values()):
        # a writable /tmp bound after the read-only trees would hide a Python environment living under /tmp (a
        # venv made in a temporary folder); there the calls keep TMPDIR (scratch/tmp) and /tmp stays read-only
        writable[dirs["scratch"] / "tmp"] = tmp
    cmd = bwrap.bwrap_command(readonly=readonly, writable=writable, hidden=bwrap.hidden_paths(hidden), env=env,
                              argv=argv, chdir=inside["scratch"], shm=dirs["shm"], as_pid_1=as_pid_1)
    return cmd, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def run_sandboxed(entry: str, *, inputs: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
                  proposal_dir: str | Path | None = None, tree_sha256: str | None = None, proposal: str = "",
                  call: str = "", timeout_s: float = DEFAULT_TIMEOUT_S, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                  file_bytes: int = DEFAULT_FILE_BYTES, threads: int | None = None, hidden: Iterable[str | Path] = (),
                  work_root: str | Path | None = None, keep: bool = False) -> SandboxResult:
    """Call ``entry(inputs, params)`` of proposal code in a sandboxed process of its own; return its outputs.

    ``entry``: ``"file.py:function"`` (in ``proposal_dir``) or ``"package.module:function"``.
    ``inputs``: name -> a dict of tensors, bytes, or a ``Path`` of a file to expose read-only (loaded as
    tensors when it ends in ``.safetensors``, else bytes). ``params``: plain JSON values.
    ``proposal_dir`` is copied (``__pycache__`` left out) and the copy is what the call sees; with
    ``tree_sha256`` a copy with another tree hash is refused before anything runs. ``proposal`` and
    ``call`` name the call in errors. ``hidden``: further host paths to mask (e.g. a data folder).
    Raises :class:`SandboxError`; never hangs past ``timeout_s``.

    The process is a fork of a sandbox server (:mod:`nnconform.sandbox.server`) kept for the same
    proposal copy and settings, which has the heavy trusted modules imported already; between calls
    the server kills every process the call left and the gate empties every writable place, so each
    call starts as clean as a fresh process. ``NNCONFORM_SANDBOX_SERVER=0`` (or ``keep=True``) starts
    a fresh ``python -m nnconform.sandbox.worker`` per call instead.
    """
    from . import server

    call = call or entry
    mode = _choose_isolation(proposal, call)
    hidden = tuple(hidden)
    if server.enabled() and not keep:
        try:
            return server.run_call(entry, inputs=inputs, params=params, proposal_dir=proposal_dir,
                                   tree_sha256=tree_sha256, proposal=proposal, call=call, timeout_s=timeout_s,
                                   memory_bytes=memory_bytes, file_bytes=file_bytes, threads=threads, hidden=hidden,
                                   work_root=work_root, mode=mode)
        except server.ServerUnavailable:
            pass  # this call runs in a fresh process (the reason was said once, or is a pin problem said below)
    return run_fresh(entry, inputs=inputs, params=params, proposal_dir=proposal_dir, tree_sha256=tree_sha256,
                     proposal=proposal, call=call, timeout_s=timeout_s, memory_bytes=memory_bytes,
                     file_bytes=file_bytes, threads=threads, hidden=hidden, work_root=work_root, keep=keep, mode=mode)


def run_fresh(entry: str, *, inputs: Mapping[str, Any] | None, params: Mapping[str, Any] | None,
              proposal_dir: str | Path | None, tree_sha256: str | None, proposal: str, call: str, timeout_s: float,
              memory_bytes: int, file_bytes: int, threads: int | None, hidden: Iterable[str | Path],
              work_root: str | Path | None, keep: bool, mode: str) -> SandboxResult:
    """One call in a fresh ``python -m nnconform.sandbox.worker`` (see :func:`run_sandboxed`)."""
    from ..proposal.tree import TreeError, copy_tree

    work = Path(tempfile.mkdtemp(prefix="nnconform-sandbox-", dir=work_root))
    try:
        dirs = make_folders(work)
        try:
            spec, bound = stage_inputs(dirs["in"], dict(inputs or {}))
            params_plain = dataio.check_plain(dict(params or {}), "params")
        except dataio.DataError as exc:
            raise SandboxError("bad-input", proposal, call, str(exc), isolation=mode) from None
        digest = None
        if proposal_dir is not None:
            try:
                digest = copy_tree(proposal_dir, dirs["proposal"])
            except TreeError as exc:
                raise SandboxError("pin", proposal, call, str(exc), isolation=mode) from None
            if tree_sha256 is not None and digest != tree_sha256:
                raise SandboxError("pin", proposal, call, pin_message(digest, tree_sha256), isolation=mode)
        inside = inside_paths(dirs, mode)
        env = call_environment(inside, threads)
        document = call_document(entry, params_plain, spec, threads, inside, proposal_dir is not None)
        dataio.dump_json(document, dirs["ctl"] / "call.json")
        argv = [sys.executable, "-I", "-m", "nnconform.sandbox.worker", str(inside["ctl"] / "call.json")]
        if mode != BUBBLEWRAP:
            for host, file in bound.items():
                shutil.copyfile(host, dirs["in"] / file)
        cmd, proc_env = sandbox_command(mode, dirs, inside, env, argv, hidden, bound)
        started = time.monotonic()
        with open(work / "stderr", "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=proc_env,
                                    cwd=dirs["scratch"], start_new_session=True,
                                    preexec_fn=limits(memory_bytes, file_bytes))
            returncode, usage, timed_out = _wait(proc, timeout_s)
        seconds = time.monotonic() - started
        peak = int(usage.ru_maxrss) * 1024
        stderr = _tail(work / "stderr")
        return collect(dirs["out"], mode, proposal, call, returncode, timed_out, timeout_s, memory_bytes, peak,
                       seconds, digest, stderr)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def pin_message(digest: str, pinned: str) -> str:
    """Why a proposal folder whose copy hashes to ``digest`` does not run under the pin ``pinned``."""
    return f"the proposal folder hashes to {digest}, the manifest pins {pinned}: not the reviewed files, so nothing runs"


def collect(out: Path, mode: str, proposal: str, call: str, returncode: int, timed_out: bool, timeout_s: float,
             memory_bytes: int, peak: int, seconds: float, digest: str | None, stderr: str) -> SandboxResult:
    """Turn the worker's result document and files into a :class:`SandboxResult` or a :class:`SandboxError`."""
    def fail(kind: str, message: str, **kw) -> SandboxError:
        return SandboxError(kind, proposal, call, message, isolation=mode, **kw)

    if timed_out:
        raise fail("timeout", f"did not finish within {timeout_s:g} s; the process was killed")
    result_path = out / RESULT
    if not result_path.is_file() or result_path.is_symlink():
        sig = _signal_of(returncode, mode)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if sig is not None:
            name = signal.Signals(sig).name
            raise fail("crashed", f"the process was killed by {name} (exit status {returncode}) before it returned"
                                  f"{'; last output: ' + last if last else ''}")
        if mode == BUBBLEWRAP and not (out / STARTED).exists() and last.startswith("bwrap:"):
            raise fail("sandbox", f"bubblewrap failed to start the call: {last}")
        if any(s in stderr for s in _MEMORY_SIGNS):
            raise fail("memory", f"over the memory limit of {memory_bytes} bytes (exit status {returncode}): {last}")
        raise fail("no-output", f"exited with status {returncode} without returning a result"
                                f"{'; last output: ' + last if last else ''}")
    try:
        document = dataio.load_json(result_path)
    except dataio.DataError as exc:
        raise fail("bad-output", str(exc)) from None
    if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
        raise fail("bad-output", "the result document is not the worker's")
    if not document["ok"]:
        error = document.get("error") if isinstance(document.get("error"), dict) else {}
        etype, message = str(error.get("type", "?")), str(error.get("message", ""))
        tb = str(error.get("traceback", ""))
        kind = "memory" if etype == "MemoryError" or any(s in message for s in _MEMORY_SIGNS) else "raised"
        text = f"{etype}: {message}" + (f" (memory limit {memory_bytes} bytes)" if kind == "memory" else "")
        raise fail(kind, text, error_type=etype, traceback=tb)
    outputs: dict[str, Any] = {}
    try:
        files = document.get("files", {})
        values = document.get("values", {})
        if not isinstance(files, dict) or not isinstance(values, dict):
            raise dataio.DataError("the result document's files/values are not tables")
        for name, entry in files.items():
            dataio.check_name(name, "output")
            if not (isinstance(entry, list) and len(entry) == 2):
                raise dataio.DataError(f"output {name!r}: malformed entry {entry!r}")
            kind, file = entry
            suffix = dataio.TENSORS_SUFFIX if kind == "tensors" else dataio.BYTES_SUFFIX
            if file != name + suffix:
                raise dataio.DataError(f"output {name!r}: file {file!r} is not {name + suffix!r}")
            outputs[name] = dataio.read_value(out, kind, file, f"output {name!r}")
        for name, value in values.items():
            outputs[dataio.check_name(name, "output")] = value
    except dataio.DataError as exc:
        raise fail("bad-output", str(exc)) from None
    return SandboxResult(outputs, mode, seconds, peak, digest, stderr)
