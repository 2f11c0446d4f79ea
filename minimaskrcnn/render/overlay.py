"""The overlay picture of one image: each instance's mask tinted in its own colour with its contour, its box, and
"label score".

Shape glossary
    N: number of detections      H, W: image height and width

Rank: detections are ordered by descending score (ties keep their order); instance k (1-based) is the k-th in that
order and selects its colour (`draw.palette`). Higher scores are drawn on top.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from minimaskrcnn.detections import binary_masks, rank_order
from minimaskrcnn.render.draw import edges, label, palette, to_uint8
from minimaskrcnn.render.labelmaps import paint, ranks

__all__ = ["render_overlay", "MASK_ALPHA"]

MASK_ALPHA = 0.5                 # tint opacity over the mask


def render_overlay(image, det, mask_threshold: float = 0.5, alpha: float = MASK_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: each instance's mask tinted in its own colour with its contour, its box, and "label score"
    on a filled background. `image` is the (H, W, 3) array the detections were computed on."""
    out = to_uint8(np.asarray(image)).astype(np.float32)            # (H, W, 3)
    h, w = out.shape[:2]
    order = rank_order(det)                                          # (N,)
    colors = palette(max(len(det), 1)).astype(np.float32)            # (N, 3) by rank
    thickness = max(1, round(min(h, w) / 250))
    if det.masks is not None:
        masks = binary_masks(det, mask_threshold)                    # (N, H, W)
        top = paint(det, masks, ranks(det), np.int64)                # (H, W) rank of the top instance, 0 = none
        covered = top > 0
        out[covered] = out[covered] * (1 - alpha) + colors[top[covered] - 1] * alpha   # one tint per pixel
        for rank in range(len(det) - 1, -1, -1):                     # contours, higher scores drawn last
            m = masks[order[rank]]                                   # (H, W)
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size == 0:
                continue
            sl = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]   # the mask's extent
            out[sl][edges(m[sl], thickness)] = colors[rank]
    canvas = Image.fromarray(np.rint(out).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    size = int(np.clip(round(min(h, w) / 32), 11, 40))                     # font size
    boxes, names, scores = np.asarray(det.boxes), det.label_names, np.asarray(det.scores)
    for rank in range(len(det) - 1, -1, -1):
        i = order[rank]
        color = tuple(int(c) for c in palette(len(det))[rank])
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=thickness)
        label(draw, (x1, y1), f"{names[i]} {scores[i]:.2f}", color, size, above=True, image_width=w)
    return np.asarray(canvas)
