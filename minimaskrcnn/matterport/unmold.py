"""matterport's unmold_detections / utils.unmold_mask: normalized detections -> original-image pixels and masks.

Shape glossary
    D    rows of mrcnn_detection;  N  real detections;  m  mask side (28);  K  classes;  H, W  original image

  * N = the first row whose class_id is 0 (the zero padding), the class's own mask is kept, (m, m) of (m, m, K);
  * boxes go from the molded image's normalized frame to the window's, (b - (wy1, wx1, wy1, wx1)) / (wh, ww, wh, ww)
    in float32 (window from utils.norm_boxes), then to *integer* pixels of the original image:
    round_half_even(b * (H - 1, W - 1, H - 1, W - 1) + (0, 0, 1, 1)) in float64 (numpy promotes float32 * int64),
    y2/x2 exclusive; boxes of zero or negative area are dropped;
  * each mask is resized to its box with scikit-image 0.16 (mold.resize_skimage016; float32, border blending with 0),
    thresholded at >= 0.5 and pasted at [y1:y2, x1:x2] of a zero image.
We return the resized probabilities instead of the booleans, pasted the same way, so that `masks >= 0.5` is
matterport's mask exactly; torchvision instead pastes its 28x28 probabilities with its own interpolation on a box
expanded by one pixel (ops/paste.py) and keeps float boxes.
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.matterport.mold import norm_boxes, resize_skimage016


def unmold_boxes(det: np.ndarray, window, molded_shape, original_shape):
    """(boxes (N, 4) int32 as y1, x1, y2, x2 original pixels, class_ids (N,) int32, scores (N,) float32,
    rows (N,) indices into det) of mrcnn_detection `det` (D, 6); zero-area boxes removed."""
    zero = np.nonzero(det[:, 4] == 0)[0]
    n = zero[0] if len(zero) else det.shape[0]
    boxes = det[:n, :4]                                                     # (N, 4) float32 normalized
    class_ids = det[:n, 4].astype(np.int32)
    scores = det[:n, 5]
    wy1, wx1, wy2, wx2 = norm_boxes(window, molded_shape[:2])               # float32 scalars
    shift = np.array([wy1, wx1, wy1, wx1])                                  # (4,) float32
    wh, ww = wy2 - wy1, wx2 - wx1
    scale = np.array([wh, ww, wh, ww])                                      # (4,) float32
    boxes = (boxes - shift) / scale                                         # (N, 4) float32, window-normalized
    h, w = original_shape[:2]
    pixel = boxes * np.array([h - 1, w - 1, h - 1, w - 1]) + np.array([0, 0, 1, 1])   # (N, 4) float64
    boxes = np.around(pixel).astype(np.int32)                               # (N, 4) y1, x1, y2, x2
    ok = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    rows = np.nonzero(ok)[0]
    return boxes[rows], class_ids[rows], scores[rows], rows


def unmold_masks(masks: np.ndarray, boxes: np.ndarray, original_shape) -> np.ndarray:
    """(N, H, W) float32: each (m, m) probability mask resized into its int box, zero outside."""
    h, w = original_shape[:2]
    out = np.zeros((len(boxes), h, w), np.float32)                          # (N, H, W)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        out[i, y1:y2, x1:x2] = resize_skimage016(np.asarray(masks[i], np.float32), y2 - y1, x2 - x1)
    return out
