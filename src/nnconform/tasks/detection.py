"""Object detection (TR 26.847 scenario 2, MPEG FCM): dense per-location outputs decoded to detections,
mAP@[.5:.95] computed the COCO way.

A detector's output is one fixed-shape tensor ``[N, L, 4 + C]`` per batch: per location the box
(x1, y1, x2, y2 in input pixels) and ``C`` class logits. The task decodes it (sigmoid scores, score
threshold, top-k candidates, boxes without area dropped, class-wise NMS with ``torchvision.ops.batched_nms``, at most
``max_detections`` per image) and matches the detections to the ground truth exactly as pycocotools'
COCOeval does for bounding boxes (area range "all", 100 detections): per image and
class, detections by descending score greedily take the unmatched ground-truth box of highest IoU >= t,
for t in 0.50:0.05:0.95. Crowd regions (a ground truth's ``crowd_boxes``/``crowd_classes``, COCO's
``iscrowd``) are no ground truth: a detection matching no regular box but overlapping a crowd region of
its class by >= t (intersection over the detection's area) is ignored at t, as COCOeval ignores it. Per
image it keeps the match table (score, class, a TP flag per threshold) and the ground-truth count per class;
AP is COCO's 101-point interpolated precision, averaged over classes with ground truth and over thresholds.

The paired bootstrap resamples images: a resample is a weight per image (its multiplicity in the draw)
applied to the per-class tables sorted once by score, so each resample's mAP is a weighted cumulative
sum, not a new matching. This equals COCOeval on the resampled image list except in the order of
detections with exactly tied scores in different images.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

from .base import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MetricComparison, SampleScores, Task, register_task

#: COCO's IoU thresholds (0.50:0.05:0.95) and recall thresholds (0:0.01:1), built as pycocotools builds them
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_EPS = np.spacing(1)

#: resampled mAPs by (scores digest, draws digest, shape), most recent last; a few runs' bootstrap chunks
_RESAMPLED: OrderedDict[tuple, np.ndarray] = OrderedDict()
_RESAMPLED_MAX = 32


def _scores_digest(scores: SampleScores) -> str:
    """sha256 over every column of per-image scores (object columns: each image's array in turn)."""
    h = hashlib.sha256()
    for name in sorted(scores.columns):
        col = scores[name]
        h.update(name.encode() + b"\0")
        for a in (col if col.dtype == object else [col]):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def box_iou(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU [D, G] of xyxy boxes in float64, computed as pycocotools computes it (width = x2 - x1, no +1)."""
    d = np.asarray(dets, np.float64).reshape(-1, 4)
    g = np.asarray(gts, np.float64).reshape(-1, 4)
    dw, dh = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    iw = np.minimum(d[:, None, 0] + dw[:, None], g[None, :, 0] + gw[None]) - np.maximum(d[:, None, 0], g[None, :, 0])
    ih = np.minimum(d[:, None, 1] + dh[:, None], g[None, :, 1] + gh[None]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (dw * dh)[:, None] + (gw * gh)[None] - inter
    return inter / union


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, det_labels: np.ndarray, gt_boxes: np.ndarray,
                gt_labels: np.ndarray, max_detections: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image: returns (order, tp) where ``order`` indexes the kept detections,
    per class sorted by descending score (stable) and cut to ``max_detections``, and ``tp`` [len(order), T]
    says whether each is matched at each IoU threshold."""
    order_all, tp_all = [], []
    for c in np.unique(det_labels):
        d_idx = np.nonzero(det_labels == c)[0]
        d_idx = d_idx[np.argsort(-det_scores[d_idx], kind="mergesort")][:max_detections]
        g_idx = np.nonzero(gt_labels == c)[0]
        tp = np.zeros((len(d_idx), len(IOU_THRESHOLDS)), bool)
        if len(g_idx):
            ious = box_iou(det_boxes[d_idx], gt_boxes[g_idx])
            for ti, t in enumerate(IOU_THRESHOLDS):
                taken = np.zeros(len(g_idx), bool)
                for di in range(len(d_idx)):
                    best, m = min(t, 1 - 1e-10), -1
                    for gi in range(len(g_idx)):
                        if taken[gi] or ious[di, gi] < best:
                            continue
                        best, m = ious[di, gi], gi
                    if m >= 0:
                        taken[m] = True
                        tp[di, ti] = True
        order_all.append(d_idx)
        tp_all.append(tp)
    if not order_all:
        return np.zeros(0, np.int64), np.zeros((0, len(IOU_THRESHOLDS)), bool)
    return np.concatenate(order_all), np.concatenate(tp_all)


def crowd_overlap(dets: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, M] intersection over the detection's area: pycocotools' IoU against a crowd region (iscrowd=1)."""
    d = np.asarray(dets, np.float64).reshape(-1, 4)
    g = np.asarray(crowd, np.float64).reshape(-1, 4)
    iw = np.minimum(d[:, None, 2], g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    ih = np.minimum(d[:, None, 3], g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):  # an area-less detection (decoding drops those)
        return inter / ((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]))[:, None]


def crowd_ignored(det_boxes: np.ndarray, det_labels: np.ndarray, order: np.ndarray, tp: np.ndarray,
                  crowd_boxes: np.ndarray, crowd_labels: np.ndarray) -> np.ndarray:
    """[len(order), T]: which kept detections COCOeval ignores at each IoU threshold: not matched to a regular
    box there, and overlapping a crowd region of their class by >= the threshold (crowd regions take any number
    of detections; a regular box is always preferred, as COCOeval sorts ignored ground truth last)."""
    ignored = np.zeros_like(tp)
    crowd_labels = np.asarray(crowd_labels, np.int64)
    for c in np.unique(crowd_labels):
        rows = np.nonzero(det_labels[order] == c)[0]
        if not len(rows):
            continue
        best = crowd_overlap(det_boxes[order[rows]], crowd_boxes[crowd_labels == c]).max(axis=1)  # [d]
        thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
        ignored[rows] = (best[:, None] >= thresholds[None]) & ~tp[rows]
    return ignored


def average_precision(weights: np.ndarray, images: np.ndarray, tp: np.ndarray, gt_counts: np.ndarray,
                      ignored: np.ndarray | None = None) -> np.ndarray:
    """COCO AP of one class at each IoU threshold, for each row of image ``weights`` [R, N].

    ``images`` [D] and ``tp`` [D, T] are the class's detections sorted by descending score; ``gt_counts`` [N]
    its ground-truth boxes per image; ``ignored`` [D, T] the detections COCOeval ignores per threshold (crowd
    regions): they are neither true nor false positives. Returns [R, T]; NaN where the weighted ground-truth
    count is 0 (COCO leaves such a class out)."""
    npos = weights @ gt_counts.astype(np.float64)                      # [R]
    out = np.full((weights.shape[0], tp.shape[1]), np.nan)
    has = npos > 0
    if not has.any():
        return out
    w, npos = weights[has][:, images], npos[has][:, None]              # [R', D]
    if w.shape[1] == 0:
        out[has] = 0.0
        return out
    seen = np.cumsum(w, axis=1)  # detections so far (weighted), shared by every threshold
    for ti in range(tp.shape[1]):
        # Only true positives move recall, and between two of them precision only falls: the envelope and
        # the recall thresholds are read at the true positives alone (false positives count through ``seen``).
        hits = np.nonzero(tp[:, ti])[0]
        if len(hits) == 0:
            out[has, ti] = 0.0
            continue
        counted = seen if ignored is None or not ignored[:, ti].any() else np.cumsum(w * ~ignored[:, ti], axis=1)
        ctp = np.cumsum(w[:, hits], axis=1)
        recall = ctp / npos
        precision = ctp / (counted[:, hits] + _EPS)  # = tp / (tp + fp + eps), as COCOeval.accumulate
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        # each recall threshold takes the envelope at the first detection whose recall reaches it
        reached = np.searchsorted(RECALL_THRESHOLDS, recall, side="right")
        newly = np.diff(reached, axis=1, prepend=0)
        out[has, ti] = (envelope * newly).sum(axis=1) / len(RECALL_THRESHOLDS)
    return out


@register_task
class DetectionTask(Task):
    """Object detection: COCO mAP@[.5:.95] (higher is better) of the decoded detections; mAP@.5 beside it."""

    name = "detection"
    metric = "map"
    metric_label = "mAP@[.5:.95]"
    higher_is_better = True
    outputs_description = ("dense per-location outputs [N, L, 4 + num_classes]: box x1, y1, x2, y2 in input pixels, "
                           "then class logits (sigmoid scores)")

    def __init__(self, num_classes: int | None = None, *, score_threshold: float = 0.05, candidates: int = 1000,
                 nms_iou: float = 0.5, max_detections: int = 100) -> None:
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.candidates = candidates
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self._tables: dict[int, tuple[SampleScores, list]] = {}

    def check_outputs(self, outputs: torch.Tensor, num_samples: int) -> None:
        """Outputs must be [N, L, 4 + C] (C the number of classes when known)."""
        c = self.num_classes
        if outputs.ndim != 3 or outputs.shape[0] != num_samples or outputs.shape[2] < 5 or (
                c is not None and outputs.shape[2] != 4 + c):
            raise ValueError(f"detection: model outputs have shape {tuple(outputs.shape)}, expected ({num_samples}, L, "
                             f"{4 + c if c is not None else '4 + C'}): {self.outputs_description}")

    def decode(self, outputs: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image (boxes float32 [k, 4], scores float32 [k], labels int64 [k]), by descending score."""
        from torchvision.ops import batched_nms

        num_classes = outputs.shape[2] - 4
        found = []
        for out in outputs.float():
            scores = torch.sigmoid(out[:, 4:]).reshape(-1)
            keep = torch.nonzero(scores > self.score_threshold).reshape(-1)
            if len(keep) > self.candidates:
                keep = keep[scores[keep].topk(self.candidates).indices]
            loc, labels = keep // num_classes, keep % num_classes
            boxes, s = out[loc, :4], scores[keep]
            # boxes without area are no detections (torchvision's remove_small_boxes; COCOeval would ignore some)
            valid = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).reshape(-1)
            boxes, s, labels = boxes[valid], s[valid], labels[valid]
            kept = batched_nms(boxes, s, labels, self.nms_iou)[:self.max_detections]
            found.append((boxes[kept].numpy(), s[kept].numpy(), labels[kept].numpy().astype(np.int64)))
        return found

    def output_classes(self, outputs: torch.Tensor) -> int:
        """The number of classes of the outputs (their width less the 4 box values)."""
        return outputs.shape[2] - 4

    def scores(self, outputs: torch.Tensor, labels: Sequence[Any]) -> SampleScores:
        """Per image: the match table of its detections (score, class, TP per IoU threshold; with crowd regions
        also which are ignored per threshold) and its ground-truth count per class. ``labels``: per image an
        object with ``boxes`` [k, 4] and ``classes`` [k] (and optionally ``crowd_boxes``, ``crowd_classes``)."""
        if len(labels) != outputs.shape[0]:
            raise ValueError(f"detection: {outputs.shape[0]} outputs but {len(labels)} ground truths")
        num_classes = self.output_classes(outputs)
        det_ignored, any_crowd = [], False
        gt_counts = np.zeros((len(labels), num_classes), np.int64)
        det_scores, det_labels, det_tp = [], [], []
        for i, ((boxes, sc, lab), gt) in enumerate(zip(self.decode(outputs), labels)):
            gcls = np.asarray(gt.classes, np.int64)
            if len(gcls) and (gcls.min() < 0 or gcls.max() >= num_classes):
                raise ValueError(f"detection: image {i} has ground-truth class {int(gcls.max())} outside the "
                                 f"model's {num_classes} classes")
            gt_counts[i] = np.bincount(gcls, minlength=num_classes)
            order, tp = match_image(boxes, sc, lab, np.asarray(gt.boxes, np.float32), gcls, self.max_detections)
            crowd_cls = np.asarray(getattr(gt, "crowd_classes", ()), np.int64)
            if len(crowd_cls):
                any_crowd = True
                det_ignored.append(crowd_ignored(boxes, lab, order, tp, np.asarray(gt.crowd_boxes, np.float32),
                                                 crowd_cls))
            else:
                det_ignored.append(np.zeros_like(tp))
            det_scores.append(sc[order].astype(np.float64))
            det_labels.append(lab[order])
            det_tp.append(tp)
        obj = lambda xs: np.array(xs + [None], dtype=object)[:-1]  # noqa: E731 (1-D object array of arrays)
        columns = {"gt_counts": gt_counts, "det_scores": obj(det_scores), "det_labels": obj(det_labels),
                   "det_tp": obj(det_tp)}
        if any_crowd:  # only then: every other dataset's scores keep their columns
            columns["det_ignored"] = obj(det_ignored)
        return SampleScores(self.name, columns)

    def _class_tables(self, scores: SampleScores) -> list[tuple]:
        """Per class (images [D], tp [D, T], gt_counts [N], ignored [D, T] or None) with detections in COCOeval's
        global order: images in order, each image's by descending score, then a stable sort by descending score.
        Built once per scores."""
        cached = self._tables.get(id(scores))
        if cached is not None and cached[0] is scores:
            return cached[1]
        gt_counts = scores["gt_counts"]
        n, num_classes = gt_counts.shape
        counts = [len(s) for s in scores["det_scores"]]
        images = np.repeat(np.arange(n), counts)
        cat = lambda col, empty: np.concatenate(list(scores[col])) if sum(counts) else empty  # noqa: E731
        s = cat("det_scores", np.zeros(0))
        lab = cat("det_labels", np.zeros(0, np.int64))
        tp = cat("det_tp", np.zeros((0, len(IOU_THRESHOLDS)), bool))
        ig = cat("det_ignored", np.zeros((0, len(IOU_THRESHOLDS)), bool)) if "det_ignored" in scores.columns else None
        tables = []
        for c in range(num_classes):
            idx = np.nonzero(lab == c)[0]
            idx = idx[np.argsort(-s[idx], kind="mergesort")]
            tables.append((images[idx], tp[idx], gt_counts[:, c], None if ig is None else ig[idx]))
        if len(self._tables) >= 8:
            self._tables.pop(next(iter(self._tables)))
        self._tables[id(scores)] = (scores, tables)
        return tables

    def map_per_threshold(self, scores: SampleScores, weights: np.ndarray) -> np.ndarray:
        """Mean AP over classes at each IoU threshold, for each row of image ``weights`` [R, N]: [R, T]."""
        tables = self._class_tables(scores)
        weights = np.asarray(weights, np.float64).reshape(-1, scores.n)
        aps = np.stack([average_precision(weights, img, tp, gtc, ig) for img, tp, gtc, ig in tables])  # [C, R, T]
        with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
            sup.filter(RuntimeWarning)
            return np.nanmean(aps, axis=0)

    def _weights(self, n: int, indices: np.ndarray | None) -> np.ndarray:
        return np.ones((1, n)) if indices is None else np.bincount(np.asarray(indices), minlength=n)[None].astype(float)

    def aggregate(self, scores: SampleScores, indices: np.ndarray | None = None) -> float:
        """mAP@[.5:.95] over every image, or over ``indices`` (repeats count as copies of an image)."""
        return float(np.nanmean(self.map_per_threshold(scores, self._weights(scores.n, indices))[0]))

    def map50(self, scores: SampleScores, indices: np.ndarray | None = None) -> float:
        """mAP@.5 (COCO's AP50)."""
        return float(self.map_per_threshold(scores, self._weights(scores.n, indices))[0, 0])

    def aggregate_resamples(self, scores: SampleScores, draws: np.ndarray) -> np.ndarray:
        """mAP@[.5:.95] of each resample row: multiplicities per image applied to the precomputed tables.

        Remembered by content (the scores' arrays and the draws): every gate of a run compares a model with the
        same reference on the same fixed-seed draws, so the reference's half of each bootstrap (half its cost,
        ~14 s CPU on 500 canvases) is computed once per run, not once per gate."""
        key = (_scores_digest(scores), hashlib.sha256(np.ascontiguousarray(draws).tobytes()).hexdigest(), draws.shape)
        if key in _RESAMPLED:
            _RESAMPLED.move_to_end(key)
            return _RESAMPLED[key].copy()
        result = self._aggregate_resamples(scores, draws)
        _RESAMPLED[key] = result.copy()
        if len(_RESAMPLED) > _RESAMPLED_MAX:
            _RESAMPLED.popitem(last=False)
        return result

    def _aggregate_resamples(self, scores: SampleScores, draws: np.ndarray) -> np.ndarray:
        k, n = draws.shape
        out = []
        for start in range(0, k, 500):  # bounded memory: 500 resamples x D detections per class at once
            rows = draws[start:start + 500]
            flat = (np.arange(len(rows))[:, None] * n + rows).reshape(-1)
            weights = np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)
            per_t = self.map_per_threshold(scores, weights)
            with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
                sup.filter(RuntimeWarning)
                out.append(np.nanmean(per_t, axis=1))
        return np.concatenate(out)

    def paired(self, ref: SampleScores, new: SampleScores, *, resamples: int = BOOTSTRAP_RESAMPLES,
               seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> MetricComparison:
        """The generic paired bootstrap over images, with mAP@.5 of both models in the extras."""
        base = super().paired(ref, new, resamples=resamples, seed=seed, level=level)
        return MetricComparison(task=base.task, metric=base.metric, higher_is_better=base.higher_is_better, n=base.n,
                                metric_ref=base.metric_ref, metric_new=base.metric_new, delta_ci95=base.delta_ci95,
                                extra={"map50_ref": self.map50(ref), "map50_new": self.map50(new)})

    def format_value(self, value: float) -> str:
        """mAP in percent ("41.27%")."""
        return f"{value * 100:.2f}%"
