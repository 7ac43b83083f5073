"""End to end: a proposal's broken feature codec, registered like an entry point, fails its own
conformance cases with a readable message while the reference codecs' cases pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
from nnconform.split import FEATURE_CODECS, RawCodec


class BrokenShape:
    """Decodes to a flattened tensor."""

    def encode(self, tensor):
        return RawCodec().encode(tensor)

    def decode(self, payload):
        return RawCodec().decode(payload).flatten()


FEATURE_CODECS.register("broken-shape", BrokenShape)
'''


def test_broken_codec_fails_only_its_own_cases(pytester: pytest.Pytester, fmnist_test, monkeypatch):
    from nnconform.anchors import WeightsUnavailable, get_anchor

    try:
        get_anchor("fmnist-lenet5").state_dict()
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
    pytester.makepyfile(broken_codec_plugin=PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(
        str(REPO / "conformance" / "test_split.py"), "-p", "broken_codec_plugin", "--nnc-tier", "quick",
        "--nnc-anchors", "fmnist-lenet5", "--nnc-no-report", "-p", "no:cacheprovider", "--rootdir", str(REPO),
        "-k", "codec_accuracy and (raw or broken or uq8)", "-q",
    )
    result.stdout.fnmatch_lines([
        "*_ test_split_codec_accuracy?fmnist-lenet5-features-broken-shape? _*",
        "CodecContractError: broken-shape at features: decode returned shape [[]400[]], expected [[]16, 5, 5[]]",
    ])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    assert outcomes.get("passed") == 3, result.stdout.str()  # raw, uq8-per-tensor, uq8-per-channel
