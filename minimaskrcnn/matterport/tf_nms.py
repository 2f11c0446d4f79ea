"""tf.image.non_max_suppression as TensorFlow 1.15 computes it on the CPU (non_max_suppression_op.cc), ties included.

Shape glossary
    N      candidate boxes [N, (y1, x1, y2, x2)] (any corner order), scores (N,)

Greedy NMS (Neubeck & Van Gool 2006): repeatedly take the best remaining box and drop it if it overlaps an already
kept one too much. TF 1.15's kernel (the soft-NMS rewrite of that release) has four properties that decide the
exact output, each measured against TF itself (tests/oracles/tf_ops_dump.py, tests/matterport/test_kernels.py):
  * IoU: corners sorted per box (min/max), float32 areas, IoU := 0 when either box has area <= 0;
  * suppression when IoU >= threshold (an IoU of exactly 0.5 is suppressed at 0.5; at threshold 0 even disjoint
    boxes are), where torchvision and the TF docs say "greater than";
  * a selected candidate is pushed back into the queue with its score and compared, when it comes out again, with
    the boxes selected since (itself included): a box of positive area then suppresses itself (IoU 1), but a
    zero-area box (IoU 0) is selected again and again until max_output is reached. This is the "repeated indices"
    of ../shared/oracles/README.md; random weights clip many proposals to zero height, so it happens in practice;
  * equal scores come out in the order of a `std::priority_queue` (libstdc++ binary max-heap, candidates pushed in
    index order), not by index. We replay that heap exactly (`_heap_push`, `_heap_pop`): ties are common here
    because the molded image's padding is constant, so its anchors score identically.
torchvision's nms (ops/nms.py) orders ties by a stable sort, suppresses on IoU > threshold, never repeats.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def non_max_suppression(boxes, scores, max_output: int, iou_threshold: float) -> np.ndarray:
    """Indices (int64) of the kept boxes, best first, as tf.image.non_max_suppression (score_threshold -inf)."""
    boxes = np.ascontiguousarray(boxes, np.float32)
    scores = np.ascontiguousarray(scores, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"boxes (N, 4) and scores (N,) expected, got {boxes.shape} and {scores.shape}")
    if int(max_output) < 0:
        raise ValueError(f"max_output: expected >= 0, got {max_output}")
    return _nms_kernel(boxes, scores, int(max_output), np.float32(iou_threshold))


@njit(cache=True)
def _heap_push(hs, hi, hb, n, score, index, begin):
    """std::push_heap of (score, index, begin) onto heap[:n] (libstdc++ __push_heap: sift up from position n while
    parent < value)."""
    hole = n
    parent = (hole - 1) // 2
    while hole > 0 and hs[parent] < score:
        hs[hole], hi[hole], hb[hole] = hs[parent], hi[parent], hb[parent]
        hole = parent
        parent = (hole - 1) // 2
    hs[hole], hi[hole], hb[hole] = score, index, begin


@njit(cache=True)
def _heap_pop(hs, hi, hb, n):
    """std::pop_heap of heap[:n]; returns the top (index, begin), the heap is then heap[:n-1] (libstdc++
    __adjust_heap: the hole at the root moves down to a leaf, always to the larger child, the right one on a tie;
    then the former last element is sifted up from there, as `_heap_push` does from a given position)."""
    top_i, top_b = hi[0], hb[0]
    v_s, v_i, v_b = hs[n - 1], hi[n - 1], hb[n - 1]
    length = n - 1
    hole = 0
    child = 0
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if hs[child] < hs[child - 1]:
            child -= 1
        hs[hole], hi[hole], hb[hole] = hs[child], hi[child], hb[child]
        hole = child
    if (length & 1) == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        hs[hole], hi[hole], hb[hole] = hs[child - 1], hi[child - 1], hb[child - 1]
        hole = child - 1
    _heap_push(hs, hi, hb, hole, v_s, v_i, v_b)                  # the sift-up of __push_heap, from the hole
    return top_i, top_b


@njit(cache=True)
def _iou(b, i, j):
    ymin_i, ymax_i = min(b[i, 0], b[i, 2]), max(b[i, 0], b[i, 2])
    xmin_i, xmax_i = min(b[i, 1], b[i, 3]), max(b[i, 1], b[i, 3])
    ymin_j, ymax_j = min(b[j, 0], b[j, 2]), max(b[j, 0], b[j, 2])
    xmin_j, xmax_j = min(b[j, 1], b[j, 3]), max(b[j, 1], b[j, 3])
    area_i = (ymax_i - ymin_i) * (xmax_i - xmin_i)
    area_j = (ymax_j - ymin_j) * (xmax_j - xmin_j)
    if area_i <= 0 or area_j <= 0:
        return np.float32(0)
    ih = max(min(ymax_i, ymax_j) - max(ymin_i, ymin_j), np.float32(0))
    iw = max(min(xmax_i, xmax_j) - max(xmin_i, xmin_j), np.float32(0))
    inter = ih * iw
    return inter / (area_i + area_j - inter)


@njit(cache=True)
def _nms_kernel(boxes, scores, max_output, thr):
    n = boxes.shape[0]
    cap = n + max_output + 1                     # every box once, plus one re-push per selection
    hs = np.empty(cap, np.float32)
    hi = np.empty(cap, np.int64)
    hb = np.empty(cap, np.int64)
    size = 0
    for i in range(n):
        if scores[i] > -np.inf:                  # score_threshold = -inf: every non-NaN score is a candidate
            _heap_push(hs, hi, hb, size, scores[i], i, 0)
            size += 1
    keep = np.empty(max_output, np.int64)
    kept = 0
    while kept < max_output and size > 0:
        i, begin = _heap_pop(hs, hi, hb, size)
        size -= 1
        ok = True
        for k in range(kept - 1, begin - 1, -1):     # newest first, only those selected since its last visit
            if _iou(boxes, i, keep[k]) >= thr:
                ok = False
                break
        if ok:
            keep[kept] = i
            # TF 1.15 pushes a selected candidate back (same score), to be compared with what was selected from
            # its own selection on: a box of positive area then suppresses itself (IoU 1), a zero-area one
            # (IoU 0) is selected again and again.
            _heap_push(hs, hi, hb, size, scores[i], i, kept)
            size += 1
            kept += 1
    return keep[:kept]
