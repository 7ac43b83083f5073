"""The sandbox's mechanics: data in and out, and every way a call can fail is one clear error.

Stand-in proposal functions (not the criteria) are written into a temporary proposal folder. Calls
that need no tensors do not import torch in the sandbox, so each takes a fraction of a second.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from nnconform.proposal.tree import tree_sha256
from nnconform.sandbox import SandboxError, SandboxWarning, bwrap, isolation, run_sandboxed
from nnconform.sandbox import runner as runner_module

STANDINS = '''
import os, sys, time

def double(inputs, params):
    state = inputs["state"]
    return {"state": {k: v * params["factor"] for k, v in state.items()}, "blob": inputs["blob"][::-1],
            "count": len(state), "note": params["note"]}

def raises(inputs, params):
    raise ValueError("planted failure in the proposal")

def hangs(inputs, params):
    time.sleep(600)

def segfaults(inputs, params):
    import ctypes
    ctypes.string_at(0)

def greedy(inputs, params):
    return {"n": len(bytearray(params["bytes"]))}

def exits_silently(inputs, params):
    os._exit(0)

def returns_an_object(inputs, params):
    return {"f": double}

def forges_a_result(inputs, params):
    out = "/sandbox/out" if os.path.isdir("/sandbox/out") else os.path.join(os.getcwd(), "..", "out")
    open(os.path.join(out, "result.json"), "w").write(
        '{"ok": true, "files": {"x": ["bytes", "../../etc/passwd"]}, "values": {}}')
    os._exit(0)
'''


@pytest.fixture(scope="module")
def proposal(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("standin")
    (folder / "standin.py").write_text(textwrap.dedent(STANDINS))
    return folder


def call(proposal: Path, fn: str, **kw):
    return run_sandboxed(f"standin.py:{fn}", proposal_dir=proposal, proposal="standin", call=fn, **kw)


def test_data_round_trip(proposal):
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)}
    result = call(proposal, "double", inputs={"state": state, "blob": b"abc"}, params={"factor": 2, "note": "x"})
    assert torch.equal(result.outputs["state"]["w"], state["w"] * 2)
    assert result.outputs["state"]["b"].dtype == torch.float16
    assert result.outputs["blob"] == b"cba" and result.outputs["count"] == 2 and result.outputs["note"] == "x"
    assert result.isolation == isolation() and result.tree_sha256 == tree_sha256(proposal)


def test_a_file_input_is_read_only_data(proposal, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(tmp_path / "state.safetensors"))
    (tmp_path / "blob.dat").write_bytes(b"xy")
    result = call(proposal, "double", inputs={"state": tmp_path / "state.safetensors", "blob": tmp_path / "blob.dat"},
                  params={"factor": 3, "note": ""})
    assert torch.equal(result.outputs["state"]["w"], torch.full((3,), 3.0)) and result.outputs["blob"] == b"yx"


def test_the_proposals_exception_comes_back_structured(proposal):
    with pytest.raises(SandboxError) as err:
        call(proposal, "raises")
    e = err.value
    assert e.kind == "raised" and e.error_type == "ValueError" and "planted failure" in e.error_message
    assert "standin.py" in e.traceback and "raises" in e.traceback
    assert str(e).startswith("proposal standin: raises: raised: ValueError: planted failure")


def test_a_hang_is_a_timeout_not_a_hang(proposal):
    with pytest.raises(SandboxError, match="did not finish within 1 s") as err:
        call(proposal, "hangs", timeout_s=1)
    assert err.value.kind == "timeout"


def test_a_segfault_is_a_crash(proposal):
    with pytest.raises(SandboxError, match="SIGSEGV") as err:
        call(proposal, "segfaults")
    assert err.value.kind == "crashed"


def test_over_the_memory_limit(proposal):
    with pytest.raises(SandboxError) as err:
        call(proposal, "greedy", params={"bytes": 3 << 30}, memory_bytes=1 << 30)
    assert err.value.kind == "memory" and "memory limit 1073741824" in str(err.value)


def test_missing_output(proposal):
    with pytest.raises(SandboxError, match="without returning a result") as err:
        call(proposal, "exits_silently")
    assert err.value.kind == "no-output"


def test_objects_do_not_cross(proposal):
    with pytest.raises(SandboxError, match="a function is not a plain value"):
        call(proposal, "returns_an_object")
    with pytest.raises(SandboxError, match="not allowed|is not 'x.bin'") as err:
        call(proposal, "forges_a_result")
    assert err.value.kind == "bad-output"
    with pytest.raises(SandboxError, match="a object is not a plain value|is not a plain value"):
        run_sandboxed("standin.py:double", proposal_dir=proposal, params={"x": object()})


def test_the_tree_pin_is_checked_on_what_runs(proposal, tmp_path):
    with pytest.raises(SandboxError, match="not the reviewed files, so nothing runs") as err:
        call(proposal, "double", tree_sha256="0" * 64)
    assert err.value.kind == "pin"


def test_fallback_says_so_once_and_keeps_the_interface(proposal, monkeypatch):
    monkeypatch.setenv(bwrap.MODE_ENV, "subprocess")
    monkeypatch.setattr(runner_module, "_NOTICE_GIVEN", False)
    bwrap.probe.cache_clear()
    try:
        assert isolation() == "subprocess"
        with pytest.warns(SandboxWarning, match="plain subprocess"):
            result = call(proposal, "double", inputs={"state": {"w": torch.ones(1)}, "blob": b"a"},
                          params={"factor": 2, "note": ""})
        assert result.isolation == "subprocess" and torch.equal(result.outputs["state"]["w"], torch.full((1,), 2.0))
        with warnings.catch_warnings():
            warnings.simplefilter("error", SandboxWarning)  # said once, not per call
            with pytest.raises(SandboxError, match="SIGSEGV"):
                call(proposal, "segfaults")
        # a lab that requires the OS sandbox: a machine without bwrap is an error, not a silent fallback
        monkeypatch.setenv(bwrap.MODE_ENV, "bubblewrap")
        monkeypatch.setattr(bwrap, "bwrap_executable", lambda: None)
        bwrap.probe.cache_clear()
        with pytest.raises(SandboxError, match="bwrap is not installed") as err:
            call(proposal, "double")
        assert err.value.kind == "unavailable"
    finally:
        bwrap.probe.cache_clear()
