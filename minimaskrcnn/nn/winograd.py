"""The 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(2x2, 3x3): 16 matrix products of
`(C', C) @ (C, T)` instead of one of `(C', 9C) @ (9C, 4T)`, 2.25x fewer multiplications. Every 3x3 convolution of the
network except the three stride-2 ones in ResNet goes this way (`Conv.winograd`); `convolution.py` has the rest.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, Eq. 8: each 2x2 output tile Y of a
channel pair is computed from the 4x4 input tile d that covers it (overlapping its neighbours by 2) and the 3x3
filter g as

    Y = A^T [ (G g G^T) (*) (B^T d B) ] A,    (*) the elementwise product, summed over input channels

    B^T = [[1, 0, -1, 0],      G = [[1,    0,   0],      A^T = [[1, 1,  1,  0],
           [0, 1,  1, 0],           [1/2,  1/2, 1/2],           [0, 1, -1, -1]]
           [0, -1, 1, 0],           [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]          [0,    0,   1]]

(cross-correlation, as in CNN "convolutions"). The filter transform U = G g G^T is done once at load time in float64
and rounded once; per image the input transform V = B^T d B and the output transform are additions only, and the
sum over input channels of U (*) V, one product per position (i, j) of the 4x4 tile, is a GEMM per position.

Accuracy. The transforms add and subtract, so a result is within gamma_{C+9} * |A^T| [sum_c |G||g||G^T| (*)
|B^T||d||B|] |A| of the exact value (Higham's gamma_n = n u / (1 - n u); C+3 roundings reach an element of the
product sum, 4 more the output transform, then bias and residual). That magnitude is a few times the direct method's
sum |g||d|: results differ from torchvision's in the last few float32 bits, still ~1e-6 relative
(`tests/nn/test_winograd.py` checks the bound).

Shape glossary
    C, C'    input / output channels;  N  RoIs of a batch
    H, W     input = output height and width
    TH, TW   tile rows and columns, ceil(H/2) and ceil(W/2);  T  tiles of one block (whole tile rows, or whole RoIs)
    16       positions (i, j) of a transformed 4x4 tile, flattened as 4*i + j
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit

from minimaskrcnn.nn.workspace import scratch
from minimaskrcnn.ops.parallel import run_interleaved

# Upper bound on one block of transformed input (or output) tiles; as convolution.IM2COL_BLOCK_BYTES, one batched
# GEMM per block. A 256-channel 200x272 map (P2 of an 800x1088 image) is 222 MB transformed: 7 blocks. 32 MB ran as
# fast as 64 MB end to end (2026-12-02, 8 interleaved runs each) and its two buffers take 64 MB less of the peak.
BLOCK_BYTES = 32 * 2**20

# F(2x2, 3x3) filter transform (Lavin & Gray 2016, Eq. 8 above); B^T and A^T are written out in the kernels.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def pack_filters(weight: np.ndarray, channels_last: bool) -> np.ndarray:
    """U = G g G^T of torch-layout 3x3 filters (C', C, 3, 3), in float64, rounded once: (16, C', C) for images,
    (16, C, C') for channels-last RoI batches (the right-hand GEMM operand)."""
    weight = np.asarray(weight, np.float64)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight: expected (C', C, 3, 3), got {weight.shape}")
    # u[o, c, j, i] = sum_{ky, kx} G[i, ky] W[o, c, ky, kx] G[j, kx]: two tensordots, each one large BLAS product
    u = np.tensordot(np.tensordot(weight, G, axes=([3], [1])), G, axes=([2], [1]))   # (C', C, 4 (j), 4 (i))
    u = u.transpose(3, 2, 0, 1).reshape(16, *weight.shape[:2])              # (4 (i), 4 (j), C', C) -> (16, C', C)
    if channels_last:
        u = u.transpose(0, 2, 1)                                                      # (16, C, C')
    return np.ascontiguousarray(u, np.float32)


def conv3x3(x: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    """`relu?(conv3x3(x) + bias)` of one image x (C, H, W) -> (C', H, W), U packed (16, C', C)."""
    c_in, h, w = x.shape
    c_out = u.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    out = np.empty((c_out, h, w), np.float32)                               # (C', H, W)
    rows = max(1, BLOCK_BYTES // (4 * 16 * max(c_in, c_out) * tw))          # tile rows per block
    d = np.zeros((numba.get_num_threads(), 4, 2 * tw + 2), np.float32)      # per thread: 4 input rows, zero padded
    for ty0 in range(0, th, rows):
        ty1 = min(ty0 + rows, th)
        # C-contiguous views of the front of the buffers, also for a shorter last block: a sliced (strided) view
        # would make Numba compile every kernel a second time, for layout 'A' (~3 s of a first run, measured)
        t = (ty1 - ty0) * tw
        v, m = scratch("winograd_v", (c_in, 16, t)), scratch("winograd_m", (c_out, 16, t))   # (C, 16, T), (C', 16, T)
        run_interleaved(_input_tiles_kernel, c_in, x, ty0, ty1, d, v)                  # channels over threads
        # (16, C', C) @ (16, C, T) -> (16, C', T): one GEMM per tile position; the strided views need no copy
        np.matmul(u, v.transpose(1, 0, 2), out=m.transpose(1, 0, 2))
        run_interleaved(_output_tiles_kernel, c_out, m, bias, ty0, ty1, relu, out)
    return out


def conv3x3_rois(x: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    """`relu?(conv3x3(x) + bias)` of a channels-last RoI batch x (N, H, W, C) -> (N, H, W, C'), U packed (16, C, C')."""
    n, h, w, c_in = x.shape
    c_out = u.shape[2]
    per_roi = ((h + 1) // 2) * ((w + 1) // 2)                               # tiles of one RoI
    rois = max(1, BLOCK_BYTES // (4 * 16 * max(c_in, c_out) * per_roi))    # RoIs per block
    out = np.empty((n, h, w, c_out), np.float32)                            # (N, H, W, C')
    d = np.empty((numba.get_num_threads(), 4, 4, c_in), np.float32)         # per thread: one tile, all channels
    for n0 in range(0, n, rois):
        n1 = min(n0 + rois, n)
        t = (n1 - n0) * per_roi                                             # C-contiguous, as in conv3x3
        v, m = scratch("winograd_v", (16, t, c_in)), scratch("winograd_m", (16, t, c_out))   # (16, T, C), (16, T, C')
        run_interleaved(_input_tiles_rois_kernel, n1 - n0, x, n0, n1, d, v)           # RoIs over threads
        np.matmul(v, u, out=m)                                              # (16, T, C) @ (16, C, C') -> (16, T, C')
        run_interleaved(_output_tiles_rois_kernel, n1 - n0, m, bias, n0, n1, relu, out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels (slow references: tests/naive_layers.py)
# ----------------------------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _input_tiles_kernel(x, ty0, ty1, rows, v, first, step):
    """v[c, 4i + j, (ty - ty0)*TW + tx] = (B^T d B)[i, j] of the tile d = x[c, 2ty-1 : 2ty+3, 2tx-1 : 2tx+3] (zero
    outside the image), for the tile rows ty0..ty1 and the channels c = first, first + step, ... (`run_interleaved`);
    d = rows[first] (4, 2TW + 2), this thread's row buffer, is zeros on entry and its padding columns stay zero
    (allocated by the caller: an allocation inside a kernel costs compile time on a fresh install)."""
    c_in, h, w = x.shape
    tw = (w + 1) // 2
    d = rows[first]
    for c in range(first, c_in, step):
        for ty in range(ty0, ty1):
            for i in range(4):
                iy = 2 * ty - 1 + i
                if 0 <= iy < h:
                    for ix in range(w):                                     # (no slice assignment: see
                        d[i, 1 + ix] = x[c, iy, ix]                         # convolution._im2col_kernel)
                else:
                    d[i, 1:w + 1] = 0.0
            t0 = (ty - ty0) * tw
            for tx in range(tw):
                j = 2 * tx                                                  # B^T d, column by column
                a0, a1, a2, a3 = _bt(d[0, j], d[1, j], d[2, j], d[3, j])
                b0, b1, b2, b3 = _bt(d[0, j + 1], d[1, j + 1], d[2, j + 1], d[3, j + 1])
                e0, e1, e2, e3 = _bt(d[0, j + 2], d[1, j + 2], d[2, j + 2], d[3, j + 2])
                f0, f1, f2, f3 = _bt(d[0, j + 3], d[1, j + 3], d[2, j + 3], d[3, j + 3])
                t = t0 + tx                                                 # (B^T d) B, row by row
                v[c, 0, t], v[c, 1, t], v[c, 2, t], v[c, 3, t] = _bt(a0, b0, e0, f0)
                v[c, 4, t], v[c, 5, t], v[c, 6, t], v[c, 7, t] = _bt(a1, b1, e1, f1)
                v[c, 8, t], v[c, 9, t], v[c, 10, t], v[c, 11, t] = _bt(a2, b2, e2, f2)
                v[c, 12, t], v[c, 13, t], v[c, 14, t], v[c, 15, t] = _bt(a3, b3, e3, f3)


@njit(cache=True, inline="always")
def _bt(d0, d1, d2, d3):
    """B^T applied to a column (d0, d1, d2, d3) of a tile; on a row of B^T d it gives that row of B^T d B."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=True, nogil=True)
def _output_tiles_kernel(m, bias, ty0, ty1, relu, out, first, step):
    """out[o, 2ty : 2ty+2, 2tx : 2tx+2] = relu?(A^T M A + bias[o]) with M[i, j] = m[o, 4i + j, tile], for the tile
    rows ty0..ty1 (a last row or column beyond the image is dropped), for the channels o = first, first + step, ..."""
    c_out, h, w = out.shape
    tw = (w + 1) // 2
    for o in range(first, c_out, step):
        b = bias[o]
        for ty in range(ty0, ty1):
            t0 = (ty - ty0) * tw
            for tx in range(tw):
                t = t0 + tx
                y00, y01, y10, y11 = _output_tile(m[o, 0, t], m[o, 1, t], m[o, 2, t], m[o, 3, t], m[o, 4, t],
                                                  m[o, 5, t], m[o, 6, t], m[o, 7, t], m[o, 8, t], m[o, 9, t],
                                                  m[o, 10, t], m[o, 11, t], m[o, 12, t], m[o, 13, t], m[o, 14, t],
                                                  m[o, 15, t], b, relu)
                oy, ox = 2 * ty, 2 * tx
                out[o, oy, ox] = y00
                if ox + 1 < w:
                    out[o, oy, ox + 1] = y01
                if oy + 1 < h:
                    out[o, oy + 1, ox] = y10
                    if ox + 1 < w:
                        out[o, oy + 1, ox + 1] = y11


@njit(cache=True, inline="always")
def _output_tile(m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, b, relu):
    """relu?(A^T M A + b) of one 4x4 tile M (row-major m0..m15) -> its 2x2 outputs y00, y01, y10, y11."""
    r00, r01, r02, r03 = m0 + m4 + m8, m1 + m5 + m9, m2 + m6 + m10, m3 + m7 + m11          # row 0 of A^T M
    r10, r11, r12, r13 = m4 - m8 - m12, m5 - m9 - m13, m6 - m10 - m14, m7 - m11 - m15       # row 1
    y00, y01 = (r00 + r01 + r02) + b, (r01 - r02 - r03) + b
    y10, y11 = (r10 + r11 + r12) + b, (r11 - r12 - r13) + b
    if relu:
        y00, y01, y10, y11 = max(y00, 0.0), max(y01, 0.0), max(y10, 0.0), max(y11, 0.0)
    return y00, y01, y10, y11


@njit(cache=True, nogil=True)
def _input_tiles_rois_kernel(x, n0, n1, tiles, v, first, step):
    """v[4i + j, tile, :] = (B^T d B)[i, j] of the tile d = x[n, 2ty-1 : 2ty+3, 2tx-1 : 2tx+3, :] (zero outside the
    RoI), tiles numbered ((n - n0)*TH + ty)*TW + tx, whole pixels (C floats) at a time, for the RoIs n = n0 + first,
    n0 + first + step, ...; d = tiles[first] (4, 4, C) is this thread's scratch tile (see _input_tiles_kernel)."""
    _, h, w, c_in = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    d = tiles[first]
    for n in range(n0 + first, n1, step):
        for ty in range(th):
            for tx in range(tw):
                for i in range(4):
                    for j in range(4):
                        iy, ix = 2 * ty - 1 + i, 2 * tx - 1 + j
                        if 0 <= iy < h and 0 <= ix < w:
                            for c in range(c_in):                           # (no slice assignment, as above)
                                d[i, j, c] = x[n, iy, ix, c]
                        else:
                            d[i, j] = 0.0
                t = ((n - n0) * th + ty) * tw + tx
                for q in range(4):                                          # B^T d, column q, in place
                    for c in range(c_in):
                        d[0, q, c], d[1, q, c], d[2, q, c], d[3, q, c] = _bt(d[0, q, c], d[1, q, c], d[2, q, c],
                                                                             d[3, q, c])
                for i in range(4):                                          # (B^T d) B, row i
                    for c in range(c_in):
                        v[4 * i, t, c], v[4 * i + 1, t, c], v[4 * i + 2, t, c], v[4 * i + 3, t, c] = \
                            _bt(d[i, 0, c], d[i, 1, c], d[i, 2, c], d[i, 3, c])


@njit(cache=True, nogil=True)
def _output_tiles_rois_kernel(m, bias, n0, n1, relu, out, first, step):
    """out[n, 2ty : 2ty+2, 2tx : 2tx+2, o] = relu?(A^T M A + bias[o]), M[i, j] = m[4i + j, tile, o], for the RoIs
    n = n0 + first, n0 + first + step, ..."""
    _, h, w, c_out = out.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    for n in range(n0 + first, n1, step):
        for ty in range(th):
            for tx in range(tw):
                t = ((n - n0) * th + ty) * tw + tx
                oy, ox = 2 * ty, 2 * tx
                for o in range(c_out):
                    y00, y01, y10, y11 = _output_tile(m[0, t, o], m[1, t, o], m[2, t, o], m[3, t, o], m[4, t, o],
                                                      m[5, t, o], m[6, t, o], m[7, t, o], m[8, t, o], m[9, t, o],
                                                      m[10, t, o], m[11, t, o], m[12, t, o], m[13, t, o],
                                                      m[14, t, o], m[15, t, o], bias[o], relu)
                    out[n, oy, ox, o] = y00
                    if ox + 1 < w:
                        out[n, oy, ox + 1, o] = y01
                    if oy + 1 < h:
                        out[n, oy + 1, ox, o] = y10
                        if ox + 1 < w:
                            out[n, oy + 1, ox + 1, o] = y11
