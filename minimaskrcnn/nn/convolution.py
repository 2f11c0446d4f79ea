"""Convolution as a matrix product, with BatchNorm folded in at load time (the bulk of the network's arithmetic).

Shape glossary
    C, C'   input / output channels
    N       RoIs of a batch
    H, W    input height and width;  H', W'  output height and width
    k       square kernel side;  s  stride;  p  zero padding
    KK      GEMM inner length C*k*k
    B       one block of im2col output positions

Layouts. One image is a `(C, H, W)` float32 map (torchvision's layout without the batch axis): `conv2d`. A batch of
RoIs goes through the head convolutions *channels-last*, `(N, H, W, C)`: `conv2d_rois`. At 7x7 or 14x14 the rows of an
image are too short for a fast channel-major unfolding (7 floats per copy), while channels-last copies whole pixels
(C = 256 contiguous floats), and one GEMM covers all RoIs, its `(N*H'*W', C')` product already being the next layer's
input. A `Conv` is packed for one of the two layouts (`Conv.channels_last`).

"im2col" (Chellapilla, Puri & Simard 2006). Image layout: weight `(C', C*k*k)` times the input unfolded into columns
`(C*k*k, H'*W')`, rows in (c, ky, kx) order. Channels-last: the unfolded input `(N*H'*W', k*k*C)`, columns in
(ky, kx, c) order, times the weight `(k*k*C, C')`. The unfolding is done for a block of output positions at a time
into a reused buffer of at most `IM2COL_BLOCK_BYTES`, so a 3x3 convolution at P2 (200x272, 256 channels: 500 MB
unfolded) runs in 64 MB pieces; a 1x1 stride-1 convolution needs no unfolding (its input is the column matrix).
The GEMM is NumPy's (BLAS, both cores). A 3x3 convolution with stride 1 and padding 1, most of the network's
arithmetic, is packed for Winograd's F(4x4, 3x3) instead (`winograd.py`, 4x fewer multiplications). Bias, the
residual of a ResNet block and the ReLU are applied to each output block right after its GEMM, while it is still in
cache.

BatchNorm (frozen or eval-mode: `y = (x - mean) / sqrt(var + eps) * gamma + beta`) is affine per channel and is
folded into the preceding convolution at load time (facts §11 "easy wins"):
    scale = gamma / sqrt(var + eps),   W' = W * scale[o],   b' = (b - mean) * scale + beta
computed in float64 and rounded once to float32. torchvision applies the BN after a float32 convolution instead, so
folded outputs differ from torchvision's at the level of float32 rounding (~1e-7 relative), far inside facts §10.4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numba import njit

from minimaskrcnn.nn.winograd import conv3x3, conv3x3_rois, pack_filters
from minimaskrcnn.nn.workspace import scratch
from minimaskrcnn.ops.parallel import run_interleaved

# Upper bound on one im2col block. Each block costs one BLAS call, i.e. one wake-up of the BLAS threads. On an idle
# 2-core machine the block size hardly matters (1k to 50k columns run at the same GFLOP/s), but with the cores shared
# with other processes every call waits for a descheduled BLAS thread: the same GEMM took 0.55 s in 1 call, 0.74 s in
# 8, 0.97 s in 17. 64 MB is 7 calls for a 3x3 conv at P2. The buffer is reused (`workspace.py`).
IM2COL_BLOCK_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conv:
    """A 2-D convolution (square kernel, no dilation, groups = 1) with any BatchNorm already folded in."""

    weight: np.ndarray      # float32 C-contiguous GEMM operand: (C', C*k*k) in (c, ky, kx) order for `conv2d`,
                            # (k*k*C, C') in (ky, kx, c) order for `conv2d_rois` (channels_last); if `winograd`,
                            # the transformed filters (36, C', C), or (36, C, C') channels-last (winograd.py)
    bias: np.ndarray        # (C',) float32; zeros when the layer has neither bias nor BatchNorm
    kernel: int
    stride: int
    padding: int
    channels_last: bool     # which layout `weight` is packed for
    winograd: bool = False  # 3x3, stride 1, padding 1 by Winograd's F(4x4, 3x3) instead of im2col

    @property
    def out_channels(self) -> int:
        return self.bias.shape[0]

    @property
    def in_channels(self) -> int:
        if self.winograd:
            return self.weight.shape[1 if self.channels_last else 2]
        return self.weight.shape[0 if self.channels_last else 1] // (self.kernel * self.kernel)


def fold_batchnorm(weight, bias, gamma, beta, mean, var, eps: float):
    """Fold `BN(conv(x))` into one convolution; returns float32 `(W', b')` with W' shaped like `weight`.

    `weight` (C', ...) and `bias` (C',) or None are the convolution's; gamma/beta/mean/var (C',) the BatchNorm's
    affine parameters and running statistics. Formula in the module docstring; computed in float64.
    """
    weight = np.asarray(weight, np.float64)                                 # (C', C, k, k)
    var = np.asarray(var, np.float64)                                       # (C',)
    if np.any(var + eps <= 0):
        raise ValueError(f"BatchNorm running_var + eps must be > 0 (eps={eps}, min var {var.min()})")
    scale = np.asarray(gamma, np.float64) / np.sqrt(var + eps)              # (C',)
    b = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    folded_b = (b - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)   # (C',)
    folded_w = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))    # (C', C, k, k)
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


def make_conv(weight, bias=None, *, stride: int = 1, padding: int = 0, channels_last: bool = False,
              winograd: bool | None = None) -> Conv:
    """Pack a torch-layout conv weight (C', C, k, k) (and optional bias (C',)) for `conv2d`, or for `conv2d_rois`
    when channels_last. `winograd` (default: whenever the kernel is 3x3, stride 1, padding 1) packs it for
    `winograd.py`; False keeps im2col."""
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight: expected (C', C, k, k) with a square kernel, got {weight.shape}")
    c_out, c_in, k, _ = weight.shape
    bias = np.zeros(c_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    if bias.shape != (c_out,):
        raise ValueError(f"bias: expected ({c_out},), got {bias.shape}")
    eligible = k == 3 and stride == 1 and padding == 1
    if winograd and not eligible:
        raise ValueError(f"winograd: needs a 3x3 kernel, stride 1 and padding 1, got {k}x{k}, {stride}, {padding}")
    if eligible and winograd is not False:
        return Conv(pack_filters(weight, channels_last), np.ascontiguousarray(bias), k, stride, padding,
                    channels_last, winograd=True)
    if channels_last:
        packed = weight.transpose(2, 3, 1, 0).reshape(k * k * c_in, c_out)  # (C', C, k, k) -> (k, k, C, C') -> (KK, C')
    else:
        packed = weight.reshape(c_out, c_in * k * k)                         # (C', C, k, k) -> (C', KK)
    return Conv(np.ascontiguousarray(packed), np.ascontiguousarray(bias), k, stride, padding, channels_last)


def load_conv(sd: Mapping[str, np.ndarray], name: str, kernel: int, *, stride: int = 1, padding: int = 0,
              bn: str | None = None, eps: float = 1e-5, channels_last: bool = False,
              winograd: bool | None = None) -> Conv:
    """The kernel x kernel convolution `name` of a torchvision state dict (`name.weight`, `name.bias`), with the
    BatchNorm whose key prefix is `bn` (`bn.weight`, `.bias`, `.running_mean`, `.running_var`) folded in.

    The bias is optional only before a BatchNorm: every convolution of these models without a norm has one, so a
    missing bias there means the weights belong to another architecture (e.g. v2 weights read with a v1 Config).
    """
    weight = sd[f"{name}.weight"]
    if np.ndim(weight) != 4 or np.shape(weight)[2:] != (kernel, kernel):
        raise ValueError(f"{name}.weight: expected a (C', C, {kernel}, {kernel}) kernel, got {np.shape(weight)}")
    bias = sd[f"{name}.bias"] if bn is None else sd.get(f"{name}.bias")
    if bn is not None:
        weight, bias = fold_batchnorm(weight, bias, sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                                      sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], eps)
    return make_conv(weight, bias, stride=stride, padding=padding, channels_last=channels_last, winograd=winograd)


# ----------------------------------------------------------------------------------------------------------------
# Forward functions
# ----------------------------------------------------------------------------------------------------------------

def conv2d(x: np.ndarray, conv: Conv, relu: bool = False, residual: np.ndarray | None = None) -> np.ndarray:
    """`relu(conv(x) + bias + residual)` of one image `x` (C, H, W) -> (C', H', W'); residual shaped as the output."""
    if x.ndim != 3 or x.shape[0] != conv.in_channels or conv.channels_last:
        raise ValueError(f"x: expected (C={conv.in_channels}, H, W) and an image-layout conv, got shape {x.shape}")
    x = np.ascontiguousarray(x, np.float32)
    c_in, h, w = x.shape
    k, s, p = conv.kernel, conv.stride, conv.padding
    h_out, w_out = _output_size(h, w, k, s, p)
    if conv.winograd:
        out = conv3x3(x, conv.weight, conv.bias, relu and residual is None)   # (C', H, W)
        if residual is not None:                                            # torchvision's order: + identity, ReLU
            out += residual
            if relu:
                np.maximum(out, 0, out=out)
        return out
    out = np.empty((conv.out_channels, h_out * w_out), np.float32)          # (C', H'*W')
    if residual is not None:
        residual = np.ascontiguousarray(residual, np.float32).reshape(out.shape)   # (C', H'*W')
    direct = k == 1 and s == 1 and p == 0                                   # the input already is the column matrix
    rows_per_block = max(1, IM2COL_BLOCK_BYTES // (4 * c_in * k * k * w_out))
    for r0 in range(0, h_out, rows_per_block):                              # blocks of whole output rows
        r1 = min(r0 + rows_per_block, h_out)
        j0, j1 = r0 * w_out, r1 * w_out                                     # output columns of this block
        if direct:
            block = x.reshape(c_in, h * w)[:, j0:j1]                        # (C, B)
        else:                          # C-contiguous also for a shorter last block (one compiled kernel: winograd)
            block = scratch("im2col", (c_in * k * k, j1 - j0))              # (C*k*k, B)
            run_interleaved(_im2col_kernel, c_in * k * k, x, k, s, p, w_out, r0, r1, block)   # rows over threads
        np.matmul(conv.weight, block, out=out[:, j0:j1])                    # (C', KK) @ (KK, B) -> (C', B)
        if residual is None:
            run_interleaved(_bias_act_kernel, out.shape[0], out, conv.bias, j0, j1, relu)
        else:
            run_interleaved(_bias_residual_act_kernel, out.shape[0], out, conv.bias, residual, j0, j1, relu)
    return out.reshape(conv.out_channels, h_out, w_out)                     # (C', H', W')


def conv2d_rois(x: np.ndarray, conv: Conv, relu: bool = False) -> np.ndarray:
    """`relu(conv(x) + bias)` of a channels-last RoI batch `x` (N, H, W, C) -> (N, H', W', C'), one GEMM per block
    of output positions over the whole batch."""
    if x.ndim != 4 or x.shape[3] != conv.in_channels or not conv.channels_last:
        raise ValueError(f"x: expected (N, H, W, C={conv.in_channels}) and a channels-last conv, got shape {x.shape}")
    x = np.ascontiguousarray(x, np.float32)
    n, h, w, c_in = x.shape
    k, s, p = conv.kernel, conv.stride, conv.padding
    h_out, w_out = _output_size(h, w, k, s, p)
    if conv.winograd:
        return conv3x3_rois(x, conv.weight, conv.bias, relu)                # (N, H, W, C')
    m = n * h_out * w_out                                                   # output positions
    out = np.empty((m, conv.out_channels), np.float32)                      # (N*H'*W', C')
    direct = k == 1 and s == 1 and p == 0
    per_block = max(1, IM2COL_BLOCK_BYTES // (4 * c_in * k * k))
    cols = None if direct else scratch("im2col", (min(per_block, m), c_in * k * k))
    for m0 in range(0, m, per_block):
        m1 = min(m0 + per_block, m)
        if direct:
            block = x.reshape(m, c_in)[m0:m1]                               # (B, C)
        else:
            block = cols[: m1 - m0]                                         # (B, KK)
            _im2col_channels_last_kernel(x, k, s, p, h_out, w_out, m0, m1, block)
        y = np.matmul(block, conv.weight, out=out[m0:m1])                   # (B, KK) @ (KK, C') -> (B, C')
        y += conv.bias
        if relu:
            np.maximum(y, 0, out=y)
    return out.reshape(n, h_out, w_out, conv.out_channels)                  # (N, H', W', C')


def _output_size(h: int, w: int, k: int, s: int, p: int) -> tuple:
    h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"x: {h}x{w} is too small for kernel {k}, stride {s}, padding {p}")
    return h_out, w_out


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels (slow references in tests/naive_layers.py)
# ----------------------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _im2col_kernel(x, k, s, p, w_out, r0, r1, cols, first, step):
    """cols[(c*k + ky)*k + kx, (oy - r0)*W' + ox] = x[c, oy*s - p + ky, ox*s - p + kx] (0 outside the image),
    for the output rows oy in r0..r1 and the rows first, first + step, ... of cols (`run_interleaved`).

    A serial kernel on threads of our own, not a parallel (OpenMP) one: those threads kept spinning while BLAS ran
    on the same 2 cores, which made the convolution 2x slower than the sum of its parts. BLAS's threads spin too,
    after each product, unless OpenBLAS lets them sleep at once (`nn/threads.py`, OPENBLAS_THREAD_TIMEOUT).
    """
    c_in, h, w = x.shape
    kk = k * k
    for row in range(first, c_in * kk, step):
        c, ky, kx = row // kk, (row % kk) // k, row % k
        # output columns whose input column ox*s - p + kx lies inside [0, w)
        ox_lo = min(max(0, (p - kx + s - 1) // s), w_out)
        ox_hi = max(min(w_out, (w - 1 + p - kx) // s + 1), ox_lo)
        ix_lo = ox_lo * s - p + kx
        for oy in range(r0, r1):
            iy = oy * s - p + ky
            dst = cols[row, (oy - r0) * w_out:(oy - r0 + 1) * w_out]       # (W',)
            if iy < 0 or iy >= h:
                dst[:] = 0.0
                continue
            src = x[c, iy]                                                  # (W,)
            dst[:ox_lo] = 0.0
            # element loops, not `dst[a:b] = src[c:d]`: an array-to-array slice assignment makes Numba compile its
            # shape-mismatch error message (string formatting, ~3 s of a fresh install's first run); LLVM vectorizes
            # these loops all the same
            if s == 1:
                for q in range(ox_hi - ox_lo):
                    dst[ox_lo + q] = src[ix_lo + q]
            else:
                # unsigned indices (all >= 0 here): Numba wraps a possibly negative index (x[-1] is the last
                # element), and without that select the strided copy ran ~2x faster (conv1's 7x7 stride-2 columns
                # 11.4 -> 5.9 ms, a 3x3 stride-2 one at P2 16.3 -> 12.3 ms on one thread, Zen 4; winograd.py has
                # the same finding)
                d0, i0, step_u = np.uint64(ox_lo), np.uint64(ix_lo), np.uint64(s)
                for q in range(np.uint64(ox_hi - ox_lo)):
                    dst[d0 + q] = src[i0 + q * step_u]
            dst[ox_hi:] = 0.0


@njit(cache=True)
def _im2col_channels_last_kernel(x, k, s, p, h_out, w_out, m0, m1, cols):
    """cols[m - m0, (ky*k + kx)*C + c] = x[n, oy*s - p + ky, ox*s - p + kx, c] (0 outside the image), for the output
    positions m = (n*H' + oy)*W' + ox in m0..m1: whole pixels (C contiguous floats) per copy. Serial (the RoI
    convolutions of torchvision's and matterport's heads are Winograd's or 1x1: rarely run)."""
    _, h, w, c_in = x.shape
    for m in range(m0, m1):
        n, oy, ox = m // (h_out * w_out), (m // w_out) % h_out, m % w_out
        for ky in range(k):
            iy = oy * s - p + ky
            for kx in range(k):
                ix = ox * s - p + kx
                dst = cols[m - m0, (ky * k + kx) * c_in:(ky * k + kx + 1) * c_in]   # (C,)
                if 0 <= iy < h and 0 <= ix < w:
                    src = x[n, iy, ix]                                      # (C,)
                    for c in range(c_in):                                   # (no slice assignment: see above)
                        dst[c] = src[c]
                else:
                    dst[:] = 0.0


@njit(cache=True, nogil=True)
def _bias_act_kernel(out, bias, j0, j1, relu, first, step):
    """out[o, j0:j1] = relu?(out[o, j0:j1] + bias[o]), in place, for the channels o = first, first + step, ... The
    branch is outside the loops, which SIMD-vectorize (4x faster on a cached block than a per-element test)."""
    for o in range(first, out.shape[0], step):
        b = bias[o]
        row = out[o, j0:j1]
        if relu:
            for j in range(row.size):
                row[j] = max(row[j] + b, np.float32(0.0))
        else:
            for j in range(row.size):
                row[j] = row[j] + b


@njit(cache=True, nogil=True)
def _bias_residual_act_kernel(out, bias, residual, j0, j1, relu, first, step):
    """out[o, j0:j1] = relu?((out + bias[o]) + residual), in place: torchvision's order, BN(conv) + identity; for
    the channels o = first, first + step, ..."""
    for o in range(first, out.shape[0], step):
        b = bias[o]
        row, res = out[o, j0:j1], residual[o, j0:j1]
        if relu:
            for j in range(row.size):
                row[j] = max((row[j] + b) + res[j], np.float32(0.0))
        else:
            for j in range(row.size):
                row[j] = (row[j] + b) + res[j]
