"""The arithmetic of the network: convolution, pooling, linear layers, BatchNorm folding.

Shape glossary
    C, C'   input / output channels
    N       images or RoIs of a channel-major batch
    H, W    input height and width;  H', W'  output height and width
    k       square kernel side;  s  stride;  p  zero padding
    KK      GEMM inner length C*k*k (one im2col row per (c, ky, kx))
    B       columns of one im2col block (= whole output rows, R*W')

Layout. One image is a `(C, H, W)` float32 map (torchvision's layout without the batch axis). A batch of RoIs goes
through the convolutions *channel-major*, `(C, N, H, W)`: one GEMM then covers every RoI, and its `(C', N*H'*W')`
product already is the next layer's input. `conv2d` is the `N = 1` case of `conv2d_batch`.

Convolution as a matrix product ("im2col", Chellapilla, Puri & Simard 2006): with the weight packed as
`(C', C*k*k)` and the input unfolded into columns `(C*k*k, H'*W')`, `out = W @ cols + b`. The unfolding is done for a
block of output rows at a time into a buffer of at most `IM2COL_BLOCK_BYTES`, so a 3x3 convolution at P2 (200x272,
256 channels: 500 MB unfolded) runs in ~13 MB pieces; a 1x1 stride-1 convolution needs no unfolding at all (its
columns are the input itself). The GEMM is NumPy's (BLAS), the rest are parallel Numba kernels. Bias, the residual
of a ResNet block and the ReLU are applied to each output block right after its GEMM, while it is still in cache.

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
from numba import njit, prange

# Upper bound on one im2col block: keeps the buffer in the last-level cache's neighbourhood and below glibc's
# mmap threshold (32 MB), so it is recycled from call to call instead of being page-faulted in again.
# Measured on the 2-core AVX-512 machine: BLAS throughput is flat from 1k to 50k columns, so small blocks cost nothing.
IM2COL_BLOCK_BYTES = 16 * 2**20


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conv:
    """A 2-D convolution (square kernel, no dilation, groups = 1) with any BatchNorm already folded in."""

    weight: np.ndarray  # (C', C*k*k) float32 C-contiguous: GEMM left operand, columns in (c, ky, kx) order
    bias: np.ndarray    # (C',) float32; zeros when the layer has neither bias nor BatchNorm
    kernel: int
    stride: int
    padding: int

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] // (self.kernel * self.kernel)


@dataclass(frozen=True)
class Linear:
    """A fully connected layer `y = x @ weight.T + bias` (torch nn.Linear layout)."""

    weight: np.ndarray  # (Out, In) float32
    bias: np.ndarray    # (Out,) float32


@dataclass(frozen=True)
class ConvTranspose2x2:
    """ConvTranspose2d with kernel 2, stride 2, padding 0: every input pixel owns its own 2x2 output patch."""

    weight: np.ndarray  # (4*C', C) float32: rows in (p, q, o) order, p/q = row/column inside the 2x2 patch
    bias: np.ndarray    # (C',) float32

    @property
    def out_channels(self) -> int:
        return self.bias.shape[0]


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


def make_conv(weight, bias=None, *, stride: int = 1, padding: int = 0) -> Conv:
    """Pack a torch-layout conv weight (C', C, k, k) (and optional bias (C',)) for `conv2d`."""
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight: expected (C', C, k, k) with a square kernel, got {weight.shape}")
    c_out, c_in, k, _ = weight.shape
    bias = np.zeros(c_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    if bias.shape != (c_out,):
        raise ValueError(f"bias: expected ({c_out},), got {bias.shape}")
    packed = np.ascontiguousarray(weight.reshape(c_out, c_in * k * k))     # (C', C, k, k) -> (C', C*k*k)
    return Conv(packed, np.ascontiguousarray(bias), k, stride, padding)


def load_conv(sd: Mapping[str, np.ndarray], name: str, *, stride: int = 1, padding: int = 0,
              bn: str | None = None, eps: float = 1e-5) -> Conv:
    """The convolution `name` of a torchvision state dict (`name.weight`, optional `name.bias`), with the
    BatchNorm whose key prefix is `bn` (`bn.weight`, `.bias`, `.running_mean`, `.running_var`) folded in."""
    weight, bias = sd[f"{name}.weight"], sd.get(f"{name}.bias")
    if bn is not None:
        weight, bias = fold_batchnorm(weight, bias, sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                                      sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], eps)
    return make_conv(weight, bias, stride=stride, padding=padding)


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
    # (C, C', 2, 2) -> (2, 2, C', C) -> (4*C', C): row (p*2 + q)*C' + o holds W[:, o, p, q]
    packed = np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(4 * c_out, c_in))
    bias = np.ascontiguousarray(sd[f"{name}.bias"], np.float32)            # (C',)
    return ConvTranspose2x2(packed, bias)


# ----------------------------------------------------------------------------------------------------------------
# Forward functions
# ----------------------------------------------------------------------------------------------------------------

def conv2d(x: np.ndarray, conv: Conv, relu: bool = False, residual: np.ndarray | None = None) -> np.ndarray:
    """`relu(conv(x) + bias + residual)` of one image `x` (C, H, W) -> (C', H', W'); residual shaped as the output."""
    if x.ndim != 3:
        raise ValueError(f"x: expected (C, H, W), got shape {x.shape}")
    res = None if residual is None else residual[:, None]                   # (C', 1, H', W')
    return conv2d_batch(x[:, None], conv, relu, res)[:, 0]                  # (C', H', W')


def conv2d_batch(x: np.ndarray, conv: Conv, relu: bool = False, residual: np.ndarray | None = None) -> np.ndarray:
    """`conv2d` of a channel-major batch `x` (C, N, H, W) -> (C', N, H', W'), one GEMM per block of output rows."""
    if x.ndim != 4 or x.shape[0] != conv.in_channels:
        raise ValueError(f"x: expected (C={conv.in_channels}, N, H, W), got shape {x.shape}")
    x = np.ascontiguousarray(x, np.float32)
    c_in, n, h, w = x.shape
    k, s, p = conv.kernel, conv.stride, conv.padding
    h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"x: {h}x{w} is too small for kernel {k}, stride {s}, padding {p}")
    out = np.empty((conv.out_channels, n * h_out * w_out), np.float32)      # (C', N*H'*W')
    if residual is not None:
        residual = np.ascontiguousarray(residual, np.float32).reshape(out.shape)   # (C', N*H'*W')
    direct = k == 1 and s == 1 and p == 0                                   # the input already is the column matrix
    x_cols = x.reshape(c_in, n * h * w)                                     # (C, N*H*W), used when direct
    n_rows = n * h_out                                                      # output rows over the batch
    rows_per_block = max(1, IM2COL_BLOCK_BYTES // (4 * conv.weight.shape[1] * w_out))
    cols = None if direct else np.empty((conv.weight.shape[1], min(rows_per_block, n_rows) * w_out), np.float32)
    for r0 in range(0, n_rows, rows_per_block):
        r1 = min(r0 + rows_per_block, n_rows)
        j0, j1 = r0 * w_out, r1 * w_out                                     # output columns of this block
        if direct:
            block = x_cols[:, j0:j1]                                        # (C, B)
        else:
            block = cols[:, : j1 - j0]                                      # (C*k*k, B)
            _im2col_kernel(x, k, s, p, h_out, w_out, r0, r1, block)
        np.matmul(conv.weight, block, out=out[:, j0:j1])                    # (C', KK) @ (KK, B) -> (C', B)
        if residual is None:
            _bias_act_kernel(out, conv.bias, j0, j1, relu)
        else:
            _bias_residual_act_kernel(out, conv.bias, residual, j0, j1, relu)
    return out.reshape(conv.out_channels, n, h_out, w_out)                  # (C', N, H', W')


def conv_transpose2x2(x: np.ndarray, deconv: ConvTranspose2x2, relu: bool = False) -> np.ndarray:
    """ConvTranspose2d(kernel 2, stride 2) of a channel-major batch `x` (C, N, H, W) -> (C', N, 2H, 2W).

    Patches do not overlap (facts §7): `out[o, n, 2i+p, 2j+q] = b[o] + sum_c x[c, n, i, j] * W[c, o, p, q]`,
    i.e. one GEMM `(4*C', C) @ (C, N*H*W)` followed by a scatter of the four (p, q) planes.
    """
    if x.ndim != 4 or x.shape[0] != deconv.weight.shape[1]:
        raise ValueError(f"x: expected (C={deconv.weight.shape[1]}, N, H, W), got shape {x.shape}")
    c_in, n, h, w = x.shape
    x_cols = np.ascontiguousarray(x, np.float32).reshape(c_in, n * h * w)  # (C, N*H*W)
    patches = deconv.weight @ x_cols                                        # (4*C', N*H*W)
    out = np.empty((deconv.out_channels, n, 2 * h, 2 * w), np.float32)      # (C', N, 2H, 2W)
    _scatter_2x2_kernel(patches.reshape(4, deconv.out_channels, n, h, w), deconv.bias, relu, out)
    return out


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
    _max_pool_kernel(np.ascontiguousarray(x, np.float32), kernel, stride, padding, out)
    return out


def upsample_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch `F.interpolate(x, size, mode="nearest")` for `x` (C, h, w) -> (C, *size).

    Source index per axis (ATen UpSample.h `nearest_idx`): identity when sizes match, `dst >> 1` when the output is
    exactly twice the input (the FPN case with 32-divisible padding, facts §2.2), otherwise
    `min(floor(dst * f32(in / out)), in - 1)` in float32.
    """
    rows = _nearest_source_index(x.shape[1], size[0])                       # (H,)
    cols = _nearest_source_index(x.shape[2], size[1])                       # (W,)
    return x[:, rows[:, None], cols[None, :]]                               # (C, H, W)


def _nearest_source_index(n_in: int, n_out: int) -> np.ndarray:
    dst = np.arange(n_out)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), n_in - 1)


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels (slow references in tests/naive_layers.py)
# ----------------------------------------------------------------------------------------------------------------

@njit(cache=True)
def _im2col_kernel(x, k, s, p, h_out, w_out, r0, r1, cols):
    """cols[(c*k + ky)*k + kx, (r - r0)*W' + ox] = x[c, n, oy*s - p + ky, ox*s - p + kx] (0 outside the image),
    for the output rows r = n*H' + oy in r0..r1 of the whole batch.

    Serial on purpose: a parallel (OpenMP) kernel alternating with the BLAS GEMM leaves its threads spinning while
    BLAS runs on the same 2 cores, which made the convolution 2x slower than the sum of its parts.
    """
    c_in, _, h, w = x.shape
    kk = k * k
    for row in range(c_in * kk):
        c, ky, kx = row // kk, (row % kk) // k, row % k
        # output columns whose input column ox*s - p + kx lies inside [0, w)
        ox_lo = min(max(0, (p - kx + s - 1) // s), w_out)
        ox_hi = max(min(w_out, (w - 1 + p - kx) // s + 1), ox_lo)
        ix_lo = ox_lo * s - p + kx
        for r in range(r0, r1):
            n, oy = r // h_out, r % h_out
            iy = oy * s - p + ky
            dst = cols[row, (r - r0) * w_out:(r - r0 + 1) * w_out]         # (W',)
            if iy < 0 or iy >= h:
                dst[:] = 0.0
                continue
            src = x[c, n, iy]                                               # (W,)
            dst[:ox_lo] = 0.0
            if s == 1:
                dst[ox_lo:ox_hi] = src[ix_lo:ix_lo + ox_hi - ox_lo]
            else:
                for ox in range(ox_lo, ox_hi):
                    dst[ox] = src[ix_lo + (ox - ox_lo) * s]
            dst[ox_hi:] = 0.0


@njit(cache=True)
def _bias_act_kernel(out, bias, j0, j1, relu):
    """out[o, j0:j1] = relu?(out[o, j0:j1] + bias[o]), in place."""
    for o in prange(out.shape[0]):
        b = bias[o]
        for j in range(j0, j1):
            v = out[o, j] + b
            out[o, j] = 0.0 if relu and v < 0.0 else v


@njit(cache=True)
def _bias_residual_act_kernel(out, bias, residual, j0, j1, relu):
    """out[o, j0:j1] = relu?((out + bias[o]) + residual), in place: torchvision's order, BN(conv) + identity."""
    for o in prange(out.shape[0]):
        b = bias[o]
        for j in range(j0, j1):
            v = (out[o, j] + b) + residual[o, j]
            out[o, j] = 0.0 if relu and v < 0.0 else v


@njit(cache=True, parallel=True)
def _scatter_2x2_kernel(patches, bias, relu, out):
    """out[o, n, 2i+p, 2j+q] = relu?(patches[p*2+q, o, n, i, j] + bias[o])."""
    _, c_out, n_img, h, w = patches.shape
    for o in prange(c_out):
        b = bias[o]
        for n in range(n_img):
            for i in range(h):
                for pq in range(4):
                    row = 2 * i + pq // 2
                    for j in range(w):
                        v = patches[pq, o, n, i, j] + b
                        out[o, n, row, 2 * j + pq % 2] = 0.0 if relu and v < 0.0 else v


@njit(cache=True, parallel=True)
def _max_pool_kernel(x, k, s, p, out):
    """out[c, oy, ox] = max of the in-bounds pixels of the k x k window at (oy*s - p, ox*s - p); NaN sticks."""
    c_in, h, w = x.shape
    _, h_out, w_out = out.shape
    for c in prange(c_in):
        for oy in range(h_out):
            y_lo, y_hi = max(oy * s - p, 0), min(oy * s - p + k, h)
            for ox in range(w_out):
                x_lo, x_hi = max(ox * s - p, 0), min(ox * s - p + k, w)
                m = -np.inf
                for iy in range(y_lo, y_hi):
                    for ix in range(x_lo, x_hi):
                        v = x[c, iy, ix]
                        if v > m or np.isnan(v):
                            m = v
                out[c, oy, ox] = m
