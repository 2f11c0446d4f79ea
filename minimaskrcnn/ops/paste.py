"""Pasting M x M mask probabilities into full images, as torchvision `paste_masks_in_image` (facts §7).

Shape glossary
    N: number of masks (detections)
    M: side of the square mask probabilities (28 for Mask R-CNN)
    P: padding added on every side of a mask (1)
    H, W: height and width of the image the masks are pasted into

Each mask is zero-padded to (M+2P) x (M+2P) and its box grown by the same factor f32((M+2P)/M) about its centre,
in float32; the grown box is truncated toward zero to int64 (x1, y1, x2, y2, covering pixel columns x1..x2
inclusive: TO_REMOVE = 1). The padded mask is resized to the box's (h, w) with the bilinear kernel of
`resize` and written into the part of the box that lies inside the image; the rest of the image is 0.
Only the visible part of each resized mask is computed.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import _validate as V
from .parallel import run_interleaved
from .resize import _bilinear_value, _from_opmath, _in_opmath, _linear_coeffs

# int64 box coordinates must stay far from overflow; torchvision converts with .to(int64) (UB past the range).
_MAX_ABS_COORD = 2.0 ** 31


def expand_boxes(boxes: np.ndarray, scale) -> np.ndarray:
    """(N, 4) boxes grown about their centres by `scale` (torchvision roi_heads.expand_boxes, in the boxes' dtype
    (float32 or float64) with `scale` of that dtype: w_half = (x2 - x1) * 0.5 * scale, xc = (x2 + x1) * 0.5,
    box = xc -/+ w_half)."""
    half = boxes.dtype.type(0.5)
    w_half = (boxes[:, 2] - boxes[:, 0]) * half * scale                # (N,)
    h_half = (boxes[:, 3] - boxes[:, 1]) * half * scale                # (N,)
    x_c = (boxes[:, 2] + boxes[:, 0]) * half                           # (N,)
    y_c = (boxes[:, 3] + boxes[:, 1]) * half                           # (N,)
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)  # (N, 4)


@njit(cache=True, nogil=True)
def _paste_kernel(masks, boxes, out, first, step):
    """masks (N, Mp, Mp) padded probabilities, float32 or float64, boxes (N, 4) int64 -> the visible part of masks
    first, first + step, ... written into out (N, H, W) of the masks' dtype, zeros elsewhere, resized with
    coefficients in that dtype (ATen's opmath). Threads take interleaved masks (`run_interleaved`)."""
    n, mh, mw = masks.shape
    im_h, im_w = out.shape[1], out.shape[2]
    one = masks.dtype.type(1)
    for k in range(first, n, step):
        bx1, by1, bx2, by2 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        w = max(bx2 - bx1 + 1, 1)                       # TO_REMOVE = 1: columns bx1..bx2 inclusive
        h = max(by2 - by1 + 1, 1)
        x_start, x_stop = max(bx1, 0), min(bx2 + 1, im_w)   # visible columns / rows of the image
        y_start, y_stop = max(by1, 0), min(by2 + 1, im_h)
        if x_start >= x_stop or y_start >= y_stop:
            continue                                     # box entirely outside the image
        # rows / columns of the (h, w) resized mask that land in the image: offsets (pixel - box corner)
        y0, y1, ly0, ly1 = _linear_coeffs(mh, h, y_start - by1, y_stop - by1, one)   # (rows,) each
        x0, x1, lx0, lx1 = _linear_coeffs(mw, w, x_start - bx1, x_stop - bx1, one)   # (cols,) each
        m = masks[k]
        for r in range(y_stop - y_start):
            top, bottom = m[y0[r]], m[y1[r]]                          # (Mp,) the two source rows
            for c in range(x_stop - x_start):
                out[k, y_start + r, x_start + c] = _bilinear_value(top, bottom, x0[c], x1[c],
                                                                   ly0[r], ly1[r], lx0[c], lx1[c])


def paste_masks(masks, boxes, image_shape, padding=1) -> np.ndarray:
    """(N, M, M) mask probabilities and (N, 4) boxes x1, y1, x2, y2 in image pixels -> (N, H, W) images
    (torchvision roi_heads.paste_masks_in_image without the channel axis). N = 0 gives (0, H, W).

    Dtypes as torchvision: the output has the masks' dtype, resized as `resize_bilinear` resizes that dtype (float64
    in float64; float16 and uint8 in float32, then rounded); the boxes are grown in their own dtype (float64 stays,
    others in float32) before the truncation to int64.

    Unlike torchvision, a box whose visible part is empty gives an all-zero mask (torchvision may raise or wrap around
    through negative slice bounds for boxes lying entirely above or left of the image).
    """
    m = V.array("masks", masks, ndim=3)
    if m.shape[1] != m.shape[2] or m.shape[1] == 0:
        raise ValueError(f"masks: expected shape (N, M, M) with M >= 1, got {m.shape}")
    b = V.array("boxes", boxes, shape=(m.shape[0], 4), ndim=2)
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2:
        raise ValueError(f"image_shape: expected (H, W), got {image_shape!r}")
    im_h = V.integer("image_shape[0]", image_shape[0], 0)
    im_w = V.integer("image_shape[1]", image_shape[1], 0)
    pad = V.integer("padding", padding, 0)
    b = V.finite("boxes", np.ascontiguousarray(b, dtype=np.float64 if b.dtype == np.float64 else np.float32))
    if b.size and np.abs(b).max() >= _MAX_ABS_COORD / 4:
        raise ValueError(f"boxes: expected coordinates of magnitude < {_MAX_ABS_COORD / 4:g}")
    size = m.shape[1]
    scale = b.dtype.type((size + 2 * pad) / size)               # Python double, applied in the boxes' dtype (§7)
    boxes_i = expand_boxes(b, scale).astype(np.int64)           # (N, 4) truncation toward zero
    work = _in_opmath(m)                                        # (N, M, M) float32 or float64
    padded = np.zeros((m.shape[0], size + 2 * pad, size + 2 * pad), work.dtype)        # (N, M+2P, M+2P)
    padded[:, pad:pad + size, pad:pad + size] = work
    out = np.zeros((m.shape[0], im_h, im_w), work.dtype)                                # (N, H, W)
    run_interleaved(_paste_kernel, m.shape[0], padded, boxes_i, out)
    return _from_opmath(out, m.dtype)
