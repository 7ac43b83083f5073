"""The sandbox server's process: ``python -I -m nnconform.sandbox.zygote CONTROL_FD MODE SCRATCH``.

It runs inside the same view as a fresh worker (under bubblewrap it is the pid namespace's init),
imports the trusted heavy modules once (torch, numpy, safetensors, zstandard, the worker) and never
imports proposal code itself. For each request on the control socket it forks a child that runs
exactly what a fresh worker runs (:func:`nnconform.sandbox.worker.main` on the call's document) and
exits; the server waits for it (killing it at the call's timeout) and then, before it answers, kills
every other process it can see in the sandbox (a daemon or ``setsid()`` grandchild included) and
removes what a call can leave in the sandbox's IPC namespace (System V objects, POSIX message
queues) and in its keyrings. The gate empties the writable folders (out, scratch, /tmp, /dev/shm)
and the inputs after each answer, so the next child starts from a fork of the clean server.

Messages are JSON lines: ``{"op": "call", "id": N, "document": PATH, "timeout_s": S}`` -> ``{"id": N,
"exit": N | null, "signal": N | null, "timed_out": bool, "maxrss": KiB, "clean": bool, "problem": str}``.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import select
import signal
import socket
import sys
import time

#: Imported once by the server, before any call (all trusted; never proposal code).
PRELOAD = ("torch", "numpy", "safetensors.torch", "zstandard", "nnconform.sandbox.worker")
#: Trusted modules the criteria's adapters import; preloaded when they import cleanly.
OPTIONAL_PRELOAD = ("nnconform.kit", "nnconform.compress", "nnconform.updates", "nnconform.split.codecs",
                    "nnconform.zoo.models", "nnconform.sandbox.methods")
#: Rounds of "kill every other process, reap" before the sandbox is declared unclean (and replaced).
KILL_ROUNDS = 200
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36
#: keyctl's system call number per machine (elsewhere the keyring clean-up is skipped)
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
_KEYCTL_JOIN_SESSION_KEYRING, _KEYCTL_CLEAR = 1, 7
_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING = -4, -5
_IPC_RMID = 0

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def descendants(root: int) -> list[int]:
    """Every process whose chain of parents leads to ``root`` (read from ``/proc``)."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            parents[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out = []
    for pid in parents:
        seen, cur = set(), pid
        while cur in parents and cur not in seen and cur != root:
            seen.add(cur)
            cur = parents[cur]
        if cur == root and pid != root:
            out.append(pid)
    return out


def _other_pids(isolated: bool) -> list[int]:
    """Every process a call may have left: all but this one (its own pid namespace) or its descendants
    (the fallback; a subreaper, so a call's orphans are re-parented here and still descend from it)."""
    me = os.getpid()
    if isolated:
        return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me]
    return descendants(me)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_others(isolated: bool) -> bool:
    """SIGKILL every other process of the sandbox until none is left; False if some survived every round."""
    for _ in range(KILL_ROUNDS):
        pids = _other_pids(isolated)
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
                if stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"Z":
                    continue  # a zombie: reaped below (our child) or by its dying parent's re-parenting
            except (OSError, ValueError):
                continue
            alive.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap()
        if not alive:
            _reap()
            return True
        time.sleep(0.002)
    return False


def _clean_ipc() -> list[str]:
    """Remove the IPC namespace's System V objects and POSIX message queues; what could not be removed."""
    left = []
    for table, fn in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:
            with open(f"/proc/sysvipc/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            ident = int(row.split()[1])
            args = (ident, 0, _IPC_RMID) if table == "sem" else (ident, _IPC_RMID, None)
            if getattr(_libc, fn)(*args) != 0:
                left.append(f"System V {table} {ident}")
    if os.path.isdir("/dev/mqueue"):
        for name in os.listdir("/dev/mqueue"):
            try:
                os.unlink(os.path.join("/dev/mqueue", name))
            except OSError:
                left.append(f"message queue {name}")
    return left


def _clean_keyrings() -> None:
    if _SYS_KEYCTL is None:
        return
    for ring in (_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING):
        _libc.syscall(_SYS_KEYCTL, _KEYCTL_CLEAR, ring)


def _child(document: str, control: int, scratch: str, mode_isolated: bool) -> None:
    """In the forked child: become what a fresh worker process is, run the call, never return."""
    code = 70
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        os.close(control)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        os.close(devnull)
        # a session keyring of its own, so keys it adds die with it
        if mode_isolated and _SYS_KEYCTL is not None:
            _libc.syscall(_SYS_KEYCTL, _KEYCTL_JOIN_SESSION_KEYRING, None)
        os.chdir(scratch)
        import random

        random.seed()  # a fresh process draws a fresh seed; a fork would repeat the server's
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        from nnconform.sandbox import worker

        sys.argv = [worker.__file__, document]  # what a fresh worker's argv is
        code = worker.main([document])
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the server loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run(request: dict, control: int, scratch: str, isolated: bool) -> dict:
    pid = os.fork()
    if pid == 0:
        _child(str(request["document"]), control, scratch, isolated)
    deadline = time.monotonic() + float(request["timeout_s"])
    pause, timed_out = 0.002, False
    try:  # a pidfd wakes us the moment the child exits (polling would add up to its interval per call)
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            break
        remaining = deadline - time.monotonic()
        if pidfd is not None and remaining > 0:
            select.select([pidfd], [], [], remaining)
            continue
        if remaining <= 0:
            timed_out = True
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            # the child's status first (the sweep below reaps whatever it finds); then the rest of its tree
            got, status, usage = os.wait4(pid, 0)
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    if pidfd is not None:
        os.close(pidfd)
    clean = kill_others(isolated)
    left = []
    if isolated:  # the sandbox's own IPC namespace and keyrings (in the fallback they are the host's: left alone)
        left = _clean_ipc()
        try:
            _clean_keyrings()
        except Exception:  # keyctl unavailable: nothing was kept there either
            pass
    problem = "" if clean else "processes survived every kill round"
    if left:
        clean, problem = False, (problem + "; " if problem else "") + "could not remove " + ", ".join(left)
    return {"exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "timed_out": timed_out,
            "maxrss": int(usage.ru_maxrss), "clean": clean, "problem": problem}


def _lines(sock: socket.socket):
    buffer = b""
    while True:
        while b"\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
        line, buffer = buffer.split(b"\n", 1)
        yield json.loads(line)


def main(argv: list[str] | None = None) -> int:
    """Serve calls on the control socket until it closes (the gate closed this server)."""
    control_fd, mode, scratch = (argv or sys.argv[1:])[:3]
    control = int(control_fd)
    isolated = mode == "bubblewrap"
    sys.dont_write_bytecode = True
    # no call may read or write this process's memory (/proc/1/mem, ptrace) or interrupt it
    _prctl(_PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not isolated:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # the protocol's own socket is never a child's stdin/stdout
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sock = socket.socket(fileno=control)
    loaded = []
    for name in PRELOAD:
        importlib.import_module(name)
        loaded.append(name)
    for name in OPTIONAL_PRELOAD:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:  # an optional module that does not import is imported by the call, if at all
            print(f"nnconform sandbox server: not preloaded {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.stderr.flush()
    sock.sendall((json.dumps({"ready": True, "pid": os.getpid(), "preloaded": loaded}) + "\n").encode())
    for request in _lines(sock):
        if request.get("op") != "call":
            reply = {"error": f"unknown op {request.get('op')!r}"}
        else:
            try:
                reply = _run(request, control, scratch, isolated)
            except Exception as exc:  # the gate replaces a server that cannot run a call, and reruns it
                reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["id"] = request.get("id")
        sys.stderr.flush()
        sock.sendall((json.dumps(reply) + "\n").encode())
    kill_others(isolated)
    return 0


if __name__ == "__main__":
    os._exit(main())
