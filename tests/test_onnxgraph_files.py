"""ONNX anchor files: pinned sha256, truncation, external data confined to the folder and listed, the
manifest (anchors/onnx.toml) and its skip messages, and evaluation in onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnconform.hashing import sha256_file
from nnconform.onnxgraph.files import ExternalData, OnnxFileError, OnnxUnavailable, load_onnx
from nnconform.onnxgraph.manifest import (OnnxManifestError, all_onnx_anchors, load_onnx_manifest, onnx_dir,
                                          parse_onnx_anchor)


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], initializer=[w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    return path


def test_a_pinned_file_loads_and_runs(onnx_file):
    loaded = load_onnx(onnx_file, sha256_file(onnx_file))
    assert loaded.size_bytes == onnx_file.stat().st_size and loaded.input_names == ["x"]
    assert loaded.counts() == (64 * 64, 64 * 64)  # params and MACs read from the graph


def test_onnxruntime_runs_give_the_same_bytes_twice(onnx_file):
    from nnconform.onnxgraph.files import make_session, run_model

    model = load_onnx(onnx_file).model
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    first, second = (run_model(make_session(model, threads=1), x)["y"] for _ in range(2))
    assert first.tobytes() == second.tobytes()
    with pytest.raises(ValueError, match=r"inputs \['x'\] of the graph were not given"):
        run_model(make_session(model), {"z": x})


def test_a_wrong_sha256_fails_naming_the_file(onnx_file):
    with pytest.raises(OnnxFileError, match=r"m\.onnx: sha256 is [0-9a-f]{64} .* but 0{64} is pinned"):
        load_onnx(onnx_file, "0" * 64)


def test_a_truncated_file_fails_clearly(onnx_file):
    pinned = sha256_file(onnx_file)
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxFileError, match="truncated, corrupt or not the published one"):
        load_onnx(onnx_file, pinned)
    with pytest.raises(OnnxFileError, match=r"m\.onnx: not a readable ONNX model \(truncated\?\)"):
        load_onnx(onnx_file)  # unpinned (the table CLI on any file): the parser refuses it


def test_a_missing_file_is_unavailable_naming_file_and_folder(tmp_path):
    with pytest.raises(OnnxUnavailable, match=f"ONNX file gone.onnx is not in {tmp_path}"):
        load_onnx(tmp_path / "gone.onnx")


def _external(folder: Path, location: str) -> Path:
    """A model whose weight lives in external data at ``location`` (relative to ``folder``)."""
    model = _model()
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    path = folder / "m.onnx"
    onnx.save(model, str(path))  # writes folder/w.bin
    if location != "w.bin":
        for tensor in model.graph.initializer:
            for kv in tensor.external_data:
                if kv.key == "location":
                    kv.value = location
        onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def test_external_data_inside_the_folder_is_counted_in_the_size(tmp_path):
    path = _external(tmp_path, "w.bin")
    data = tmp_path / "w.bin"
    loaded = load_onnx(path, sha256_file(path), [ExternalData("w.bin", sha256_file(data))])
    assert loaded.size_bytes == path.stat().st_size + data.stat().st_size
    assert numpy_helper.to_array(loaded.model.graph.initializer[0]).shape == (64, 64)


def test_external_data_not_listed_or_wrongly_pinned_fails(tmp_path):
    path = _external(tmp_path, "w.bin")
    with pytest.raises(OnnxFileError, match=r"tensor 'w' keeps its data in 'w.bin', which is not listed"):
        load_onnx(path, sha256_file(path))
    with pytest.raises(OnnxFileError, match=r"w\.bin: external data of m\.onnx has sha256 .* but 1{64} is pinned"):
        load_onnx(path, sha256_file(path), [ExternalData("w.bin", "1" * 64)])


def test_external_data_outside_its_folder_fails(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    _external(tmp_path, "w.bin")  # tmp_path/w.bin: outside the model's folder
    path = _external(inner, "../w.bin")
    with pytest.raises(OnnxFileError, match=r"m\.onnx: external data refused: .*'\.\./w\.bin' climbs out"):
        load_onnx(path, sha256_file(path), [ExternalData("../w.bin", sha256_file(tmp_path / "w.bin"))])
    (inner / "link.bin").symlink_to(tmp_path / "w.bin")
    path = _external(inner, "link.bin")
    with pytest.raises(OnnxFileError, match="external data refused: .*symbolic link"):
        load_onnx(path, sha256_file(path), [ExternalData("link.bin", sha256_file(tmp_path / "w.bin"))])


# ---- the manifest ----------------------------------------------------------------------------------------


def test_the_manifest_pins_every_onnx_anchor_and_none_runs_by_default():
    anchors = all_onnx_anchors()
    assert {"onnx-vgg16", "onnx-resnet50-v1"} <= set(anchors)
    vgg = anchors["onnx-vgg16"]
    assert vgg.file == "vgg16-7.onnx" and vgg.size_bytes == 553437328
    assert vgg.sha256 == "f20805a3ecccaa88647bbab4ad011ff2412a9838485ea844de0fcbce349820b9"
    assert not any(a.default for a in anchors.values())


def test_an_absent_anchor_file_says_which_file_goes_where(tmp_path, monkeypatch):
    vgg = all_onnx_anchors()["onnx-vgg16"]
    monkeypatch.setenv("NNCONFORM_ONNX_DIR", str(tmp_path / "env"))
    assert onnx_dir() == tmp_path / "env" and onnx_dir(tmp_path) == tmp_path / "onnx"  # the data dir wins
    with pytest.raises(OnnxUnavailable) as info:
        vgg.load(tmp_path)
    msg = str(info.value)
    assert f"vgg16-7.onnx (553,437,328 bytes, sha256 {vgg.sha256}) is not in {tmp_path / 'onnx'}" in msg
    assert vgg.source in msg and "NNCONFORM_ONNX_DIR" in msg


def test_a_truncated_anchor_file_fails_on_its_size(tmp_path):
    resnet = all_onnx_anchors()["onnx-resnet50-v1"]
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / resnet.file).write_bytes(b"\x08\x07" * 1000)
    with pytest.raises(OnnxFileError,
                       match=r"resnet50-v1-7\.onnx: 2,000 bytes, but .* is 102,583,340 bytes \(truncated\)"):
        resnet.load(tmp_path)


def test_a_manifest_copy_of_the_files_own_digest_loads(tmp_path, onnx_file):
    raw = {"file": "m.onnx", "sha256": sha256_file(onnx_file), "size_bytes": onnx_file.stat().st_size,
           "source": "https://example.org/m.onnx", "task": "classification", "dataset": "imagenet-1k",
           "input_shape": [64], "sizes": [64], "license": "test", "provenance": "test"}
    anchor = parse_onnx_anchor("toy", raw, "onnx.toml")
    (tmp_path / "onnx").mkdir()
    shutil.copy(onnx_file, tmp_path / "onnx" / "m.onnx")
    assert anchor.load(tmp_path).sha256 == raw["sha256"]


@pytest.mark.parametrize("field, value, message", [
    ("sha256", "abc", r"onnx\.toml: onnx_anchors\.toy\.sha256: 'abc' is not a full 64-hex-digit sha256"),
    ("file", "../m.onnx", r"onnx_anchors\.toy\.file: '\.\./m\.onnx' must be a bare file name"),
    ("task", "segmentation", r"onnx_anchors\.toy\.task"),
    ("source", "http://example.org/m.onnx", r"onnx_anchors\.toy\.source: .* is not an https URL"),
    ("sizez", [224], r"sizez"),
])
def test_a_bad_manifest_field_is_named(field, value, message):
    raw = {"file": "m.onnx", "sha256": "a" * 64, "size_bytes": 10, "source": "https://example.org/m.onnx",
           "task": "classification", "dataset": "imagenet-1k", "input_shape": [3, 8, 8], "sizes": [8],
           "license": "test", "provenance": "test", field: value}
    with pytest.raises(OnnxManifestError, match=message):
        parse_onnx_anchor("toy", raw, "onnx.toml")


def test_a_manifest_with_torch_anchor_tables_is_refused(tmp_path):
    (tmp_path / "onnx.toml").write_text('[anchors.x]\nfamily = "zoo"\n')
    with pytest.raises(OnnxManifestError, match=r"unknown top-level table\(s\) \['anchors'\]"):
        load_onnx_manifest(tmp_path / "onnx.toml")


def test_onnxruntime_evaluation_agrees_with_torch(tmp_path, fmnist_test):
    import torch

    from nnconform.anchors import get_anchor
    from nnconform.onnxgraph.crosscheck import export_onnx
    from nnconform.onnxgraph.files import evaluate_top1

    anchor = get_anchor("fmnist-lenet5")
    model = anchor.build()
    path = tmp_path / "lenet.onnx"
    onnx.save(export_onnx(model, anchor.input_shape), str(path))
    subset = fmnist_test.subset(range(512))
    logits, top1 = evaluate_top1(load_onnx(path), subset, anchor.preprocess, batch_size=128)
    ref = []
    with torch.inference_mode():
        for x, _ in subset.batches(anchor.preprocess, 128):
            ref.append(model(x).numpy())
    ref = np.concatenate(ref)
    assert np.max(np.abs(logits - ref)) < 1e-4
    assert top1 == float(np.mean(ref.argmax(1) == subset.labels.numpy()))
    assert top1 > 0.8
