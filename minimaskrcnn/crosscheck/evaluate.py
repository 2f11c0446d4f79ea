"""Detection quality and implementation parity over a set of images, in NumPy.

`average_precision`: COCO-style AP at one IoU threshold (AP@0.5 by default) for boxes or masks, computed as
pycocotools' COCOeval does (`evaluateImg` + `accumulate` + the AP of `summarize`) for one IoU threshold, area range
'all' and no crowd annotations (tests/demo/test_shapes.py checks it against COCOeval):
- per image and class, detections are taken in descending score order (stable), at most `max_dets` of them;
- each in turn takes the not yet matched ground truth of its class with the highest IoU >= the threshold (on equal
  IoUs the later one, as COCOeval's loop does); a detection that takes none is a false positive;
- per class, the detections of all images are ranked by descending score (stable, images in order); precision
  tp / (tp + fp + eps) is made non-increasing from the right (its envelope) and read at the 101 recall points
  0, 0.01, ..., 1 (at the first rank reaching that recall; 0 where it is never reached); the class AP is their mean;
- AP is the mean over the classes that have at least one ground-truth instance.
Box IoU is pycocotools' (boxes as x, y, w, h in float64, no +1); mask IoU counts pixels of the binarized masks.

`parity`: the parity protocol (`matching.match_detections`, facts §10.4) summed over images: one to one matches by
same label and box IoU > 0.99, with the box, score and mask differences of the matched pairs.

Inputs are per-image records with attributes (`shapes.Sample`, `detections.Detections`) or mappings with keys
`boxes` (n, 4) as x1, y1, x2, y2 in pixels, `labels` (n,), `masks` (n, H, W) bool or probabilities, and for
detections `scores` (n,).

Shape glossary
    D: detections of one image (and class)      G: ground-truth instances of one image (and class)
    P: pixels of an image, H * W               R: recall points (101)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minimaskrcnn.crosscheck.matching import MatchStats, match_detections

__all__ = ["APResult", "average_precision", "parity", "RECALL_POINTS"]

RECALL_POINTS = np.linspace(0.0, 1.0, 101)      # COCOeval Params.recThrs
_EPS = np.spacing(1)                            # COCOeval accumulate: pr = tp / (fp + tp + np.spacing(1))


def _field(record, name):
    return record[name] if isinstance(record, dict) else getattr(record, name)


def _array(record, name, dtype, shape_tail=()):
    a = np.asarray(_field(record, name))
    if a.size == 0:
        return np.zeros((0,) + shape_tail, dtype)
    return a.astype(dtype, copy=False)


@dataclass
class APResult:
    ap: float                                   # mean over classes with ground truth (nan when there is none)
    per_class: dict = field(default_factory=dict)   # label -> AP of that class


# --- IoU --------------------------------------------------------------------------------------------------------------

def box_iou_coco(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(D, G) IoU of boxes x1, y1, x2, y2, as pycocotools' bbIou on x, y, w, h in float64 (no crowd)."""
    d, g = np.asarray(d, np.float64), np.asarray(g, np.float64)
    dx, dy, dw, dh = d[:, 0], d[:, 1], d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]      # (D,) each
    gx, gy, gw, gh = g[:, 0], g[:, 1], g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]      # (G,) each
    w = np.minimum(dx[:, None] + dw[:, None], gx + gw) - np.maximum(dx[:, None], gx)   # (D, G)
    h = np.minimum(dy[:, None] + dh[:, None], gy + gh) - np.maximum(dy[:, None], gy)   # (D, G)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)                             # (D, G)
    union = (dw * dh)[:, None] + gw * gh - inter                                 # (D, G)
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(D, G) IoU of binary masks (D, H, W) and (G, H, W); 0 where both are empty."""
    pixels = int(np.prod(d.shape[1:]))
    a = d.reshape(d.shape[0], pixels).astype(np.float64)                         # (D, P)
    b = g.reshape(g.shape[0], pixels).astype(np.float64)                         # (G, P)
    inter = a @ b.T                                                              # (D, G) exact pixel counts
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter                        # (D, G)
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


# --- AP ---------------------------------------------------------------------------------------------------------------

def _match_image(ious: np.ndarray, threshold: float) -> np.ndarray:
    """(D,) bool: which detections (rows, in score order) take a ground truth (columns), COCOeval evaluateImg."""
    taken = np.zeros(ious.shape[1], bool)                                        # (G,)
    hit = np.zeros(ious.shape[0], bool)                                          # (D,)
    t = min(threshold, 1 - 1e-10)
    for i in range(ious.shape[0]):
        best, m = t, -1
        for j in range(ious.shape[1]):
            if taken[j] or ious[i, j] < best:
                continue
            best, m = ious[i, j], j
        if m >= 0:
            taken[m] = hit[i] = True
    return hit


def _class_ap(scores: np.ndarray, hits: np.ndarray, n_gt: int) -> float:
    """AP of one class from its detections' scores and hits (images concatenated in order), COCOeval accumulate."""
    order = np.argsort(-scores, kind="mergesort")                                # stable, as COCOeval
    tp = np.cumsum(hits[order]).astype(np.float64)                               # (D,)
    fp = np.cumsum(~hits[order]).astype(np.float64)                              # (D,)
    if tp.size == 0:
        return 0.0
    recall = tp / n_gt
    precision = tp / (fp + tp + _EPS)
    precision = np.maximum.accumulate(precision[::-1])[::-1]                     # envelope, non-increasing
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")                    # (R,)
    q = np.where(idx < precision.size, precision[np.minimum(idx, precision.size - 1)], 0.0)   # (R,)
    return float(q.mean())


def average_precision(ground_truth, detections, kind: str = "mask", iou_threshold: float = 0.5,
                      max_dets: int = 100, mask_threshold: float = 0.5) -> APResult:
    """COCO AP at `iou_threshold` of `detections` against `ground_truth` (equal-length lists, one per image).

    kind: "box" or "mask". Detection masks are binarized as `masks >= mask_threshold` (ground-truth masks too, so
    boolean masks pass unchanged).
    """
    if kind not in ("box", "mask"):
        raise ValueError(f"kind: expected 'box' or 'mask', got {kind!r}")
    if len(ground_truth) != len(detections):
        raise ValueError(f"ground_truth and detections: expected one record per image each, got "
                         f"{len(ground_truth)} and {len(detections)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: expected a value in [0, 1], got {iou_threshold!r}")
    scores, hits, n_gt = {}, {}, {}                                              # label -> lists / count
    for gt, det in zip(ground_truth, detections):
        g_labels = _array(gt, "labels", np.int64)
        d_labels, d_scores = _array(det, "labels", np.int64), _array(det, "scores", np.float64)
        g_boxes, d_boxes = _array(gt, "boxes", np.float64, (4,)), _array(det, "boxes", np.float64, (4,))
        if kind == "mask":
            g_masks = np.asarray(_field(gt, "masks")) >= mask_threshold             # (G_all, H, W)
            d_masks = np.asarray(_field(det, "masks")) >= mask_threshold            # (D_all, H, W)
        for label in np.union1d(g_labels, d_labels):
            gi = np.flatnonzero(g_labels == label)                               # (G,)
            di = np.flatnonzero(d_labels == label)                               # (D,)
            di = di[np.argsort(-d_scores[di], kind="mergesort")][:max_dets]       # score order, capped
            if kind == "box":
                ious = box_iou_coco(d_boxes[di], g_boxes[gi])                    # (D, G)
            else:
                ious = mask_iou(d_masks[di], g_masks[gi])                        # (D, G)
            label = int(label)
            n_gt[label] = n_gt.get(label, 0) + gi.size
            scores.setdefault(label, []).append(d_scores[di])
            hits.setdefault(label, []).append(_match_image(ious, iou_threshold))
    per_class = {label: _class_ap(np.concatenate(scores[label]), np.concatenate(hits[label]), n)
                 for label, n in sorted(n_gt.items()) if n > 0}
    ap = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return APResult(ap, per_class)


# --- parity -----------------------------------------------------------------------------------------------------------

def parity(reference, candidate, min_iou: float = 0.99, mask_threshold: float = 0.5) -> MatchStats:
    """`match_detections` of each image's candidate detections against the reference's, summed over images."""
    if len(reference) != len(candidate):
        raise ValueError(f"reference and candidate: expected one record per image each, got {len(reference)} and "
                         f"{len(candidate)}")
    stats = []
    for ref, cand in zip(reference, candidate):
        masks = [None, None]
        if _has_masks(ref) and _has_masks(cand):
            masks = [_field(ref, "masks"), _field(cand, "masks")]
        stats.append(match_detections(_array(ref, "boxes", np.float64, (4,)), _array(ref, "labels", np.int64),
                                      _array(ref, "scores", np.float64), _array(cand, "boxes", np.float64, (4,)),
                                      _array(cand, "labels", np.int64), _array(cand, "scores", np.float64),
                                      *masks, min_iou=min_iou, mask_threshold=mask_threshold))
    return MatchStats.combine(stats)


def _has_masks(record) -> bool:
    try:
        return _field(record, "masks") is not None
    except (KeyError, AttributeError):
        return False
