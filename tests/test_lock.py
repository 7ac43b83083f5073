"""requirements.lock pins everything with hashes, and a run flags every version that drifted from it."""

from __future__ import annotations

import re
import tomllib

import pytest

from nnconform.environment import (Drift, default_lock_path, environment_manifest, installed_versions, lock_drift,
                                   normalize, read_lock)
from nnconform.paths import source_checkout

LOCK = default_lock_path()
needs_lock = pytest.mark.skipif(LOCK is None, reason="no requirements.lock (not a clone)")


def _planted(tmp_path, text: str):
    path = tmp_path / "requirements.lock"
    path.write_text(text)
    return path


def test_a_version_that_differs_from_the_lock_is_flagged(tmp_path):
    have = installed_versions()
    numpy = have["numpy"]
    lock = _planted(tmp_path, "".join(f"{n}=={v} \\\n    --hash=sha256:{'0' * 64}\n" for n, v in have.items()
                                      if n not in ("numpy", "nnconform")) + "numpy==0.0.1 \\\n    --hash=sha256:" + "1" * 64 + "\n")
    drift = lock_drift(lock)
    assert drift == [Drift("numpy", "0.0.1", numpy)]
    assert drift[0].message == f"numpy: installed {numpy}, the lock pins 0.0.1"


def test_missing_and_unlocked_distributions_are_flagged(tmp_path):
    lock = _planted(tmp_path, "Not_A.Real-Package==1.0\n")
    drift = {d.name: d for d in lock_drift(lock, installed={"numpy": "2.0", "nnconform": "0.1.0"})}
    assert drift["not-a-real-package"].message == "not-a-real-package: locked at 1.0 but not installed"
    assert drift["numpy"].message == "numpy 2.0: installed but not in the lock"
    assert "nnconform" not in drift  # the package under test is installed from the checkout, never locked


def test_an_unpinned_line_is_named(tmp_path):
    lock = _planted(tmp_path, "torch==2.14.1\nnumpy>=2\n")
    with pytest.raises(ValueError, match=r"requirements\.lock:2: 'numpy>=2' is not pinned as name==version"):
        read_lock(lock)


def test_the_report_environment_carries_the_drift(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCONFORM_LOCK", str(_planted(tmp_path, "torch==0.0.1\n")))
    env = environment_manifest()
    torch_drift = [d for d in env["lock"]["drift"] if d["name"] == "torch"]
    assert torch_drift and torch_drift[0]["locked"] == "0.0.1" and "the lock pins 0.0.1" in torch_drift[0]["message"]
    assert env["installed"]["torch"] == env["packages"]["torch"]
    monkeypatch.setenv("NNCONFORM_LOCK", str(_planted(tmp_path, "torch>=2\n")))
    assert "not pinned" in environment_manifest()["lock"]["error"]  # a broken lock costs no report


@needs_lock
def test_every_locked_requirement_has_a_hash():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    pinned = [b for b in blocks if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", b)]
    assert len(pinned) == len(read_lock(LOCK))
    unhashed = [b.split()[0] for b in pinned if not re.search(r"--hash=sha256:[0-9a-f]{64}", b)]
    assert unhashed == []


@needs_lock
def test_every_declared_dependency_is_locked():
    project = tomllib.loads((source_checkout() / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in declared}
    assert names - set(read_lock(LOCK)) == set()


@needs_lock
def test_this_environment_matches_the_lock():
    """The proof of the set-up: every installed version is the locked one (`make setup` after `make lock`)."""
    assert [d.message for d in lock_drift(LOCK)] == []


def test_a_package_s_vendored_copies_are_not_installed_distributions(tmp_path, monkeypatch):
    """ray puts ``site-packages/ray/thirdparty_files`` (colorama, psutil) on sys.path when imported: once a test has
    imported ray, colorama looked installed and unlocked (a CI failure). Only what is installed counts."""
    vendored = tmp_path / "site-packages" / "somepkg" / "thirdparty_files"
    (vendored / "colorfake-0.4.6.dist-info").mkdir(parents=True)
    (vendored / "colorfake-0.4.6.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: colorfake\nVersion: 0.4.6\n")
    loose = tmp_path / "elsewhere"
    (loose / "loosefake-1.0.dist-info").mkdir(parents=True)
    (loose / "loosefake-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: loosefake\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(vendored))
    monkeypatch.syspath_prepend(str(loose))
    have = installed_versions()
    assert "colorfake" not in have
    assert have["loosefake"] == "1.0"  # a folder put on the path some other way still counts (the check can fail)
