"""Box utilities and the Faster R-CNN box parametrisation, with torchvision's dtypes and float operation order.

Shape glossary
    N, M: numbers of boxes
    C: number of classes whose deltas are decoded against the same reference box (deltas (N, 4*C))

Boxes are (N, 4) as x1, y1, x2, y2 (corners, no +1: a box from 0 to 10 is 10 wide). Deltas are (N, 4) as
dx, dy, dw, dh (Faster R-CNN Eq. 2, divided by the BoxCoder weights).

Dtypes follow torchvision (ops/_utils.py `_upcast`): float32 and float64 boxes keep their dtype, float16 becomes
float32 and narrow integers int32 (in `box_iou` only after the corner differences, which stay in the input dtype). `box_iou` of integer boxes is float32, as torch's true division of integers.
`encode_boxes` / `decode_boxes` compute in the promoted floating dtype of their inputs as torch does (float64 if any is
float64, float16 if the floating ones are float16, float32 for integers alone and in the network).
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as V

# torchvision models/detection/_utils.py BoxCoder: bbox_xform_clip = math.log(1000.0 / 16)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _boxes(name: str, boxes) -> np.ndarray:
    return V.upcast(name, V.array(name, boxes, ndim=2, last=4))


def _common_dtype(a: np.ndarray, b: np.ndarray) -> np.dtype:
    """torch promotion of two box tensors: float wins over int without widening it (numpy would say float64)."""
    if a.dtype.kind == "f" and b.dtype.kind != "f":
        return a.dtype
    if b.dtype.kind == "f" and a.dtype.kind != "f":
        return b.dtype
    return np.promote_types(a.dtype, b.dtype)


def box_area(boxes) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N,) (x2 - x1) * (y2 - y1), in the upcast dtype (torchvision `box_area`)."""
    b = _boxes("boxes", boxes)                                   # (N, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])              # (N,)


def box_iou(boxes1, boxes2) -> np.ndarray:
    """(N, 4), (M, 4) -> (N, M) intersection over union, inter / (area1 + area2 - inter) (torchvision `box_iou`).

    0/0 (two empty boxes) gives NaN, as torchvision. Integer boxes give float32.
    """
    b1 = V.array("boxes1", boxes1, ndim=2, last=4)                # (N, 4)
    b2 = V.array("boxes2", boxes2, ndim=2, last=4)                # (M, 4)
    area1, area2 = box_area(b1), box_area(b2)                     # (N,), (M,) upcast
    raw = _common_dtype(b1, b2)                                   # corners are compared before any upcast
    b1, b2 = b1.astype(raw, copy=False), b2.astype(raw, copy=False)
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])             # (N, M, 2) top-left of the intersection
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])             # (N, M, 2) bottom-right
    # torchvision upcasts after subtracting: uint8 differences wrap around, float16 ones round in float16
    wh = np.maximum(V.upcast("boxes", rb - lt), 0)                # (N, M, 2) clamp(min=0); NaN propagates
    dtype = _common_dtype(np.empty(0, _common_dtype(area1, area2)), wh)
    area1, area2, wh = area1.astype(dtype), area2.astype(dtype), wh.astype(dtype, copy=False)
    inter = wh[..., 0] * wh[..., 1]                               # (N, M)
    union = area1[:, None] + area2[None, :] - inter              # (N, M)
    if inter.dtype.kind != "f":                                  # torch true division of integers: in float32
        inter, union = inter.astype(np.float32), union.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union                                      # (N, M)


def clip_boxes(boxes, size) -> np.ndarray:
    """(..., 4) boxes clamped to an image of size (h, w): x to [0, w], y to [0, h] (torchvision
    `clip_boxes_to_image`). Same dtype as the input (bounds converted to it, as torch's clamp); NaN stays NaN.
    An empty array comes back as an empty copy of any shape with an even last axis, as from torchvision's slicing."""
    b = V.array("boxes", boxes)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size: expected (height, width), got {size!r}")
    h, w = V.integer("size[0] (height)", size[0], 0), V.integer("size[1] (width)", size[1], 0)
    if b.size == 0 and b.ndim and b.shape[-1] % 2 == 0:         # torchvision stacks the x and y halves of the
        return np.array(b, copy=True)                             # last axis: any even length works when empty
    b = V.array("boxes", b, last=4)                               # (..., 4)
    if b.dtype.kind in "iu":                                      # a bound past the dtype's range clamps nothing
        h, w = min(h, np.iinfo(b.dtype).max), min(w, np.iinfo(b.dtype).max)
    out = np.array(b, copy=True)                                  # (..., 4)
    out[..., 0::2] = np.clip(out[..., 0::2], 0, w)                # (..., 2) x1, x2
    out[..., 1::2] = np.clip(out[..., 1::2], 0, h)                # (..., 2) y1, y2
    return out


def remove_small_boxes(boxes, min_size) -> np.ndarray:
    """Indices (int64, ascending) of the boxes with both sides >= min_size (torchvision `remove_small_boxes`: the
    comparison is >=, in the boxes' floating dtype, or float32 for integer boxes; NaN sides are removed)."""
    b = V.array("boxes", boxes, ndim=2, last=4)
    m = V.real("min_size", min_size, low=0.0)
    ws, hs = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]                 # (N,), (N,)
    if b.dtype.kind != "f":                                       # int tensor vs Python float: float32 in torch
        ws, hs = ws.astype(np.float32), hs.astype(np.float32)
    m = ws.dtype.type(m)                                          # torch compares with the scalar in the tensor dtype
    return np.flatnonzero((ws >= m) & (hs >= m)).astype(np.int64)


def _weights(weights, dtype) -> tuple:
    if not isinstance(weights, (tuple, list, np.ndarray)) or len(weights) != 4:
        raise ValueError(f"weights: expected 4 numbers (wx, wy, ww, wh), got {weights!r}")
    return tuple(dtype(V.real(f"weights[{i}]", w, low=0.0, low_inclusive=False)) for i, w in enumerate(weights))


def _coder_dtype(*arrays):
    """torch's promotion among the floating inputs (float16 stays float16 alone, float64 wins); integers alone give
    float32 (their true division)."""
    floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
    return np.result_type(*floats).type if floats else np.float32


def encode_boxes(reference_boxes, proposals, weights) -> np.ndarray:
    """Targets (N, 4) dx, dy, dw, dh that move `proposals` onto `reference_boxes` (torchvision BoxCoder.encode,
    `encode_boxes`; Faster R-CNN Eq. 2 scaled by the weights): e.g. dx = wx * (gt_cx - cx) / w, dw = ww * log(gt_w / w).
    """
    ref = V.array("reference_boxes", reference_boxes, ndim=2, last=4)
    prop = V.array("proposals", proposals, shape=(ref.shape[0], 4))
    dtype = _coder_dtype(ref, prop)
    ref, prop = ref.astype(dtype, copy=False), prop.astype(dtype, copy=False)
    wx, wy, ww, wh = _weights(weights, dtype)
    half = dtype(0.5)
    ex_w, ex_h = prop[:, 2] - prop[:, 0], prop[:, 3] - prop[:, 1]                  # (N,), (N,)
    ex_cx, ex_cy = prop[:, 0] + half * ex_w, prop[:, 1] + half * ex_h             # (N,), (N,)
    gt_w, gt_h = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]                     # (N,), (N,)
    gt_cx, gt_cy = ref[:, 0] + half * gt_w, ref[:, 1] + half * gt_h               # (N,), (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = wx * (gt_cx - ex_cx) / ex_w                                          # (N,) (wx * diff) / w, that order
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * _log(gt_w / ex_w)
        dh = wh * _log(gt_h / ex_h)
    return np.stack([dx, dy, dw, dh], axis=1)                                     # (N, 4)


def decode_boxes(deltas, boxes, weights, clip: float = BBOX_XFORM_CLIP) -> np.ndarray:
    """Apply deltas (N, 4*C) as dx, dy, dw, dh per class to reference boxes (N, 4) -> boxes (N, 4*C) as x1, y1, x2, y2
    (torchvision BoxCoder.decode_single, facts §4.3). dw, dh are clamped from above only, at f32(clip).

    Order of operations (facts §4.3): w = x2 - x1; cx = x1 + 0.5*w; dx = tx / wx; dw = min(tw / ww, clip);
    pcx = dx*w + cx (mul, then add); pw = exp(dw)*w; x1' = pcx - 0.5*pw, x2' = pcx + 0.5*pw.
    exp is evaluated in float64 and rounded to float32, which matches torch's float32 exp in ~99% of elements
    (the rest differ by 1 ulp, facts §4.3).
    """
    d = V.array("deltas", deltas, ndim=2)
    if d.shape[1] == 0 or d.shape[1] % 4:
        raise ValueError(f"deltas: expected shape (N, 4*C), got {d.shape}")
    b = V.array("boxes", boxes, shape=(d.shape[0], 4))
    dtype = _coder_dtype(d)                                   # torchvision: boxes.to(rel_codes.dtype)
    d, b = d.astype(dtype, copy=False), b.astype(dtype, copy=False)
    wx, wy, ww, wh = _weights(weights, dtype)
    clip = dtype(V.real("clip", clip))
    half = dtype(0.5)
    widths, heights = b[:, 2:3] - b[:, 0:1], b[:, 3:4] - b[:, 1:2]                # (N, 1), (N, 1)
    ctr_x, ctr_y = b[:, 0:1] + half * widths, b[:, 1:2] + half * heights          # (N, 1), (N, 1)
    dx, dy = d[:, 0::4] / wx, d[:, 1::4] / wy                                     # (N, C), (N, C)
    dw = np.minimum(d[:, 2::4] / ww, clip)                                        # (N, C) clamp(max=clip)
    dh = np.minimum(d[:, 3::4] / wh, clip)                                        # (N, C)
    pred_cx, pred_cy = dx * widths + ctr_x, dy * heights + ctr_y                  # (N, C), (N, C)
    pred_w, pred_h = _exp(dw) * widths, _exp(dh) * heights                        # (N, C), (N, C)
    half_w, half_h = half * pred_w, half * pred_h                                 # (N, C) centre to corner
    out = np.empty(d.shape, dtype)                                                # (N, 4*C)
    out[:, 0::4], out[:, 1::4] = pred_cx - half_w, pred_cy - half_h
    out[:, 2::4], out[:, 3::4] = pred_cx + half_w, pred_cy + half_h
    return out


def _exp(x: np.ndarray) -> np.ndarray:
    """exp in float64 rounded to x's dtype (closer to torch's float32 exp than numpy's float32 exp, facts §4.3)."""
    with np.errstate(over="ignore"):
        return np.exp(x.astype(np.float64)).astype(x.dtype)


def _log(x: np.ndarray) -> np.ndarray:
    """log in float64 rounded to x's dtype (as `_exp`; facts §10.1 item 2 for log2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x.astype(np.float64)).astype(x.dtype)
