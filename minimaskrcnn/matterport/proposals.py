"""matterport's ProposalLayer (mrcnn/model.py): anchors + RPN deltas -> POST_NMS_ROIS_INFERENCE proposals.

Shape glossary
    N      anchors (all levels);  K = min(PRE_NMS_LIMIT, N);  R  POST_NMS_ROIS_INFERENCE
    boxes  [.., (y1, x1, y2, x2)] in normalized coordinates (anchors.py)

Steps, and where torchvision (stages/rpn.py, facts §4) differs:
  1. deltas *= RPN_BBOX_STD_DEV (float32); torchvision divides by weights (1, 1, 1, 1) instead;
  2. the K best fg probabilities over *all* levels together (tf.nn.top_k: ties to the lower index); torchvision takes
     the top 1000 per level;
  3. apply_box_deltas (Faster R-CNN Eq. 2 inverted) in normalized coordinates, float32, in matterport's order:
     h = y2 - y1, cy = y1 + 0.5 h, cy += dy h, h *= exp(dh), y1 = cy - 0.5 h, y2 = y1 + h (the same for x); no
     clamp of dh/dw (torchvision clamps at log(1000/16)) and no +1;
  4. clip to [0, 1]; no small-box removal (torchvision drops boxes under 1e-3 px and scores under 0);
  5. one NMS over all levels at RPN_NMS_THRESHOLD (tf_nms.py, TF's tie order and zero-area rule); torchvision runs
     it per level;
  6. zero rows appended up to R: the heads see these [0, 0, 0, 0] boxes too.
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.matterport.tf_nms import non_max_suppression


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, descending, equal scores by ascending index (tf.nn.top_k, sorted=True)."""
    return np.argsort(-scores, kind="stable")[:k]


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """[N, (y1, x1, y2, x2)] refined by [N, (dy, dx, log dh, log dw)], float32, matterport's operation order."""
    boxes = np.asarray(boxes, np.float32)
    deltas = np.asarray(deltas, np.float32)
    h = boxes[:, 2] - boxes[:, 0]                                           # (N,)
    w = boxes[:, 3] - boxes[:, 1]                                           # (N,)
    cy = boxes[:, 0] + np.float32(0.5) * h
    cx = boxes[:, 1] + np.float32(0.5) * w
    cy = cy + deltas[:, 0] * h
    cx = cx + deltas[:, 1] * w
    h = h * np.exp(deltas[:, 2])
    w = w * np.exp(deltas[:, 3])
    y1 = cy - np.float32(0.5) * h
    x1 = cx - np.float32(0.5) * w
    return np.stack([y1, x1, y1 + h, x1 + w], axis=1)                       # (N, 4)


def clip_boxes(boxes: np.ndarray, window) -> np.ndarray:
    """Clip [N, (y1, x1, y2, x2)] to window (wy1, wx1, wy2, wx2): max(min(v, hi), lo) per coordinate."""
    wy1, wx1, wy2, wx2 = np.asarray(window, np.float32)
    lo = np.array([wy1, wx1, wy1, wx1], np.float32)
    hi = np.array([wy2, wx2, wy2, wx2], np.float32)
    return np.maximum(np.minimum(boxes, hi), lo)                            # (N, 4)


def proposals(rpn_probs: np.ndarray, rpn_deltas: np.ndarray, anchors: np.ndarray, cfg) -> np.ndarray:
    """[R, (y1, x1, y2, x2)] float32 normalized proposals, zero-padded ("ROI")."""
    scores = np.asarray(rpn_probs, np.float32)[:, 1]                        # (N,) fg probability
    deltas = np.asarray(rpn_deltas, np.float32) * np.asarray(cfg.RPN_BBOX_STD_DEV, np.float32)   # (N, 4)
    ix = top_k(scores, min(cfg.PRE_NMS_LIMIT, scores.shape[0]))             # (K,)
    boxes = apply_box_deltas(np.asarray(anchors, np.float32)[ix], deltas[ix])   # (K, 4)
    boxes = clip_boxes(boxes, (0, 0, 1, 1))                                 # (K, 4)
    keep = non_max_suppression(boxes, scores[ix], cfg.POST_NMS_ROIS_INFERENCE, cfg.RPN_NMS_THRESHOLD)
    out = np.zeros((cfg.POST_NMS_ROIS_INFERENCE, 4), np.float32)            # (R, 4)
    out[: len(keep)] = boxes[keep]
    return out
