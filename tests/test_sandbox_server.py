"""The sandbox server: calls are forks of one pre-warmed process, yet as isolated from each other as fresh ones.

Stand-in proposal functions try to carry something from one call to the next (module state, a
daemon, files in /tmp and /dev/shm, IPC objects, marks on the folders that stay) and to hurt the
server (signals, its memory); each test shows the next call sees nothing of it. Results and errors
are compared with the fresh-process path (``NNCONFORM_SANDBOX_SERVER=0``).
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from nnconform.sandbox import SandboxError, bwrap, close_servers, run_sandboxed
from nnconform.sandbox import server as server_module

from test_sandbox import STANDINS

BWRAP = pytest.mark.skipif(not bwrap.probe()[0], reason=f"bubblewrap cannot run here: {bwrap.probe()[1]}")

TRIES = '''
import ctypes, os, signal, sys, time

_SEEN = []

def remember(inputs, params):
    _SEEN.append(params["value"])
    return {"seen": list(_SEEN), "pid": os.getpid()}

def start_daemon(inputs, params):
    """Double fork and setsid: a grandchild that outlives the call and steals the next call's inputs."""
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write, str(os.getpid()).encode() + b"\\n")
            while True:
                for folder in ("/sandbox/in", params["in_dir"]):
                    try:
                        for name in os.listdir(folder):
                            data = open(os.path.join(folder, name), "rb").read()
                            for out in (params["drop"], "/dev/shm"):
                                try:
                                    open(os.path.join(out, "stolen-" + name), "wb").write(data)
                                except OSError:
                                    pass
                    except OSError:
                        pass
                time.sleep(0.01)
        os._exit(0)
    daemon = int(os.fdopen(read).readline())
    time.sleep(0.2)
    return {"daemons": [daemon]}

def victim(inputs, params):
    """Holds a secret input for a while; says which of the given pids are alive and what the folders hold."""
    time.sleep(params.get("wait", 0))
    alive = []
    for pid in params.get("pids", []):
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return {"alive": alive, "listing": _listing(params.get("places", []))}

def _listing(places):
    out = {}
    for place in places:
        try:
            out[place] = sorted(os.listdir(place))
        except OSError as exc:
            out[place] = type(exc).__name__
    return out

def leave_files(inputs, params):
    for place in params["places"]:
        with open(os.path.join(place, "left-by-call-n"), "w") as f:
            f.write("secret")
    return {"listing": _listing(params["places"])}

def leave_marks(inputs, params):
    """Marks on the folders that stay between calls: an extended attribute, times, a mode."""
    done = []
    for place in params["places"]:
        try:
            os.setxattr(place, "user.kept", b"secret")
            done.append("xattr")
        except OSError:
            pass
        os.utime(place, (12345, 12345))
        os.chmod(place, 0o700)
    return {"done": done}

def read_marks(inputs, params):
    marks = []
    for place in params["places"]:
        st = os.stat(place)
        marks.append({"xattrs": sorted(os.listxattr(place)), "mtime": int(st.st_mtime), "mode": st.st_mode & 0o777})
    return {"marks": marks}

_libc = ctypes.CDLL(None, use_errno=True)

def leave_ipc(inputs, params):
    shm = _libc.shmget(4242, 4096, 0o1600)
    queue = _libc.mq_open(b"/kept", os.O_CREAT | os.O_RDWR, 0o600, None)
    return {"shm": shm, "queue": queue, "listing": _listing(["/dev/mqueue"]),
            "sysv": open("/proc/sysvipc/shm").read().splitlines()[1:]}

def read_ipc(inputs, params):
    return {"shm": _libc.shmget(4242, 4096, 0o600), "listing": _listing(["/dev/mqueue"]),
            "sysv": open("/proc/sysvipc/shm").read().splitlines()[1:]}

_ADD_KEY, _KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]

def leave_key(inputs, params):
    """A key in the user keyring (it outlives the process) and one in the session keyring."""
    ids = [_libc.syscall(_ADD_KEY, b"user", name, b"secret", 6, ring) for name, ring in ((b"kept-u", -4),
                                                                                          (b"kept-s", -3))]
    return {"ids": ids}

def read_key(inputs, params):
    found = []
    for name in (b"kept-u", b"kept-s"):
        for ring in (-4, -3, -5):
            if _libc.syscall(_KEYCTL, 10, ring, b"user", name, 0) >= 0:  # KEYCTL_SEARCH
                found.append(name.decode())
    return {"found": found}

def attack_the_server(inputs, params):
    """Signals to the server (the sandbox's pid 1) and a read of its memory."""
    out = {}
    for name in ("SIGINT", "SIGTERM", "SIGSTOP", "SIGKILL"):
        try:
            os.kill(1, getattr(signal, name))
            out[name] = "sent"
        except OSError as exc:
            out[name] = type(exc).__name__
    try:
        open("/proc/1/mem", "rb").close()
        out["mem"] = "opened"
    except OSError as exc:
        out["mem"] = type(exc).__name__
    time.sleep(0.2)
    return out

def rename_tmp(inputs, params):
    os.rename("/sandbox/scratch/tmp", "/sandbox/scratch/moved")
    return {}

def sleeps(inputs, params):
    time.sleep(params["seconds"])
    return {"slept": params["seconds"]}

def tmp_works(inputs, params):
    with open("/tmp/x", "w") as f:
        f.write("x")
    return {"listing": _listing(["/tmp"])}
'''


@pytest.fixture(scope="module")
def proposal(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("server-standin")
    (folder / "standin.py").write_text(textwrap.dedent(STANDINS))
    (folder / "tries.py").write_text(textwrap.dedent(TRIES))
    yield folder
    close_servers()


@pytest.fixture(autouse=True)
def servers_on(monkeypatch):
    monkeypatch.delenv(server_module.SERVER_ENV, raising=False)
    monkeypatch.delenv(bwrap.MODE_ENV, raising=False)
    bwrap.probe.cache_clear()
    yield
    bwrap.probe.cache_clear()


def the_server() -> server_module.SandboxServer:
    """The server of the last call."""
    servers = list(server_module._SERVERS.values())
    assert servers and servers[-1].alive(), "no running server"
    return servers[-1]


def calls_served() -> int:
    return sum(s.calls for s in server_module._SERVERS.values())


def call(proposal: Path, entry: str, **kw):
    kw.setdefault("proposal", "standin")
    return run_sandboxed(entry, proposal_dir=proposal, **kw)


def tries(proposal: Path, fn: str, **params):
    return call(proposal, f"tries.py:{fn}", params=params, call=fn).outputs


def outcome(proposal: Path, fn: str, **kw):
    """What a stand-in call gives, comparable across paths: outputs, or the error's kind and message."""
    try:
        result = call(proposal, f"standin.py:{fn}", call=fn, **kw)
    except SandboxError as exc:
        return ("error", exc.kind, exc.error_type, exc.error_message.split(" (exit status")[0])
    return ("ok", {k: ({n: t.tolist() for n, t in v.items()} if isinstance(v, dict) and v
                       and isinstance(next(iter(v.values())), torch.Tensor) else v)
                   for k, v in result.outputs.items()}, result.isolation, result.tree_sha256)


CASES = [("double", {"inputs": {"state": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)},
                                "blob": b"abc"}, "params": {"factor": 2, "note": "x"}}),
         ("raises", {}), ("segfaults", {}), ("exits_silently", {}), ("returns_an_object", {}),
         ("forges_a_result", {}), ("greedy", {"params": {"bytes": 3 << 30}, "memory_bytes": 1 << 30}),
         ("hangs", {"timeout_s": 1})]


def test_results_identical_to_fresh_processes(proposal, monkeypatch):
    close_servers()  # counted from none: servers of other tests may be closed (least recently used) meanwhile
    served = [outcome(proposal, fn, **kw) for fn, kw in CASES]
    assert calls_served() == len(CASES), "every call went to a server"
    monkeypatch.setenv(server_module.SERVER_ENV, "0")
    fresh = [outcome(proposal, fn, **kw) for fn, kw in CASES]
    assert calls_served() == len(CASES), "NNCONFORM_SANDBOX_SERVER=0 used no server"
    assert served == fresh
    assert served[0][0] == "ok" and [o[1] for o in served[1:]] == [
        "raised", "crashed", "no-output", "raised", "bad-output", "memory", "timeout"]


def test_a_file_input_is_staged_per_call(proposal, tmp_path):
    (tmp_path / "blob.dat").write_bytes(b"xy")
    result = call(proposal, "standin.py:double", inputs={"state": {"w": torch.ones(1)}, "blob": tmp_path / "blob.dat"},
                  params={"factor": 1, "note": ""})
    assert result.outputs["blob"] == b"yx"
    assert (tmp_path / "blob.dat").read_bytes() == b"xy"
    assert not any(the_server().dirs["in"].iterdir()), "the inputs are removed after the call"


def test_module_state_of_call_n_is_gone_in_call_n_plus_1(proposal):
    first = tries(proposal, "remember", value="the tensor")
    second = tries(proposal, "remember", value="other")
    assert first["seen"] == ["the tensor"] and second["seen"] == ["other"]
    assert the_server().calls >= 2


@pytest.mark.parametrize("mode", [pytest.param("bubblewrap", marks=BWRAP), "subprocess"])
def test_a_daemon_of_call_n_is_dead_before_call_n_plus_1_and_steals_nothing(proposal, mode, monkeypatch, tmp_path):
    monkeypatch.setenv(bwrap.MODE_ENV, mode)
    bwrap.probe.cache_clear()
    drop = tmp_path / "drop"  # the fallback has no private /tmp: the daemon drops what it steals here
    drop.mkdir()
    in_dir = str(the_in_dir(proposal))
    started = tries(proposal, "start_daemon", in_dir=in_dir, drop="/tmp" if mode == "bubblewrap" else str(drop))
    assert started["daemons"], "the stand-in started a daemon"
    places = ["/tmp", "/dev/shm"] if mode == "bubblewrap" else [str(drop)]
    result = call(proposal, "tries.py:victim", inputs={"secret": b"the secret input"},
                  params={"pids": started["daemons"], "wait": 0.5, "places": places}).outputs
    assert result["alive"] == [], f"daemons {started['daemons']} survived into the next call"
    assert all(not any(n.startswith("stolen") for n in names) for names in result["listing"].values()), result
    later = tries(proposal, "victim", places=places)
    assert all(not any(n.startswith("stolen") for n in names) for names in later["listing"].values()), later
    assert not any(drop.iterdir())
    assert the_server().key.mode == mode


def the_in_dir(proposal: Path) -> Path:
    """The host folder the fallback's calls read their inputs from (a daemon there could read it directly)."""
    tries(proposal, "remember", value=0)
    return the_server().dirs["in"]


@BWRAP
def test_files_in_tmp_and_dev_shm_are_gone_in_the_next_call(proposal):
    places = ["/tmp", "/dev/shm", "/sandbox/scratch", "/sandbox/out"]
    left = tries(proposal, "leave_files", places=places)
    assert all("left-by-call-n" in names for names in left["listing"].values()), left
    after = tries(proposal, "victim", places=places)
    assert all("left-by-call-n" not in names for names in after["listing"].values()), after
    assert tries(proposal, "tmp_works")["listing"]["/tmp"] == ["x"]


@BWRAP
def test_marks_on_the_kept_folders_are_undone(proposal):
    places = ["/tmp", "/dev/shm", "/sandbox/scratch", "/sandbox/out"]
    before = tries(proposal, "read_marks", places=places)
    assert tries(proposal, "leave_marks", places=places)["done"] == ["xattr"] * len(places)
    assert tries(proposal, "read_marks", places=places) == before


@BWRAP
def test_ipc_objects_of_call_n_are_gone(proposal):
    left = tries(proposal, "leave_ipc")
    assert left["shm"] >= 0 and left["listing"]["/dev/mqueue"] == ["kept"] and len(left["sysv"]) == 1
    after = tries(proposal, "read_ipc")
    assert after["shm"] == -1 and after["listing"]["/dev/mqueue"] == [] and after["sysv"] == []


@BWRAP
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="keyctl numbers known for x86-64/aarch64")
def test_keys_of_call_n_are_gone(proposal):
    assert all(i > 0 for i in tries(proposal, "leave_key")["ids"])
    assert tries(proposal, "read_key")["found"] == []


@BWRAP
def test_a_call_cannot_stop_or_read_the_server(proposal):
    tries(proposal, "remember", value=0)
    server = the_server()
    out = tries(proposal, "attack_the_server")
    assert out["mem"] == "PermissionError", out
    assert server.alive() and the_server() is server
    assert tries(proposal, "remember", value=1)["seen"] == [1]


def test_a_timeout_kills_the_call_and_the_next_call_works(proposal):
    tries(proposal, "remember", value=0)
    server = the_server()
    with pytest.raises(SandboxError, match="did not finish within 1 s") as err:
        call(proposal, "tries.py:sleeps", params={"seconds": 600}, timeout_s=1)
    assert err.value.kind == "timeout"
    assert tries(proposal, "sleeps", seconds=0)["slept"] == 0
    assert the_server() is server, "the server survived its call's timeout"


def test_a_server_killed_from_outside_is_replaced(proposal):
    tries(proposal, "remember", value=0)
    server = the_server()
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    assert tries(proposal, "remember", value=1)["seen"] == [1]
    assert the_server() is not server


def test_a_server_dying_during_a_call_falls_back_to_a_fresh_process(proposal):
    tries(proposal, "remember", value=0)
    server = the_server()
    killer = threading.Timer(1.0, lambda: os.killpg(server.proc.pid, signal.SIGKILL))
    killer.start()
    try:
        assert tries(proposal, "sleeps", seconds=2)["slept"] == 2
    finally:
        killer.cancel()
    assert not server.alive()


@BWRAP
def test_a_server_that_cannot_be_cleaned_is_replaced(proposal):
    tries(proposal, "remember", value=0)
    server = the_server()
    tries(proposal, "rename_tmp")
    assert server.retire and server.alive()
    assert tries(proposal, "tmp_works")["listing"]["/tmp"] == ["x"]
    assert the_server() is not server


def test_servers_off_and_closed(proposal, monkeypatch):
    close_servers()
    monkeypatch.setenv(server_module.SERVER_ENV, "0")
    assert tries(proposal, "remember", value=0)["seen"] == [0]
    assert server_module.servers_running() == 0
    monkeypatch.delenv(server_module.SERVER_ENV)
    tries(proposal, "remember", value=0)
    server = the_server()
    work = server.work
    assert close_servers() == 1
    assert server.proc.poll() is not None and not work.exists()


def test_a_forked_process_starts_its_own_servers(proposal, monkeypatch):
    tries(proposal, "remember", value=0)
    server = the_server()
    monkeypatch.setattr(server_module, "_OWNER", -1)  # as if this process were a fork of the one that started it
    assert server_module.servers_running() == 0
    assert server.alive(), "the parent's server is not closed by the fork"
    server.close()


def test_the_pin_is_checked_before_a_server_runs_anything(proposal):
    with pytest.raises(SandboxError, match="not the reviewed files, so nothing runs") as err:
        call(proposal, "standin.py:double", tree_sha256="0" * 64)
    assert err.value.kind == "pin"


@BWRAP
def test_a_changed_view_gets_another_server(proposal, monkeypatch, tmp_path):
    """Hidden paths given by the caller, or a view that changed since (e.g. another anchors folder), never reuse
    a server built for the old view."""
    tries(proposal, "remember", value=0)
    first = the_server()
    call(proposal, "tries.py:remember", params={"value": 1}, hidden=[tmp_path])
    assert the_server() is not first
    real = bwrap.hidden_paths
    monkeypatch.setattr(bwrap, "hidden_paths", lambda extra=(): [*real(extra), tmp_path / "elsewhere"])
    tries(proposal, "remember", value=2)
    assert the_server() is not first and the_server().key.hidden == ()
