"""Greedy non-maximum suppression, and its per-class form, as torchvision's CPU kernels decide it.

Shape glossary
    N: number of boxes (candidates)
    K: number of kept boxes

Boxes are (N, 4) as x1, y1, x2, y2; float32 boxes are compared in float32 and float64 boxes in float64 (the IoU is
evaluated in the boxes' dtype, then compared with the threshold in double, as torchvision `nms_kernel.cpp`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import _validate as V

# torchvision ops/boxes.py batched_nms: on CPU, boxes.numel() > 4000 (more than 1000 boxes) takes the per-class
# ("vanilla") path, otherwise the coordinate-offset trick (facts §8).
VANILLA_MIN_BOXES = 1001


@njit(cache=True, error_model="numpy")
def _nms_kernel(boxes, order, iou_threshold):
    """Greedy loop over `order` (indices by descending score); returns the kept indices in that order.

    boxes: (N, 4) float32 or float64; order: (N,) int64; iou_threshold: float64.
    """
    n = boxes.shape[0]
    zero = boxes.dtype.type(0)
    areas = np.empty(n, boxes.dtype)                    # (N,) no +1 (facts §8); a loop: the array expression
    for k in range(n):                                  # it replaces cost ~0.3 s more compilation (measured)
        areas[k] = (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])
    suppressed = np.zeros(n, np.bool_)                  # (N,)
    keep = np.empty(n, np.int64)                        # (N,) first `num_kept` entries used
    num_kept = 0
    for _i in range(n):
        i = order[_i]
        if suppressed[i]:
            continue
        keep[num_kept] = i
        num_kept += 1
        for _j in range(_i + 1, n):
            j = order[_j]
            if suppressed[j]:
                continue
            w = max(zero, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(zero, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = w * h
            iou = inter / (areas[i] + areas[j] - inter)  # in the boxes' dtype; 0/0 = NaN never suppresses
            if np.float64(iou) > iou_threshold:          # compared in double: IoU == threshold is kept
                suppressed[j] = True
    return keep[:num_kept]


def _checked(boxes, scores):
    b = V.not_nan("boxes", V.floating("boxes", V.array("boxes", boxes, ndim=2, last=4)))  # (N, 4)
    s = V.not_nan("scores", V.array("scores", scores, shape=(b.shape[0],), ndim=1))       # (N,)
    return b, s


def _threshold(iou_threshold) -> float:
    return V.real("iou_threshold", iou_threshold, low=0.0)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Stable descending order (ties keep ascending index), as torch's `sort(stable=True, descending=True)`."""
    return np.argsort(-scores.astype(np.float64), kind="stable").astype(np.int64)   # (N,)


def nms(boxes, scores, iou_threshold) -> np.ndarray:
    """Indices (K,) int64 of the boxes kept by greedy NMS, by descending score (torchvision `ops.nms`).

    A box is suppressed by a higher-scoring kept box when their IoU > iou_threshold (an IoU exactly at the threshold
    is kept). Tied scores are visited in ascending index order. Integer/float16 boxes are computed in float32.
    """
    b, s = _checked(boxes, scores)
    return _nms_kernel(b, _descending(s), _threshold(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold) -> np.ndarray:
    """NMS independently per category `idxs` (N,) integer; indices (K,) int64 by descending score
    (torchvision `ops.batched_nms`, taking torchvision's path for the same box count, facts §8):

    * N <= 1000: the coordinate trick. Every box is shifted by idx * (max(boxes) + 1), added in the boxes' dtype,
      then one `nms` runs. Large offsets round the coordinates, so the decisions are those of the shifted boxes
      (which may differ slightly from exact per-class NMS, exactly as in torchvision).
    * N > 1000: per-class NMS on each class in ascending order, then the kept indices (gathered in ascending index
      order) are sorted by descending score. torchvision's sort there is not stable, so among exactly tied scores the
      order of this function (ascending index) may differ from torchvision's; the kept set and all untied positions
      are the same.

    Empty `boxes` of any shape give an empty int64 result without any other argument being checked, as torchvision.
    """
    if V.array("boxes", boxes).size == 0:
        # torchvision `_batched_nms_coordinate_trick` returns first when boxes.numel() == 0, whatever the shape of
        # the boxes and before it looks at scores, idxs or the threshold (which may be None / anything then)
        return np.empty(0, np.int64)
    b, s = _checked(boxes, scores)                                               # (N, 4), (N,)
    ids = V.array("idxs", idxs, shape=(b.shape[0],), ndim=1)                     # (N,)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"idxs: expected an integer array of category indices, got dtype {ids.dtype}")
    thr = _threshold(iou_threshold)
    n = b.shape[0]
    if n >= VANILLA_MIN_BOXES:
        return _batched_nms_vanilla(b, s, ids, thr)
    # Coordinate trick (torchvision `_batched_nms_coordinate_trick`): offsets in the boxes' dtype.
    one = b.dtype.type(1)
    offsets = ids.astype(b.dtype) * (b.max() + one)                              # (N,)
    shifted = b + offsets[:, None]                                               # (N, 4)
    return _nms_kernel(shifted, _descending(s), thr)


def _batched_nms_vanilla(b: np.ndarray, s: np.ndarray, ids: np.ndarray, thr: float) -> np.ndarray:
    keep_mask = np.zeros(b.shape[0], np.bool_)                                   # (N,)
    for class_id in np.unique(ids):
        members = np.flatnonzero(ids == class_id)                                # (Nc,) ascending
        sub_b = np.ascontiguousarray(b[members])                                 # (Nc, 4)
        keep_mask[members[_nms_kernel(sub_b, _descending(s[members]), thr)]] = True
    kept = np.flatnonzero(keep_mask)                                             # (K,) ascending index
    return kept[_descending(s[kept])]                                            # (K,) by descending score
