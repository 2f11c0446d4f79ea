"""Stage 4: the box branch (Fast R-CNN; torchvision roi_heads.py, faster_rcnn.py TwoMLPHead / FastRCNNConvFCHead /
FastRCNNPredictor; facts §5, §6).

Pool a 7x7 feature from the FPN level chosen by each proposal's size (FPN Eq. 1), run the box head (v1: two fully
connected layers; v2: four 3x3 convs with BatchNorm folded at load, then one fully connected layer), then turn class
logits and per-class deltas into final detections (softmax, decode, clip, score threshold, per-class NMS, top 100).

Batches of RoIs run through the v2 head convolutions channels-last, (K, H, W, C), so that each convolution is one
im2col (or Winograd transform) and one GEMM over all RoIs (`nn.layers.conv2d_rois`).

Shape glossary
    P: proposals (<= 1000)     C: FPN channels (256)      NC: classes incl. background (91)
    R: box head representation size (1024)
    D0: candidates (proposal, class) above the score threshold, before NMS      D: detections (<= 100)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimaskrcnn import ops
from minimaskrcnn.config import Config
from minimaskrcnn.nn.layers import Linear, conv2d_rois, linear, load_conv, load_linear, softmax


# --- the head -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BoxHeadWeights:
    convs: tuple        # tuple[Conv, ...]: v2 only, cfg.box_head_convs x (3x3 F -> F + BN folded + ReLU), channels-last
    fcs: tuple          # tuple[Linear, ...]: v1 fc6 (F*7*7 -> R), fc7 (R -> R); v2 one (7*7*F -> R); each + ReLU.
                        # The first takes its input flattened in (C, H, W) order (v1) or (H, W, C) after convs (v2)
    predictor: Linear   # R -> NC + 4NC: cls_score rows stacked over bbox_pred rows, one GEMM for both
    num_classes: int    # NC


def load_box_head(sd: Mapping[str, np.ndarray], cfg: Config) -> BoxHeadWeights:
    """v1 TwoMLPHead (`box_head.fc6`, `.fc7`) when cfg.box_head_convs == 0, else v2 FastRCNNConvFCHead
    (`box_head.{i}.0` conv + `.{i}.1` BN for i < n, Flatten at index n, Linear at n+1); `box_predictor.*`."""
    p = "roi_heads.box_head"
    n = cfg.box_head_convs
    convs = tuple(load_conv(sd, f"{p}.{i}.0", 3, padding=1, bn=f"{p}.{i}.1", eps=cfg.bn_eps, channels_last=True)
                  for i in range(n))
    if n:   # torchvision flattens (C, H, W); the channels-last conv output is (H, W, C): permute fc's columns once
        fc = load_linear(sd, f"{p}.{n + 1}")
        c, size = convs[-1].out_channels, cfg.box_roi_size
        # (R, C*P*P) -> (R, C, P, P) -> (R, P, P, C) -> (R, P*P*C)
        weight = fc.weight.reshape(-1, c, size, size).transpose(0, 2, 3, 1).reshape(len(fc.weight), -1)
        fcs = (Linear(np.ascontiguousarray(weight), fc.bias),)
    else:
        fcs = (load_linear(sd, f"{p}.fc6"), load_linear(sd, f"{p}.fc7"))
    if fcs[-1].weight.shape[0] != cfg.representation_size:
        raise ValueError(f"{p}: expected representation size {cfg.representation_size}, "
                         f"got {fcs[-1].weight.shape[0]}")
    cls = load_linear(sd, "roi_heads.box_predictor.cls_score")
    box = load_linear(sd, "roi_heads.box_predictor.bbox_pred")
    if cls.weight.shape[0] != cfg.num_classes or box.weight.shape[0] != 4 * cfg.num_classes:
        raise ValueError(f"roi_heads.box_predictor: expected {cfg.num_classes} classes, got cls_score "
                         f"{cls.weight.shape[0]} and bbox_pred {box.weight.shape[0]} rows")
    predictor = Linear(np.concatenate([cls.weight, box.weight]), np.concatenate([cls.bias, box.bias]))
    return BoxHeadWeights(convs, fcs, predictor, cfg.num_classes)


def box_head_forward(w: BoxHeadWeights, roi_features: np.ndarray) -> tuple:
    """Pooled RoI features (K, F, 7, 7) -> (class_logits (K, NC), box_regression (K, NC*4)).

    box_regression columns 4c..4c+3 are (dx, dy, dw, dh) of class c (facts §6).
    """
    if roi_features.ndim != 4:
        raise ValueError(f"roi_features: expected (K, C, P, P), got shape {roi_features.shape}")
    x = np.asarray(roi_features, np.float32)
    if w.convs:
        x = x.transpose(0, 2, 3, 1)                                         # (K, F, 7, 7) -> (K, 7, 7, F)
        for conv in w.convs:
            x = conv2d_rois(x, conv, relu=True)                             # (K, 7, 7, F)
    x = np.ascontiguousarray(x).reshape(len(x), int(np.prod(x.shape[1:])))  # (K, F*7*7) v1 / (K, 7*7*F) v2
    for fc in w.fcs:
        x = linear(x, fc, relu=True)                                        # (K, R)
    y = linear(x, w.predictor)                                              # (K, NC + 4NC)
    return y[:, :w.num_classes], y[:, w.num_classes:]                       # (K, NC), (K, 4NC)


# --- pooling and post-processing ------------------------------------------------------------------------------------

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
    class_logits, box_deltas = box_head_forward(head_weights, box_features)  # (P, NC), (P, NC*4)
    candidates, detections = postprocess_detections(class_logits, box_deltas, proposals, image_size, cfg,
                                                    score_thresh)
    return BoxOutput(roi_levels, box_features, class_logits, box_deltas, *candidates, *detections)

