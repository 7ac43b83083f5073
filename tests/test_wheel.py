"""An installed wheel works away from the clone: a proposal's own repository can run its gate.

Builds the wheel from a copy of the sources, installs it with ``--no-deps`` into a fresh venv
whose dependencies come from this environment (a ``.pth`` naming its site-packages), and runs
the good example proposal from an empty temporary folder: the report and cache land there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import pytest

from nnconform.paths import source_checkout

ROOT = source_checkout()
pytestmark = pytest.mark.skipif(ROOT is None, reason="builds the wheel from a clone of the repository")
# What the build reads (pyproject.toml and MANIFEST.in say the rest); copied so that a stale
# build/ folder in the clone can never leak into the wheel under test.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "anchors", "conformance")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tracked sources."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.lock", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)])
    (whl,) = out.glob("nnconform-*.whl")
    return whl


def test_wheel_carries_manifests_weights_and_suite(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in sorted((ROOT / "anchors").glob("*.toml")) + sorted((ROOT / "anchors").glob("zoo/*/*.safetensors")):
        assert f"nnconform/_anchors/{path.relative_to(ROOT / 'anchors').as_posix()}" in names, path
    for path in sorted((ROOT / "conformance").glob("*.py")):
        assert f"nnconform/conformance/{path.name}" in names, path
    for schema in ("nnconform/proposal/proposal.schema.json", "nnconform/report/results.schema.json"):
        assert schema in names


def test_installed_wheel_runs_a_proposal_from_another_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies of this environment, after the venv's own site-packages (a plain path line:
    # the clone's editable-install .pth in there is not processed, so the clone is not importable).
    (site / "_nnconform_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])
    where = _run([str(py), "-c", "import nnconform.paths as p; print(p.PACKAGE_DIR); print(p.anchors_dir())"])
    package_dir, anchors = where.stdout.split()
    assert Path(package_dir).is_relative_to(venv), f"the clone's nnconform was imported: {package_dir}"
    assert Path(anchors) == Path(package_dir) / "_anchors"

    project = tmp_path / "proposal-repo"  # stands for the proposal's own repository
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "my-proposal"\nversion = "0"\n')
    shutil.copytree(ROOT / "fixtures" / "proposals" / "good-compressor", project / "good-compressor")
    run_id = f"wheel-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNCONFORM_")}
    proc = subprocess.run(
        [str(py), "-m", "pytest", "-p", "no:cacheprovider", "--pyargs", "nnconform.conformance",
         "--proposal", "good-compressor", "--nnc-proposal-only", "--nnc-tier", "quick",
         "--nnc-anchors", "fmnist-lenet5", "--nnc-run-id", run_id, "-q"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = json.loads((project / "reports" / run_id / "results.json").read_text())
    assert results["summary"]["cases"].get("passed", 0) > 0
    assert any(r["criterion"] == "compression" for r in results["records"])
    assert (project / ".cache" / "nnconform").is_dir(), "the cache belongs under the folder pytest ran in"
    assert not (ROOT / "reports" / run_id).exists(), "the report was written into the clone"
