"""The layers of the network other than convolution: linear, 2x2 transposed convolution, max pooling, nearest
upsampling, and the activations ReLU, sigmoid and softmax. The convolution API (`Conv`, `conv2d`, `conv2d_rois`, `load_conv`, BatchNorm folding) lives in
`convolution.py` and is re-exported here, so stage modules import all their layers from one place.

Shape glossary
    C, C'   input / output channels;  N  RoIs of a batch;  K  rows of a linear layer's input
    H, W    input height and width;  H', W'  output height and width
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numba import njit

from minimaskrcnn.nn.convolution import (Conv, conv2d, conv2d_rois, fold_batchnorm, load_conv,  # noqa: F401
                                         make_conv)                                        # (re-exported)
from minimaskrcnn.ops.parallel import run_interleaved


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Linear:
    """A fully connected layer `y = x @ weight.T + bias` (torch nn.Linear layout)."""

    weight: np.ndarray  # (Out, In) float32
    bias: np.ndarray    # (Out,) float32


@dataclass(frozen=True)
class ConvTranspose2x2:
    """ConvTranspose2d with kernel 2, stride 2, padding 0, channels-last: every input pixel owns a 2x2 output patch."""

    weight: np.ndarray  # (C, 4*C') float32: columns in (p, q, o) order, p/q = row/column inside the 2x2 patch
    bias: np.ndarray    # (C',) float32

    @property
    def out_channels(self) -> int:
        return self.bias.shape[0]


def load_linear(sd: Mapping[str, np.ndarray], name: str) -> Linear:
    """The nn.Linear `name` of a torchvision state dict."""
    weight = np.ascontiguousarray(sd[f"{name}.weight"], np.float32)        # (Out, In)
    bias = np.ascontiguousarray(sd[f"{name}.bias"], np.float32)            # (Out,)
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise ValueError(f"{name}: expected weight (Out, In) and bias (Out,), got {weight.shape}, {bias.shape}")
    return Linear(weight, bias)


def load_conv_transpose2x2(sd: Mapping[str, np.ndarray], name: str) -> ConvTranspose2x2:
    """The ConvTranspose2d(kernel 2, stride 2) `name`; torch stores its weight as (C, C', 2, 2)."""
    weight = np.asarray(sd[f"{name}.weight"], np.float32)                  # (C, C', 2, 2)
    if weight.ndim != 4 or weight.shape[2:] != (2, 2):
        raise ValueError(f"{name}.weight: expected (C, C', 2, 2), got {weight.shape}")
    c_in, c_out = weight.shape[:2]
    # (C, C', 2, 2) -> (C, 2, 2, C') -> (C, 4*C'): column (p*2 + q)*C' + o holds W[:, o, p, q]
    packed = np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(c_in, 4 * c_out))
    bias = np.ascontiguousarray(sd[f"{name}.bias"], np.float32)            # (C',)
    return ConvTranspose2x2(packed, bias)


# ----------------------------------------------------------------------------------------------------------------
# Forward functions
# ----------------------------------------------------------------------------------------------------------------

def conv_transpose2x2(x: np.ndarray, deconv: ConvTranspose2x2, relu: bool = False) -> np.ndarray:
    """ConvTranspose2d(kernel 2, stride 2) of a channels-last batch `x` (N, H, W, C) -> (N, 2H, 2W, C')."""
    patches = conv_transpose2x2_patches(x, deconv, relu)                    # (N, H, W, 2, 2, C')
    n, h, w, _, _, c_out = patches.shape
    # (N, H, W, 2, 2, C') -> (N, H, 2, W, 2, C') -> (N, 2H, 2W, C'): patch pixel (p, q) of (i, j) lands at (2i+p, 2j+q)
    return patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c_out)


def conv_transpose2x2_patches(x: np.ndarray, deconv: ConvTranspose2x2, relu: bool = False,
                              out: np.ndarray | None = None) -> np.ndarray:
    """The output of `conv_transpose2x2` as its 2x2 patches, (N, H, W, 2, 2, C') (before interleaving them), written
    into `out` if given (a float32 C-contiguous array of N*H*W*4*C' elements, any shape).

    Patches do not overlap (facts §7): `patch[n, i, j, p, q, o] = b[o] + sum_c x[n, i, j, c] * W[c, o, p, q]`,
    one GEMM `(N*H*W, C) @ (C, 4*C')`.
    """
    if x.ndim != 4 or x.shape[3] != deconv.weight.shape[0]:
        raise ValueError(f"x: expected (N, H, W, C={deconv.weight.shape[0]}), got shape {x.shape}")
    n, h, w, c_in = x.shape
    c_out = deconv.out_channels
    if out is not None:
        out = out.reshape(n * h * w, 4 * c_out)
    y = np.matmul(np.ascontiguousarray(x, np.float32).reshape(n * h * w, c_in), deconv.weight, out=out)   # (N*H*W, 4*C')
    y = y.reshape(n, h, w, 2, 2, c_out)                                     # (N, H, W, p, q, C')
    y += deconv.bias
    return np.maximum(y, 0, out=y) if relu else y


def linear(x: np.ndarray, fc: Linear, relu: bool = False) -> np.ndarray:
    """`x @ W.T + b` (then ReLU) for `x` (K, In) -> (K, Out)."""
    if x.ndim != 2 or x.shape[1] != fc.weight.shape[1]:
        raise ValueError(f"x: expected (K, {fc.weight.shape[1]}), got shape {x.shape}")
    y = np.asarray(x, np.float32) @ fc.weight.T                             # (K, Out)
    y += fc.bias
    return np.maximum(y, 0, out=y) if relu else y


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) elementwise (NaN propagates, as in torch)."""
    return np.maximum(x, np.float32(0))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, evaluated in float64 and rounded to float32 (closest to torch's float32 sigmoid)."""
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax of (K, NC), evaluated in float64 and rounded to float32 (within an ulp of torch's float32 one)."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def max_pool2d(x: np.ndarray, kernel: int = 3, stride: int = 2, padding: int = 1) -> np.ndarray:
    """Max pooling of `x` (C, H, W) -> (C, H', W'), floor mode; padding acts as -inf and NaN propagates (torch)."""
    if x.ndim != 3:
        raise ValueError(f"x: expected (C, H, W), got shape {x.shape}")
    if not 0 <= padding <= kernel // 2:
        raise ValueError(f"padding: expected 0..{kernel // 2} (torch's limit), got {padding}")
    c, h, w = x.shape
    h_out, w_out = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"x: {h}x{w} is too small for kernel {kernel}, padding {padding}")
    out = np.empty((c, h_out, w_out), np.float32)                           # (C, H', W')
    run_interleaved(_max_pool_kernel, c, np.ascontiguousarray(x, np.float32), kernel, stride, padding, out)
    return out


def upsample_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch `F.interpolate(x, size, mode="nearest")` for `x` (C, h, w) -> (C, *size).

    Source index per axis (ATen UpSample.h `nearest_idx`): identity when sizes match, `dst >> 1` when the output is
    exactly twice the input (the FPN case with 32-divisible padding, facts §2.2), otherwise
    `min(floor(dst * f32(in / out)), in - 1)` in float32.
    """
    rows = _nearest_source_index(x.shape[1], size[0])                       # (H,)
    cols = _nearest_source_index(x.shape[2], size[1])                       # (W,)
    # one axis at a time: C-contiguous results (x[:, rows[:, None], cols] is laid out (H, W, C) in memory, and the
    # FPN's residual add would copy all of it: 53 MB at P2 for an 800 x 1088 input)
    return x.take(rows, axis=1).take(cols, axis=2)                          # (C, h, w) -> (C, H, w) -> (C, H, W)


def add_upsampled_nearest(out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`out += upsample_nearest(x, out.shape[1:])` in place, for float32 `out` (C, H, W) and `x` (C, h, w); returns
    `out`. The FPN's merge of a lateral map with the level above: one pass over `out`, reading `x` where the
    upsampled copy would have been (at P2 of an 800 x 1088 input that copy is 55 MB, made in two passes). The sum is
    `out + x[c, src_row, src_col]`, as `out + upsample_nearest(x)` computes it, bit for bit."""
    if out.ndim != 3 or x.ndim != 3 or out.shape[0] != x.shape[0] or out.dtype != np.float32:
        raise ValueError(f"out, x: expected float32 (C, H, W) and (C, h, w), got {out.dtype} {out.shape} and {x.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out: expected a C-contiguous array (it is updated in place)")
    rows = _nearest_source_index(x.shape[1], out.shape[1])                  # (H,)
    cols = _nearest_source_index(x.shape[2], out.shape[2])                  # (W,)
    _add_upsampled_kernel(out, np.ascontiguousarray(x, np.float32), rows, cols)
    return out


def _nearest_source_index(n_in: int, n_out: int) -> np.ndarray:
    dst = np.arange(n_out, dtype=np.int64)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), n_in - 1)


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels (slow references in tests/naive_layers.py)
# ----------------------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _max_pool_kernel(x, k, s, p, out, first, step):
    """out[c, oy, ox] = max of the in-bounds pixels of the k x k window at (oy*s - p, ox*s - p), scanned row-major,
    a NaN sticking (`_max_step`). For the channels c = first, first + step, ... (`run_interleaved`). A 3x3 window
    inside the image is written out, in the same order: the ResNet stem's pooling (64x400x544) ran in 10.3 instead of
    24.4 ms."""
    c_in, h, w = x.shape
    _, h_out, w_out = out.shape
    ox_lo = min(-(-p // s), w_out)                                          # first window with x0 >= 0
    ox_hi = max(min((w - k + p) // s + 1, w_out), ox_lo)                    # past the last one with x0 + k <= w
    for c in range(first, c_in, step):
        for oy in range(h_out):
            y0 = oy * s - p
            lo, hi = (ox_lo, ox_hi) if k == 3 and 0 <= y0 and y0 + 3 <= h else (w_out, w_out)
            for ox in range(lo):
                out[c, oy, ox] = _window_max(x, c, y0, ox * s - p, k)
            for ox in range(lo, hi):                                        # whole 3x3 windows
                x0 = ox * s - p
                m = _max_step(_max_step(_max_step(-np.inf, x[c, y0, x0]), x[c, y0, x0 + 1]), x[c, y0, x0 + 2])
                m = _max_step(_max_step(_max_step(m, x[c, y0 + 1, x0]), x[c, y0 + 1, x0 + 1]), x[c, y0 + 1, x0 + 2])
                out[c, oy, ox] = _max_step(_max_step(_max_step(m, x[c, y0 + 2, x0]), x[c, y0 + 2, x0 + 1]),
                                           x[c, y0 + 2, x0 + 2])
            for ox in range(hi, w_out):
                out[c, oy, ox] = _window_max(x, c, y0, ox * s - p, k)


@njit(cache=True, inline="always")
def _window_max(x, c, y0, x0, k):
    """The scan of the in-bounds pixels of the k x k window of channel c at (y0, x0)."""
    _, h, w = x.shape
    m = -np.inf
    for iy in range(max(y0, 0), min(y0 + k, h)):
        for ix in range(max(x0, 0), min(x0 + k, w)):
            m = _max_step(m, x[c, iy, ix])
    return m


@njit(cache=True, inline="always")
def _max_step(m, v):
    """One step of the window scan, in row-major order: v replaces m if larger or NaN (a NaN then sticks)."""
    return v if v > m or np.isnan(v) else m


@njit(cache=True)
def _add_upsampled_kernel(out, x, rows, cols):
    """out[c, y, j] += x[c, rows[y], cols[j]]."""
    c_in, h, w = out.shape
    for c in range(c_in):
        for y in range(h):
            dst, src = out[c, y], x[c, rows[y]]                             # (W,), (w,)
            for j in range(w):
                dst[j] = dst[j] + src[cols[j]]
