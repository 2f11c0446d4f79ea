"""matterport's box head (fpn_classifier_graph) and mask head (build_fpn_mask_graph), BatchNorm folded.

Shape glossary
    N    RoIs;  S  POOL_SIZE (7);  M  MASK_POOL_SIZE (14);  C  pyramid channels (256);  F  FC size (1024)
    K    NUM_CLASSES (background = 0)

Box head: the first "FC" is a Conv2D with an S x S kernel, "valid", on the S x S pooled map (one output pixel: an
FC layer on the (S, S, C) channels-last flattening), then BN + ReLU; a 1x1 conv (an FC again) + BN + ReLU; then
Dense K logits + softmax and Dense 4K deltas as [N, K, (dy, dx, log dh, log dw)]. torchvision's TwoMLPHead has no
BatchNorm, flattens channels-first and predicts (dx, dy, dw, dh).
Mask head: 4 x (3x3 "same" conv + BN + ReLU), a 2x2 stride-2 transposed conv + ReLU, a 1x1 conv + *sigmoid*, all
K masks [N, 2M, 2M, K]; torchvision's has no BatchNorm and returns logits (the sigmoid comes later).
BatchNorms are eval-mode (TRAIN_BN False), eps 1e-3 (keras.py), folded into the layer before them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimaskrcnn.matterport.keras import get, load_conv, load_dense
from minimaskrcnn.matterport.rpn import softmax
from minimaskrcnn.nn.layers import Conv, ConvTranspose2x2, Linear, conv2d_rois, conv_transpose2x2, linear


@dataclass(frozen=True)
class BoxHead:
    fc1: Linear      # mrcnn_class_conv1 + mrcnn_class_bn1
    fc2: Linear      # mrcnn_class_conv2 + mrcnn_class_bn2
    cls: Linear      # mrcnn_class_logits
    bbox: Linear     # mrcnn_bbox_fc


@dataclass(frozen=True)
class MaskHead:
    convs: tuple                 # mrcnn_mask_conv1..4 + mrcnn_mask_bn1..4, channels-last 3x3
    deconv: ConvTranspose2x2     # mrcnn_mask_deconv
    out: Linear                  # mrcnn_mask (1x1 conv as a per-pixel linear layer)


def load_box_head(w) -> BoxHead:
    return BoxHead(load_dense(w, "mrcnn_class_conv1", "mrcnn_class_bn1"),
                   load_dense(w, "mrcnn_class_conv2", "mrcnn_class_bn2"),
                   load_dense(w, "mrcnn_class_logits"), load_dense(w, "mrcnn_bbox_fc"))


def load_mask_head(w) -> MaskHead:
    convs = tuple(load_conv(w, f"mrcnn_mask_conv{i}", f"mrcnn_mask_bn{i}", padding=1, channels_last=True)
                  for i in range(1, 5))
    kernel = get(w, "mrcnn_mask_deconv", "kernel")                          # (2, 2, C', C) Keras transpose layout
    if kernel.shape[:2] != (2, 2):
        raise ValueError(f"weights: mrcnn_mask_deconv/kernel:0 expected (2, 2, C', C), got {kernel.shape}")
    c_out, c_in = kernel.shape[2:]
    # out[2i+p, 2j+q, o] = b[o] + sum_c x[i, j, c] K[p, q, o, c]: (p, q, o, c) -> (c, p, q, o) -> (C, 4*C')
    packed = np.ascontiguousarray(kernel.transpose(3, 0, 1, 2).reshape(c_in, 4 * c_out), np.float32)
    deconv = ConvTranspose2x2(packed, np.ascontiguousarray(get(w, "mrcnn_mask_deconv", "bias"), np.float32))
    return MaskHead(convs, deconv, load_dense(w, "mrcnn_mask"))


def box_head(pooled: np.ndarray, head: BoxHead):
    """(mrcnn_class_logits (N, K), mrcnn_class (N, K), mrcnn_bbox (N, K, 4)) of pooled (N, S, S, C)."""
    n = pooled.shape[0]
    x = linear(pooled.reshape(n, -1), head.fc1, relu=True)                  # (N, S*S*C) -> (N, F)
    x = linear(x, head.fc2, relu=True)                                      # (N, F)
    logits = linear(x, head.cls)                                            # (N, K)
    deltas = linear(x, head.bbox).reshape(n, -1, 4)                         # (N, 4K) -> (N, K, 4)
    return logits, softmax(logits), deltas


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(1) / (np.float32(1) + np.exp(-x))


def mask_head(pooled: np.ndarray, head: MaskHead) -> np.ndarray:
    """mrcnn_mask (N, 2M, 2M, K) probabilities of pooled (N, M, M, C)."""
    x = pooled
    for conv in head.convs:
        x = conv2d_rois(x, conv, relu=True)                                 # (N, M, M, C)
    x = conv_transpose2x2(x, head.deconv, relu=True)                        # (N, 2M, 2M, C)
    n, h, w, c = x.shape
    logits = linear(x.reshape(n * h * w, c), head.out)                      # (N*2M*2M, K)
    return sigmoid(logits).reshape(n, h, w, -1)                             # (N, 2M, 2M, K)
