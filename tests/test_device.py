"""--nnc-device: parsing and validation (a CUDA device that is not there stops the run at start with one line),
`auto`, and the cache keys (the CPU keeps the keys every CPU run has had; another device changes them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnconform.engine.device import (DeviceUnavailable, device_key_part, device_manifest, parse_device,
                                     resolve_device)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value,expected", [("cpu", "cpu"), ("CUDA", "cuda"), (" cuda:1 ", "cuda:1"), ("auto", "auto")])
def test_parse_device_accepts(value, expected):
    assert parse_device(value) == expected


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "cuda0", "mps", ""])
def test_parse_device_refuses_naming_the_value(value):
    with pytest.raises(ValueError, match=r"--nnc-device .*cpu\|cuda\|cuda:N\|auto") as info:
        parse_device(value)
    assert repr(value) in str(info.value)


def test_resolve_device():
    assert resolve_device("cpu", cuda_available=False, cuda_count=0) == "cpu"
    assert resolve_device("auto", cuda_available=False, cuda_count=0) == "cpu"
    assert resolve_device("auto", cuda_available=True, cuda_count=1) == "cuda"
    assert resolve_device("cuda:1", cuda_available=True, cuda_count=2) == "cuda:1"
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        resolve_device("cuda", cuda_available=False, cuda_count=0)
    with pytest.raises(DeviceUnavailable, match=r"'cuda:2': this machine has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2", cuda_available=True, cuda_count=2)


def test_resolve_device_asks_torch(monkeypatch):
    """Without a GPU (monkeypatched here, so the test holds on GPU machines too) cuda is refused, auto is cpu."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailable):
        resolve_device("cuda:0")


def test_device_key_part():
    assert device_key_part("cpu") == {} and device_key_part(None) == {}
    assert device_key_part("cuda:1") == {"device": "cuda", "dtype": "float32"}
    assert device_key_part("cpu", "float16") == {"device": "cpu", "dtype": "float16"}
    assert device_manifest("cpu") == {"device": "cpu"}


class _Data:
    fingerprint = "f" * 64


def test_cpu_eval_key_unchanged_and_cuda_key_differs():
    """The CPU key is the one written before the device existed (the same spec, recomputed here), so every CPU
    cache entry and golden figure stays; a CUDA evaluation gets a key of its own."""
    from nnconform.data import Preprocess
    from nnconform.evaluate import ENGINE_VERSION, cache_key
    from nnconform.hashing import sha256_bytes
    from nnconform.model_identity import model_content_sha256

    model = torch.nn.Linear(3, 2)
    pre = Preprocess(mean=(0.5,), std=(0.25,))
    old_spec = {"engine": ENGINE_VERSION, "model": model_content_sha256(model), "dataset": _Data.fingerprint,
                "preprocess": pre.to_dict(), "batch_size": 250, "torch": torch.__version__}
    old = sha256_bytes(json.dumps(old_spec, sort_keys=True).encode())
    assert cache_key(model, _Data, pre, 250) == old
    assert cache_key(model, _Data, pre, 250, "cpu") == old
    assert cache_key(model, _Data, pre, 250, "cuda:0") != old
    assert cache_key(model, _Data, pre, 250, "cuda:0") == cache_key(model, _Data, pre, 250, "cuda")


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_one.py").write_text("def test_one(nnc_config):\n    print('DEVICE', nnc_config.device)\n")
    cmd = [sys.executable, "-m", "pytest", str(tmp_path / "test_one.py"), "-p", "no:cacheprovider", "-s", "-q",
           "--nnc-no-report", "--nnc-cache-dir", str(tmp_path / "cache"), *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal needs one without")
def test_plugin_refuses_a_missing_cuda_device_at_start(tmp_path):
    proc = _pytest(tmp_path, "--nnc-device", "cuda:0")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "--nnc-device" in ln]
    assert errors == ["ERROR: --nnc-device 'cuda:0': CUDA is not available on this machine (torch sees no GPU); "
                      "use --nnc-device cpu or auto"], proc.stderr


def test_plugin_device_option(tmp_path):
    bad = _pytest(tmp_path, "--nnc-device", "gpu")
    assert bad.returncode == 4 and "--nnc-device 'gpu': choose one of cpu|cuda|cuda:N|auto" in bad.stderr
    good = _pytest(tmp_path, "--nnc-device", "auto")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"DEVICE {expected}" in good.stdout


def test_split_study_device_path_gives_the_cpu_results():
    """The study's device path (head and tails moved to the device, features and outputs back to the CPU) runs here
    with the CPU named as ``cpu:0``, which takes that path: the same payloads and outputs as the plain CPU path,
    and the model is back on the CPU afterwards."""
    from nnconform.split import SplitGraph, run_study
    from nnconform.split.plan import SplitPoint
    from nnconform.zoo import build_architecture

    torch.manual_seed(0)
    model = build_architecture("lenet5").eval()
    graph = SplitGraph.trace(model, (1, 28, 28))
    cut = graph.single_cuts[len(graph.single_cuts) // 2].name
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn((8, 1, 28, 28), generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    points = [SplitPoint(label="uq8", family="uq", codec="uniform", params=(("bits", 8),))]
    plain = run_study("t", graph, data, coded={cut: points})
    moved = run_study("t", graph, data, coded={cut: points}, device="cpu:0")
    a, b = plain.result(cut, points[0].id), moved.result(cut, points[0].id)
    assert a.ok and b.ok and a.payload_bytes == b.payload_bytes and torch.equal(a.logits, b.logits)
    assert torch.equal(plain.ref_logits, moved.ref_logits)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_cpu_compression_key_unchanged_and_another_device_differs():
    """The compression cache key on the CPU is the one written before the device existed (the same spec,
    recomputed here), so every CPU artifact in the cache and the golden quick tier stay; another device gets its
    own key."""
    from nnconform.compress import CalibrationSet, make_compressor
    from nnconform.compress.runner import (ENGINE_VERSION, STORE_FORMAT, CompressionCache, _source_sha256,
                                           _tool_versions)
    from nnconform.hashing import module_sha256, sha256_bytes

    class _Point:
        config = make_compressor("fp16").config

    model = torch.nn.Linear(3, 2)
    calib = CalibrationSet("synthetic", "train", (0, 1), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "c" * 64)
    compressor = make_compressor("fp16")
    old_spec = {"engine": ENGINE_VERSION, "store": STORE_FORMAT, "config": _Point.config.to_dict(),
                "model": module_sha256(model), "calibration": calib.fingerprint, "torch": torch.__version__,
                "versions": _tool_versions(), "handler_source": _source_sha256(compressor)}
    old = sha256_bytes(json.dumps(old_spec, sort_keys=True).encode())
    cache = CompressionCache(None)
    assert cache.key(_Point, model, calib, compressor) == old
    assert cache.key(_Point, model, calib, compressor, "cpu") == old
    assert cache.key(_Point, model, calib, compressor, "cuda:0") != old


def _lenet_and_calibration():
    from nnconform.compress import CalibrationSet
    from nnconform.zoo import build_architecture

    torch.manual_seed(1)
    model = build_architecture("lenet5").eval()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn((64, 1, 28, 28), generator=g), torch.randint(0, 10, (64,), generator=g)
    return model, CalibrationSet("synthetic", "train", tuple(range(64)), x, y, "f" * 64)


# the LeNet-5 quick-tier points (anchors/compression.toml), with the search and calibration cut to the 64 images here
_AIMET_POINTS = [("aimet-quant", {"param_bw": 8, "output_bw": 8, "calibration_samples": 64}),
                 ("aimet-ssvd", {"target_ratio": 0.6, "ignore": ["features.0"], "eval_samples": 64,
                                 "num_candidates": 3})]


@pytest.mark.parametrize("method,config", _AIMET_POINTS, ids=[m for m, _ in _AIMET_POINTS])
def test_aimet_on_the_context_device(method, config, monkeypatch, tmp_path):
    """With ``device="cpu"`` passed explicitly through the context the AIMET artifact is byte for byte the one a
    context without a device gives (today's path); a device other than ``cpu`` (the CPU named ``cpu:0``, so it runs
    here) reaches the handler's ``Module.to`` calls, gives the same bytes, and the module comes back on the CPU."""
    pytest.importorskip("aimet_torch", reason="AIMET needs aimet-torch==2.42.0")
    import copy

    from nnconform.compress import CompressionContext, make_compressor

    model, calib = _lenet_and_calibration()

    def run(tag: str, **device) -> tuple[str, torch.nn.Module]:
        ctx = CompressionContext("lenet", (1, 28, 28), 10, calib, tmp_path / tag, **device)
        result = make_compressor(method, config).compress(copy.deepcopy(model), ctx)
        return result.artifact.sha256, result.module

    today, _ = run("default")
    assert run("cpu", device="cpu")[0] == today

    seen = []
    original = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        seen.append(str(args[0]) if args else str(kwargs.get("device")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    moved, module = run("moved", device="cpu:0")
    assert "cpu:0" in seen, seen
    assert moved == today
    assert all(p.device == torch.device("cpu") for p in module.parameters())
