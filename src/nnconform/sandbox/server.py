"""Pre-warmed sandbox servers: one long-lived sandboxed process per proposal copy and settings.

A fresh worker costs an interpreter start and a torch import (about 2 CPU seconds) per call. A
server (:mod:`nnconform.sandbox.zygote`) is started once per (isolation, proposal copy, hidden
paths, threads, limits, work root) under the same bubblewrap view a fresh worker gets, imports the
trusted heavy modules once and forks one child per call. Between calls nothing of a call survives:

- the child is a fork of the clean server, which never runs proposal code itself;
- before the server answers, it has killed every other process of the sandbox (it is the pid
  namespace's init, so a ``setsid()``/daemon grandchild is killed too) and removed the IPC
  namespace's objects and keys;
- after the answer the gate reads the outputs, then empties every writable place (the call's
  inputs, outputs, scratch folder, ``/tmp``, ``/dev/shm``; ``/dev`` and the rest are read-only);
- limits are those of a fresh worker (inherited from the server); a timeout kills the child's tree.

A server that dies, hangs or cannot clean up is killed and replaced; a call it could not run runs
in a fresh process (:func:`nnconform.sandbox.runner.run_fresh`). Servers are closed at interpreter
exit and by :func:`close_servers`; a forked process (a pytest-xdist worker) starts its own.
``NNCONFORM_SANDBOX_SERVER=0`` turns servers off.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import bwrap, dataio, runner, zygote
from .runner import BUBBLEWRAP, SandboxError, SandboxResult, SandboxWarning

#: Set to ``0`` to start a fresh process per call (as before the servers; for debugging).
SERVER_ENV = "NNCONFORM_SANDBOX_SERVER"
#: How long a server may take to import its modules (a busy machine is slow; a fresh worker is no faster).
START_TIMEOUT_S = 180.0
#: How long past the call's own timeout the gate waits for the server's answer (its clean-up).
REPLY_MARGIN_S = 30.0
#: Servers kept at once per process (each holds an imported torch); the least recently used is closed.
MAX_SERVERS = 4


class ServerUnavailable(Exception):
    """No server can run this call (off, busy, failed to start, died): the call runs in a fresh process."""


def enabled() -> bool:
    """Whether calls go to servers (``NNCONFORM_SANDBOX_SERVER`` unset or not ``0``/``false``/``off``/``no``)."""
    return os.environ.get(SERVER_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


@dataclass(frozen=True)
class ServerKey:
    """What a server is kept for: calls with another value of any field get another server."""

    mode: str
    proposal_dir: str | None
    tree_sha256: str | None
    hidden: tuple[str, ...]
    threads: int | None
    memory_bytes: int
    file_bytes: int
    work_root: str | None
    #: what the view hides and binds now (anchors folder, data, environment): a change means another server
    view: tuple[str, ...] = ()


def _empty(folder: Path, keep: str | None = None) -> bool:
    """Remove everything inside ``folder`` but the entry ``keep`` (the folder stays: it is a mount point);
    False if not everything went."""
    def retry(fn, path, _exc):
        # a call may have taken the write permission off a folder it made; the gate gives it back
        try:
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            fn(path)
        except OSError:
            pass

    try:
        os.chmod(folder, stat.S_IRWXU)
        for entry in os.scandir(folder):
            if entry.name == keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=retry)
            else:
                os.unlink(entry.path)
        return all(e.name == keep for e in os.scandir(folder))
    except OSError:
        return False


def _reset(folder: Path, was: os.stat_result) -> bool:
    """Give a kept folder back what a call may have changed on it: mode, extended attributes, times."""
    try:
        for name in os.listxattr(folder, follow_symlinks=False):
            os.removexattr(folder, name, follow_symlinks=False)
        os.chmod(folder, stat.S_IMODE(was.st_mode))
        os.utime(folder, ns=(was.st_atime_ns, was.st_mtime_ns), follow_symlinks=False)
        return True
    except OSError:
        return False


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process descending from it (the fallback has no pid namespace to do it)."""
    for victim in [*zygote.descendants(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except OSError:
            pass


class SandboxServer:
    """One server process and its host folders; :meth:`call` runs one call, :meth:`close` ends it."""

    def __init__(self, key: ServerKey) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.work = Path(tempfile.mkdtemp(prefix="nnconform-server-", dir=key.work_root))
        self.dirs = runner.make_folders(self.work)
        self.inside = runner.inside_paths(self.dirs, key.mode)
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.log_path = self.work / "log"
        self.calls = 0
        # the folders bound into the view stay (mount points), so what a call may change on them is restored
        self.kept = {p: os.stat(p) for p in (*self.dirs.values(), self.dirs["scratch"] / "tmp")}
        #: set when the server must not take another call (unclean, failed); the next call replaces it
        self.retire = False

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Copy the proposal, start the server in its sandbox and wait until it has imported its modules."""
        from ..proposal.tree import TreeError, copy_tree

        if self.key.proposal_dir is not None:
            try:
                digest = copy_tree(self.key.proposal_dir, self.dirs["proposal"])
            except TreeError as exc:
                raise ServerUnavailable(str(exc)) from None
            if digest != self.key.tree_sha256:
                raise ServerUnavailable("the proposal folder changed while it was copied")
            if self.key.mode != BUBBLEWRAP:
                self._read_only_copy()
        env = runner.call_environment(self.inside, self.key.threads)
        ours, theirs = socket.socketpair()
        argv = [sys.executable, "-I", "-m", "nnconform.sandbox.zygote", str(theirs.fileno()), self.key.mode,
                str(self.inside["scratch"])]
        cmd, proc_env = runner.sandbox_command(self.key.mode, self.dirs, self.inside, env, argv, self.key.hidden,
                                               as_pid_1=True)
        try:
            with open(self.log_path, "ab") as log:  # append mode: the gate truncates it before each call
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=proc_env,
                                             cwd=self.dirs["scratch"], start_new_session=True,
                                             pass_fds=(theirs.fileno(),),
                                             preexec_fn=runner.limits(self.key.memory_bytes, self.key.file_bytes))
        except OSError as exc:
            ours.close()
            raise ServerUnavailable(f"could not start: {exc}") from None
        finally:
            theirs.close()
        self.sock = ours
        try:
            hello = self._receive(time.monotonic() + START_TIMEOUT_S)
        except ServerUnavailable as exc:
            self.kill()
            raise ServerUnavailable(f"{exc}; its output: {runner._tail(self.log_path, 800).strip()}") from None
        if not hello.get("ready"):
            self.kill()
            raise ServerUnavailable(f"said {hello!r} instead of ready")

    def _read_only_copy(self) -> None:
        # the fallback has no read-only view: at least the copy's files are not writable by mode bits
        for path in self.dirs["proposal"].rglob("*"):
            if path.is_file() and not path.is_symlink():
                path.chmod(path.stat().st_mode & ~0o222)

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """End the server now (its whole sandbox dies with it) and remove its folders."""
        if self.proc is not None and self.proc.poll() is None:
            if self.key.mode == BUBBLEWRAP:
                try:  # bwrap's sandbox dies with it (pid namespace, die-with-parent)
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            else:
                _kill_tree(self.proc.pid)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        shutil.rmtree(self.work, ignore_errors=True)

    def close(self) -> None:
        """Ask the server to end (it kills what is left and exits), then make sure of it."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    # -- protocol -----------------------------------------------------------------------------

    def _receive(self, deadline: float) -> dict:
        """The server's next JSON line, or :class:`ServerUnavailable` (closed) / :class:`TimeoutError`."""
        assert self.sock is not None
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the sandbox server")
            self.sock.settimeout(min(remaining, 1.0))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                if not self.alive():
                    raise ServerUnavailable("the sandbox server exited") from None
                continue
            except OSError as exc:
                raise ServerUnavailable(f"the sandbox server's socket failed: {exc}") from None
            if not data:
                raise ServerUnavailable("the sandbox server exited")
            buffer += data
        try:
            reply = json.loads(buffer.split(b"\n", 1)[0])
        except ValueError:
            raise ServerUnavailable("the sandbox server's answer is not JSON") from None
        if not isinstance(reply, dict):
            raise ServerUnavailable("the sandbox server's answer is not an object")
        return reply

    # -- one call -----------------------------------------------------------------------------

    def call(self, entry: str, *, inputs: Mapping[str, Any], params: dict, has_proposal: bool, proposal: str,
             call: str, timeout_s: float) -> SandboxResult:
        """Run one call in a fork of the server; :class:`ServerUnavailable` if the server could not run it."""
        mode = self.key.mode
        dirs = self.dirs
        try:
            try:
                spec, bound = runner.stage_inputs(dirs["in"], inputs)
            except dataio.DataError as exc:
                raise SandboxError("bad-input", proposal, call, str(exc), isolation=mode) from None
            for host, file in bound.items():
                # the view cannot gain a mount now: a file input is linked (or copied) into the inputs folder,
                # which the sandbox sees read-only; the fallback always copies (it could write through a link)
                target = dirs["in"] / file
                target.unlink()
                try:
                    if mode != BUBBLEWRAP:
                        raise OSError("copy")
                    os.link(host, target)
                except OSError:
                    shutil.copyfile(host, target)
            document = runner.call_document(entry, params, spec, self.key.threads, self.inside, has_proposal)
            dataio.dump_json(document, dirs["ctl"] / "call.json")
            os.truncate(self.log_path, 0)
            started = time.monotonic()
            request = {"op": "call", "id": self.calls, "document": str(self.inside["ctl"] / "call.json"),
                       "timeout_s": timeout_s}
            try:
                assert self.sock is not None
                self.sock.sendall((json.dumps(request) + "\n").encode())
            except OSError as exc:
                raise ServerUnavailable(f"the sandbox server did not take the call: {exc}") from None
            try:
                reply = self._receive(started + timeout_s + REPLY_MARGIN_S)
            except TimeoutError:
                # the server itself did not answer: kill it (and with it the call's processes)
                self.kill()
                return runner.collect(dirs["out"], mode, proposal, call, -signal.SIGKILL, True, timeout_s,
                                      self.key.memory_bytes, 0,
                                      time.monotonic() - started, self.key.tree_sha256, "")
            seconds = time.monotonic() - started
            if "error" in reply or not isinstance(reply.get("timed_out"), bool) or reply.get("id") != self.calls:
                raise ServerUnavailable(f"the sandbox server answered {reply!r}")
            self.calls += 1
            if not reply.get("clean", False):
                warnings.warn(f"nnconform sandbox server: {reply.get('problem')}; it is replaced", SandboxWarning,
                              stacklevel=3)
                self.retire = True
            sig, code = reply.get("signal"), reply.get("exit")
            if sig is not None:  # the fresh path's convention: bwrap says 128 + N, Popen says -N
                returncode = 128 + int(sig) if mode == BUBBLEWRAP else -int(sig)
            else:
                returncode = int(code if code is not None else 1)
            stderr = runner._tail(self.log_path)
            return runner.collect(dirs["out"], mode, proposal, call, returncode, reply["timed_out"], timeout_s,
                                  self.key.memory_bytes, int(reply.get("maxrss", 0)) * 1024, seconds,
                                  self.key.tree_sha256, stderr)
        except BaseException as exc:
            if not isinstance(exc, SandboxError):  # interrupted mid-call (Ctrl-C): its answer may still come
                self.retire = True
            raise
        finally:
            if self.alive():
                self._after_call()

    def _after_call(self) -> None:
        """Empty every writable place and the inputs; a server that cannot be made clean is retired."""
        ok = True
        tmp = self.dirs["scratch"] / "tmp"
        # /tmp is bound from scratch/tmp: a call may rename it away, and then the view cannot be restored
        intact = (tmp.is_dir() and not tmp.is_symlink()
                  and os.stat(tmp).st_ino == self.kept[tmp].st_ino and _empty(tmp))
        for name in ("in", "out", "scratch", "shm", "ctl"):
            ok = _empty(self.dirs[name], keep="tmp" if name == "scratch" and intact else None) and ok
        ok = ok and intact
        for path, st in self.kept.items():
            if path != tmp or intact:
                ok = _reset(path, st) and ok
        if self.key.mode != BUBBLEWRAP and self.key.proposal_dir is not None:
            from ..proposal.tree import TreeError, tree_sha256

            try:  # the fallback cannot make the copy read-only for root: check it is unchanged
                ok = tree_sha256(self.dirs["proposal"]) == self.key.tree_sha256 and ok
            except TreeError:
                ok = False
        if not ok:
            self.retire = True


_SERVERS: "collections.OrderedDict[ServerKey, SandboxServer]" = collections.OrderedDict()
_FAILED: set[ServerKey] = set()
_LOCK = threading.Lock()
_OWNER = os.getpid()


def _servers() -> "collections.OrderedDict[ServerKey, SandboxServer]":
    global _OWNER
    if os.getpid() != _OWNER:
        # a forked process (an xdist worker started by fork): the parent's servers are not ours to use or close
        _SERVERS.clear()
        _FAILED.clear()
        _OWNER = os.getpid()
    return _SERVERS


def _server_for(key: ServerKey) -> SandboxServer:
    with _LOCK:
        servers = _servers()
        if key in _FAILED:
            raise ServerUnavailable("it failed to start before")
        server = servers.get(key)
        if server is not None and (server.retire or not server.alive()):
            servers.pop(key)
            server.kill()
            server = None
        if server is None:
            server = SandboxServer(key)
            try:
                server.start()
            except ServerUnavailable as exc:
                server.kill()
                _FAILED.add(key)
                warnings.warn(f"nnconform sandbox server: {exc}; these calls start a fresh process each", SandboxWarning,
                              stacklevel=4)
                raise
            servers[key] = server
            while len(servers) > MAX_SERVERS:
                _, oldest = servers.popitem(last=False)
                oldest.close()
        servers.move_to_end(key)
        return server


def _view(mode: str, hidden: Iterable[str | Path]) -> tuple[str, ...]:
    """The host paths the view is built from (what a fresh call would hide and bind now)."""
    if mode != BUBBLEWRAP:
        return ()
    return tuple(sorted({*map(str, bwrap.hidden_paths(hidden))} | {f"env:{p}" for p in bwrap.python_environment()}))


def run_call(entry: str, *, inputs: Mapping[str, Any] | None, params: Mapping[str, Any] | None,
             proposal_dir: str | Path | None, tree_sha256: str | None, proposal: str, call: str, timeout_s: float,
             memory_bytes: int, file_bytes: int, threads: int | None, hidden: Iterable[str | Path],
             work_root: str | Path | None, mode: str) -> SandboxResult:
    """Run one call of :func:`nnconform.sandbox.run_sandboxed` on a server (started if need be).

    Raises :class:`ServerUnavailable` when the call must run in a fresh process instead: a problem the
    fresh path reports exactly as before (a pin that does not match, a folder that cannot be pinned),
    a server that is busy in another thread, cannot start or died during the call.
    """
    from ..proposal.tree import TreeError
    from ..proposal.tree import tree_sha256 as hash_tree

    try:
        params_plain = dataio.check_plain(dict(params or {}), "params")
    except dataio.DataError as exc:
        raise ServerUnavailable(str(exc)) from None  # the fresh path names it (after the inputs, as before)
    digest = None
    if proposal_dir is not None:
        try:
            digest = hash_tree(proposal_dir)
        except TreeError as exc:
            raise ServerUnavailable(str(exc)) from None
        if tree_sha256 is not None and digest != tree_sha256:
            raise ServerUnavailable("pin")
    key = ServerKey(mode, str(Path(proposal_dir).resolve()) if proposal_dir is not None else None, digest,
                    tuple(str(Path(p).resolve()) for p in hidden), int(threads) if threads else None,
                    int(memory_bytes), int(file_bytes), str(Path(work_root).resolve()) if work_root else None,
                    _view(mode, hidden))
    server = _server_for(key)
    if not server.lock.acquire(blocking=False):
        raise ServerUnavailable("busy with another thread's call")
    try:
        try:
            return server.call(entry, inputs=dict(inputs or {}), params=params_plain,
                               has_proposal=proposal_dir is not None, proposal=proposal, call=call,
                               timeout_s=timeout_s)
        except ServerUnavailable:
            server.retire = True
            server.kill()
            raise
    finally:
        server.lock.release()


def close_servers() -> int:
    """Close every server of this process; returns how many were running."""
    with _LOCK:
        servers = _servers()
        count = len(servers)
        while servers:
            _, server = servers.popitem()
            server.close()
        _FAILED.clear()
        return count


def servers_running() -> int:
    """How many servers this process holds now (for the self-tests and the benchmark)."""
    with _LOCK:
        return sum(1 for s in _servers().values() if s.alive())


atexit.register(close_servers)
