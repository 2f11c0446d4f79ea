"""The 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(4x4, 3x3): 36 matrix products of
`(C', C) @ (C, T)` instead of one of `(C', 9C) @ (9C, 16T)`, 4x fewer multiplications. Every 3x3 convolution of the
network except the three stride-2 ones in ResNet goes this way (`Conv.winograd`); `convolution.py` has the rest, and
the plain formula (`winograd=False`).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, Eq. 8: each 4x4 output tile Y of a
channel pair is computed from the 6x6 input tile d that covers it (overlapping its neighbours by 2) and the 3x3
filter g as

    Y = A^T [ (G g G^T) (*) (B^T d B) ] A,    (*) the elementwise product, summed over input channels

(cross-correlation, as in CNN "convolutions"). The matrices come from the Toom-Cook construction (Lavin & Gray §4)
with the interpolation points p = (0, 1, -1, 1/2, -2) and infinity: A^T[i, k] = p_k^i, G[k, j] = p_k^j / N_k with
N_k = prod_{l != k} (p_k - p_l), B^T[k] the coefficients of prod_{l != k} (x - p_l) (lowest power first), and the
last row / column (the point at infinity) picks the highest coefficient:

    B^T = [[1, -3/2, -2,   3/2,  1,   0],      G = [[1,      0,     0   ],      A^T = [[1, 1,  1, 1,   1, 0],
           [0, -1,    1/2, 5/2,  1,   0],           [1/3,    1/3,   1/3 ],             [0, 1, -1, 1/2, -2, 0],
           [0,  1,   -5/2, 1/2,  1,   0],           [-1/3,   1/3,  -1/3 ],             [0, 1,  1, 1/4,  4, 0],
           [0, -2,   -1,   2,    1,   0],           [-16/15, -8/15, -4/15],             [0, 1, -1, 1/8, -8, 1]]
           [0,  1/2, -1,  -1/2,  1,   0],           [1/15,  -2/15,  4/15],
           [0,  1,   -3/2, -2,   3/2, 1]]           [0,      0,     1   ]]

Lavin & Gray's own F(4x4, 3x3) uses p = (0, 1, -1, 2, -2); replacing 2 by 1/2 (choosing points for accuracy is the
subject of Barabasz et al., "Error analysis and improving the accuracy of Winograd convolution for deep neural
networks", ACM TOMS 2020) measured 1.9e-6 instead of 2.9e-6 RMS relative error over a 256-channel layer of random
data (F(2x2, 3x3): 4.5e-7, the direct sum in float32: 2.9e-7), and makes A^T's entries powers of two.

The filter transform U = G g G^T is done once at load time in float64 and rounded once; per image the input
transform V = B^T d B and the output transform are short sums, and the sum over input channels of U (*) V, one
product per position (i, j) of the 6x6 tile, is a GEMM per position.

Accuracy. Every transform row has at most 5 nonzero entries, summed left to right: at most 5 roundings per stage of
the input transform (one product by 3/2 or 5/2, four additions) and 4 per stage of the output transform (A^T's
products by powers of two are exact). With U's rounding, the C roundings of each product sum, bias and residual, a
result is within gamma_{C+21} * |A^T| [sum_c |G||g||G^T| (*) |B^T||d||B|] |A| of the exact value (Higham's
gamma_n = n u / (1 - n u)). That magnitude is ~70x the direct method's sum |g||d| (mean over random tiles;
F(2x2, 3x3): ~6x), but the errors of a sum of C terms add up like a random walk, far below the bound: measured
against torchvision, the stage errors and end-to-end differences stay within the parity criteria with the same
margins as with F(2x2, 3x3) (README; `tests/nn/test_winograd.py` checks the bound).

Shape glossary
    C, C'    input / output channels;  N  RoIs of a batch
    H, W     input = output height and width
    TH, TW   tile rows and columns, ceil(H/4) and ceil(W/4);  T  tiles of one block (whole tile rows, or whole RoIs)
    36       positions (i, j) of a transformed 6x6 tile, flattened as 6*i + j
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit

from minimaskrcnn.nn.workspace import scratch
from minimaskrcnn.ops.parallel import run_interleaved

# Upper bound on one block of transformed input (or output) tiles; as convolution.IM2COL_BLOCK_BYTES, one batched
# GEMM per block. A 256-channel 200x272 map (P2 of an 800x1088 image) is 125 MB transformed: 4 blocks. 32 MB ran as
# fast as 64 MB end to end with F(2x2, 3x3) (2026-12-02, 8 interleaved runs each) and its two buffers take 64 MB less
# of the peak.
BLOCK_BYTES = 32 * 2**20

# F(4x4, 3x3) filter transform (the module docstring); B^T and A^T are written out in the kernels (_bt, _at).
G = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3], [-16 / 15, -8 / 15, -4 / 15],
              [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]])
TILE = 6                 # input tile side; the output tile side is TILE - 2
PACK_BLOCK = 32          # output channels per step of pack_filters


def pack_filters(weight: np.ndarray, channels_last: bool) -> np.ndarray:
    """U = G g G^T of torch-layout 3x3 filters (C', C, 3, 3), in float64, rounded once: (36, C', C) for images,
    (36, C, C') for channels-last RoI batches (the right-hand GEMM operand)."""
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight: expected (C', C, 3, 3), got {weight.shape}")
    c_out, c_in = weight.shape[:2]
    u = np.empty((TILE * TILE, c_in, c_out) if channels_last else (TILE * TILE, c_out, c_in), np.float32)
    # in blocks of output channels: the float64 intermediates of a whole 512-channel layer are ~150 MB, which a
    # process with reuse_freed_memory keeps (a loaded v1 model: 718 MB resident, 550 MB in blocks; measured)
    for o0 in range(0, c_out, PACK_BLOCK):
        w = np.asarray(weight[o0:o0 + PACK_BLOCK], np.float64)                        # (B, C, 3, 3)
        # b[o, c, j, i] = sum_{ky, kx} G[i, ky] W[o, c, ky, kx] G[j, kx]: two tensordots, each one BLAS product
        b = np.tensordot(np.tensordot(w, G, axes=([3], [1])), G, axes=([2], [1]))     # (B, C, 6 (j), 6 (i))
        b = b.transpose(3, 2, 0, 1).reshape(TILE * TILE, *w.shape[:2])        # (6 (i), 6 (j), B, C) -> (36, B, C)
        if channels_last:
            u[:, :, o0:o0 + PACK_BLOCK] = b.transpose(0, 2, 1)                             # (36, C, B)
        else:
            u[:, o0:o0 + PACK_BLOCK] = b
    return u


def conv3x3(x: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    """`relu?(conv3x3(x) + bias)` of one image x (C, H, W) -> (C', H, W), U packed (36, C', C)."""
    c_in, h, w = x.shape
    c_out = u.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    out = np.empty((c_out, h, w), np.float32)                               # (C', H, W)
    rows = min(th, max(1, BLOCK_BYTES // (4 * 36 * max(c_in, c_out) * tw)))  # tile rows per block
    threads = numba.get_num_threads()
    d = np.zeros((threads, 6, 4 * tw + 2), np.float32)                     # per thread: 6 input rows, zero padded
    e = np.empty((threads, 6, 4 * tw + 2), np.float32)                     # per thread: B^T d of those rows
    s = np.empty((threads, 24, rows * tw), np.float32)                      # per thread: A^T M of a block's tiles
    for ty0 in range(0, th, rows):
        ty1 = min(ty0 + rows, th)
        # C-contiguous views of the front of the buffers, also for a shorter last block: a sliced (strided) view
        # would make Numba compile every kernel a second time, for layout 'A' (~3 s of a first run, measured).
        # Channel-major: laid out (36, C, T), the 36 values of a tile lie C*T*4 bytes apart, often a multiple of
        # 4 KiB, all in one cache set, and the transforms ran ~10x slower (measured at P2); the GEMMs take the
        # strided views as they are, at the same rate
        t = (ty1 - ty0) * tw
        v, m = scratch("winograd_v", (c_in, 36, t)), scratch("winograd_m", (c_out, 36, t))   # (C, 36, T), (C', 36, T)
        run_interleaved(_input_tiles_kernel, c_in, x, ty0, ty1, d, e, v)               # channels over threads
        np.matmul(u, v.transpose(1, 0, 2), out=m.transpose(1, 0, 2))   # (36, C', C) @ (36, C, T) -> (36, C', T)
        run_interleaved(_output_tiles_kernel, c_out, m, bias, ty0, ty1, relu, s, out)
    return out


def conv3x3_rois(x: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    """`relu?(conv3x3(x) + bias)` of a channels-last RoI batch x (N, H, W, C) -> (N, H, W, C'), U packed (36, C, C').
    A 14x14 RoI of the mask head takes 4x4 tiles, 16x16 outputs of which 14x14 are kept, and still ran faster than
    F(2x2, 3x3)'s exact 7x7 tiles (100 RoIs, 256 channels: 28.2 against 33.6 ms; 7x7 RoIs: 70.3 against 110.0 ms)."""
    n, h, w, c_in = x.shape
    c_out = u.shape[2]
    out = np.empty((n, h, w, c_out), np.float32)                            # (N, H, W, C')
    th, tw = (h + 3) // 4, (w + 3) // 4
    threads = numba.get_num_threads()
    p = np.zeros((threads, 4 * th + 2, 4 * tw + 2, c_in), np.float32)      # per thread: one RoI, zero border
    e = np.empty((threads, TILE, 4 * tw + 2, c_in), np.float32)            # per thread: B^T d of a tile row
    s = np.empty((threads, 24, c_out), np.float32)                          # per thread: A^T M of one tile
    y = np.empty((threads, 4, c_out), np.float32)                           # per thread: one of its output rows
    per_roi = th * tw                                                       # tiles of one RoI
    rois = max(1, BLOCK_BYTES // (4 * 36 * max(c_in, c_out) * per_roi))    # RoIs per block
    for n0 in range(0, n, rois):
        n1 = min(n0 + rois, n)
        t = (n1 - n0) * per_roi                                             # C-contiguous, as in conv3x3
        v, m = scratch("winograd_v", (36, t, c_in)), scratch("winograd_m", (36, t, c_out))   # (36, T, C), (36, T, C')
        run_interleaved(_input_tiles_rois_kernel, n1 - n0, x, n0, n1, p, e, v)        # RoIs over threads
        np.matmul(v, u, out=m)                                              # (36, T, C) @ (36, C, C') -> (36, T, C')
        run_interleaved(_output_tiles_rois_kernel, n1 - n0, m, bias, n0, n1, relu, s, y, out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels (slow references: tests/naive_layers.py)
# ----------------------------------------------------------------------------------------------------------------

# The transforms' non-trivial entries as float32 constants: a Python float would make Numba compute in float64
_1_2, _3_2, _5_2, _2 = np.float32(0.5), np.float32(1.5), np.float32(2.5), np.float32(2.0)
_1_4, _4, _1_8, _8 = np.float32(0.25), np.float32(4.0), np.float32(0.125), np.float32(8.0)


@njit(cache=True, inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T applied to a column (d0, ..., d5) of a tile, each row's terms summed left to right; on a row of B^T d it
    gives that row of B^T d B."""
    return (d0 - _3_2 * d1 - _2 * d2 + _3_2 * d3 + d4,
            -d1 + _1_2 * d2 + _5_2 * d3 + d4,
            d1 - _5_2 * d2 + _1_2 * d3 + d4,
            -_2 * d1 - d2 + _2 * d3 + d4,
            _1_2 * d1 - d2 - _1_2 * d3 + d4,
            d1 - _3_2 * d2 - _2 * d3 + _3_2 * d4 + d5)


@njit(cache=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """A^T applied to a column (m0, ..., m5) of a transformed tile, summed left to right; on a row of A^T M it gives
    that row of A^T M A."""
    return (m0 + m1 + m2 + m3 + m4,
            m1 - m2 + _1_2 * m3 - _2 * m4,
            m1 + m2 + _1_4 * m3 + _4 * m4,
            m1 - m2 + _1_8 * m3 - _8 * m4 + m5)


@njit(cache=True, nogil=True)
def _input_tiles_kernel(x, ty0, ty1, rows, cols, v, first, step):
    """v[c, 6i + j, (ty - ty0)*TW + tx] = (B^T d B)[i, j] of the tile d = x[c, 4ty-1 : 4ty+5, 4tx-1 : 4tx+5] (zero
    outside the image), for the tile rows ty0..ty1 and the channels c = first, first + step, ... (`run_interleaved`).
    d = rows[first] (6, 4TW + 2), the 6 input rows, is zeros on entry and its padding columns stay zero; e =
    cols[first] (6, 4TW + 2) holds B^T d (this thread's buffers, allocated by the caller: an allocation inside a
    kernel costs compile time on a fresh install). B^T d is one loop over the contiguous columns of the 6 rows,
    which the compiler vectorizes; (B^T d) B goes tile by tile."""
    c_in, h, w = x.shape
    tw = (w + 3) // 4
    d, e = rows[first], cols[first]
    for c in range(first, c_in, step):
        for ty in range(ty0, ty1):
            for i in range(6):
                iy = 4 * ty - 1 + i
                if 0 <= iy < h:
                    for ix in range(w):                                     # (no slice assignment: see
                        d[i, 1 + ix] = x[c, iy, ix]                         # convolution._im2col_kernel)
                else:
                    d[i, 1:w + 1] = 0.0
            for col in range(4 * tw + 2):                                   # B^T d, every column at once
                e[0, col], e[1, col], e[2, col], e[3, col], e[4, col], e[5, col] = _bt(
                    d[0, col], d[1, col], d[2, col], d[3, col], d[4, col], d[5, col])
            t0 = (ty - ty0) * tw
            for tx in range(tw):                                            # (B^T d) B, tile by tile
                j, t = 4 * tx, t0 + tx
                for i in range(6):
                    r = 6 * i
                    v[c, r, t], v[c, r + 1, t], v[c, r + 2, t], v[c, r + 3, t], v[c, r + 4, t], v[c, r + 5, t] = _bt(
                        e[i, j], e[i, j + 1], e[i, j + 2], e[i, j + 3], e[i, j + 4], e[i, j + 5])


@njit(cache=True, nogil=True)
def _output_tiles_kernel(m, bias, ty0, ty1, relu, cols, out, first, step):
    """out[o, 4ty : 4ty+4, 4tx : 4tx+4] = relu?(A^T M A + bias[o]) with M[i, j] = m[o, 6i + j, tile], for the tile
    rows ty0..ty1 (rows and columns beyond the image are dropped), for the channels o = first, first + step, ...;
    this thread's buffer s = cols[first] (24, >= T) holds A^T M of every tile of the block (its 4 x 6 values as rows
    6i + j). Two passes per channel, each a loop over consecutive tiles that LLVM vectorizes: A^T M of all T tiles,
    one column j of the 6 at a time, then (A^T M) A per output row (`_output_row`). Tile by tile, with the 36 values
    of a tile gathered into scalars, ran 2x slower (the P2 block, 2026-12-03)."""
    c_out, h, w = out.shape
    tw = (w + 3) // 4
    t = (ty1 - ty0) * tw
    s = cols[first]
    for o in range(first, c_out, step):
        mo = m[o]                                                           # (36, T)
        for j in range(6):                                                  # A^T M, column j of every tile
            for k in range(t):
                s[j, k], s[6 + j, k], s[12 + j, k], s[18 + j, k] = _at(
                    mo[j, k], mo[6 + j, k], mo[12 + j, k], mo[18 + j, k], mo[24 + j, k], mo[30 + j, k])
        for ty in range(ty0, ty1):                                          # (A^T M) A, the rows inside the image
            for i in range(min(4, h - 4 * ty)):
                _output_row(s, 6 * i, (ty - ty0) * tw, out[o, 4 * ty + i], bias[o], relu)


@njit(cache=True, nogil=True)
def _output_row(s, r, t0, row, b, relu):
    """row[4tx : 4tx+4] = relu?(that row of (A^T M) A + b) for the tiles t0 + tx of one tile row, from the rows
    r..r+5 of s (A^T M: output row i = r / 6 of every tile); the columns beyond the row's end are dropped.

    Its own function, not inlined: inside the caller's loops this loop was not vectorized. The tile index is
    unsigned because Numba wraps a possibly negative index (x[-1] is the last element), and the select that wrap
    compiles to keeps LLVM from vectorizing a loop with several stores (measured: the wrap on t0 + tx alone made it
    scalar)."""
    w = row.shape[0]
    full = w // 4                                                           # tiles whose 4 columns are all inside
    for tx in range(full):
        t = np.uint64(t0) + np.uint64(tx)
        y0, y1, y2, y3 = _at(s[r, t], s[r + 1, t], s[r + 2, t], s[r + 3, t], s[r + 4, t], s[r + 5, t])
        k = 4 * tx
        row[k], row[k + 1] = _bias_act(y0, b, relu), _bias_act(y1, b, relu)
        row[k + 2], row[k + 3] = _bias_act(y2, b, relu), _bias_act(y3, b, relu)
    if 4 * full < w:                                                        # the last tile, 1 to 3 columns inside
        t = t0 + full
        y = _at(s[r, t], s[r + 1, t], s[r + 2, t], s[r + 3, t], s[r + 4, t], s[r + 5, t])
        for k in range(w - 4 * full):
            row[4 * full + k] = _bias_act(y[k], b, relu)


@njit(cache=True, inline="always")
def _bias_act(y, b, relu):
    """relu?(y + b)"""
    y = y + b
    if relu:
        return max(y, 0.0)
    return y


@njit(cache=True, nogil=True)
def _input_tiles_rois_kernel(x, n0, n1, pads, cols, v, first, step):
    """v[6i + j, tile, :] = (B^T d B)[i, j] of the tile d = x[n, 4ty-1 : 4ty+5, 4tx-1 : 4tx+5, :] (zero outside the
    RoI), tiles numbered ((n - n0)*TH + ty)*TW + tx, whole pixels (C floats) at a time, for the RoIs n = n0 + first,
    n0 + first + step, ...; this thread's buffers: p = pads[first] (4TH + 2, 4TW + 2, C), the RoI with a border of
    zeros (zeros on entry; only its inside is written), and e = cols[first] (6, 4TW + 2, C), B^T d of one tile row."""
    _, h, w, c_in = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    p, e = pads[first], cols[first]
    for n in range(n0 + first, n1, step):
        for iy in range(h):
            for ix in range(w):
                for c in range(c_in):                                       # (no slice assignment, as above)
                    p[1 + iy, 1 + ix, c] = x[n, iy, ix, c]
        for ty in range(th):
            y0 = 4 * ty
            for col in range(4 * tw + 2):                                   # B^T d, every column of the tile row
                for c in range(c_in):
                    e[0, col, c], e[1, col, c], e[2, col, c], e[3, col, c], e[4, col, c], e[5, col, c] = _bt(
                        p[y0, col, c], p[y0 + 1, col, c], p[y0 + 2, col, c], p[y0 + 3, col, c], p[y0 + 4, col, c],
                        p[y0 + 5, col, c])
            for tx in range(tw):                                            # (B^T d) B, tile by tile
                t = ((n - n0) * th + ty) * tw + tx
                j = 4 * tx
                for i in range(6):
                    r = 6 * i
                    for c in range(c_in):
                        v[r, t, c], v[r + 1, t, c], v[r + 2, t, c], v[r + 3, t, c], v[r + 4, t, c], \
                            v[r + 5, t, c] = _bt(e[i, j, c], e[i, j + 1, c], e[i, j + 2, c], e[i, j + 3, c],
                                                 e[i, j + 4, c], e[i, j + 5, c])


@njit(cache=True, nogil=True)
def _output_tiles_rois_kernel(m, bias, n0, n1, relu, cols, rows, out, first, step):
    """out[n, 4ty : 4ty+4, 4tx : 4tx+4, o] = relu?(A^T M A + bias[o]), M[i, j] = m[6i + j, tile, o], for the RoIs
    n = n0 + first, n0 + first + step, ...; this thread's buffers s = cols[first] (24, C') hold a tile's A^T M and
    y = rows[first] (4, C') one of its output rows, every pass over contiguous channels."""
    _, h, w, c_out = out.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    s, y = cols[first], rows[first]
    for n in range(n0 + first, n1, step):
        for ty in range(th):
            for tx in range(tw):
                t = ((n - n0) * th + ty) * tw + tx
                for j in range(6):                                          # A^T M, column j
                    for o in range(c_out):
                        s[j, o], s[6 + j, o], s[12 + j, o], s[18 + j, o] = _at(
                            m[j, t, o], m[6 + j, t, o], m[12 + j, t, o], m[18 + j, t, o], m[24 + j, t, o],
                            m[30 + j, t, o])
                for i in range(min(4, h - 4 * ty)):                         # (A^T M) A, output row i
                    r = 6 * i
                    for o in range(c_out):
                        y0, y1, y2, y3 = _at(s[r, o], s[r + 1, o], s[r + 2, o], s[r + 3, o], s[r + 4, o], s[r + 5, o])
                        b = bias[o]
                        y[0, o], y[1, o] = _bias_act(y0, b, relu), _bias_act(y1, b, relu)
                        y[2, o], y[3, o] = _bias_act(y2, b, relu), _bias_act(y3, b, relu)
                    for k in range(min(4, w - 4 * tx)):                     # the columns inside the RoI
                        for o in range(c_out):
                            out[n, 4 * ty + i, 4 * tx + k, o] = y[k, o]
