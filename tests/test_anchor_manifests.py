"""Schema test: walk every manifest entry, recompute what can be recomputed, list every problem."""

from __future__ import annotations

import shutil
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from nnconform import anchors as anchors_mod
from nnconform.anchors import (ManifestError, WeightsIntegrityError, WeightsUnavailable, all_anchors,
                               load_manifest, resolve_weights_path, select_anchors)
from nnconform.hashing import sha256_file
from nnconform.profile import count_params


def test_every_manifest_entry_is_consistent():
    problems = []
    for name, anchor in all_anchors().items():
        if anchor.family == "onnx":  # a graph, not an architecture: tests/test_onnx_anchor.py checks its entries
            continue
        model = anchor.build_architecture()
        params = count_params(model)
        if params != anchor.num_params:
            problems.append(f"{name}: num_params {anchor.num_params} in manifest, architecture has {params}")
        if anchor.family == "torchvision":
            from torchvision.models import get_weight

            meta = get_weight(anchor.weights.removeprefix("torchvision:")).meta
            # a COCO detector documents its box mAP, a classifier its ImageNet top-1
            key, acc = (("map", meta["_metrics"]["COCO-val2017"]["box_map"] / 100) if anchor.task == "detection"
                        else ("top1", meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100))
            if abs(acc - anchor.metrics[key]) > 1e-9:
                problems.append(f"{name}: {key} {anchor.metrics[key]} but torchvision documents {acc}")
            file_prefix = resolve_weights_path(anchor.weights).name.rsplit("-", 1)[-1].split(".")[0]
            if not anchor.sha256.startswith(file_prefix):
                problems.append(f"{name}: sha256 {anchor.sha256[:8]}... does not start with file prefix {file_prefix}")
        elif anchor.family != "huggingface":  # a hub checkpoint is placed by hand (nnconform.speech.hf): absent here
            path = resolve_weights_path(anchor.weights)
            if not path.is_file():
                problems.append(f"{name}: {path} missing")
            elif sha256_file(path) != anchor.sha256:
                problems.append(f"{name}: {path} sha256 differs from the manifest")
        if anchor.family == "zoo":
            if len(anchor.checkpoints) < 5:
                problems.append(f"{name}: lineage has {len(anchor.checkpoints)} checkpoints, need >= 4 epochs + update")
            for ck in anchor.checkpoints:
                path = resolve_weights_path(ck.weights)
                if not path.is_file() or sha256_file(path) != ck.sha256:
                    problems.append(f"{name}/{ck.name}: {path} missing or its sha256 differs")
            if anchor.task == "asr":  # the embedded ASR anchor: WER on held-out synthetic voices
                if not anchor.metrics["wer"] <= 0.6:
                    problems.append(f"{name}: documented WER {anchor.metrics['wer']} above the 0.6 ceiling")
                continue
            if anchor.task == "detection":  # the embedded detector: COCO mAP on the Fashion-MNIST mosaics
                if not 0.3 <= anchor.metrics["map"] <= anchor.metrics["map50"]:
                    problems.append(f"{name}: documented mAP {anchor.metrics['map']} below the 0.3 floor or above "
                                    f"its mAP@.5 {anchor.metrics['map50']}")
                continue
            floor = 0.88 if "lenet" in name else 0.90
            if anchor.metrics["top1"] < floor:
                problems.append(f"{name}: documented top-1 {anchor.metrics['top1']} below the {floor} floor")
    assert problems == []


def test_default_selection_is_offline_only():
    for name in select_anchors("default"):
        assert all_anchors()[name].family in ("zoo", "efficientnet-lite"), name


def test_unknown_anchor_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean"):
        select_anchors("fmnist-resnet9")


@pytest.fixture
def tiny_manifest(tmp_path, monkeypatch):
    """A manifest folder with one small anchor whose weights we can damage."""
    from nnconform.zoo.models import LeNet5

    (tmp_path / "zoo").mkdir()
    weights = tmp_path / "zoo" / "tiny.safetensors"
    torch.manual_seed(0)
    save_file(LeNet5().state_dict(), str(weights))
    digest = sha256_file(weights)
    manifest = tmp_path / "tiny.toml"
    manifest.write_text(textwrap.dedent(f"""
        [anchors.tiny]
        family = "zoo"
        architecture = "nnconform.zoo.models:LeNet5"
        weights = "zoo/tiny.safetensors"
        sha256 = "{digest}"
        dataset = "fashion-mnist"
        input_shape = [1, 28, 28]
        num_classes = 10
        metrics = {{ top1 = 0.1 }}
        tolerance = 0.01
        num_params = 61706
        macs = 416520
        license = "test"
        provenance = "test"
        preprocess = {{ mean = [0.286], std = [0.353], channels = 1 }}
    """))
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(tmp_path))
    anchors_mod._load_all.cache_clear()
    yield tmp_path, weights
    anchors_mod._load_all.cache_clear()


def test_good_manifest_builds(tiny_manifest):
    model = anchors_mod.get_anchor("tiny").build()
    assert not model.training


def test_wrong_sha256_names_the_file(tiny_manifest):
    folder, weights = tiny_manifest
    text = (folder / "tiny.toml").read_text()
    good = sha256_file(weights)
    (folder / "tiny.toml").write_text(text.replace(good, "0" * 64))
    anchors_mod._load_all.cache_clear()
    with pytest.raises(WeightsIntegrityError, match=r"tiny\.safetensors has sha256 .* manifest pins 0000"):
        anchors_mod.get_anchor("tiny").build()


def test_missing_weights_file_is_unavailable(tiny_manifest):
    _, weights = tiny_manifest
    weights.unlink()
    with pytest.raises(WeightsUnavailable, match="tiny.safetensors is missing"):
        anchors_mod.get_anchor("tiny").build()


def test_truncated_safetensors_is_refused(tiny_manifest):
    folder, weights = tiny_manifest
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        anchors_mod.get_anchor("tiny").build()
    # even if someone re-pins the hash of the truncated file, reading it fails with the file named
    text = (folder / "tiny.toml").read_text()
    import re

    (folder / "tiny.toml").write_text(re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{sha256_file(weights)}"', text))
    anchors_mod._load_all.cache_clear()
    with pytest.raises(WeightsIntegrityError, match="could not be read"):
        anchors_mod.get_anchor("tiny").build()


def test_manifest_missing_field_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[anchors.x]\nfamily = "zoo"\n')
    with pytest.raises(ManifestError, match=r"bad\.toml: anchors\.x: missing required field\(s\) architecture"):
        load_manifest(bad)


def test_manifest_short_hash_is_refused(tiny_manifest):
    folder, weights = tiny_manifest
    text = (folder / "tiny.toml").read_text().replace(sha256_file(weights), "0676ba61")
    (folder / "tiny.toml").write_text(text)
    anchors_mod._load_all.cache_clear()
    with pytest.raises(ManifestError, match="sha256: '0676ba61' is not a full"):
        anchors_mod.all_anchors()


def test_torchvision_file_absent_offline_names_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("NNCONFORM_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match=r"resnet50-0676ba61\.pth .* is not in .*hub/checkpoints"):
        anchors_mod.get_anchor("tv-resnet50-v1").build()


def test_torchvision_cached_file_with_wrong_content_is_refused(monkeypatch, tmp_path):
    """torchvision trusts a cached file; nnconform re-checks its full sha256."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, ckpt / "resnet50-0676ba61.pth")
    with pytest.raises(WeightsIntegrityError, match="resnet50-0676ba61.pth has sha256"):
        anchors_mod.get_anchor("tv-resnet50-v1").build()
