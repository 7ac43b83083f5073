"""The anchor gates fail on bad anchors: run conformance/test_anchors.py against planted manifests."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from nnconform.hashing import sha256_file
from nnconform.paths import REPO_ROOT

NOISY = '''
import torch
from nnconform.zoo.models import LeNet5

class NoisyLeNet(LeNet5):
    """Adds fresh noise on every call: evaluation is not deterministic."""
    def forward(self, x):
        return super().forward(x) + torch.rand(x.shape[0], 10)
'''


def _anchor(name, arch, weights, digest, top1, params):
    return textwrap.dedent(f"""
        [anchors.{name}]
        family = "zoo"
        architecture = "{arch}"
        weights = "{weights}"
        sha256 = "{digest}"
        dataset = "fashion-mnist"
        input_shape = [1, 28, 28]
        num_classes = 10
        metrics = {{ top1 = {top1} }}
        tolerance = 0.003
        num_params = {params}
        macs = 416520
        license = "test"
        provenance = "planted bad anchor"
        preprocess = {{ mean = [0.286], std = [0.353], channels = 1 }}
    """)


def test_bad_anchors_fail_their_gates(pytester, monkeypatch, fmnist_test):
    pytester.mkdir("conformance")
    for f in ("conftest.py", "test_anchors.py"):
        shutil.copy(REPO_ROOT / "conformance" / f, pytester.path / "conformance" / f)
    pytester.path.joinpath("noisy.py").write_text(NOISY)
    anchors = pytester.mkdir("anchors")
    (anchors / "zoo").mkdir()
    shutil.copy(REPO_ROOT / "anchors" / "tiers.toml", anchors / "tiers.toml")
    from nnconform.zoo.models import LeNet5

    torch.manual_seed(0)
    weights = anchors / "zoo" / "random.safetensors"
    save_file(LeNet5().state_dict(), str(weights))
    digest = sha256_file(weights)
    (anchors / "bad.toml").write_text(
        # random weights documented as 90% accurate, with a wrong parameter count
        _anchor("bad-accuracy", "nnconform.zoo.models:LeNet5", "zoo/random.safetensors", digest, 0.9, 61706)
        + _anchor("bad-params", "nnconform.zoo.models:LeNet5", "zoo/random.safetensors", digest, 0.1, 12345)
        + _anchor("bad-noisy", "noisy:NoisyLeNet", "zoo/random.safetensors", digest, 0.1, 61706)
        + _anchor("bad-hash", "nnconform.zoo.models:LeNet5", "zoo/random.safetensors", "f" * 64, 0.1, 61706))
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(anchors))
    result = pytester.runpytest_subprocess(
        "conformance", "--nnc-anchors", "all", "--nnc-report-dir", str(pytester.path / "reports"),
        "--nnc-run-id", "bad", "--benchmark-disable", "-p", "no:cacheprovider", "-k", "not latency")
    assert result.ret == 1
    records = json.loads((pytester.path / "reports" / "bad" / "results.json").read_text())["records"]
    failed = {(r["check_id"], r["subject"]) for r in records if r["status"] == "fail"}
    assert ("anchor.accuracy", "bad-accuracy") in failed
    assert ("anchor.params_macs", "bad-params") in failed
    assert ("anchor.deterministic", "bad-noisy") in failed
    assert ("anchor.weights_sha256", "bad-hash") in failed
    hash_rec = next(r for r in records if r["subject"] == "bad-hash" and r["check_id"] == "anchor.weights_sha256")
    assert "random.safetensors has sha256" in hash_rec["message"]
    # the measured value is the file's own digest, not the manifest's pin
    assert hash_rec["measured"] == digest and hash_rec["expected"] == "f" * 64
