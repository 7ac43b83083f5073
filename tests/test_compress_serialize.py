"""Honest serialization: structure changes, sparse coding, NaN templates, ONNX wrapper, AIMET hand-offs."""

from __future__ import annotations

import os
import pickle
from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from nnconform.compress import Artifact, ArtifactError
from nnconform.compress.baselines import decode_float_model, decode_sparse_state, encode_float_model, \
    encode_sparse_state
from nnconform.compress.serialize import (apply_structure, build_from_spec, load_full_state, module_spec,
                                          pack_tensors, poisoned_template, structure_changes, unpack_tensors)
from nnconform.zoo import build_architecture


def _svd_split(model: nn.Module, path: str, rank: int) -> nn.Module:
    """Replace a conv by a k x 1 / 1 x k pair, as AIMET's spatial SVD does."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    conv = getattr(parent, name)
    k = conv.kernel_size[0]
    setattr(parent, name, nn.Sequential(
        nn.Conv2d(conv.in_channels, rank, (k, 1), stride=(conv.stride[0], 1), padding=(conv.padding[0], 0),
                  bias=False),
        nn.Conv2d(rank, conv.out_channels, (1, k), stride=(1, conv.stride[1]), padding=(0, conv.padding[1]),
                  bias=conv.bias is not None)))
    return model


def test_structure_changes_rebuild_an_svd_split_model_exactly():
    torch.manual_seed(0)
    reference = build_architecture("resnet8").eval()
    compressed = _svd_split(_svd_split(build_architecture("resnet8"), "layer2.conv1", 5), "layer3.downsample.0", 3)
    compressed.eval()
    changes = structure_changes(compressed, reference)
    assert [path for path, _ in changes] == ["layer2.conv1", "layer3.downsample.0"]
    artifact = encode_float_model(compressed, reference)
    decoded = decode_float_model(artifact, poisoned_template(reference))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(decoded(x), compressed(x))


def test_unchanged_model_has_no_structure_changes_and_round_trips():
    model = build_architecture("lenet5").eval()
    assert structure_changes(model, build_architecture("lenet5")) == []
    decoded = decode_float_model(encode_float_model(model, model), poisoned_template(model))
    assert all(torch.equal(a, b) for a, b in zip(decoded.state_dict().values(), model.state_dict().values()))


def test_structure_refuses_unknown_layers_and_bad_paths():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ArtifactError, match="only nn.Sequential and"):
        module_spec(Custom(), "features.9")
    with pytest.raises(ArtifactError, match="unknown layer type 'os.system'"):
        build_from_spec({"type": "os.system", "args": {}})
    with pytest.raises(ArtifactError, match="no attribute 'nope'"):
        apply_structure(build_architecture("lenet5"), [["features.nope", {"type": "ReLU", "args": {}}]])


def test_poisoned_template_is_all_nan_and_strict_loading_names_missing_tensors():
    model = build_architecture("resnet8").eval()
    template = poisoned_template(model)
    floats = [t for t in list(template.parameters()) + list(template.buffers()) if t.is_floating_point()]
    assert floats and all(bool(torch.isnan(t).all()) for t in floats)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(ArtifactError, match="missing \\['fc.weight', 'fc.bias'\\]"):
        load_full_state(template, state)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16), half=st.booleans())
def test_sparse_encoding_round_trips_exactly(shape, density, seed, half):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) > density] = 0
    dtype = torch.float16 if half else torch.float32
    w = w.to(dtype).float()
    state = {"w": w, "b": torch.randn(3, generator=g).to(dtype).float()}
    data = encode_sparse_state(state, {"w"}, dtype, level=3)
    assert data == encode_sparse_state(state, {"w"}, dtype, level=3)  # deterministic bytes
    back = decode_sparse_state(data, "x")
    assert torch.equal(back["w"], w) and torch.equal(back["b"], state["b"])


def test_sparse_size_shrinks_with_sparsity():
    torch.manual_seed(0)
    w = torch.randn(200, 200)
    sizes = []
    for keep in (1.0, 0.5, 0.1):
        pruned = w.clone()
        pruned[w.abs() < w.abs().quantile(1 - keep)] = 0
        sizes.append(len(encode_sparse_state({"w": pruned}, {"w"}, torch.float32, 19)))
    assert sizes[0] > sizes[1] > sizes[2]


def test_corrupt_artifacts_are_refused_with_the_file_name():
    with pytest.raises(ArtifactError, match="model.sparse.zst: not a zstandard frame"):
        decode_sparse_state(b"garbage", "model.sparse.zst")
    with pytest.raises(ArtifactError, match="blob: not a valid safetensors file"):
        unpack_tensors(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "blob")
    with pytest.raises(ArtifactError, match="has no file 'model.onnx'"):
        Artifact({"a.bin": b"x"}, "fmt").file("model.onnx")
    with pytest.raises(ArtifactError, match="plain file name"):
        Artifact({"../escape": b"x"}, "fmt")
    with pytest.raises(ArtifactError, match="at least one file"):
        Artifact({}, "fmt")


def test_artifact_size_is_the_sum_of_file_lengths_and_its_hash_covers_names():
    a = Artifact({"x": b"12345", "y": b"678"}, "fmt")
    assert a.nbytes == 8 and a.sizes() == {"x": 5, "y": 3}
    assert a.sha256 != Artifact({"x": b"1234", "y": b"5678"}, "fmt").sha256


def test_pack_tensors_header_round_trip():
    data = pack_tensors({"t": torch.arange(4.0)}, {"structure": [["a", {"type": "ReLU", "args": {}}]], "n": 3})
    tensors, header = unpack_tensors(data)
    assert torch.equal(tensors["t"], torch.arange(4.0)) and header["n"] == 3


def test_onnx_module_runs_onnx_bytes_and_fingerprints_them(tmp_path):
    from nnconform.compress.serialize import OnnxModule
    from nnconform.hashing import module_sha256

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 1, 2, 2),), str(path), input_names=["input"], output_names=["y"],
                      dynamic_axes={"input": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    data = path.read_bytes()
    wrapped = OnnxModule(data)
    x = torch.randn(5, 1, 2, 2)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), model(x), atol=1e-6)
    assert module_sha256(wrapped) == module_sha256(OnnxModule(data))
    assert module_sha256(wrapped) != module_sha256(OnnxModule(data + b"\x00"))
    with pytest.raises(ValueError, match="optimization 'fast'"):
        OnnxModule(data, optimization="fast")


def test_aimet_eval_scores_reader_refuses_code_and_workdir_restores_cwd(tmp_path):
    from nnconform.compress.aimet_compression import _read_aimet_eval_scores, aimet_workdir

    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"conv1": {Decimal("0.1"): 0.5, Decimal("0.2"): 0.75}}))
    assert _read_aimet_eval_scores(good) == {"conv1": {Decimal("0.1"): 0.5, Decimal("0.2"): 0.75}}
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"conv1": {Decimal("0.1"): np.float64(0.5)}, "x": os.getcwd}))
    assert _read_aimet_eval_scores(evil) is None  # numpy/os globals are refused, nothing runs
    before = os.getcwd()
    with pytest.raises(RuntimeError):
        with aimet_workdir(tmp_path / "w"):
            assert os.getcwd() == str(tmp_path / "w")
            os.makedirs("data")
            raise RuntimeError("boom")
    assert os.getcwd() == before and (tmp_path / "w" / "data").is_dir()
