"""The environment a run measured in: installed versions, the lock they should match, commit, machine.

``requirements.lock`` (in the repository, made by ``make lock``) pins every Python dependency
with hashes. A report lists every installed distribution and flags each that differs from the
lock (:func:`lock_drift`), so a reader sees when two labs' numbers came from different stacks.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .paths import source_checkout

#: Packages whose versions head every report's environment table.
REPORTED_PACKAGES = ("nnconform", "torch", "torchvision", "aimet-torch", "numpy", "scipy", "datasets",
                     "safetensors", "onnx", "onnxruntime", "zstandard", "pillow", "nncodec", "pytest",
                     "pytest-benchmark", "hypothesis", "efficientnet-lite-pytorch")
LOCK_NAME = "requirements.lock"
#: Installed but never in the lock: nnconform itself (installed from the checkout or a wheel).
NOT_LOCKED = frozenset({"nnconform"})

# ``name==version`` at the start of a lock line (pip-compile and ``uv pip compile`` both write it).
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class Drift:
    """One distribution whose installed version is not the locked one (``None``: absent there)."""

    name: str
    locked: str | None
    installed: str | None

    @property
    def message(self) -> str:
        """One line a reader can act on."""
        if self.installed is None:
            return f"{self.name}: locked at {self.locked} but not installed"
        if self.locked is None:
            return f"{self.name} {self.installed}: installed but not in the lock"
        return f"{self.name}: installed {self.installed}, the lock pins {self.locked}"


def normalize(name: str) -> str:
    """PEP 503 name: ``Foo_Bar.baz`` -> ``foo-bar-baz`` (how the lock and metadata are compared)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_lock_path() -> Path | None:
    """``NNCONFORM_LOCK`` if set, else the clone's ``requirements.lock``; ``None`` when neither exists
    (an installed wheel in someone else's environment has no lock to compare with)."""
    if os.environ.get("NNCONFORM_LOCK"):
        return Path(os.environ["NNCONFORM_LOCK"])
    root = source_checkout()
    return root / LOCK_NAME if root is not None and (root / LOCK_NAME).is_file() else None


def read_lock(path: str | Path) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` pin in a lock file.

    Raises ``ValueError`` naming the file and line for a requirement that is not pinned with ``==``.
    """
    pins: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith(("#", "--hash", "-")) or text == "\\":
            continue
        match = _PIN.match(text)
        if match is None:
            raise ValueError(f"{path}:{lineno}: {text!r} is not pinned as name==version")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


def _vendored(entry: str) -> bool:
    """A ``sys.path`` entry inside a site-packages folder: a package's own vendored copies (ray puts
    ``ray/thirdparty_files`` on the path once imported), part of that package rather than installed."""
    parts = Path(entry).parts
    return any(part in ("site-packages", "dist-packages") for part in parts[:-1])


def installed_versions() -> dict[str, str]:
    """``{normalized name: version}`` of every distribution installed in this interpreter's environment.

    Copies a package vendors inside its own folder are left out (:func:`_vendored`): they come and go
    with imports and pip did not install them.
    """
    out: dict[str, str] = {}
    path = [entry for entry in sys.path if not _vendored(entry or ".")]
    for dist in metadata.distributions(path=path):
        name = dist.metadata.get("Name")
        if name:
            # the first one on sys.path wins, as it does for imports
            out.setdefault(normalize(name), dist.version)
    return dict(sorted(out.items()))


def lock_drift(lock: str | Path | None = None, installed: dict[str, str] | None = None) -> list[Drift]:
    """Every distribution whose installed version differs from the lock, is missing, or is unlocked.

    ``lock`` defaults to :func:`default_lock_path`; without a lock there is nothing to compare and
    the list is empty. ``installed`` defaults to :func:`installed_versions`.
    """
    lock = lock if lock is not None else default_lock_path()
    if lock is None:
        return []
    pins = read_lock(lock)
    have = installed if installed is not None else installed_versions()
    drift = [Drift(name, version, have.get(name)) for name, version in pins.items() if have.get(name) != version]
    drift += [Drift(name, None, version) for name, version in have.items()
              if name not in pins and name not in NOT_LOCKED]
    return sorted(drift, key=lambda d: d.name)


def _git_commit() -> dict[str, Any]:
    root = source_checkout()
    if root is None:  # an installed wheel: its version says what ran, there is no commit to ask
        return {"commit": None, "dirty": None}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": head or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment_manifest() -> dict[str, Any]:
    """Package versions, lock drift, commit, machine and seeds: what a reader needs to reproduce a run.

    ``packages`` holds the headline packages (``None`` when absent), ``installed`` every
    distribution, ``lock`` the lock file compared with and each drift found.
    """
    import torch

    from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

    installed = installed_versions()
    versions = {pkg: installed.get(normalize(pkg)) for pkg in REPORTED_PACKAGES}
    lock_path = default_lock_path()
    try:
        drift = [asdict(d) | {"message": d.message} for d in lock_drift(lock_path, installed)]
        lock = {"file": str(lock_path) if lock_path else None, "drift": drift, "error": None}
    except (OSError, ValueError) as exc:  # a broken lock must not cost the run its report
        lock = {"file": str(lock_path), "drift": [], "error": str(exc)}
    return {
        "packages": versions,
        "installed": installed,
        "lock": lock,
        "python": platform.python_version(),
        "git": _git_commit(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda_available": torch.cuda.is_available()},
        "seeds": {"bootstrap_seed": BOOTSTRAP_SEED, "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
                  "torch_manual_seed": 0},
        "determinism": {"torch.use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
        "sandbox": _sandbox(),
    }


def _sandbox() -> dict[str, str]:
    """The isolation proposal code gets in this run (bubblewrap, or the plain-subprocess fallback and why)."""
    from .sandbox import isolation, isolation_note

    return {"isolation": isolation(), "note": isolation_note()}
