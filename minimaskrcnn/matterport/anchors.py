"""matterport's anchors (mrcnn/utils.py generate_pyramid_anchors, MaskRCNN.get_anchors), in normalized coordinates.

Shape glossary
    A      anchors per location = len(RPN_ANCHOR_RATIOS);  h_l, w_l  anchor grid of level l
    N      all anchors, levels P2..P6 concatenated: sum over levels of A * ceil(h_l) * ceil(w_l)

Level l has one size s_l (RPN_ANCHOR_SCALES[l]) and every ratio r (width / height): height s / sqrt(r), width
s * sqrt(r), centred on (y, x) = (i, j) * RPN_ANCHOR_STRIDE * stride_l, i.e. on the *top-left corner* of a cell.
Order: location-major (row, column), then ratio: the order of the RPN head's reshaped outputs. Computed in float64,
then normalized to float32 by (b - (0, 0, 1, 1)) / (H - 1, W - 1, ...) (mold.norm_boxes).
torchvision's (ops/anchors.py) differ: base anchors rounded to integers, centred at (j, i) * stride in (x, y) order,
pixel coordinates, one size per level *and* per ratio, level order the same.
"""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.matterport.mold import norm_boxes


def backbone_shapes(image_shape, strides) -> list[tuple[int, int]]:
    """(ceil(H / s), ceil(W / s)) per stride (model.py compute_backbone_shapes)."""
    return [(int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))) for s in strides]


def level_anchors(size: float, ratios, shape, feature_stride: int, anchor_stride: int) -> np.ndarray:
    """[h*w*A, (y1, x1, y2, x2)] float64 pixel anchors of one level."""
    ratios = np.asarray(ratios, np.float64)                                  # (A,)
    heights = size / np.sqrt(ratios)                                         # (A,)
    widths = size * np.sqrt(ratios)                                          # (A,)
    ys = np.arange(0, shape[0], anchor_stride) * feature_stride              # (h,)
    xs = np.arange(0, shape[1], anchor_stride) * feature_stride              # (w,)
    cy = np.broadcast_to(ys[:, None, None], (len(ys), len(xs), len(ratios)))   # (h, w, A)
    cx = np.broadcast_to(xs[None, :, None], cy.shape)                           # (h, w, A)
    hh = np.broadcast_to(heights, cy.shape)                                     # (h, w, A)
    ww = np.broadcast_to(widths, cy.shape)                                      # (h, w, A)
    boxes = np.stack([cy - 0.5 * hh, cx - 0.5 * ww, cy + 0.5 * hh, cx + 0.5 * ww], axis=-1)   # (h, w, A, 4)
    return boxes.reshape(-1, 4)                                              # (h*w*A, 4)


def pyramid_anchors(image_shape, cfg) -> np.ndarray:
    """[N, (y1, x1, y2, x2)] float32 normalized anchors for a molded image of (Hp, Wp)."""
    shapes = backbone_shapes(image_shape, cfg.BACKBONE_STRIDES)
    if len(cfg.RPN_ANCHOR_SCALES) != len(shapes):
        raise ValueError(f"RPN_ANCHOR_SCALES: expected one per level ({len(shapes)}), got {cfg.RPN_ANCHOR_SCALES}")
    boxes = np.concatenate([level_anchors(size, cfg.RPN_ANCHOR_RATIOS, shape, stride, cfg.RPN_ANCHOR_STRIDE)
                            for size, shape, stride in zip(cfg.RPN_ANCHOR_SCALES, shapes, cfg.BACKBONE_STRIDES)])
    return norm_boxes(boxes, image_shape[:2])                                # (N, 4)
