"""The detection task's mAP: hand-computed cases, pycocotools' COCOeval on the same detections, the
weighted-table bootstrap against a real resample, and the tier gates on a planted degraded detector."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from nnconform.detection.data import GroundTruth
from nnconform.gates import best_tier_met, evaluate_tier, get_tier, non_inferiority
from nnconform.tasks import get_task
from nnconform.tasks.detection import DetectionTask, box_iou


def _outputs(per_image: list[list[tuple[list[float], int, float]]], num_classes: int = 3, locations: int = 8):
    """Dense outputs [N, L, 4 + C] holding the given (box, class, score) detections; every other location a box
    with a score far below the threshold."""
    out = torch.zeros(len(per_image), locations, 4 + num_classes)
    out[:, :, :4] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    out[:, :, 4:] = -20.0
    for i, dets in enumerate(per_image):
        for j, (box, cls, score) in enumerate(dets):
            out[i, j, :4] = torch.tensor(box)
            out[i, j, 4 + cls] = float(np.log(score / (1 - score)))
    return out


def _gt(boxes, classes) -> GroundTruth:
    return GroundTruth(np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64))


def _map(per_image, truths, num_classes=3):
    task = DetectionTask(num_classes=num_classes)
    scores = task.scores(_outputs(per_image, num_classes), truths)
    return task.aggregate(scores), task.map50(scores)


def test_perfect_detection_is_map_one():
    assert _map([[([10, 10, 30, 40], 1, 0.9)]], [_gt([[10, 10, 30, 40]], [1])]) == pytest.approx((1.0, 1.0), abs=1e-12)


def test_partial_overlap_counts_only_thresholds_below_its_iou():
    # IoU 0.78: a true positive at 0.50 .. 0.75 (6 of 10 thresholds), a false positive above
    assert box_iou(np.array([[0, 0, 10, 7.8]]), np.array([[0, 0, 10, 10]]))[0, 0] == pytest.approx(0.78)
    m, m50 = _map([[([0, 0, 10, 7.8], 0, 0.9)]], [_gt([[0, 0, 10, 10]], [0])])
    assert m == pytest.approx(0.6) and m50 == pytest.approx(1.0)


def test_false_positive_first_and_a_missed_object():
    # two objects; the best-scored detection is a false positive, the second finds one object:
    # precision 1/2 at recall 1/2, so recall thresholds 0.00..0.50 (51 of 101) read 0.5: AP = 0.5 * 51 / 101
    dets = [[([50, 50, 60, 60], 0, 0.9), ([0, 0, 10, 10], 0, 0.8)]]
    m, m50 = _map(dets, [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])])
    assert m == pytest.approx(0.5 * 51 / 101) and m50 == pytest.approx(0.5 * 51 / 101)


def test_wrong_class_is_a_false_positive_and_classes_without_objects_are_left_out():
    truths = [_gt([[0, 0, 10, 10]], [0]), _gt([[0, 0, 10, 10]], [1])]
    # image 0 found; image 1's object labelled class 2, which has no object anywhere: class 1 AP 0, class 2 left out
    m, _ = _map([[([0, 0, 10, 10], 0, 0.9)], [([0, 0, 10, 10], 2, 0.9)]], truths)
    assert m == pytest.approx(0.5)
    # a duplicate of a found object is a false positive after the true one: AP stays 1
    m, _ = _map([[([0, 0, 10, 10], 0, 0.9), ([0.5, 0, 10, 10], 0, 0.3)]], [_gt([[0, 0, 10, 10]], [0])])
    assert m == pytest.approx(1.0, abs=1e-12)


def test_decoding_drops_low_scores_and_boxes_without_area_and_applies_nms():
    task = DetectionTask(num_classes=3)
    out = _outputs([[([0, 0, 10, 10], 0, 0.9), ([0, 0, 10, 9.5], 0, 0.8), ([5, 5, 5, 9], 1, 0.9),
                     ([20, 20, 30, 30], 1, 0.04), ([20, 20, 30, 30], 2, 0.5)]])
    boxes, scores, labels = task.decode(out)[0]
    assert labels.tolist() == [0, 2] and scores.tolist() == pytest.approx([0.9, 0.5])


def test_outputs_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"expected \(2, L, 7\)"):
        DetectionTask(num_classes=3).check_outputs(torch.zeros(2, 8, 6), 2)


def synthetic_detector(n: int, num_classes: int, seed: int, noise: float = 2.5, locations: int = 60):
    """A random detection problem: 0-3 objects per image and a detector that finds them with jittered boxes
    among random false positives."""
    rng = np.random.default_rng(seed)
    truths, out = [], torch.zeros(n, locations, 4 + num_classes)
    for i in range(n):
        k = int(rng.integers(0, 4))
        xy, wh = rng.uniform(0, 60, (k, 2)), rng.uniform(5, 30, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        cls = rng.integers(0, num_classes, k)
        truths.append(GroundTruth(boxes, cls))
        pxy, pwh = rng.uniform(0, 60, (locations, 2)), rng.uniform(5, 30, (locations, 2))
        b = np.concatenate([pxy, pxy + pwh], 1)
        logits = rng.normal(-3, 1.5, (locations, num_classes))
        for j in range(k):
            for r in range(3):
                b[3 * j + r] = boxes[j] + rng.normal(0, noise, 4)
                logits[3 * j + r, cls[j]] = rng.normal(1, 1.5)
        out[i, :, :4] = torch.tensor(b)
        out[i, :, 4:] = torch.tensor(logits)
    return out, truths


def coco_eval(task: DetectionTask, outputs: torch.Tensor, truths) -> tuple[float, float]:
    """pycocotools' COCOeval (bbox) on the task's decoded detections: (AP, AP50)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    for i, g in enumerate(truths):
        for b, c in zip(g.boxes.astype(np.float64), g.classes):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    results = [{"image_id": i + 1, "category_id": int(label) + 1, "score": float(s),
                "bbox": [float(b[0]), float(b[1]), float(b[2]) - float(b[0]), float(b[3]) - float(b[1])]}
               for i, (bb, ss, ll) in enumerate(task.decode(outputs))
               for b, s, label in zip(bb.astype(np.float64), ss, ll)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1} for i in range(len(truths))], "annotations": anns,
                  "categories": [{"id": c + 1} for c in range(outputs.shape[2] - 4)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools(seed):
    outputs, truths = synthetic_detector(60, 5, seed)
    task = DetectionTask(num_classes=5)
    scores = task.scores(outputs, truths)
    ap, ap50 = coco_eval(task, outputs, truths)
    assert 0.05 < ap < 0.9  # a problem where matching matters
    assert abs(task.aggregate(scores) - ap) < 1e-6 and abs(task.map50(scores) - ap50) < 1e-6


def test_a_weighted_resample_equals_cocoeval_on_the_resampled_images():
    outputs, truths = synthetic_detector(60, 5, 3)
    task = DetectionTask(num_classes=5)
    scores = task.scores(outputs, truths)
    draw = np.random.default_rng(3).integers(0, 60, 60)
    ap, _ = coco_eval(task, outputs[draw], [truths[i] for i in draw])
    assert abs(task.aggregate(scores, draw) - ap) < 1e-6
    assert task.aggregate_resamples(scores, draw[None])[0] == pytest.approx(task.aggregate(scores, draw), abs=1e-12)


def test_identical_detector_is_transparent_and_a_degraded_one_fails_every_tier():
    outputs, truths = synthetic_detector(300, 5, 4, noise=1.0)
    task = get_task("detection", num_classes=5)
    ref = task.scores(outputs, truths)
    same = task.scores(outputs.clone(), truths)
    cmp = task.paired(ref, same, resamples=500)
    assert cmp.delta == 0 and cmp.delta_ci95 == (0.0, 0.0) and best_tier_met(cmp) == "transparent"
    assert "map50_ref" in cmp.to_dict()
    degraded = outputs.clone()
    degraded[:, :, :4] += torch.from_numpy(np.random.default_rng(5).normal(0, 2.0, degraded[:, :, :4].shape)).float()
    worse = task.scores(degraded, truths)
    cmp = task.paired(ref, worse, resamples=500)
    assert cmp.drop_ci95[0] > 0.02, cmp.to_dict()
    for tier in ("transparent", "99.9%", "99%"):
        result = evaluate_tier(cmp, get_tier(tier, task))
        assert not result.passed and "exceeds" in result.reason, result.reason
    assert best_tier_met(cmp) is None
    # the gate's own door (the full 10,000 resamples) on a smaller set
    small = np.arange(60)
    sub = lambda o: task.scores(o[small], [truths[i] for i in small])  # noqa: E731
    assert not non_inferiority(sub(outputs), sub(degraded), "99%", task).passed
