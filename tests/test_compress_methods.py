"""The built-in methods without AIMET: artifacts decode to the method's own model, bytes are deterministic,
sizes are artifact lengths. (AIMET's methods run in the quick tier of conformance/test_compression.py.)"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch

from nnconform.compress import CalibrationSet, CompressionContext, make_compressor
from nnconform.compress.serialize import poisoned_template
from nnconform.zoo import build_architecture


@pytest.fixture(scope="module")
def ctx():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    calib = CalibrationSet("synthetic", "train", tuple(range(64)), x, torch.randint(0, 10, (64,)), "f" * 64)
    with tempfile.TemporaryDirectory() as tmp:
        yield CompressionContext("test", (1, 28, 28), 10, calib, Path(tmp))


@pytest.fixture(scope="module", params=["lenet5", "resnet8"])
def model(request):
    torch.manual_seed(1)
    m = build_architecture(request.param).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


CASES = [("fp16", {}), ("fp16", {"compute_dtype": "float16"}), ("torch-int8", {"calibration_samples": 64}),
         ("magnitude-prune", {"sparsity": 0.6}), ("magnitude-prune", {"sparsity": 0.3, "value_dtype": "float16"}),
         ("nnc", {"qp": -32})]


@pytest.mark.parametrize("method,fields", CASES, ids=[f"{m}-{'-'.join(map(str, f.values())) or 'default'}"
                                                      for m, f in CASES])
def test_artifact_decodes_to_the_methods_own_model(method, fields, model, ctx):
    if method == "nnc":
        pytest.importorskip("nncodec", reason="MPEG NNC needs nncodec (pip install --no-deps nncodec==2.1.3)")
    method_ = make_compressor(method, fields)
    result = method_.compress(copy.deepcopy(model), ctx)
    assert result.reported_bytes == result.artifact.nbytes
    again = make_compressor(method, fields).compress(copy.deepcopy(model), ctx)
    assert again.artifact.sha256 == result.artifact.sha256, "compressing twice must give the same bytes"
    decoded = method_.decode(result.artifact, poisoned_template(model), ctx)
    x = ctx.calibration.images[:16]
    with torch.no_grad():
        ours, theirs, ref = decoded(x), result.module(x), model(x)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()) + 1e-6)
    assert (ours.argmax(1) == ref.argmax(1)).float().mean() >= 0.5  # a compressed model, not a random one


def test_sizes_follow_the_operating_point(model, ctx):
    sizes = [make_compressor("magnitude-prune", {"sparsity": s}).compress(copy.deepcopy(model), ctx).artifact.nbytes
             for s in (0.2, 0.5, 0.8)]
    assert sizes[0] > sizes[1] > sizes[2]
    fp16 = make_compressor("fp16").compress(copy.deepcopy(model), ctx).artifact.nbytes
    from nnconform.compress.serialize import fp32_state_bytes

    assert 0.45 < fp16 / fp32_state_bytes(model) < 0.55


def test_magnitude_pruning_reaches_its_sparsity_and_reports_nonzero_params(model, ctx):
    result = make_compressor("magnitude-prune", {"sparsity": 0.5}).compress(copy.deepcopy(model), ctx)
    assert result.metadata["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result.params == sum(int((p != 0).sum()) for p in result.module.parameters())


def test_nnc_coarser_qp_gives_fewer_bytes(model, ctx):
    pytest.importorskip("nncodec", reason="MPEG NNC needs nncodec (pip install --no-deps nncodec==2.1.3)")
    sizes = [make_compressor("nnc", {"qp": qp}).compress(copy.deepcopy(model), ctx).artifact.nbytes
             for qp in (-44, -32, -20)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_nnc_refuses_a_damaged_bitstream(model, ctx):
    pytest.importorskip("nncodec", reason="MPEG NNC needs nncodec (pip install --no-deps nncodec==2.1.3)")
    from nnconform.compress import Artifact, ArtifactError

    nnc = make_compressor("nnc", {"qp": -32})
    good = nnc.compress(copy.deepcopy(model), ctx).artifact.file("model.nnc")
    with pytest.raises(ArtifactError, match="model.nnc"):
        nnc.decode(Artifact({"model.nnc": good[: len(good) // 3]}, "mpeg-nnc"), poisoned_template(model), ctx)
