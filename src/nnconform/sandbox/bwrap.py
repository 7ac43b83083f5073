"""What the sandboxed process may see, as a bubblewrap (``bwrap``) command line.

The view is built from nothing (bwrap starts from an empty root) and holds, read-only: the Python
environment (the venv, the base interpreter's prefix, the nnconform package, the system libraries
in ``/usr/lib``), the proposal folder's copy and this call's inputs; read-write: one scratch folder
and the output folder. Evaluation data, anchor weights and checkpoints that happen to live inside
those trees (a wheel's packaged ``_anchors``, the foolbox ImageNet samples, weights shipped in a
package) are masked. No network (only a loopback of its own), no other process, no capabilities.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable

#: Where the call's folders appear inside the sandbox (host paths are never shown to proposal code).
INSIDE = Path("/sandbox")
SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache", "/etc/ld.so.conf",
               "/etc/ld.so.conf.d", "/etc/localtime")
#: Top-level folders that merged-/usr systems make links into /usr (the ELF loader is found through /lib64).
USR_LINKS = ("/lib", "/lib64", "/bin", "/sbin")
#: Set NNCONFORM_SANDBOX to ``subprocess`` to force the fallback, or ``bubblewrap`` to fail without it.
MODE_ENV = "NNCONFORM_SANDBOX"


def bwrap_executable() -> str | None:
    """The ``bwrap`` on ``PATH`` (or in ``/usr/bin``), if any."""
    return shutil.which("bwrap") or (shutil.which("bwrap", path="/usr/bin:/bin"))


def python_environment() -> list[Path]:
    """The read-only trees the worker's interpreter needs: venv, base prefix and the nnconform package."""
    import nnconform

    trees = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(nnconform.__file__).resolve().parent}
    # site-packages folders a .pth file or PYTHONPATH adds (a venv reusing another environment's packages); only
    # package folders, never a working directory sys.path may also hold
    trees.update(Path(p).resolve() for p in sys.path
                 if p and Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir())
    # the interpreter binary may sit outside both prefixes (a venv's python linking elsewhere)
    trees.add(Path(sys.executable).resolve().parent)
    return sorted(trees)


def hidden_paths(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Files and folders masked even when a bound tree holds them: anchor manifests and weights,
    evaluation data (Fashion-MNIST, the foolbox ImageNet samples), plus ``extra`` (e.g. ``--nnc-data-dir``)."""
    from ..data import FMNIST_SYSTEM_DIR, foolbox_data_dir
    from ..paths import anchors_dir

    out = [anchors_dir(), FMNIST_SYSTEM_DIR, *map(Path, extra)]
    try:
        if (folder := foolbox_data_dir()) is not None:
            out.append(folder)
    except Exception:  # a broken foolbox install hides nothing more
        pass
    try:
        from ..anchors import all_anchors, resolve_weights_path

        for anchor in all_anchors().values():
            if str(anchor.weights).startswith("package:"):
                out.append(resolve_weights_path(anchor.weights))
    except Exception:  # anchors that do not load cannot be read in the sandbox either
        pass
    return [p.resolve() for p in out]


def _inside(path: Path, trees: Iterable[Path]) -> bool:
    return any(path == t or t in path.parents for t in trees)


def bwrap_command(*, readonly: dict[Path, Path], writable: dict[Path, Path], hidden: Iterable[Path],
                  env: dict[str, str], argv: list[str], chdir: Path, shm: Path | None = None,
                  as_pid_1: bool = False) -> list[str]:
    """The bwrap command line: ``readonly``/``writable`` map host paths to paths inside.

    ``shm``: a host folder shown as ``/dev/shm`` (else /dev has no writable place at all). ``as_pid_1``:
    ``argv`` becomes the pid namespace's init (the sandbox server), so it reaps every orphan, cannot be
    killed or stopped from inside the sandbox, and the whole sandbox dies with it.
    """
    exe = bwrap_executable()
    if exe is None:
        raise FileNotFoundError("bwrap not found")
    cmd = [exe, *(["--as-pid-1"] if as_pid_1 else []), "--unshare-all", "--unshare-user", "--disable-userns",
           "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
           "--proc", "/proc", "--dev", "/dev", "--mqueue", "/dev/mqueue", "--dir", "/tmp"]
    if shm is not None:
        cmd += ["--bind", str(shm), "/dev/shm"]
    # /dev read-only: its tmpfs would otherwise be a writable place outside the folders the gate empties
    cmd += ["--remount-ro", "/dev"]
    for lib in SYSTEM_LIBS:
        if os.path.exists(lib):
            cmd += ["--ro-bind", lib, lib]
    for top in USR_LINKS:
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif top in ("/lib", "/lib64") and os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    for host, inside in readonly.items():
        cmd += ["--ro-bind", str(host), str(inside)]
    for host, inside in writable.items():
        cmd += ["--bind", str(host), str(inside)]
    bound = [h for h in [*map(Path, SYSTEM_LIBS), Path("/lib"), Path("/lib64"), *readonly] if h.exists()]
    for path in hidden:
        # only what a bound tree would show needs a mask; the rest is simply not there
        if not path.exists() or not _inside(path, bound):
            continue
        cmd += (["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)])
    # the root bwrap builds is a tmpfs: read-only too, so the only writable places are the bound folders
    cmd += ["--remount-ro", "/"]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return cmd + ["--chdir", str(chdir), "--", *argv]


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """Whether bubblewrap can start a sandbox here (tried once per process), and why not if it cannot."""
    if os.environ.get(MODE_ENV, "").lower() == "subprocess":
        return False, f"{MODE_ENV}=subprocess"
    exe = bwrap_executable()
    if exe is None:
        return False, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    env_trees = python_environment()
    cmd = bwrap_command(readonly={p: p for p in env_trees}, writable={}, hidden=(), env={},
                        argv=[sys.executable, "-I", "-S", "-c", "pass"], chdir=Path("/"))
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap failed to start: {exc}"
    if done.returncode != 0:
        reason = (done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return False, f"bwrap failed to start: {reason}"
    return True, ""
