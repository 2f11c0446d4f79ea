"""Slow, loop-by-loop float64 references for the kernels of `minimaskrcnn.layers`.

Each function follows the definition of the operation directly (one output element or one kernel offset at a time),
in float64, so the fast float32 kernels can be checked against it with an error bound (see tests/nn/test_layers.py).
Shape glossary as in `minimaskrcnn/layers.py`: C/C' in/out channels, N RoIs, H/W and H'/W' in/out sizes.
"""
import math
from fractions import Fraction

import numpy as np


def conv2d_naive(x, weight, bias=None, stride=1, padding=0):
    """Cross-correlation of one image `x` (C, H, W) with `weight` (C', C, k, k): out (C', H', W') float64,
    out[o, oy, ox] = b[o] + sum_{c, ky, kx} W[o, c, ky, kx] * x[c, oy*s - p + ky, ox*s - p + kx] (0 outside)."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    c_out, _, k, _ = weight.shape
    _, h, w = x.shape
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = np.zeros((c_out, h_out, w_out))
    for oy in range(h_out):
        for ox in range(w_out):
            for ky in range(k):
                for kx in range(k):
                    iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                    if 0 <= iy < h and 0 <= ix < w:
                        out[:, oy, ox] += weight[:, :, ky, kx] @ x[:, iy, ix]
    if bias is not None:
        out += np.asarray(bias, np.float64)[:, None, None]
    return out


def im2col_naive(x, k, stride, padding):
    """Column matrix of one image `x` (C, H, W): (C*k*k, H'*W'), row (c*k + ky)*k + kx, column oy*W' + ox."""
    c_in, h, w = x.shape
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    cols = np.zeros((c_in * k * k, h_out * w_out), x.dtype)
    for c in range(c_in):
        for ky in range(k):
            for kx in range(k):
                for oy in range(h_out):
                    for ox in range(w_out):
                        iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                        if 0 <= iy < h and 0 <= ix < w:
                            cols[(c * k + ky) * k + kx, oy * w_out + ox] = x[c, iy, ix]
    return cols


def im2col_channels_last_naive(x, k, stride, padding):
    """Row matrix of a channels-last batch `x` (N, H, W, C): (N*H'*W', k*k*C), row (n*H' + oy)*W' + ox, column
    (ky*k + kx)*C + c."""
    n_img, h, w, c_in = x.shape
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    cols = np.zeros((n_img * h_out * w_out, k * k * c_in), x.dtype)
    for n in range(n_img):
        for oy in range(h_out):
            for ox in range(w_out):
                for ky in range(k):
                    for kx in range(k):
                        for c in range(c_in):
                            iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                            if 0 <= iy < h and 0 <= ix < w:
                                cols[(n * h_out + oy) * w_out + ox, (ky * k + kx) * c_in + c] = x[n, iy, ix, c]
    return cols


def max_pool2d_naive(x, kernel=3, stride=2, padding=1):
    """Max over the in-bounds part of each window of `x` (C, H, W) (padding never wins: it is -inf)."""
    c_in, h, w = x.shape
    h_out, w_out = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    out = np.empty((c_in, h_out, w_out), x.dtype)
    for c in range(c_in):
        for oy in range(h_out):
            for ox in range(w_out):
                y0, x0 = oy * stride - padding, ox * stride - padding
                window = x[c, max(y0, 0):y0 + kernel, max(x0, 0):x0 + kernel]
                out[c, oy, ox] = np.nan if np.isnan(window).any() else window.max()
    return out


def conv_transpose2x2_naive(x, weight, bias):
    """ConvTranspose2d(kernel 2, stride 2) of `x` (N, H, W, C) with torch weight (C, C', 2, 2): (N, 2H, 2W, C')."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n_img, h, w, c_in = x.shape
    c_out = weight.shape[1]
    out = np.zeros((n_img, 2 * h, 2 * w, c_out))
    for n in range(n_img):
        for i in range(h):
            for j in range(w):
                for p in range(2):
                    for q in range(2):
                        out[n, 2 * i + p, 2 * j + q] = weight[:, :, p, q].T @ x[n, i, j] + bias
    return out


def linear_naive(x, weight, bias):
    """x (K, In) @ weight (Out, In).T + bias, one output element at a time, float64."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    out = np.empty((x.shape[0], weight.shape[0]))
    for i in range(x.shape[0]):
        for o in range(weight.shape[0]):
            out[i, o] = math.fsum(x[i] * weight[o]) + bias[o]
    return out


def batchnorm_naive(x, gamma, beta, mean, var, eps):
    """Eval-mode BatchNorm of `x` (C, H, W) in float64: (x - mean) / sqrt(var + eps) * gamma + beta."""
    col = lambda v: np.asarray(v, np.float64)[:, None, None]  # noqa: E731
    return (np.asarray(x, np.float64) - col(mean)) / np.sqrt(col(var) + eps) * col(gamma) + col(beta)


def gamma_bound(n: int) -> float:
    """Higham's gamma_n = n*u / (1 - n*u), u = 2^-24: the float32 error of any order of an n-term sum of products
    is at most gamma_n * sum |terms| (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Eq. 3.5)."""
    u = 2.0 ** -24
    return n * u / (1 - n * u)


# Winograd F(4x4, 3x3) (Lavin & Gray 2016, Eq. 8 and the Toom-Cook construction of their §4), its matrices built
# here from the interpolation points with exact fractions, independently of the constants written in winograd.py.
WINOGRAD_POINTS = (0, 1, -1, Fraction(1, 2), -2)                            # and infinity
WINOGRAD_M = len(WINOGRAD_POINTS) - 1                                       # output tile side (4)
WINOGRAD_N = WINOGRAD_M + 2                                                 # input tile side (6)


def _poly_from_roots(roots):
    """Coefficients, lowest power first, of prod_r (x - r)."""
    coeffs = [Fraction(1)]
    for r in roots:
        coeffs = [a - r * b for a, b in zip([Fraction(0)] + coeffs, coeffs + [Fraction(0)])]
    return coeffs


def _toom_cook(points, m, r=3):
    """(B^T, G, A^T) of F(m, r) for the finite points and infinity, exact: A^T[i, k] = p_k^i, G[k, j] = p_k^j / N_k
    with N_k = prod_{l != k} (p_k - p_l), B^T[k] = coefficients of prod_{l != k} (x - p_l); the point at infinity
    adds a last row / column picking the highest coefficient."""
    p = [Fraction(v) for v in points]
    n = m + r - 1
    at = [[p[k] ** i for k in range(n - 1)] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = [[p[k] ** j / math.prod(p[k] - p[l] for l in range(n - 1) if l != k) for j in range(r)]
         for k in range(n - 1)] + [[Fraction(int(j == r - 1)) for j in range(r)]]
    bt = [_poly_from_roots([p[l] for l in range(n - 1) if l != k]) + [Fraction(0)] for k in range(n - 1)]
    bt.append(_poly_from_roots(p))
    return tuple(np.array([[float(v) for v in row] for row in a]) for a in (bt, g, at))


WINOGRAD_BT, WINOGRAD_G, WINOGRAD_AT = _toom_cook(WINOGRAD_POINTS, WINOGRAD_M)


def _sequential_matmul32(a, b):
    """a @ b in float32 with each sum taken left to right, each product a[i, k] * b[k, j] rounded (entries of a that
    are 0 skipped, +-1 exact): the order the kernels add in."""
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            acc = None
            for k in range(a.shape[1]):
                if a[i, k] != 0:
                    term = np.float32(np.float32(a[i, k]) * b[k, j])
                    acc = term if acc is None else np.float32(acc + term)
            out[i, j] = acc
    return out


def winograd_tiles(h, w):
    """The (ty, tx) of every 4x4 output tile of an h x w map, in row-major order: TH*TW tiles."""
    return [(ty, tx) for ty in range(-(-h // WINOGRAD_M)) for tx in range(-(-w // WINOGRAD_M))]


def winograd_input_tile(x2d, ty, tx):
    """The 6x6 input tile x2d[4ty-1 : 4ty+5, 4tx-1 : 4tx+5] of an (H, W) map, zero outside."""
    h, w = x2d.shape
    d = np.zeros((WINOGRAD_N, WINOGRAD_N), x2d.dtype)
    for i in range(WINOGRAD_N):
        for j in range(WINOGRAD_N):
            iy, ix = WINOGRAD_M * ty - 1 + i, WINOGRAD_M * tx - 1 + j
            if 0 <= iy < h and 0 <= ix < w:
                d[i, j] = x2d[iy, ix]
    return d


def winograd_input_transform_naive(x):
    """V = B^T d B of every tile of one image x (C, H, W), float32 in the kernels' order: (C, 36, TH*TW)."""
    tiles = winograd_tiles(*x.shape[1:])
    v = np.zeros((x.shape[0], WINOGRAD_N ** 2, len(tiles)), np.float32)
    for c in range(x.shape[0]):
        for t, (ty, tx) in enumerate(tiles):
            d = winograd_input_tile(x[c], ty, tx)
            v[c, :, t] = _sequential_matmul32(WINOGRAD_BT, _sequential_matmul32(WINOGRAD_BT, d).T).T.ravel()  # B^T d B
    return v


def winograd_output_transform_naive(m, bias, h, w, relu):
    """relu?(A^T M A + b) of every tile M = m[o, :, t].reshape(6, 6), float32 in the kernels' order: (C', H, W)."""
    out = np.zeros((m.shape[0], h, w), np.float32)
    s = WINOGRAD_M
    for o in range(m.shape[0]):
        for t, (ty, tx) in enumerate(winograd_tiles(h, w)):
            y = _sequential_matmul32(WINOGRAD_AT, _sequential_matmul32(WINOGRAD_AT, m[o, :, t].reshape(6, 6)).T).T
            y = y + np.float32(bias[o])
            if relu:
                y = np.maximum(y, 0)
            rows, cols = min(s, h - s * ty), min(s, w - s * tx)
            out[o, s * ty:s * ty + rows, s * tx:s * tx + cols] = y[:rows, :cols]
    return out


def winograd_conv3x3_naive(x, weight, bias):
    """(result, magnitude) of the 3x3, stride-1, padding-1 convolution of x (C, H, W) by Winograd's algorithm in
    float64: result = sum_c A^T [(G g G^T) * (B^T d B)] A + b, which is the convolution, and magnitude the same with
    every matrix and operand in absolute value, the quantity the float32 rounding error is bounded by."""
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    h, w = x.shape[1:]
    s, n = WINOGRAD_M, WINOGRAD_N
    tiles = winograd_tiles(h, w)
    d = np.array([[winograd_input_tile(xc, ty, tx) for xc in x] for ty, tx in tiles]).reshape(len(tiles), len(x), n, n)
    results = []
    for f in (lambda a: a, np.abs):
        bt, g, at = f(WINOGRAD_BT), f(WINOGRAD_G), f(WINOGRAD_AT)
        v = np.einsum("ik,tckl,jl->tcij", bt, f(d), bt)                    # (T, C, 6, 6)  B^T d B
        u = np.einsum("ik,ockl,jl->ocij", g, f(weight), g)                 # (C', C, 6, 6)  G g G^T
        m = np.einsum("tcij,ocij->toij", v, u)                             # (T, C', 6, 6)  summed over c
        y = np.einsum("ik,tokl,jl->toij", at, m, at) + f(np.asarray(bias, np.float64))[:, None, None]   # (T, C', 4, 4)
        out = np.zeros((weight.shape[0], h, w))
        for t, (ty, tx) in enumerate(tiles):
            rows, cols = min(s, h - s * ty), min(s, w - s * tx)
            out[:, s * ty:s * ty + rows, s * tx:s * tx + cols] = y[t, :, :rows, :cols]
        results.append(out)
    return tuple(results)
