"""Planted bad compressors: every gate of the compression criterion can fail, each failure stays in its
own case, and a good method in the same run still passes."""

from __future__ import annotations

import copy
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnconform import kit
from nnconform.compress import Artifact, CompressedModel, Compressor, CompressorConfig, compressor_class
from nnconform.compress.baselines import decode_float_model, encode_float_model
from nnconform.compress.calibration import build_calibration
from nnconform.compress.plan import CompressionPoint, load_plan
from nnconform.compress.runner import AnchorUnderTest, run_case
from nnconform.records import Status

EVAL_SAMPLES = 2000  # enough for the 99% gate to tell a broken model from a good one, fast on 2 cores


MODES = ("ok", "raise", "exit", "nan", "shape", "garbage", "lie_size", "mismatch", "leak", "noisy", "flaky_decode",
         "not_a_result")


class _Reshape(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[:, :5]


@kit.register_method("compressor", "planted-test-method")
class PlantedCompressor(Compressor):
    """A method with one planted defect per mode; the ``ok`` mode is an honest float32 codec."""

    description = "self-test method with planted defects"

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """How the planted method misbehaves (``ok`` behaves)."""

        mode: str = "ok"
        noise: float = 0.0

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_choice("mode", MODES)

    def compress(self, model, ctx):
        config = self.config
        mode = config.mode
        if mode == "raise":
            raise RuntimeError("planted failure inside compress")
        if mode == "exit":
            raise SystemExit("planted SystemExit (nncodec style)")
        if mode == "not_a_result":
            return {"bytes": b"123"}
        module = copy.deepcopy(model).eval()
        if mode in ("noisy", "mismatch"):
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * p.abs().mean() * max(config.noise, 1.0))
        if mode == "nan":
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))
        encoded = model if mode == "mismatch" else module  # mismatch: artifact holds other weights
        artifact = encode_float_model(encoded, copy.deepcopy(model))
        if mode == "garbage":
            artifact = Artifact({"model.safetensors": b"\x00not a safetensors file"}, "garbage")
        if mode == "leak":
            # drops the classifier's tensors from the artifact: a decoder can only get them from the anchor
            from nnconform.compress.serialize import pack_tensors, unpack_tensors

            tensors, header = unpack_tensors(artifact.file("model.safetensors"))
            tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.4")}
            artifact = Artifact({"model.safetensors": pack_tensors(tensors, header)}, "leaky")
        reported = artifact.nbytes // 2 if mode == "lie_size" else artifact.nbytes
        return CompressedModel(module, artifact, reported)

    def decode(self, artifact, template, ctx):
        config = self.config
        if config.mode == "leak":
            from nnconform.compress.serialize import unpack_tensors

            tensors, _ = unpack_tensors(artifact.file("model.safetensors"))
            template.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
            return template
        model = decode_float_model(artifact, template)
        if config.mode == "shape":
            return _Reshape(model)
        if config.mode == "flaky_decode":
            with torch.no_grad():
                next(model.parameters()).add_(torch.randn(()) * 1e-3)
        return model


@pytest.fixture(scope="module")
def lenet():
    """The zoo's LeNet-5 anchor with its reference logits on the first test images."""
    from nnconform.anchors import WeightsUnavailable, get_anchor
    from nnconform.data import DatasetUnavailable, load_fashion_mnist
    from nnconform.evaluate import Evaluator

    try:
        anchor = get_anchor("fmnist-lenet5")
        model = anchor.build()
        ds = load_fashion_mnist("test").subset(range(EVAL_SAMPLES))
    except (WeightsUnavailable, DatasetUnavailable, KeyError) as exc:
        pytest.skip(str(exc))
    ev = Evaluator(None)
    ref = ev.evaluate(model, ds, anchor.preprocess)
    calib = build_calibration(load_plan().calibration["fashion-mnist"], anchor.preprocess, limit=128)
    aut = AnchorUnderTest(anchor.name, model, tuple(anchor.input_shape), anchor.num_classes, ds.classes,
                          ref.logits, ref.labels)
    return aut, calib, (lambda m: ev.evaluate(m, ds, anchor.preprocess).logits)


def _run(lenet, mode: str, claimed: str | None = None, noise: float = 0.0, tmp_path: Path | None = None):
    aut, calib, evaluate = lenet
    point = CompressionPoint("fmnist-lenet5", "planted-test-method", PlantedCompressor.Config(mode=mode, noise=noise),
                             label=mode, run_tier="quick", claimed_tier=claimed)
    return run_case(point, aut, calib, evaluate=evaluate, cache_dir=tmp_path)


def _status(out, check_id):
    return next(r for r in out.records if r.check_id == check_id)


def test_honest_method_passes_every_gate(lenet):
    out = _run(lenet, "ok", claimed="transparent")
    assert out.failure is None, out.failure.message
    assert out.accuracy.status == Status.PASS, out.accuracy.message
    assert out.metrics.compression_ratio == pytest.approx(out.metrics.bytes_ref / out.metrics.bytes)
    assert out.metrics.agreement == 1.0 and out.metrics.delta == 0.0


@pytest.mark.parametrize("mode,check_id,status,words", [
    ("raise", "compression.compress", Status.ERROR, "planted failure inside compress"),
    ("exit", "compression.compress", Status.ERROR, "SystemExit"),
    ("not_a_result", "compression.compress", Status.ERROR, "expected a CompressedModel"),
    ("garbage", "compression.decode", Status.ERROR, "not a valid safetensors file"),
    ("lie_size", "compression.size_reported", Status.FAIL, "sizes must be artifact lengths"),
    ("nan", "compression.output", Status.FAIL, "non-finite"),
    ("shape", "compression.output", Status.FAIL, "output shape"),
    ("leak", "compression.output", Status.FAIL, "non-finite"),
    ("mismatch", "compression.artifact_consistency", Status.FAIL, "does not encode the model"),
    ("flaky_decode", "compression.artifact_consistency", Status.FAIL, "not deterministic"),
])
def test_planted_defect_fails_its_gate(lenet, mode, check_id, status, words):
    out = _run(lenet, mode)
    failure = out.failure
    assert failure is not None, f"mode {mode}: no check failed"
    assert failure.check_id == check_id and failure.status == status, (failure.check_id, failure.status,
                                                                        failure.message)
    assert words in failure.message or words in (failure.traceback or ""), failure.message
    assert out.accuracy is None and out.decoded is None


def test_accuracy_gate_fails_below_the_claimed_tier(lenet):
    out = _run(lenet, "noisy", claimed="99%", noise=1.0)
    assert out.failure is None, out.failure.message  # the artifact itself is honest
    assert out.accuracy.status == Status.FAIL
    assert "claimed tier '99%' NOT met" in out.accuracy.message
    assert out.metrics.best_tier is None and out.metrics.delta < -0.01


def test_no_claim_reports_the_tier_met_without_gating(lenet):
    out = _run(lenet, "noisy", claimed=None, noise=1.0)
    assert out.accuracy.status == Status.INFO and "no tier claimed" in out.accuracy.message


def test_size_mismatch_is_caught_even_when_everything_else_is_fine(lenet):
    out = _run(lenet, "lie_size")
    assert [r.check_id for r in out.records if not r.passed] == ["compression.size_reported"]
    assert out.accuracy is None  # a case whose size is a lie is not scored


def test_cache_reuses_the_artifact_and_keeps_checking_it(lenet, tmp_path):
    first = _run(lenet, "ok", tmp_path=tmp_path)
    second = _run(lenet, "ok", tmp_path=tmp_path)
    assert first.failure is None and second.failure is None
    assert second.details.get("from_cache") is True and not first.details.get("from_cache")
    assert second.artifact.sha256 == first.artifact.sha256
    # a tampered cache entry is not trusted: the case recomputes
    entry = next((tmp_path / "compress").iterdir())
    (entry / "model.safetensors").write_bytes(b"tampered")
    with pytest.warns(UserWarning, match=r"compression cache entry .* is corrupt \(file 'model.safetensors'"):
        third = _run(lenet, "ok", tmp_path=tmp_path)
    assert third.failure is None and not third.details.get("from_cache")


def test_a_changed_method_source_misses_the_cache(lenet, tmp_path, monkeypatch):
    """The cache key holds the sha256 of the method class's source file, for built-in methods too: an edited
    method is compressed again instead of reusing a stale artifact (issue 10)."""
    from nnconform.compress import runner

    first = _run(lenet, "ok", tmp_path=tmp_path)
    assert _run(lenet, "ok", tmp_path=tmp_path).details.get("from_cache") is True
    real = runner.class_source_sha256
    monkeypatch.setattr(runner, "class_source_sha256", lambda obj: "edited-" + str(real(obj)))
    edited = _run(lenet, "ok", tmp_path=tmp_path)
    assert edited.failure is None and not edited.details.get("from_cache")
    assert edited.details["cache_key"] != first.details["cache_key"]


def test_every_method_key_carries_its_source_hash(lenet, monkeypatch):
    """Built-in and proposal methods alike: the key changes with the method's source file."""
    from nnconform.compress import make_compressor, runner
    from nnconform.hashing import class_source_sha256

    aut, calib, _ = lenet
    cache = runner.CompressionCache(None)
    point = CompressionPoint("fmnist-lenet5", "fp16", compressor_class("fp16").Config(), run_tier="quick")
    fp16 = make_compressor("fp16")
    assert class_source_sha256(fp16)  # the built-in's file is hashed (it was left out before)
    key = cache.key(point, aut.model, calib, fp16)
    monkeypatch.setattr(runner, "class_source_sha256", lambda obj: "0" * 64)
    assert cache.key(point, aut.model, calib, fp16) != key


def test_a_claim_does_not_change_the_cache_key(lenet, tmp_path):
    first = _run(lenet, "ok", tmp_path=tmp_path)
    claimed = _run(lenet, "ok", claimed="99%", tmp_path=tmp_path)
    assert claimed.details.get("from_cache") is True and claimed.details["cache_key"] == first.details["cache_key"]


def test_registry_refuses_a_second_method_with_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        @kit.register_method("compressor", "planted-test-method")
        class Other(PlantedCompressor):
            @dataclass(frozen=True)
            class Config(CompressorConfig):
                pass
    assert compressor_class("planted-test-method") is PlantedCompressor


CONFTEST = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    import test_compress_bad  # registers the planted method
''')

SUITE = textwrap.dedent('''
    version = 2
    [calibration.fashion-mnist]
    split = "train"
    rule = "first 64 of the repository's list"
    indices = {indices}

    [[suite.fmnist-lenet5]]
    method = "planted-test-method"
    points = [
      {{ label = "ok", mode = "ok", claimed_tier = "transparent", run_tier = "quick" }},
      {{ label = "raise", mode = "raise", run_tier = "quick" }},
      {{ label = "nan", mode = "nan", run_tier = "quick" }},
      {{ label = "lie", mode = "lie_size", run_tier = "quick" }},
      {{ label = "noisy", mode = "noisy", noise = 1.0, claimed_tier = "99%", run_tier = "quick" }},
    ]
''')


def test_conformance_file_isolates_each_failing_case(pytester, tmp_path, monkeypatch):
    """End to end: through the plugin, each bad case fails with its own message; the good one passes."""
    repo = Path(__file__).resolve().parents[1]
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    for name in ("tiers.toml", "zoo.toml"):
        (anchors / name).write_text((repo / "anchors" / name).read_text())
    (anchors / "zoo").symlink_to(repo / "anchors" / "zoo")
    indices = list(load_plan().calibration["fashion-mnist"].indices[:64])
    (anchors / "compression.toml").write_text(SUITE.format(indices=indices))
    pytester.makeconftest((repo / "conformance" / "conftest.py").read_text()
                          + CONFTEST.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_compression=(repo / "conformance" / "test_compression.py").read_text())
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(anchors))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--nnc-tier", "quick", "--nnc-anchors", "fmnist-lenet5", "--nnc-no-report",
        "--nnc-cache-dir", str(tmp_path / "cache"), "-k", "artifact or accuracy", "-q", "-rfs")
    result.assert_outcomes(passed=3, failed=7)
    text = result.stdout.str()
    failed = [line for line in result.stdout.lines if line.startswith("FAILED")]
    for case in ("test_compressed_artifact[fmnist-lenet5-planted-test-method-raise]",
                 "test_compressed_artifact[fmnist-lenet5-planted-test-method-nan]",
                 "test_compressed_artifact[fmnist-lenet5-planted-test-method-lie]",
                 "test_compressed_accuracy[fmnist-lenet5-planted-test-method-lie]",
                 "test_compressed_accuracy[fmnist-lenet5-planted-test-method-noisy]",
                 "test_compressed_accuracy[fmnist-lenet5-planted-test-method-raise]",
                 "test_compressed_accuracy[fmnist-lenet5-planted-test-method-nan]"):
        assert any(case in line for line in failed), (case, failed)
    assert "planted failure inside compress" in text
    assert "sizes must be artifact lengths" in text
    assert "claimed tier '99%' NOT met" in text
