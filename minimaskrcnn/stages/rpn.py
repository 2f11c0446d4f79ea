"""Stage 3: the Region Proposal Network (Faster R-CNN, Ren et al. 2015, §3.1; torchvision models/detection/rpn.py).

The head (torchvision RPNHead, facts §4.1: a 3x3 "sliding window" conv, then sibling 1x1 objectness and box-regression
layers) scores every anchor on every FPN level and regresses a box delta for it; the best anchors per level are
decoded into boxes, clipped, de-duplicated by NMS per level, and the top 1000 become the proposals (facts §4.4).

Shape glossary
    F: FPN channels (256)
    L: number of pyramid levels (5: P2..P6)      A: anchors per location (3 aspect ratios)
    Hl, Wl: size of level l                       K: total anchors, sum over l of Hl*Wl*A (217,413 at 800x1088)
    T: candidates after per-level top-k, sum of min(pre_nms_top_n, Hl*Wl*A)
    P: proposals after NMS (<= post_nms_top_n)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimaskrcnn import ops
from minimaskrcnn.config import Config
from minimaskrcnn.nn.layers import Conv, conv2d, load_conv, make_conv, sigmoid


# --- the head -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RPNHeadWeights:
    convs: tuple        # tuple[Conv, ...]: cfg.rpn_conv_depth x (3x3 F -> F, padding 1, + ReLU), shared by the levels
    predictor: Conv     # 1x1 F -> A + 4A: cls_logits rows (A) stacked over bbox_pred rows (4A), one GEMM for both
    num_anchors: int    # A


def load_rpn_head(sd: Mapping[str, np.ndarray], cfg: Config) -> RPNHeadWeights:
    """Keys `rpn.head.conv.{i}.0.*`, `rpn.head.cls_logits.*`, `rpn.head.bbox_pred.*` (facts §9)."""
    convs = tuple(load_conv(sd, f"rpn.head.conv.{i}.0", 3, padding=1) for i in range(cfg.rpn_conv_depth))
    cls_w, cls_b = np.asarray(sd["rpn.head.cls_logits.weight"]), np.asarray(sd["rpn.head.cls_logits.bias"])
    box_w, box_b = np.asarray(sd["rpn.head.bbox_pred.weight"]), np.asarray(sd["rpn.head.bbox_pred.bias"])
    n_anchors = cls_w.shape[0]
    if box_w.shape[0] != 4 * n_anchors:
        raise ValueError(f"rpn.head.bbox_pred.weight: expected {4 * n_anchors} rows, got {box_w.shape[0]}")
    predictor = make_conv(np.concatenate([cls_w, box_w]), np.concatenate([cls_b, box_b]))   # (5A, F, 1, 1)
    return RPNHeadWeights(convs, predictor, n_anchors)


def rpn_head_forward(w: RPNHeadWeights, features: list) -> tuple:
    """FPN maps [(F, H_l, W_l)] -> (objectness [(A, H_l, W_l)], deltas [(4A, H_l, W_l)]) per level.

    Objectness channel a belongs to anchor a; delta channels 4a..4a+3 are (dx, dy, dw, dh) of anchor a (facts §4.2).
    """
    objectness, deltas = [], []
    for x in features:
        for conv in w.convs:
            x = conv2d(x, conv, relu=True)                                  # (F, H_l, W_l)
        y = conv2d(x, w.predictor)                                          # (5A, H_l, W_l)
        objectness.append(y[:w.num_anchors])                                # (A, H_l, W_l)
        deltas.append(y[w.num_anchors:])                                    # (4A, H_l, W_l)
    return objectness, deltas


# --- proposals ------------------------------------------------------------------------------------------------------

class RPNOutput(NamedTuple):
    anchors: np.ndarray           # (K, 4) x1, y1, x2, y2 in padded-image pixels, levels concatenated
    objectness: np.ndarray        # (K,) logits, anchor order
    rpn_deltas: np.ndarray        # (K, 4) dx, dy, dw, dh, anchor order
    rpn_candidate_boxes: np.ndarray   # (T, 4) decoded top-k boxes, clipped, before NMS, resized-image pixels
    rpn_candidate_scores: np.ndarray  # (T,) objectness probabilities of the candidates
    rpn_candidate_levels: np.ndarray  # (T,) int64 pyramid level of each candidate
    proposals: np.ndarray         # (P, 4) x1, y1, x2, y2 in resized-image pixels, by descending score
    proposal_scores: np.ndarray   # (P,) objectness probabilities


def flatten_head_outputs(objectness: list, deltas: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-level head maps -> one row per anchor, in anchor order (torchvision concat_box_prediction_layers).

    Channel a of the objectness map belongs to anchor a; deltas channels 4a..4a+3 are (dx, dy, dw, dh) of anchor a.
    """
    logits, boxes = [], []
    for obj, dlt in zip(objectness, deltas):
        a, h, w = obj.shape
        logits.append(obj.transpose(1, 2, 0).reshape(-1))                    # (A, H, W) -> (H, W, A) -> (H*W*A,)
        boxes.append(dlt.reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4))
        #                         (A*4, H, W) -> (A, 4, H, W) -> (H, W, A, 4) -> (H*W*A, 4)
    return np.concatenate(logits), np.concatenate(boxes)                     # (K,), (K, 4)


def top_k_per_level(logits: np.ndarray, level_sizes: list, k: int) -> np.ndarray:
    """Indices of the k highest logits of each level, each level's sorted by descending logit. (T,) int64

    torchvision uses torch.topk, which breaks exact ties arbitrarily; a stable sort keeps the lower index first.
    """
    picked, start = [], 0
    for n in level_sizes:
        level = logits[start:start + n]                                       # (n,)
        kk = min(k, n)
        top = np.argpartition(-level, kk - 1)[:kk] if kk < n else np.arange(n)  # the kk best, unordered
        top = top[np.argsort(-level[top], kind="stable")]                    # (kk,) descending logit
        picked.append(top + start)
        start += n
    return np.concatenate(picked).astype(np.int64)                           # (T,)


def select_proposals(logits, rpn_deltas, anchors, level_sizes, image_size, cfg: Config):
    """Anchor scores and deltas -> proposals (facts §4.4, torchvision RegionProposalNetwork.filter_proposals).

    logits (K,), rpn_deltas (K, 4), anchors (K, 4) in anchor order; level_sizes: Hl*Wl*A per level;
    image_size: resized unpadded (h, w). Returns candidates (boxes, scores, levels) before NMS and the proposals.
    """
    # 1. Top-k logits per level. Decoding is elementwise, so decoding only these equals decoding all (facts §4.3).
    idx = top_k_per_level(logits, level_sizes, cfg.rpn_pre_nms_top_n)        # (T,)
    levels = np.repeat(np.arange(len(level_sizes)), level_sizes)[idx]        # (T,) int64
    boxes = ops.decode_boxes(rpn_deltas[idx], anchors[idx], (1.0, 1.0, 1.0, 1.0))  # (T, 4)
    # 2.-5. probabilities, clip to the resized (not padded) image, drop tiny boxes, score threshold.
    scores = sigmoid(logits[idx])                                            # (T,)
    boxes = ops.clip_boxes(boxes, image_size)                                # (T, 4)
    keep = ops.remove_small_boxes(boxes, cfg.rpn_min_size)
    keep = keep[scores[keep] >= np.float32(cfg.rpn_score_thresh)]
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    # 6.-7. NMS independently per level, then the best post_nms_top_n across levels.
    keep = ops.batched_nms(boxes, scores, levels, cfg.rpn_nms_thresh)[:cfg.rpn_post_nms_top_n]
    return (boxes, scores, levels), (boxes[keep], scores[keep])


def rpn_forward(head_weights, pyramid: list, padded_shape, image_size, cfg: Config) -> RPNOutput:
    """Score all anchors of the FPN levels and select proposals.

    pyramid: L feature maps (C, Hl, Wl); padded_shape: (Hp, Wp); image_size: resized unpadded (h, w).
    """
    objectness, deltas = rpn_head_forward(head_weights, pyramid)      # L x (A, Hl, Wl), L x (4A, Hl, Wl)
    anchors = ops.grid_anchors([p.shape[1:] for p in pyramid], padded_shape, cfg.anchor_sizes,
                               cfg.aspect_ratios)                            # (K, 4)
    logits, rpn_deltas = flatten_head_outputs(objectness, deltas)           # (K,), (K, 4)
    level_sizes = [o.size for o in objectness]                               # Hl*Wl*A per level
    candidates, proposals = select_proposals(logits, rpn_deltas, anchors, level_sizes, image_size, cfg)
    return RPNOutput(anchors, logits, rpn_deltas, *candidates, *proposals)
