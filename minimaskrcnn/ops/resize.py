"""The transform's resize: output size rule and ATen's bilinear kernel (align_corners=False, no antialias).

Shape glossary
    C: channels
    H, W: input height and width
    OH, OW: output height and width

Facts §1. The output size is floor(side * scale) in double with scale = min(800 / short side, 1333 / long side),
so it can land one pixel below the intended side (161 x 242 -> 799 x 1202). The kernel then ignores that scale and
uses f32(in) / f32(out) per axis; source coordinates and weights are computed in float32 and the four taps are
summed as ATen's scalar kernel does (`_bilinear_value`): bitwise torch's with ATEN_CPU_CAPABILITY=default (measured);
torch's AVX2/AVX512 kernels differ from that by FMA contraction, also in the source coordinate s*(d + 0.5) - 0.5,
which then lands up to an ulp of the coordinate away (6.1e-5 px at x ~ 600) and moves the value by that times the
local pixel step: 3e-5 to 7e-5 on photos with torch 2.14.1 (tests/naive.py `resize_error_bound` derives the bound).
float64 is computed in float64 (ATen's opmath for double), float16 and uint8 in float32 and rounded back.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import _validate as V
from .parallel import run_interleaved

# torchvision GeneralizedRCNNTransform defaults (FasterRCNN.__init__): min_size=(800,), max_size=1333.
MIN_SIZE = 800
MAX_SIZE = 1333


@njit(cache=True)
def _linear_coeffs(in_size, out_size, start, stop, one):
    """Source indices and weights of output positions start..stop-1 for resizing in_size -> out_size along one axis
    (ATen upsample_bilinear2d, align_corners=False; facts §1), in the dtype T of `one` (1 as float32 or float64: ATen's
    opmath type, float32 for float32 and float16 tensors, float64 for float64 ones):

    s = T(in)/T(out); src = max(s*(d + 0.5) - 0.5, 0); i0 = min(floor(src), in-1); l1 = clamp(src - i0, 0, 1);
    l0 = 1 - l1; i1 = i0 + 1 if i0 < in-1 else i0. Returns i0, i1 (int64) and l0, l1 (T), each (stop-start,).
    """
    T = type(one)
    n = stop - start
    i0 = np.empty(n, np.int64)
    i1 = np.empty(n, np.int64)
    l0 = np.empty(n, T)
    l1 = np.empty(n, T)
    scale = T(in_size) / T(out_size)
    half, zero = T(0.5), T(0.0)
    for k in range(n):
        src = scale * (T(start + k) + half) - half
        if src < zero:
            src = zero
        idx = min(int(math.floor(src)), in_size - 1)
        lam = min(max(src - T(idx), zero), one)
        i0[k] = idx
        i1[k] = idx + 1 if idx < in_size - 1 else idx
        l1[k] = lam
        l0[k] = one - lam
    return i0, i1, l0, l1


@njit(cache=True, nogil=True)
def _resize_kernel(image, out, first, step):
    """(C, H, W) -> out (C, OH, OW), float32 or float64 (one compiled version each), rows first, first + step, ...
    of the C*OH output rows (threads take interleaved rows: `run_interleaved`)."""
    c_, h, w = image.shape
    out_h, out_w = out.shape[1], out.shape[2]
    one = image.dtype.type(1)
    y0, y1, ly0, ly1 = _linear_coeffs(h, out_h, 0, out_h, one)     # (OH,) each
    x0, x1, lx0, lx1 = _linear_coeffs(w, out_w, 0, out_w, one)     # (OW,) each
    for row in range(first, c_ * out_h, step):
        c, oy = row // out_h, row % out_h
        top, bottom = image[c, y0[oy]], image[c, y1[oy]]          # (W,) the two source rows
        for ox in range(out_w):
            out[c, oy, ox] = _bilinear_value(top, bottom, x0[ox], x1[ox], ly0[oy], ly1[oy], lx0[ox], lx1[ox])


@njit(cache=True)
def _bilinear_value(top, bottom, a, b, ly0, ly1, lx0, lx1):
    """ATen's 2-D linear interpolation of one output pixel (UpSampleKernel.cpp, scalar path): the four weights are
    products ly*lx and the taps are summed left to right, ((w00*t_a + w01*t_b) + w10*b_a) + w11*b_b. This is bitwise
    torch's with ATEN_CPU_CAPABILITY=default; its AVX2/AVX512 kernels contract some of it into FMAs (facts §1)."""
    return (((ly0 * lx0) * top[a] + (ly0 * lx1) * top[b]) + (ly1 * lx0) * bottom[a]) + (ly1 * lx1) * bottom[b]


def resized_size(h, w, min_size=MIN_SIZE, max_size=MAX_SIZE) -> tuple[int, int]:
    """(h', w') of GeneralizedRCNNTransform's resize: scale = min(min_size / min(h, w), max_size / max(h, w)) in
    double, then floor(h * scale), floor(w * scale) (F.interpolate with recompute_scale_factor=True; facts §1)."""
    h, w = V.integer("h", h, 1), V.integer("w", w, 1)
    min_size = V.real("min_size", min_size, low=0.0, low_inclusive=False)
    max_size = V.real("max_size", max_size, low=0.0, low_inclusive=False)
    scale = min(min_size / min(h, w), max_size / max(h, w))
    out = int(math.floor(h * scale)), int(math.floor(w * scale))
    if min(out) < 1:      # torchvision fails inside F.interpolate here; say why instead
        raise ValueError(f"image: {h}x{w} is too elongated for the resize rule (it would become {out[0]}x{out[1]}); "
                         f"crop or pad it first")
    return out


def resize_bilinear(image, out_h, out_w) -> np.ndarray:
    """(C, H, W) -> (C, out_h, out_w), bilinear with align_corners=False and no antialias, as
    torch.nn.functional.interpolate (facts §1), in torch's dtypes: see `_in_opmath` / `_from_opmath`."""
    img = V.array("image", image, ndim=3)
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise ValueError(f"image: expected non-empty height and width, got shape {img.shape}")
    out_h, out_w = V.integer("out_h", out_h, 1), V.integer("out_w", out_w, 1)
    work = _in_opmath(img)                                          # (C, H, W) float32 or float64
    out = np.empty((work.shape[0], out_h, out_w), work.dtype)       # (C, OH, OW)
    run_interleaved(_resize_kernel, work.shape[0] * out_h, work, out)
    return _from_opmath(out, img.dtype)


def _in_opmath(a: np.ndarray) -> np.ndarray:
    """The array in ATen's opmath type for upsampling: float64 stays float64; float32, float16 and uint8 (the
    integer type torch's bilinear kernel accepts) are computed in float32. Other integers, which torch refuses, are
    computed in float32 too and give float32 (`_from_opmath`)."""
    return np.ascontiguousarray(a, dtype=np.float64 if a.dtype == np.float64 else np.float32)


def _from_opmath(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the input's dtype, as torch returns it: float16 rounded to nearest; uint8 rounded to nearest and
    saturated (ATen's uint8 bilinear rounds, measured against torch 2.14 below); anything else unchanged."""
    if dtype == np.float16:
        return out.astype(np.float16)
    if dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def resize_image(image, min_size=MIN_SIZE, max_size=MAX_SIZE) -> np.ndarray:
    """(C, H, W) -> (C, h', w') float32 with (h', w') = `resized_size(H, W, min_size, max_size)`."""
    img = V.array("image", image, ndim=3)
    out_h, out_w = resized_size(img.shape[1], img.shape[2], min_size, max_size)
    return resize_bilinear(img, out_h, out_w)
