"""mold_image: matterport's input preparation (utils.resize_image + model.mold_image + compose_image_meta).

Shape glossary
    H, W      original image;   h, w   resized image (before padding);   Hp, Wp   molded (padded) image
    window    [(y1, x1, y2, x2)] of the resized image inside the padded one, in pixels, y2/x2 exclusive

What matterport does (mrcnn/utils.py resize_image, mrcnn/model.py mold_inputs), and how it differs from torchvision
(facts §1-2):
  * scale = max(1, IMAGE_MIN_DIM / min(H, W)) (never down), at least IMAGE_MIN_SCALE; in "square" mode lowered to
    IMAGE_MAX_DIM / max(H, W) when round(max(H, W) * scale) would exceed IMAGE_MAX_DIM. The output size is
    (round(H * scale), round(W * scale)) with Python's round (half to even). "pad64" ignores IMAGE_MAX_DIM, "none"
    leaves the image alone. torchvision scales by min(800 / short side, 1333 / long side), up *or* down.
  * The resize is scikit-image 0.16's `resize(order=1, mode="constant", cval=0, preserve_range=True,
    anti_aliasing=False)`, reproduced in `resize_skimage016`, then truncated back to uint8 (`astype(uint8)`): not
    torchvision's interpolate, and done on the 0..255 pixels before normalisation.
  * The padding is centred ((Hp - h) // 2 on top, the rest at the bottom; the same for width) to IMAGE_MAX_DIM
    square or to the next multiple of 64, and is zero in *pixel* space: after mean subtraction it is -MEAN_PIXEL.
    torchvision pads at the bottom/right, with zeros after normalisation.
  * Normalisation is `float64(pixel) - MEAN_PIXEL` (float64, no division by a std), cast to float32 when fed to the
    graph; torchvision divides by 255, subtracts ImageNet means and divides by stds.
  * Boxes live in normalized coordinates (y1, x1, y2, x2) / (Hp - 1, Wp - 1) with y2, x2 shifted by -1 (utils.norm_boxes).

scikit-image 0.16 resize, order 1, as it runs: it estimates an AffineTransform from three corner correspondences
(Hartley-normalised least squares by SVD: `resize_matrix`), zeroes its shear terms and warps each channel with
`_warp_fast`: output pixel (r, c) samples the input at (y, x) = (sy * r + ty, sx * c + tx), computed in the image's
float type; bilinear between floor/ceil neighbours, any neighbour outside the image reads cval = 0 (so border
pixels of an upscaled image blend towards 0: the behaviour 0.19 changed). The result is clipped to [min, max] of
the input (0 stays 0 when 0 is outside that range). uint8 input is computed in float64, float32 input in float32.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# utils.resize_image asserts this for pad64: the FPN halves the map 6 times (2**6 = 64).
PAD_MULTIPLE = 64


def resize_matrix(in_h: int, in_w: int, out_h: int, out_w: int) -> np.ndarray:
    """The (3, 3) float64 output->input pixel map scikit-image 0.16's resize builds, to the last bit it computes.

    Three corners of the output grid (x, y) = (0, 0), (0, out_h-1), (out_w-1, out_h-1) map to the pixel centres
    `f * (p + 0.5) - 0.5` (f = in / out per axis). skimage solves this with its general projective estimator:
    both point sets centred and scaled to RMS distance sqrt(2) (Hartley 1997), the homogeneous 6x7 system's null
    vector from an SVD, then de-normalised. Its answer differs from the closed form (f, 0.5 f - 0.5) by ~1e-13,
    which moves samples and, after uint8 truncation, pixels: so we take the same route.
    """
    fy, fx = in_h / out_h, in_w / out_w
    if out_h == 1 and out_w == 1:      # skimage's special case: a pure translation to the image centre
        return np.array([[1.0, 0.0, in_w / 2.0 - 0.5], [0.0, 1.0, in_h / 2.0 - 0.5], [0.0, 0.0, 1.0]])
    src = np.array([[0.0, 0.0], [0.0, out_h - 1.0], [out_w - 1.0, out_h - 1.0]])   # [3, (x, y)]
    dst = np.empty_like(src)                                                        # [3, (x, y)]
    dst[:, 0] = fx * (src[:, 0] + 0.5) - 0.5
    dst[:, 1] = fy * (src[:, 1] + 0.5) - 0.5
    t_src, s = _hartley(src)
    t_dst, d = _hartley(dst)
    a = np.zeros((6, 7))                          # rows: x then y equations; columns a0 a1 a2 b0 b1 b2 | rhs
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 6] = s[:, 0], s[:, 1], 1.0, d[:, 0]
    a[3:, 3], a[3:, 4], a[3:, 5], a[3:, 6] = s[:, 0], s[:, 1], 1.0, d[:, 1]
    v = np.linalg.svd(a)[2][-1]                   # right singular vector of the smallest singular value, (7,)
    h = np.zeros((3, 3))
    h.flat[:6] = -v[:-1] / v[-1]
    h[2, 2] = 1.0
    h = np.linalg.inv(t_dst) @ h @ t_src
    h[2] = (0.0, 0.0, 1.0)                        # resize() then forces an exactly "metric" map
    h[0, 1] = h[1, 0] = 0.0
    return h


def _hartley(points: np.ndarray):
    """(3x3 normalising transform, normalised points) as skimage's _center_and_normalize_points computes them."""
    centroid = points.mean(axis=0)                                          # (2,)
    rms = math.sqrt(np.sum((points - centroid) ** 2) / points.shape[0])
    k = math.sqrt(2) / rms
    t = np.array([[k, 0.0, -k * centroid[0]], [0.0, k, -k * centroid[1]], [0.0, 0.0, 1.0]])
    ph = t @ np.vstack([points.T, np.ones(points.shape[0])])                 # (3, N) homogeneous
    out = ph[:2].T.copy()                                                   # (N, 2)
    out /= ph[2][:, None]
    return t, out


def resize_skimage016(image, out_h: int, out_w: int) -> np.ndarray:
    """scikit-image 0.16 `resize(image, (out_h, out_w), order=1, mode="constant", cval=0, clip=True,
    preserve_range=True, anti_aliasing=False)` of an (H, W) or (H, W, C) array. uint8 (or any integer) input is
    computed and returned in float64, float32 stays float32, as in skimage."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: expected a non-empty (H, W) or (H, W, C) array, got shape {image.shape}")
    if int(out_h) < 1 or int(out_w) < 1:
        raise ValueError(f"output size: expected positive integers, got {out_h}x{out_w}")
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    x = np.ascontiguousarray(image, dtype)
    planes = x[..., None] if x.ndim == 2 else x                             # (H, W, C)
    m = resize_matrix(x.shape[0], x.shape[1], int(out_h), int(out_w)).astype(dtype)
    out = np.empty((int(out_h), int(out_w), planes.shape[2]), dtype)        # (h, w, C)
    _warp_bilinear_kernel(np.ascontiguousarray(np.moveaxis(planes, 2, 0)), m[0, 0], m[0, 2], m[1, 1], m[1, 2], out)
    lo, hi = x.min(), x.max()
    keep_zero = not (lo <= 0 <= hi)               # skimage's preserve_cval: exact cval pixels survive the clip
    zeros = out == 0 if keep_zero else None
    np.clip(out, lo, hi, out=out)
    if keep_zero:
        out[zeros] = 0
    return out[..., 0] if x.ndim == 2 else out


@njit(cache=True)
def _warp_bilinear_kernel(planes, sx, tx, sy, ty, out):
    """out[r, c, k] = bilinear sample of planes[k] at (sy*r + ty, sx*c + tx); outside neighbours read 0.
    All arithmetic in the planes' float type, in skimage 0.16's order (interpolation.pxd bilinear_interpolation)."""
    n_c, rows, cols = planes.shape
    out_h, out_w, _ = out.shape
    one = planes.dtype.type(1)
    for k in range(n_c):
        img = planes[k]
        for r in range(out_h):
            y = sy * planes.dtype.type(r) + ty
            y0 = int(math.floor(y))
            y1 = int(math.ceil(y))
            dy = y - planes.dtype.type(y0)
            for c in range(out_w):
                x = sx * planes.dtype.type(c) + tx
                x0 = int(math.floor(x))
                x1 = int(math.ceil(x))
                dx = x - planes.dtype.type(x0)
                tl = img[y0, x0] if 0 <= y0 < rows and 0 <= x0 < cols else planes.dtype.type(0)
                tr = img[y0, x1] if 0 <= y0 < rows and 0 <= x1 < cols else planes.dtype.type(0)
                bl = img[y1, x0] if 0 <= y1 < rows and 0 <= x0 < cols else planes.dtype.type(0)
                br = img[y1, x1] if 0 <= y1 < rows and 0 <= x1 < cols else planes.dtype.type(0)
                top = (one - dx) * tl + dx * tr
                bottom = (one - dx) * bl + dx * br
                out[r, c, k] = (one - dy) * top + dy * bottom


def resize_plan(h: int, w: int, cfg) -> tuple[float, tuple[int, int]]:
    """(scale, (h', w')) of utils.resize_image for an h x w image under cfg's IMAGE_* settings."""
    mode = cfg.IMAGE_RESIZE_MODE
    if mode not in ("square", "pad64", "none"):
        raise ValueError(f"IMAGE_RESIZE_MODE: expected square, pad64 or none for inference, got {mode!r}")
    if mode == "none":
        return 1, (h, w)
    scale = 1
    if cfg.IMAGE_MIN_DIM:
        scale = max(1, cfg.IMAGE_MIN_DIM / min(h, w))            # up, never down
    if cfg.IMAGE_MIN_SCALE and scale < cfg.IMAGE_MIN_SCALE:
        scale = cfg.IMAGE_MIN_SCALE
    if cfg.IMAGE_MAX_DIM and mode == "square" and round(max(h, w) * scale) > cfg.IMAGE_MAX_DIM:
        scale = cfg.IMAGE_MAX_DIM / max(h, w)
    return scale, (round(h * scale), round(w * scale))           # Python round: half to even, as matterport


def _centred(size: int, target: int) -> tuple[int, int]:
    return (target - size) // 2, target - size - (target - size) // 2


def mold_image(image, cfg):
    """(molded (Hp, Wp, 3) float32, window (4,) int as y1, x1, y2, x2 pixels, scale) of an (H, W, 3) uint8 image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"image: expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    scale, (rh, rw) = resize_plan(h, w, cfg)
    resized = image
    if scale != 1:
        resized = resize_skimage016(image, rh, rw).astype(np.uint8)         # (h', w', 3): truncation, as astype
    mode = cfg.IMAGE_RESIZE_MODE
    if mode == "square":
        pad_y, pad_x = _centred(rh, cfg.IMAGE_MAX_DIM), _centred(rw, cfg.IMAGE_MAX_DIM)
    elif mode == "pad64":
        if cfg.IMAGE_MIN_DIM % PAD_MULTIPLE:
            raise ValueError(f"IMAGE_MIN_DIM: pad64 needs a multiple of 64, got {cfg.IMAGE_MIN_DIM}")
        pad_y = _centred(rh, -(-rh // PAD_MULTIPLE) * PAD_MULTIPLE)
        pad_x = _centred(rw, -(-rw // PAD_MULTIPLE) * PAD_MULTIPLE)
    else:
        pad_y = pad_x = (0, 0)
    if min(pad_y + pad_x) < 0:
        raise ValueError(f"image: resized to {rh}x{rw}, larger than IMAGE_MAX_DIM {cfg.IMAGE_MAX_DIM}")
    padded = np.pad(resized, (pad_y, pad_x, (0, 0)))                          # (Hp, Wp, 3) uint8, zero pixels
    mean = np.asarray(cfg.MEAN_PIXEL, np.float64)                             # (3,)
    molded = (padded.astype(np.float64) - mean).astype(np.float32)            # (Hp, Wp, 3): float64 maths, as numpy
    window = np.array([pad_y[0], pad_x[0], pad_y[0] + rh, pad_x[0] + rw])     # (y1, x1, y2, x2) pixels
    return molded, window, scale


def norm_boxes(boxes, shape) -> np.ndarray:
    """Pixel boxes [..., (y1, x1, y2, x2)] (y2, x2 exclusive) -> normalized float32 (utils.norm_boxes):
    (b - (0, 0, 1, 1)) / (H - 1, W - 1, H - 1, W - 1) in float64."""
    h, w = shape
    scale = np.array([h - 1, w - 1, h - 1, w - 1], np.float64)
    return ((np.asarray(boxes, np.float64) - np.array([0, 0, 1, 1])) / scale).astype(np.float32)
