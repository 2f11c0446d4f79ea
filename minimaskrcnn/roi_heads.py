"""Stages 4-5: the RoI heads (Fast R-CNN box branch and Mask R-CNN mask branch; torchvision roi_heads.py).

Box branch: pool a 7x7 feature from the FPN level chosen by each proposal's size (FPN Eq. 1), run the box head, then
turn class logits and per-class deltas into final detections (softmax, decode, clip, score threshold, per-class NMS,
top 100; facts §6). Mask branch (He et al. 2017, §3): pool 14x14 features for the final boxes, predict a 28x28 mask of
the predicted class, sigmoid (facts §7).

Shape glossary
    P: proposals (<= 1000)     C: FPN channels (256)      NC: classes incl. background (91)
    D0: candidates (proposal, class) above the score threshold, before NMS      D: detections (<= 100)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import heads, ops
from .config import Config
from .rpn import sigmoid


class BoxOutput(NamedTuple):
    roi_levels: np.ndarray        # (P,) int64 FPN level index each proposal is pooled from (0 = P2)
    box_features: np.ndarray      # (P, C, 7, 7) pooled RoI features
    class_logits: np.ndarray      # (P, NC)
    box_deltas: np.ndarray        # (P, NC*4) as dx, dy, dw, dh per class, class-major
    candidate_boxes: np.ndarray   # (D0, 4) x1, y1, x2, y2 in resized-image pixels, before NMS
    candidate_scores: np.ndarray  # (D0,)
    candidate_labels: np.ndarray  # (D0,) int64
    boxes: np.ndarray             # (D, 4) x1, y1, x2, y2 in resized-image pixels, by descending score
    scores: np.ndarray            # (D,)
    labels: np.ndarray            # (D,) int64


class MaskOutput(NamedTuple):
    mask_features: np.ndarray     # (D, C, 14, 14)
    mask_logits: np.ndarray       # (D, 28, 28) logits of each detection's predicted class
    mask_probs: np.ndarray        # (D, 28, 28) sigmoid of the above


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax, evaluated in float64 and rounded to float32 (within an ulp of torch's float32 softmax)."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def postprocess_detections(class_logits, box_deltas, proposals, image_size, cfg: Config, score_thresh: float):
    """Fast R-CNN inference (facts §6 steps 1-9) -> candidates before NMS and detections after.

    Candidates are all (proposal, class >= 1) pairs, flattened proposal-major and class-minor (index k*(NC-1)+c-1),
    kept when score > score_thresh. Decoding is elementwise, so only the kept pairs are decoded.
    """
    num_classes = class_logits.shape[1]
    scores = softmax(class_logits)[:, 1:]                                    # (P, NC-1), background dropped
    k, c = np.nonzero(scores > np.float32(score_thresh))                     # proposal-major order, as flattened
    labels = (c + 1).astype(np.int64)                                        # (D0,)
    deltas = box_deltas.reshape(-1, num_classes, 4)[k, labels]               # (P, NC*4) -> (P, NC, 4) -> (D0, 4)
    boxes = ops.decode_boxes(deltas, proposals[k], cfg.bbox_reg_weights)     # (D0, 4)
    boxes = ops.clip_boxes(boxes, image_size)
    scores = scores[k, c]                                                    # (D0,)
    keep = ops.remove_small_boxes(boxes, 1e-2)          # torchvision roi_heads.postprocess_detections min_size
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = ops.batched_nms(boxes, scores, labels, cfg.box_nms_thresh)[:cfg.box_detections_per_img]
    return (boxes, scores, labels), (boxes[keep], scores[keep], labels[keep])


def box_forward(head_weights, pyramid, proposals, image_size, cfg: Config, score_thresh: float) -> BoxOutput:
    """Pool, run the box head and post-process. pyramid: the FPN maps; all but the extra max-pool level (P6) are
    pooled from (torchvision's poolers name '0'..'3' only, facts §5)."""
    maps = pyramid[:-1]
    scales = ops.infer_scales([m.shape for m in maps], image_size)           # e.g. 1/4 .. 1/32
    roi_levels = ops.fpn_levels(proposals, round(-np.log2(scales[0])), round(-np.log2(scales[-1])))  # (P,)
    box_features = ops.multiscale_roi_align(maps, proposals, image_size, cfg.box_roi_size, cfg.sampling_ratio)
    class_logits, box_deltas = heads.box_head_forward(head_weights, box_features)  # (P, NC), (P, NC*4)
    candidates, detections = postprocess_detections(class_logits, box_deltas, proposals, image_size, cfg,
                                                    score_thresh)
    return BoxOutput(roi_levels, box_features, class_logits, box_deltas, *candidates, *detections)


def mask_forward(head_weights, pyramid, boxes, labels, image_size, cfg: Config) -> MaskOutput:
    """Mask R-CNN mask branch on the final detections (resized-image boxes); probabilities of the predicted class."""
    features = ops.multiscale_roi_align(pyramid[:-1], boxes, image_size, cfg.mask_roi_size, cfg.sampling_ratio)
    logits = heads.mask_head_forward(head_weights, features, labels)         # (D, 28, 28)
    return MaskOutput(features, logits, sigmoid(logits))
