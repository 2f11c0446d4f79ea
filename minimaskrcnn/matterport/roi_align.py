"""matterport's PyramidROIAlign (mrcnn/model.py): FPN level per box, then tf.image.crop_and_resize sampling.

Shape glossary
    N      boxes [N, (y1, x1, y2, x2)] normalized;  S  pool size (POOL_SIZE 7 or MASK_POOL_SIZE 14)
    C      channels;  features P2..P5 channels-last (H_l, W_l, C)

Level (FPN Eq. 1 on normalized boxes): k = min(5, max(2, 4 + round(log2(sqrt(h w) / (224 / sqrt(Hp Wp)))))), all
float32, log2 as log(x) / log(2), `tf.round` rounding halves to even (np.round does the same). A zero box (the
padding rows of the proposals) has log2(0) = -inf, which TF casts to INT_MIN: level 2. torchvision (ops/roi_align.py
fpn_levels) uses floor(4 + log2(sqrt(area) / 224) + 1e-6) on pixel boxes.

Sampling is *not* torchvision's RoIAlign (which averages sampling_ratio^2 points per bin, aligned=False): it is
crop_and_resize with S x S points spread corner to corner over the box, one bilinear sample each (TF 1.15
crop_and_resize_op.cc, CPU, float32):
    in_y = y1 (H - 1) + i * ((y2 - y1) (H - 1) / (S - 1)),   i = 0 .. S-1   (the same for x)
a whole row (column) of samples outside [0, H - 1] is the extrapolation value 0, otherwise
    top = tl + (tr - tl) dx,  bottom = bl + (br - bl) dx,  out = top + (bottom - top) dy
with floor/ceil neighbours. The results are returned in box order (matterport's re-sorting undoes the per-level
grouping).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from minimaskrcnn.ops.parallel import run_interleaved

CANONICAL_SIZE = 224.0   # FPN paper §4.2 / model.py: "a 224x224 ROI (in pixels) maps to P4"
CANONICAL_LEVEL = 4
MIN_LEVEL, MAX_LEVEL = 2, 5


def roi_levels(boxes, image_shape) -> np.ndarray:
    """(N,) int64 pyramid level 2..5 of normalized boxes for a molded image of image_shape (Hp, Wp)."""
    boxes = np.asarray(boxes, np.float32)
    h = boxes[:, 2] - boxes[:, 0]                                           # (N,)
    w = boxes[:, 3] - boxes[:, 1]                                           # (N,)
    area = np.float32(image_shape[0]) * np.float32(image_shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(h * w) / (np.float32(CANONICAL_SIZE) / np.sqrt(area))   # (N,) float32
        level = np.log(ratio) / np.log(np.float32(2.0))                         # (N,) float32
    rounded = np.round(level)                                               # half to even, as tf.round
    # tf.cast(float -> int32) of -inf / NaN on x86 is INT_MIN: those boxes land on the lowest level after the max
    finite = np.isfinite(rounded)
    k = np.where(finite, CANONICAL_LEVEL + np.where(finite, rounded, 0), MIN_LEVEL).astype(np.int64)
    return np.clip(k, MIN_LEVEL, MAX_LEVEL)


def crop_and_resize(features, boxes, size: int) -> np.ndarray:
    """tf.image.crop_and_resize(features[None], boxes, zeros, (size, size), "bilinear") of one (H, W, C) map:
    (N, size, size, C) float32."""
    features = np.ascontiguousarray(features, np.float32)
    boxes = np.ascontiguousarray(boxes, np.float32)
    if features.ndim != 3 or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"features (H, W, C) and boxes (N, 4) expected, got {features.shape}, {boxes.shape}")
    if int(size) < 1:
        raise ValueError(f"size: expected >= 1, got {size}")
    out = np.empty((boxes.shape[0], int(size), int(size), features.shape[2]), np.float32)
    run_interleaved(_crop_and_resize_kernel, boxes.shape[0], features, boxes, out)
    return out


def pyramid_roi_align(boxes, features, image_shape, size: int) -> np.ndarray:
    """(N, S, S, C) pooled features of normalized boxes over channels-last [P2, P3, P4, P5]."""
    boxes = np.ascontiguousarray(boxes, np.float32)
    levels = roi_levels(boxes, image_shape)                                 # (N,)
    out = np.empty((boxes.shape[0], size, size, features[0].shape[2]), np.float32)   # (N, S, S, C)
    for k, fmap in zip(range(MIN_LEVEL, MAX_LEVEL + 1), features):
        ix = np.nonzero(levels == k)[0]
        if len(ix):
            out[ix] = crop_and_resize(fmap, boxes[ix], size)
    return out


@njit(cache=True, nogil=True)
def _crop_and_resize_kernel(img, boxes, out, first, step):
    height, width, depth = img.shape
    n, crop_h, crop_w, _ = out.shape
    hm1 = np.float32(height - 1)
    wm1 = np.float32(width - 1)
    zero = np.float32(0)
    for b in range(first, n, step):                 # interleaved over threads (ops.parallel)
        y1, x1, y2, x2 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        hs = (y2 - y1) * hm1 / np.float32(crop_h - 1) if crop_h > 1 else zero
        ws = (x2 - x1) * wm1 / np.float32(crop_w - 1) if crop_w > 1 else zero
        for y in range(crop_h):
            if crop_h > 1:
                in_y = y1 * hm1 + np.float32(y) * hs
            else:
                in_y = np.float32(0.5 * np.float64(y1 + y2) * (height - 1))   # TF: a double 0.5 here
            if in_y < 0 or in_y > hm1:
                out[b, y, :, :] = zero
                continue
            top_i = int(np.floor(in_y))
            bot_i = int(np.ceil(in_y))
            dy = in_y - np.float32(top_i)
            for x in range(crop_w):
                if crop_w > 1:
                    in_x = x1 * wm1 + np.float32(x) * ws
                else:
                    in_x = np.float32(0.5 * np.float64(x1 + x2) * (width - 1))
                if in_x < 0 or in_x > wm1:
                    out[b, y, x, :] = zero
                    continue
                left_i = int(np.floor(in_x))
                right_i = int(np.ceil(in_x))
                dx = in_x - np.float32(left_i)
                for d in range(depth):
                    tl = img[top_i, left_i, d]
                    tr = img[top_i, right_i, d]
                    bl = img[bot_i, left_i, d]
                    br = img[bot_i, right_i, d]
                    top = tl + (tr - tl) * dx
                    bottom = bl + (br - bl) * dx
                    out[b, y, x, d] = top + (bottom - top) * dy
