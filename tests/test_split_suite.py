"""End to end through pytest: a proposal's broken feature codec fails only its own cases; split selection runs on
its own (no timings from other cases) serially and under xdist; a corrupt weights file fails the split cases with an
``anchor.weights_sha256`` FAIL record instead of erroring without one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# imported before pytester snapshots sys.modules: a numpy extension unloaded after one case cannot load again
import nnconform.anchors  # noqa: F401
import nnconform.data  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SPLIT = str(REPO / "conformance" / "test_split.py")

PLUGIN = '''
from dataclasses import dataclass

from nnconform import kit
from nnconform.split import FeatureCodec, RawCodec


@kit.register_method("feature-codec", "broken-shape")
class BrokenShape(FeatureCodec):
    """Decodes to a flattened tensor."""

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """No parameters."""

    def encode(self, tensor):
        return RawCodec().encode(tensor)

    def decode(self, payload):
        return RawCodec().decode(payload).flatten()
'''


@pytest.fixture
def lenet_weights():
    from nnconform.anchors import WeightsUnavailable, get_anchor

    try:
        get_anchor("fmnist-lenet5").state_dict()
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))


def _run(pytester: pytest.Pytester, *args: str):
    return pytester.runpytest_subprocess(SPLIT, "--nnc-tier", "quick", "--nnc-anchors", "fmnist-lenet5",
                                         "-p", "no:cacheprovider", "--rootdir", str(REPO), "-q", *args)


def test_broken_codec_fails_only_its_own_cases(pytester: pytest.Pytester, fmnist_test, lenet_weights, monkeypatch):
    pytester.makepyfile(broken_codec_plugin=PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), os.environ.get("PYTHONPATH", "")]))
    result = _run(pytester, "-p", "broken_codec_plugin", "--nnc-no-report",
                  "-k", "codec_accuracy and (raw or broken or uq8)")
    result.stdout.fnmatch_lines([
        "*_ test_split_codec_accuracy?fmnist-lenet5-features-broken-shape? _*",
        "CodecContractError: broken-shape at features: decode returned shape [[]400[]], expected [[]16, 5, 5[]]",
    ])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    assert outcomes.get("passed") == 3, result.stdout.str()  # raw, uq8-per-tensor, uq8-per-channel


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_selection_runs_alone_and_under_xdist(pytester: pytest.Pytester, fmnist_test, lenet_weights, workers, tmp_path):
    """Before, selection read the timings the latency cases wrote: alone (``-k selection``) or under xdist it
    was always skipped. Now it measures what it needs."""
    result = _run(pytester, "-k", "selection", "--nnc-report-dir", str(tmp_path), "--nnc-run-id", "sel",
                  "--nnc-cache-dir", str(tmp_path / "cache"), *workers)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2 and not outcomes.get("skipped"), result.stdout.str()
    records = json.loads((tmp_path / "sel" / "results.json").read_text())["records"]
    assert sorted(r["subject"] for r in records if r["check_id"] == "split.selection") == [
        "fmnist-lenet5/handset-5g", "fmnist-lenet5/iot-lte"]


def test_corrupt_weights_fail_with_a_weights_record(pytester: pytest.Pytester, fmnist_test, lenet_weights, tmp_path,
                                                     monkeypatch):
    """A weights file that fails its sha256 fails the split cases with an ``anchor.weights_sha256`` FAIL record
    (before: the intermediate-data case errored without a record, the structural cases used random weights)."""
    from nnconform.paths import anchors_dir

    anchors = tmp_path / "anchors"
    shutil.copytree(anchors_dir(), anchors)
    weights = anchors / "zoo" / "fmnist-lenet5" / "epoch8.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(anchors))
    result = _run(pytester, "-k", "intermediate_data or catalogue", "--nnc-report-dir", str(tmp_path / "reports"),
                  "--nnc-run-id", "bad", "--nnc-cache-dir", str(tmp_path / "cache"))
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 3 and not outcomes.get("errors"), result.stdout.str()
    records = json.loads((tmp_path / "reports" / "bad" / "results.json").read_text())["records"]
    bad = [r for r in records if r["check_id"] == "anchor.weights_sha256"]
    assert len(bad) == 3 and all(r["status"] == "fail" and "sha256" in r["message"] for r in bad), bad
    assert {r["nodeid"].split("::")[-1].split("[")[0] for r in bad} == {
        "test_split_catalogue", "test_split_catalogue_current", "test_split_intermediate_data"}
