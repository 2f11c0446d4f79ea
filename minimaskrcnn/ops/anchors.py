"""Anchor boxes of the RPN, laid out exactly as torchvision's AnchorGenerator (facts §3).

Shape glossary
    L: number of feature levels
    A: anchors per location on a level (= number of sizes x number of aspect ratios of that level)
    fh, fw: height and width of a level's feature map
    K: total number of anchors, sum over levels of fh * fw * A

Anchors are (K, 4) (float32 unless asked otherwise) as x1, y1, x2, y2 in padded-image pixels, with exact integer coordinates, neither
clipped nor shifted by half a stride: anchor a of cell (y, x) is the cell anchor a moved by (x*stride_w, y*stride_h).
"""
from __future__ import annotations

import numpy as np

from . import _validate as V

# torchvision faster_rcnn._default_anchorgen: one size per FPN level ('0'..'3', 'pool'), three aspect ratios.
DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes, aspect_ratios, dtype=np.float32) -> np.ndarray:
    """(A, 4) anchors centred on (0, 0) for one level, aspect ratio outer and size inner
    (torchvision AnchorGenerator.generate_anchors). aspect ratio = height / width:

    h_ratio = sqrt(ar), w_ratio = 1 / h_ratio, ws = w_ratio * size, hs = h_ratio * size, and the anchor is
    round([-ws, -hs, ws, hs] / 2) with round half to even (torch.round), e.g. size 32, ar 0.5 -> [-23, -11, 23, 11].
    All in `dtype` (float16, float32 or float64; generate_anchors' `dtype` argument, float32 by default, and
    AnchorGenerator passes the feature maps' dtype).
    """
    dt = _float_dtype(dtype)
    s = np.asarray([V.real("sizes", v, low=0.0, low_inclusive=False) for v in _seq("sizes", sizes)], dt)
    ar = np.asarray([V.real("aspect_ratios", v, low=0.0, low_inclusive=False)
                     for v in _seq("aspect_ratios", aspect_ratios)], dt)
    h_ratios = np.sqrt(ar)                                              # (R,)
    w_ratios = dt.type(1) / h_ratios                                    # (R,)
    ws = (w_ratios[:, None] * s[None, :]).reshape(-1)                   # (R, S) -> (A,)
    hs = (h_ratios[:, None] * s[None, :]).reshape(-1)                   # (R, S) -> (A,)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / dt.type(2)            # (A, 4)
    return np.round(base)                                               # (A, 4) half to even


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: expected a NumPy floating dtype, got {dtype!r}") from None
    if dt not in (np.float16, np.float32, np.float64):
        raise ValueError(f"dtype: expected float16, float32 or float64, got {dt}")
    return dt


def _seq(name: str, x) -> tuple:
    if not isinstance(x, (tuple, list, np.ndarray)) or len(x) == 0:
        raise ValueError(f"{name}: expected a non-empty sequence of numbers, got {x!r}")
    return tuple(x)


def _per_level(sizes, aspect_ratios, num_levels: int) -> tuple[tuple, tuple]:
    """torchvision AnchorGenerator.__init__ conventions: a flat `sizes` means one size per level, a flat
    `aspect_ratios` is shared by all levels."""
    sizes = _seq("sizes", sizes)
    if not isinstance(sizes[0], (tuple, list, np.ndarray)):
        sizes = tuple((v,) for v in sizes)
    aspect_ratios = _seq("aspect_ratios", aspect_ratios)
    if not isinstance(aspect_ratios[0], (tuple, list, np.ndarray)):
        aspect_ratios = (aspect_ratios,) * len(sizes)
    if not len(sizes) == len(aspect_ratios) == num_levels:
        raise ValueError(f"sizes / aspect_ratios: expected one entry per feature level ({num_levels}), "
                         f"got {len(sizes)} sizes and {len(aspect_ratios)} aspect ratio groups")
    return sizes, aspect_ratios


def _shapes(feature_shapes) -> list[tuple[int, int]]:
    shapes = _seq("feature_shapes", feature_shapes)
    out = []
    for i, fs in enumerate(shapes):
        if not isinstance(fs, (tuple, list, np.ndarray)) or len(fs) < 2:
            raise ValueError(f"feature_shapes[{i}]: expected (..., fh, fw), got {fs!r}")
        out.append((V.integer(f"feature_shapes[{i}] height", fs[-2], 1),
                    V.integer(f"feature_shapes[{i}] width", fs[-1], 1)))
    return out


def anchor_strides(feature_shapes, padded_image_shape) -> list[tuple[int, int]]:
    """Per level (stride_h, stride_w) = (Hp // fh, Wp // fw), integer floor division per axis (torchvision
    AnchorGenerator.forward): with Hp = 800 the 13-row 'pool' level has stride_h 61, not 64 (facts §3)."""
    if not isinstance(padded_image_shape, (tuple, list)) or len(padded_image_shape) != 2:
        raise ValueError(f"padded_image_shape: expected (Hp, Wp), got {padded_image_shape!r}")
    hp = V.integer("padded_image_shape[0]", padded_image_shape[0], 1)
    wp = V.integer("padded_image_shape[1]", padded_image_shape[1], 1)
    return [(hp // fh, wp // fw) for fh, fw in _shapes(feature_shapes)]


def num_anchors_per_level(feature_shapes, num_anchors_per_location) -> list[int]:
    """fh * fw * A per level: the sizes of the level blocks in `grid_anchors`' output (and in the RPN outputs)."""
    if isinstance(num_anchors_per_location, (tuple, list)):
        per_loc = [V.integer("num_anchors_per_location", a, 1) for a in num_anchors_per_location]
    else:
        per_loc = [V.integer("num_anchors_per_location", num_anchors_per_location, 1)] * len(feature_shapes)
    return [fh * fw * a for (fh, fw), a in zip(_shapes(feature_shapes), per_loc, strict=True)]


def grid_anchors(feature_shapes, padded_image_shape, sizes=DEFAULT_SIZES,
                 aspect_ratios=DEFAULT_ASPECT_RATIOS, dtype=np.float32) -> np.ndarray:
    """(K, 4) anchors of all levels concatenated in level order (torchvision AnchorGenerator.forward for one
    image). Inside a level the flat index is (y * fw + x) * A + a (row-major cells, then the cell anchor).
    `dtype` is the feature maps' dtype, in which AnchorGenerator makes them (float32 in the network).

    feature_shapes: per level (fh, fw) (or any shape ending in them, e.g. (C, fh, fw)); padded_image_shape: (Hp, Wp)
    of the padded batch tensor, not the resized image. sizes / aspect_ratios: per level, or aspect ratios once for
    all levels (AnchorGenerator conventions).
    """
    shapes = _shapes(feature_shapes)
    strides = anchor_strides(shapes, padded_image_shape)
    sizes, aspect_ratios = _per_level(sizes, aspect_ratios, len(shapes))
    levels = []
    for (fh, fw), (sh, sw), s, ar in zip(shapes, strides, sizes, aspect_ratios):
        # AnchorGenerator makes its cell anchors in float32 at construction and converts them to the maps' dtype
        # (exact: they are integers below 2048); only the shifted sum rounds in float16
        base = cell_anchors(s, ar).astype(_float_dtype(dtype))            # (A, 4)
        shift_y, shift_x = np.meshgrid(np.arange(fh, dtype=np.int64) * sh,
                                       np.arange(fw, dtype=np.int64) * sw, indexing="ij")  # (fh, fw) each
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)       # (fh*fw,)
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1)   # (fh*fw, 4) as x, y, x, y
        # torch adds int64 shifts to float anchors in its opmath type (float32 for float16 and float32, float64 for
        # float64; integer shifts are exact there) and rounds the sum to the anchors' dtype (numpy would promote the
        # int64 + float32 sum to float64; casting the shifts to float16 first would round them twice)
        opmath = np.promote_types(base.dtype, np.float32)
        summed = shifts.astype(opmath)[:, None, :] + base.astype(opmath)[None, :, :]   # (fh*fw, A, 4)
        levels.append(summed.astype(base.dtype).reshape(-1, 4))          # (fh*fw, A, 4) -> (fh*fw*A, 4)
    return np.concatenate(levels, axis=0)                                 # (K, 4)
