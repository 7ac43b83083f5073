"""The real detection path offline: a tiny COCO-format folder built here (Fashion-MNIST mosaics as JPEGs with an
instances json written here), loaded by the COCO loader, evaluated end to end with a torchvision detector of random
weights, its mAP equal to pycocotools' COCOeval; crowd regions as COCOeval ignores them; category ids in
torchvision's label space; what a broken folder and missing weights say."""

from __future__ import annotations

import contextlib
import io
import json
from unittest import mock

import numpy as np
import pytest
import torch

from nnconform.anchors import WeightsUnavailable, get_anchor, resolve_weights_path
from nnconform.data import DatasetLoadError, DatasetUnavailable, load_dataset
from nnconform.detection.coco import ANNOTATIONS, IMAGES, coco_label, load_coco_val, torchvision_categories
from nnconform.detection.data import make_mosaics
from nnconform.detection.torchvision_det import TorchvisionDetectionTask, TorchvisionDetector
from nnconform.evaluate import Evaluator

ANCHORS = ("tv-ssdlite320-mobilenet-v3-large", "tv-retinanet-resnet50-fpn-v2", "tv-fasterrcnn-mobilenet-v3-large-fpn")
#: Fashion-MNIST class -> a COCO category id (person, backpack, handbag, bottle, chair, dining table, tv, book,
#: teddy bear, toothbrush): non-contiguous ids up to 90
CLASS_TO_COCO = (1, 27, 31, 44, 62, 67, 72, 84, 88, 90)
IMAGE_IDS = (139, 7, 632, 42, 1000, 285)  # not in file order: the loader sorts by id


def _write_folder(root, fmnist, crowd: bool = True) -> dict:
    """A COCO val2017-shaped folder: six 96x96 (or 96 high, 128 wide) RGB JPEGs; the last has no objects."""
    from PIL import Image

    canvases, truths = make_mosaics(fmnist.images[:200, 0].numpy(), fmnist.labels[:200].numpy(), len(IMAGE_IDS), 5)
    (root / IMAGES).mkdir(parents=True)
    (root / ANNOTATIONS).parent.mkdir(parents=True)
    images, anns = [], []
    for n, (image_id, canvas, truth) in enumerate(zip(IMAGE_IDS, canvases, truths)):
        if n % 2:  # a wider image: the detector sees images of different sizes
            canvas = np.concatenate([canvas, np.zeros((96, 32), np.uint8)], 1)
        if n == len(IMAGE_IDS) - 1:
            canvas, truth = canvas * 0, type(truth)(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        name = f"{image_id:012d}.jpg"
        Image.fromarray(np.stack([canvas] * 3, -1)).save(root / IMAGES / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": canvas.shape[0], "width": canvas.shape[1]})
        for (x1, y1, x2, y2), c in zip(truth.boxes.tolist(), truth.classes.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CLASS_TO_COCO[c], "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    if crowd:  # a crowd region over the left half of the first image, of its first object's class
        first = next(a for a in anns if a["image_id"] == IMAGE_IDS[0])
        anns.append({"id": len(anns) + 1, "image_id": IMAGE_IDS[0], "category_id": first["category_id"],
                     "iscrowd": 1, "bbox": [0.0, 0.0, 48.0, 96.0], "area": 48.0 * 96.0})
    names = torchvision_categories()
    categories = [{"id": i, "name": names[i], "supercategory": "x"} for i in sorted(set(CLASS_TO_COCO) | {2, 3})]
    data = {"images": images[::-1], "annotations": anns, "categories": categories}
    (root / ANNOTATIONS).write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory, fmnist_module):
    root = tmp_path_factory.mktemp("coco")
    data = _write_folder(root, fmnist_module)
    return root, data


@pytest.fixture(scope="module")
def fmnist_module():
    from nnconform.data import load_fashion_mnist

    return load_fashion_mnist("test")


def test_category_ids_are_torchvision_labels():
    names = torchvision_categories()
    assert len(names) == 91 and names[0] == "__background__"
    assert coco_label(1, "person") == 1 and coco_label(90, "toothbrush") == 90 and coco_label(44, "bottle") == 44
    for bad in (0, 12, 83, 91):  # background, two of COCO's unused ids, past the end
        with pytest.raises(ValueError, match=f"id {bad} "):
            coco_label(bad)
    with pytest.raises(ValueError, match="'bicycle' here but 'person'"):
        coco_label(1, "bicycle")


def test_loader_reads_the_folder(coco_dir):
    root, data = coco_dir
    ds = load_dataset("coco-val2017", coco_source=str(root))
    assert ds.image_ids == tuple(sorted(IMAGE_IDS)) and len(ds) == 6 and ds.num_classes == 91
    by_id = {}
    for a in data["annotations"]:
        by_id.setdefault(a["image_id"], []).append(a)
    for image_id, gt in zip(ds.image_ids, ds.labels):
        regular = [a for a in by_id.get(image_id, []) if not a["iscrowd"]]
        crowd = [a for a in by_id.get(image_id, []) if a["iscrowd"]]
        x, y, w, h = (np.array([a["bbox"] for a in regular]).reshape(-1, 4).T)
        np.testing.assert_allclose(gt.boxes, np.stack([x, y, x + w, y + h], 1).reshape(-1, 4), rtol=0, atol=1e-4)
        assert gt.classes.tolist() == [a["category_id"] for a in regular]
        assert gt.crowd_classes.tolist() == [a["category_id"] for a in crowd]
    assert len(ds.labels[ds.image_ids.index(IMAGE_IDS[0])].crowd_classes) == 1
    img = ds.image(ds.image_ids.index(7))
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 96, 128)
    # fingerprinted: the same folder gives the same print, a subset another, labelled as one
    assert load_coco_val(root).fingerprint == ds.fingerprint
    sub = load_coco_val(root, subset=3)
    assert sub.image_ids == ds.image_ids[:3] and sub.fingerprint != ds.fingerprint
    assert any("subset: 3 of COCO val2017's 5000" in n for n in sub.notes) and sub.smoke


def test_fingerprint_follows_image_bytes(tmp_path, fmnist_module):
    _write_folder(tmp_path, fmnist_module)
    before = load_coco_val(tmp_path).fingerprint
    path = tmp_path / IMAGES / f"{IMAGE_IDS[2]:012d}.jpg"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert load_coco_val(tmp_path).fingerprint != before


def test_no_folder_skips_and_says_how(monkeypatch):
    monkeypatch.delenv("NNCONFORM_COCO_DIR", raising=False)
    with pytest.raises(DatasetUnavailable, match="--nnc-coco DIR .*instances_val2017.json"):
        load_dataset("coco-val2017")


def test_env_var_names_the_folder(monkeypatch, coco_dir):
    monkeypatch.setenv("NNCONFORM_COCO_DIR", str(coco_dir[0]))
    assert load_dataset("coco-val2017").image_ids == tuple(sorted(IMAGE_IDS))


@pytest.mark.parametrize("damage, why", [
    ("missing", "annotation file missing"),
    ("not json", "not a readable JSON file"),
    ("no categories", "needs the lists 'images', 'annotations' and 'categories'"),
    ("wrong name", "is 'chair' here but 'person'"),
    ("unknown image", "image_id 99999 is not in 'images'"),
    ("image missing", "image 42 of instances_val2017.json is missing"),
])
def test_broken_folder_fails_naming_the_file(tmp_path, fmnist_module, damage, why):
    data = _write_folder(tmp_path, fmnist_module)
    ann = tmp_path / ANNOTATIONS
    if damage == "missing":
        ann.unlink()
    elif damage == "not json":
        ann.write_text('{"images": [')
    elif damage == "no categories":
        ann.write_text(json.dumps({k: v for k, v in data.items() if k != "categories"}))
    elif damage == "wrong name":
        data["categories"][0]["name"] = "chair"
        ann.write_text(json.dumps(data))
    elif damage == "unknown image":
        data["annotations"][0]["image_id"] = 99999
        ann.write_text(json.dumps(data))
    else:
        (tmp_path / IMAGES / f"{42:012d}.jpg").unlink()
    with pytest.raises(DatasetLoadError) as err:
        load_dataset("coco-val2017", coco_source=str(tmp_path))
    named = tmp_path / IMAGES / f"{42:012d}.jpg" if damage == "image missing" else ann
    assert str(named) in str(err.value) and why in str(err.value)


def _coco_eval(ann_path_or_data, results, image_ids) -> tuple[float, float]:
    """pycocotools' COCOeval (bbox) of ``results`` on ``image_ids``: (AP, AP50)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ann_path_or_data
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results) if results else COCO(), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def _results(task, outputs, image_ids) -> list[dict]:
    return [{"image_id": int(i), "category_id": int(c), "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for i, (bb, ss, ll) in zip(image_ids, task.decode(outputs))
            for b, s, c in zip(bb.astype(np.float64), ss, ll)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_crowd_regions_are_ignored_as_cocoeval_does(seed):
    """Detections near regular boxes and inside crowd regions, scored by the task and by COCOeval with iscrowd=1
    annotations: the same mAP@[.5:.95] and mAP@.5 (and not the figures crowd-blind scoring gives)."""
    from nnconform.detection.coco import CocoGroundTruth

    rng = np.random.default_rng(seed)
    n, k = 12, 40
    outputs = torch.zeros(n, k, 6)
    outputs[..., 5] = -1
    truths, anns, images = [], [], []
    for i in range(n):
        m = int(rng.integers(1, 5))
        xy = rng.uniform(0, 150, (m, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (m, 2))], 1).astype(np.float32)
        classes = rng.choice([1, 3, 90], m)
        crowd_boxes = np.array([[0, 0, 120, 120]], np.float32) if i % 2 == 0 else np.zeros((0, 4), np.float32)
        crowd_classes = np.array([int(rng.choice([1, 3]))]) if i % 2 == 0 else np.zeros(0, np.int64)
        truths.append(CocoGroundTruth(boxes, classes.astype(np.int64), crowd_boxes, crowd_classes.astype(np.int64)))
        images.append({"id": i + 1, "height": 300, "width": 300})
        for b, c, crowd in [(b, c, 0) for b, c in zip(boxes, classes)] + [(b, c, 1) for b, c in
                                                                           zip(crowd_boxes, crowd_classes)]:
            b = b.astype(np.float64)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c), "iscrowd": crowd,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        rows = []
        for b, c in zip(boxes, classes):  # jittered copies of the truth
            for _ in range(3):
                rows.append([*(b + rng.normal(0, 4, 4)), rng.uniform(0.05, 1), c])
        while len(rows) < k:  # detections inside the crowd region (and some elsewhere)
            xy = rng.uniform(0, 100, 2)
            rows.append([*xy, *(xy + rng.uniform(5, 20, 2)), rng.uniform(0.05, 1), int(rng.choice([1, 3]))])
        outputs[i] = torch.tensor(np.array(rows[:k], np.float64), dtype=torch.float32)
    task = TorchvisionDetectionTask()
    scores = task.scores(outputs, truths)
    assert "det_ignored" in scores.columns and any(ig.any() for ig in scores["det_ignored"])
    data = {"images": images, "annotations": anns, "categories": [{"id": c} for c in (1, 3, 90)]}
    ap, ap50 = _coco_eval(data, _results(task, outputs, range(1, n + 1)), range(1, n + 1))
    assert task.aggregate(scores) == pytest.approx(ap, abs=1e-12)
    assert task.map50(scores) == pytest.approx(ap50, abs=1e-12)
    # without the crowd regions the same detections score lower: the ignoring is what makes them agree
    blind = [CocoGroundTruth(t.boxes, t.classes, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)) for t in truths]
    assert task.aggregate(task.scores(outputs, blind)) < ap - 1e-6


def test_random_ssdlite_end_to_end_matches_pycocotools(coco_dir, tmp_path):
    """SSDlite320 of random weights on the tiny folder through the loader, the wrapper, the evaluator (cached) and
    the task: outputs [6, 300, 6] in image pixels, mAP and mAP@.5 equal to COCOeval on the folder's own json."""
    root, data = coco_dir
    anchor = get_anchor("tv-ssdlite320-mobilenet-v3-large")
    torch.manual_seed(0)
    model = anchor.build_architecture().eval()
    ds = load_coco_val(root)
    result = Evaluator(tmp_path / "cache").evaluate(model, ds, anchor.preprocess)
    assert tuple(result.outputs.shape) == (6, 300, 6) and result.task.name == "detection"
    valid = result.outputs[..., 5] >= 0
    assert valid.sum() > 0 and result.outputs[..., 4][valid].min() > 0.001  # torchvision's score threshold
    for i, im in enumerate(ds.image_ids):  # boxes lie in each image's own pixels (torchvision maps them back)
        width = next(x["width"] for x in data["images"] if x["id"] == im)
        assert float(result.outputs[i, valid[i], 2].max()) <= width + 1e-3
    gt = json.loads((root / ANNOTATIONS).read_text())
    ap, ap50 = _coco_eval(gt, _results(result.task, result.outputs, ds.image_ids), ds.image_ids)
    assert result.metric == pytest.approx(ap, abs=1e-9)
    assert result.task.map50(result.scores) == pytest.approx(ap50, abs=1e-9)
    cached = Evaluator(tmp_path / "cache")
    again = cached.evaluate(model, ds, anchor.preprocess)  # from the on-disk cache: the model can be fingerprinted
    assert cached.hits == 1 and torch.equal(again.outputs, result.outputs) and again.metric == result.metric
    # 6 images: the anchor's accuracy is a smoke check, and random weights are far from the documented 21.3%
    from nnconform.anchor_checks import check_documented_accuracy

    rec = check_documented_accuracy(anchor, ds, result)
    assert rec.check_id == "anchor.accuracy_smoke" and not rec.passed and "SMOKE CHECK on 6" in rec.message

    # random weights find nothing; with the box regression at zero (detections are SSD's prior boxes) and only the
    # folder's most frequent class scored, some priors match an object at IoU >= 0.5 -- which needs the boxes
    # mapped back to each image's own pixels -- and the figures still equal COCOeval's
    top = np.bincount(np.concatenate([g.classes for g in ds.labels])).argmax()
    with torch.no_grad():
        for p in model.model.head.regression_head.parameters():
            p.zero_()
        for block in model.model.head.classification_head.module_list:
            conv = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            conv.bias.copy_(torch.where(torch.arange(conv.out_channels) % 91 == top, 4.0, -4.0))
    primed = Evaluator(None).evaluate(model, ds, anchor.preprocess)
    ap, ap50 = _coco_eval(gt, _results(primed.task, primed.outputs, ds.image_ids), ds.image_ids)
    assert ap50 > 0
    assert primed.metric == pytest.approx(ap, abs=1e-9)
    assert primed.task.map50(primed.scores) == pytest.approx(ap50, abs=1e-9)


def test_torchvision_detectors_can_be_fingerprinted():
    """The evaluation cache key reads torchvision's helper objects (BoxCoder, Matcher): equal models share it, a
    changed box-coder weight does not."""
    from nnconform.model_identity import model_content_sha256

    anchor = get_anchor("tv-fasterrcnn-mobilenet-v3-large-fpn")
    torch.manual_seed(1)
    a = anchor.build_architecture()
    torch.manual_seed(1)
    b = anchor.build_architecture()
    assert model_content_sha256(a) == model_content_sha256(b)
    b.model.roi_heads.box_coder.weights = (10.0, 10.0, 5.0, 4.0)
    assert model_content_sha256(a) != model_content_sha256(b)


def _torchvision_pretrained_architecture(anchor):
    """The module torchvision's builder makes for the anchor's COCO weights, without reading any file."""
    from torchvision.models import get_weight
    from torchvision.models._api import WeightsEnum
    import torchvision.models.detection as tvd

    weights = get_weight(anchor.weights.removeprefix("torchvision:"))
    builder = getattr(tvd, anchor.architecture.rsplit(":", 1)[1])
    with mock.patch.object(WeightsEnum, "get_state_dict", lambda self, *a, **k: {}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
        return builder(weights=weights)


@pytest.mark.parametrize("name", ANCHORS)
def test_architecture_is_what_torchvision_builds_for_its_weights(name):
    """Same state-dict keys and shapes, same norm layers (Faster R-CNN's frozen batch norms, eps 1e-5) as
    torchvision's pretrained model: the pinned file loads strictly into the anchor's architecture."""
    anchor = get_anchor(name)
    ours = anchor.build_architecture()
    assert isinstance(ours, TorchvisionDetector)
    theirs = _torchvision_pretrained_architecture(anchor)
    mine = {k.removeprefix("model."): tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    norms = lambda m: [(n, type(x).__name__, getattr(x, "eps", None)) for n, x in m.named_modules()  # noqa: E731
                       if "Norm" in type(x).__name__]
    assert norms(ours.model) == norms(theirs)
    ours.load_state_dict(theirs.state_dict())  # a torchvision state dict (no prefix) loads strictly
    assert ours.max_detections == {"tv-fasterrcnn-mobilenet-v3-large-fpn": 100}.get(name, 300)


@pytest.mark.parametrize("name", ANCHORS)
def test_manifest_figures_are_torchvisions(name):
    from torchvision.models import get_weight

    from nnconform.profile import count_params

    anchor = get_anchor(name)
    meta = get_weight(anchor.weights.removeprefix("torchvision:")).meta
    assert anchor.task == "detection" and anchor.dataset == "coco-val2017" and anchor.default is False
    assert anchor.metrics["map"] == pytest.approx(meta["_metrics"]["COCO-val2017"]["box_map"] / 100, abs=1e-12)
    assert anchor.num_params == meta["num_params"] == count_params(anchor.build_architecture())
    from nnconform.anchor_checks import TORCHVISION_MACS_ATOL

    if name == "tv-fasterrcnn-mobilenet-v3-large-fpn":  # counted with every proposal: above the trained model's
        assert anchor.macs > meta["_ops"] * 1e9
    else:  # one-stage: the count made here is torchvision's to its 3 decimals of GMACs
        assert abs(anchor.macs - meta["_ops"] * 1e9) <= TORCHVISION_MACS_ATOL
    prefix = resolve_weights_path(anchor.weights).name.rsplit("-", 1)[1].split(".")[0]
    assert anchor.sha256.startswith(prefix) and len(anchor.sha256) == 64


@pytest.mark.parametrize("name", ["tv-ssdlite320-mobilenet-v3-large", "tv-fasterrcnn-mobilenet-v3-large-fpn"])
def test_params_macs_check_reads_the_manifest(name):
    """anchor.params_macs passes on the architecture (no weights) and fails when the documented MACs are off."""
    import dataclasses

    from nnconform.anchor_checks import check_params_macs

    anchor = get_anchor(name)
    torch.manual_seed(0)
    assert check_params_macs(anchor).passed
    off = dataclasses.replace(anchor, macs=int(anchor.macs * 0.98))
    torch.manual_seed(0)
    rec = check_params_macs(off)
    assert not rec.passed and rec.expected["macs"] == off.macs


@pytest.mark.parametrize("name", ANCHORS)
def test_missing_weights_skip_names_file_and_folder(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("NNCONFORM_OFFLINE", "1")
    anchor = get_anchor(name)
    file = resolve_weights_path(anchor.weights).name
    with pytest.raises(WeightsUnavailable) as err:
        anchor.build()
    assert f"weights file {file} " in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(err.value)
    assert f"https://download.pytorch.org/models/{file}" in str(err.value)


def test_task_refuses_other_outputs():
    task = TorchvisionDetectionTask()
    with pytest.raises(ValueError, match=r"expected \(2, K, 6\)"):
        task.check_outputs(torch.zeros(2, 10, 95), 2)
    bad = torch.zeros(2, 10, 6)
    bad[0, 0, 5] = 91
    with pytest.raises(ValueError, match="labels outside -1..90"):
        task.check_outputs(bad, 2)


def test_conformance_run_with_a_broken_folder_fails_naming_the_file(tmp_path, fmnist_module):
    """End to end: the COCO anchor's accuracy case fails with the loader's message (no skip, nothing else used);
    --nnc-coco-subset without a folder is a usage error."""
    import subprocess
    import sys
    from pathlib import Path

    _write_folder(tmp_path / "coco", fmnist_module)
    (tmp_path / "coco" / ANNOTATIONS).write_text("{")
    root = Path(__file__).resolve().parents[1]
    base = [sys.executable, "-m", "pytest", str(root / "conformance" / "test_anchors.py"), "-p", "no:cacheprovider",
            "-q", "--nnc-anchors", "tv-ssdlite320-mobilenet-v3-large", "--nnc-threads", "1", "--nnc-cache-dir",
            str(tmp_path / "cache"), "--nnc-no-report", "-k", "documented_accuracy"]
    env = {k: v for k, v in __import__("os").environ.items() if k != "NNCONFORM_COCO_DIR"}
    proc = subprocess.run(base + ["--nnc-coco", str(tmp_path / "coco")], capture_output=True, text=True, cwd=root,
                          timeout=600, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "DatasetLoadError" in proc.stdout and "verdict: FAIL" in proc.stdout
    assert "instances_val2017.json: not a readable JSON file" in proc.stdout
    usage = subprocess.run(base + ["--nnc-coco-subset", "10"], capture_output=True, text=True, cwd=root, timeout=600,
                           env=env)
    assert usage.returncode == 4 and "--nnc-coco-subset needs --nnc-coco DIR" in usage.stderr


def test_device_path_gives_the_cpu_outputs(coco_dir):
    """The evaluator's device path (batches moved with ``.to``, as on CUDA; here ``cpu:0``) reads the lazily
    preprocessed COCO batches and gives the CPU path's detections."""
    from nnconform.evaluate import forward_outputs

    anchor = get_anchor("tv-ssdlite320-mobilenet-v3-large")
    torch.manual_seed(0)
    model = anchor.build_architecture().eval()
    ds = load_coco_val(coco_dir[0], subset=2)
    cpu = forward_outputs(model, ds, anchor.preprocess, 250, ds.task)
    moved = forward_outputs(model, ds, anchor.preprocess, 250, ds.task, device="cpu:0")
    assert torch.equal(cpu, moved)
