"""The sandbox stops the cheats of issue 11 that it is meant to stop (stand-in proposal functions).

Under bubblewrap, proposal code cannot read the evaluation data, the anchors' weights and lineages
or anything under /work; it has no network; what it keeps in memory or on disk at encode is gone
at decode; it cannot write outside its scratch folder; and patching the gate's functions changes
only its own process. Skipped, saying why, where bubblewrap cannot run (the fallback isolates
processes but not files or network).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import nnconform.records
from nnconform.data import FMNIST_SYSTEM_DIR
from nnconform.paths import anchors_dir
from nnconform.sandbox import SandboxError, bwrap, isolation, run_sandboxed

pytestmark = pytest.mark.skipif(not bwrap.probe()[0], reason=f"bubblewrap cannot run here: {bwrap.probe()[1]}")

CHEATS = '''
import os, socket

def read_file(inputs, params):
    with open(params["path"], "rb") as f:
        return {"size": len(f.read())}

def list_dir(inputs, params):
    return {"names": sorted(os.listdir(params["path"]))}

def connect(inputs, params):
    socket.create_connection((params["host"], params["port"]), timeout=5).close()
    return {"connected": True}

_KEPT = {}

def encode(inputs, params):
    _KEPT["secret"] = params["secret"]
    for folder in (os.environ["HOME"], "/tmp"):
        with open(os.path.join(folder, "kept.txt"), "w") as f:
            f.write(params["secret"])
    return {"payload": b"\\x00"}

def decode(inputs, params):
    found = [_KEPT.get("secret")]
    for folder in (os.environ["HOME"], "/tmp"):
        path = os.path.join(folder, "kept.txt")
        found.append(open(path).read() if os.path.exists(path) else None)
    return {"found": found}

def write_outside(inputs, params):
    refused = []
    for path in params["paths"]:
        try:
            with open(path, "w") as f:
                f.write("x")
        except OSError as exc:
            refused.append(type(exc).__name__)
    return {"refused": refused}

def patch_the_gate(inputs, params):
    import nnconform.records as records
    records.gate = lambda *a, **k: "PASS"
    return {"patched": True}

def environment(inputs, params):
    return {"env": sorted(os.environ)}
'''


@pytest.fixture(scope="module")
def proposal(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cheats")
    (folder / "cheats.py").write_text(textwrap.dedent(CHEATS))
    return folder


def call(proposal: Path, fn: str, **params):
    return run_sandboxed(f"cheats.py:{fn}", proposal_dir=proposal, params=params, proposal="cheats", call=fn)


def refused(proposal: Path, fn: str, **params) -> SandboxError:
    with pytest.raises(SandboxError) as err:
        call(proposal, fn, **params)
    assert err.value.kind == "raised", err.value
    return err.value


def test_isolation_is_bubblewrap():
    assert isolation() == "bubblewrap"


def test_evaluation_data_is_not_readable(proposal):
    labels = FMNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz"
    if not labels.is_file():
        pytest.skip(f"{labels} is not installed here, so there is nothing to hide")
    e = refused(proposal, "read_file", path=str(labels))
    assert e.error_type == "FileNotFoundError", e


def test_anchor_weights_and_lineages_are_not_readable(proposal):
    weights = sorted(anchors_dir().glob("zoo/*/*.safetensors")) + sorted(anchors_dir().glob("zoo/*.safetensors"))
    assert weights, f"no zoo weights under {anchors_dir()}"
    for path in (weights[0], weights[-1], anchors_dir() / "tiers.toml"):
        assert refused(proposal, "read_file", path=str(path)).error_type == "FileNotFoundError"


def test_nothing_under_work_but_the_python_environment(proposal):
    repo = Path(nnconform.records.__file__).resolve().parents[2]
    for path in (repo / "README.md", repo / "pyproject.toml", repo / "fixtures" / "proposals" / "expected.toml"):
        assert refused(proposal, "read_file", path=str(path)).error_type == "FileNotFoundError"
    assert set(call(proposal, "list_dir", path=str(repo)).outputs["names"]) <= {".venv", "src"}


def test_no_network(proposal):
    e = refused(proposal, "connect", host="192.0.2.1", port=80)
    assert e.error_type in ("OSError", "ConnectionRefusedError"), e
    assert "unreachable" in e.error_message.lower()


def test_module_state_kept_at_encode_is_gone_at_decode(proposal):
    assert call(proposal, "encode", secret="the tensor").outputs["payload"] == b"\x00"
    assert call(proposal, "decode").outputs["found"] == [None, None, None]


def test_no_writes_outside_the_scratch_folder(proposal):
    paths = ["/sandbox/proposal/cheats.py", "/sandbox/in/x", str(Path(nnconform.records.__file__)), "/usr/lib/x",
             "/etc/x"]
    assert len(call(proposal, "write_outside", paths=paths).outputs["refused"]) == len(paths)


def test_patching_the_gate_changes_only_the_sandboxed_process(proposal):
    before = nnconform.records.gate
    assert call(proposal, "patch_the_gate").outputs["patched"] is True
    assert nnconform.records.gate is before


def test_no_host_environment_variables(proposal, monkeypatch):
    monkeypatch.setenv("NNCONFORM_TEST_SECRET", "token")
    names = set(call(proposal, "environment").outputs["env"])
    assert "NNCONFORM_TEST_SECRET" not in names
    assert names <= {"HOME", "TMPDIR", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "OMP_NUM_THREADS",
                     "MKL_NUM_THREADS", "LC_CTYPE", "PWD"}, names
