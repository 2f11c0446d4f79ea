"""The three network heads: RPN head, box head + predictor, mask head + predictor (torchvision rpn.py RPNHead,
faster_rcnn.py TwoMLPHead / FastRCNNConvFCHead / FastRCNNPredictor, mask_rcnn.py MaskRCNNHeads / MaskRCNNPredictor;
facts §4.1, §6, §7). Only the arithmetic lives here; proposal selection and box/mask post-processing are in `rpn.py`
and `roi_heads.py`.

Batches of RoIs run through the head convolutions channels-last, (K, H, W, C), so that each convolution is one
im2col and one GEMM over all RoIs (`layers.conv2d_rois`); the public functions take torchvision's (K, C, H, W).
Every BatchNorm of the v2 heads (conv without bias + BN) is folded into its convolution at load time.

Shape glossary
    A        anchors per location (3)                 L   FPN levels (5)
    F        FPN / head channels (256)                NC  classes including background (91)
    K        box RoIs (proposals, <= 1000)            N   mask RoIs (detections, <= 100)
    R        box head representation size (1024)
    H_l, W_l size of FPN level l
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .config import Config
from .layers import Conv, ConvTranspose2x2, Linear, conv2d, conv2d_rois, conv_transpose2x2_patches, linear, load_conv, \
    load_conv_transpose2x2, load_linear, make_conv


# ----------------------------------------------------------------------------------------------------------------
# RPN head (Faster R-CNN §3.1: a 3x3 "sliding window" conv, then sibling 1x1 objectness and box-regression layers)
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# Box head and predictor (Fast R-CNN: RoI features -> class logits and class-specific box deltas)
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# Mask head and predictor (Mask R-CNN §3 and Fig. 4, right: 4 convs, a 2x deconv, a per-class 1x1)
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskHeadWeights:
    convs: tuple                # tuple[Conv, ...]: 3x3 + ReLU per cfg.mask_head_layers (v2: BN folded), channels-last
    deconv: ConvTranspose2x2    # conv5_mask, 14x14 -> 28x28, followed by ReLU
    logits: Linear              # mask_fcn_logits as (NC, F') rows: the 1x1 conv of one class is one row


def load_mask_head(sd: Mapping[str, np.ndarray], cfg: Config) -> MaskHeadWeights:
    """Keys `roi_heads.mask_head.{i}.0.*` (+ `.{i}.1` BN when cfg.mask_head_norm), `roi_heads.mask_predictor.*`."""
    p = "roi_heads.mask_head"
    convs = tuple(load_conv(sd, f"{p}.{i}.0", 3, padding=1, bn=f"{p}.{i}.1" if cfg.mask_head_norm else None,
                            eps=cfg.bn_eps, channels_last=True) for i in range(len(cfg.mask_head_layers)))
    deconv = load_conv_transpose2x2(sd, "roi_heads.mask_predictor.conv5_mask")
    weight = np.asarray(sd["roi_heads.mask_predictor.mask_fcn_logits.weight"], np.float32)   # (NC, F', 1, 1)
    if weight.shape[0] != cfg.num_classes or weight.shape[2:] != (1, 1):
        raise ValueError(f"mask_fcn_logits.weight: expected ({cfg.num_classes}, C, 1, 1), got {weight.shape}")
    logits = Linear(np.ascontiguousarray(weight[:, :, 0, 0]),
                    np.asarray(sd["roi_heads.mask_predictor.mask_fcn_logits.bias"], np.float32))
    return MaskHeadWeights(convs, deconv, logits)


def mask_head_forward(w: MaskHeadWeights, roi_features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pooled mask RoI features (N, F, 14, 14) and predicted labels (N,) -> mask logits (N, 28, 28) of each RoI's label.

    torchvision computes all NC channels and then selects the label's (maskrcnn_inference); the 1x1 of the other
    classes is never used, so only the selected row of mask_fcn_logits is applied (facts §7, §11).
    """
    labels = np.asarray(labels)
    if roi_features.ndim != 4 or labels.shape != roi_features.shape[:1]:
        raise ValueError(f"roi_features, labels: expected (N, C, P, P) and (N,), got {roi_features.shape} and "
                         f"{labels.shape}")
    n_classes = w.logits.weight.shape[0]
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels: expected integers in [0, {n_classes}), got {labels.dtype} "
                         f"{labels.min()}..{labels.max()}")
    x = np.asarray(roi_features, np.float32).transpose(0, 2, 3, 1)         # (N, F, 14, 14) -> (N, 14, 14, F)
    for conv in w.convs:
        x = conv2d_rois(x, conv, relu=True)                                 # (N, 14, 14, F)
    # The 1x1 logit of a 28x28 pixel only needs that pixel's deconv output: apply it to the 2x2 patches as they come
    # out of the GEMM and interleave the (small) logits instead of the 256-channel features.
    patches = conv_transpose2x2_patches(x, w.deconv, relu=True)            # (N, 14, 14, 2, 2, F')
    n, h, wd, _, _, f = patches.shape
    rows = w.logits.weight[labels][:, :, None]                              # (N, F', 1): the label's 1x1 weights
    logits = np.matmul(patches.reshape(n, h * wd * 4, f), rows)[:, :, 0]    # (N, 784, F') @ (N, F', 1) -> (N, 784)
    logits += w.logits.bias[labels][:, None]
    # (N, 784) -> (N, 14, 14, 2, 2) -> (N, 14, 2, 14, 2) -> (N, 28, 28): (p, q) of (i, j) at (2i+p, 2j+q)
    return logits.reshape(n, h, wd, 2, 2).transpose(0, 1, 3, 2, 4).reshape(n, 2 * h, 2 * wd)
