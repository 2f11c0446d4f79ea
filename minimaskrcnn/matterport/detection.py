"""matterport's DetectionLayer (refine_detections_graph): class, box refinement, per-class NMS, top detections.

Shape glossary
    R    proposals (POST_NMS_ROIS_INFERENCE);  K  NUM_CLASSES;  D  DETECTION_MAX_INSTANCES
    out  [D, (y1, x1, y2, x2, class_id, score)] float32, normalized, zero rows after the detections

Per proposal only its argmax class is considered (tf.argmax: first maximum), with that class's probability and
deltas * BBOX_STD_DEV (proposals.apply_box_deltas), clipped to the normalized window (the image without its
padding, in float32 as norm_boxes_graph computes it). Kept: class > 0 and score >= DETECTION_MIN_CONFIDENCE (if it is
non-zero). NMS per class at DETECTION_NMS_THRESHOLD, at most D each (tf_nms.py; each class's candidates in proposal
order, which decides the heap's tie order), merged as a sorted set of proposal indices, then the D best by score
(tf.nn.top_k: ties to the lower index). torchvision instead scores every class of every proposal (softmax,
score > 0.05, boxes per class), removes small boxes and runs one batched NMS at 0.5, 100 detections.
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.matterport.proposals import apply_box_deltas, clip_boxes, top_k
from minimaskrcnn.matterport.tf_nms import non_max_suppression


def normalized_window(window, image_shape) -> np.ndarray:
    """norm_boxes_graph of the pixel window in float32: (w - (0, 0, 1, 1)) / ((H, W, H, W) - 1)."""
    h, w = np.float32(image_shape[0]), np.float32(image_shape[1])
    scale = np.array([h, w, h, w], np.float32) - np.float32(1.0)
    return (np.asarray(window, np.float32) - np.array([0, 0, 1, 1], np.float32)) / scale


def detect(rois, probs, deltas, window_norm, cfg) -> np.ndarray:
    """mrcnn_detection: [D, (y1, x1, y2, x2, class_id, score)] from rois (R, 4), probs (R, K), deltas (R, K, 4)."""
    rois = np.asarray(rois, np.float32)
    probs = np.asarray(probs, np.float32)
    class_ids = np.argmax(probs, axis=1)                                    # (R,)
    r = np.arange(len(class_ids))
    scores = probs[r, class_ids]                                            # (R,)
    d = np.asarray(deltas, np.float32)[r, class_ids] * np.asarray(cfg.BBOX_STD_DEV, np.float32)   # (R, 4)
    refined = clip_boxes(apply_box_deltas(rois, d), window_norm)            # (R, 4)
    ok = class_ids > 0
    if cfg.DETECTION_MIN_CONFIDENCE:
        ok &= scores >= np.float32(cfg.DETECTION_MIN_CONFIDENCE)
    keep = np.nonzero(ok)[0]                                                # ascending proposal indices
    limit = cfg.DETECTION_MAX_INSTANCES
    kept = []
    for c in np.unique(class_ids[keep]):
        ixs = keep[class_ids[keep] == c]                                    # this class's proposals, in order
        sel = non_max_suppression(refined[ixs], scores[ixs], limit, cfg.DETECTION_NMS_THRESHOLD)
        kept.append(ixs[sel])
    keep = np.unique(np.concatenate(kept)) if kept else keep                # sorted set (tf.sets.set_intersection)
    keep = keep[top_k(scores[keep], min(len(keep), limit))]                 # (<= D,)
    out = np.zeros((limit, 6), np.float32)                                  # (D, 6)
    out[: len(keep), :4] = refined[keep]
    out[: len(keep), 4] = class_ids[keep]
    out[: len(keep), 5] = scores[keep]
    return out
