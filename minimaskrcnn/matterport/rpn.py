"""matterport's RPN head (mrcnn/model.py rpn_graph): shared 3x3 conv + ReLU, 2-way softmax objectness, deltas.

Shape glossary
    A      anchors per location;  h, w  one level's map (after RPN_ANCHOR_STRIDE);  N  anchors of all levels

Faster R-CNN's RPN (Ren et al. 2015, §3.1) with matterport's choices: a 512-channel shared conv (torchvision: as
wide as its input, 256), two logits per anchor with a softmax (torchvision: one logit, sigmoid), deltas in
(dy, dx, log dh, log dw) order (torchvision: (dx, dy, dw, dh)). The same weights serve every level P2..P6. Outputs
are flattened channels-last, (h, w, A, k) -> (h*w*A, k), the anchors' order (anchors.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimaskrcnn.matterport.keras import load_conv, same_pads
from minimaskrcnn.nn.layers import Conv, conv2d


@dataclass(frozen=True)
class RPNHead:
    shared: Conv    # rpn_conv_shared, 3x3 "same", stride RPN_ANCHOR_STRIDE, ReLU
    cls: Conv       # rpn_class_raw, 1x1 -> 2A
    bbox: Conv      # rpn_bbox_pred, 1x1 -> 4A
    stride: int


def load_rpn(w, anchor_stride: int) -> RPNHead:
    # stride 1: "same" is 1 pixel each side; stride 2: TF pads asymmetrically, done explicitly in rpn_head
    pad = 1 if anchor_stride == 1 else 0
    return RPNHead(load_conv(w, "rpn_conv_shared", stride=anchor_stride, padding=pad),
                   load_conv(w, "rpn_class_raw"), load_conv(w, "rpn_bbox_pred"), anchor_stride)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32, max subtracted first (tf.nn.softmax)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))                           # (..., K)
    return e / e.sum(axis=-1, keepdims=True)


def rpn_head(p: list[np.ndarray], head: RPNHead):
    """(rpn_class_logits (N, 2), rpn_class probabilities (N, 2) as (bg, fg), rpn_bbox (N, 4)) over P2..P6."""
    logits, deltas = [], []
    for x in p:
        if head.stride != 1:
            (t, b), (l, r) = same_pads(x.shape[1], 3, head.stride), same_pads(x.shape[2], 3, head.stride)
            x = np.pad(x, ((0, 0), (t, b), (l, r)))                         # (C, H + t + b, W + l + r)
        s = conv2d(x, head.shared, relu=True)                               # (512, h, w)
        c = conv2d(s, head.cls)                                             # (2A, h, w)
        d = conv2d(s, head.bbox)                                            # (4A, h, w)
        logits.append(c.transpose(1, 2, 0).reshape(-1, 2))                  # (2A, h, w) -> (h, w, 2A) -> (h*w*A, 2)
        deltas.append(d.transpose(1, 2, 0).reshape(-1, 4))                  # (4A, h, w) -> (h, w, 4A) -> (h*w*A, 4)
    logits = np.concatenate(logits)                                         # (N, 2)
    return logits, softmax(logits), np.concatenate(deltas)                  # (N, 2), (N, 2), (N, 4)
