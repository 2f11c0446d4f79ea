"""Slow, loop-by-loop references for the Numba kernels of `minimaskrcnn.ops`.

Each function follows the prose of the facts document (../shared/reference/torchvision-inference-facts.md) one
scalar at a time, with NumPy float32 scalars so every operation rounds as the float32 kernels do. They share no code
with the package: a test comparing a kernel with its reference here checks the kernel's indexing and loop structure
(parallel splits, precomputed taps, channels-last layout, visible-window pasting) against the plain formula.
"""
import math

import numpy as np

F32 = np.float32


def nms(boxes, scores, iou_threshold):
    """Greedy NMS (facts §8): stable descending score order, suppress later boxes with IoU > thr (double compare)."""
    boxes = np.asarray(boxes)
    dt = boxes.dtype.type
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    suppressed = [False] * len(order)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if suppressed[j]:
                continue
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(dt(0), xx2 - xx1) * max(dt(0), yy2 - yy1)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area_i + area_j - inter)
            if float(iou) > float(iou_threshold):
                suppressed[j] = True
    return np.array(keep, np.int64)


def _bilinear(plane, y, x):
    """torchvision bilinear_interpolate on one (H, W) float32 plane at float32 (y, x) (facts §5 step 6)."""
    height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        # out of range: 0 (torchvision multiplies zero weights by element (0, 0), so NaN/inf there propagate)
        return F32(0) * plane[0, 0] + F32(0) * plane[0, 0] + F32(0) * plane[0, 0] + F32(0) * plane[0, 0]
    if y <= 0:
        y = F32(0)
    if x <= 0:
        x = F32(0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - F32(y_low), x - F32(x_low)
    hy, hx = F32(1) - ly, F32(1) - lx
    return (((hy * hx) * plane[y_low, x_low] + (hy * lx) * plane[y_low, x_high])
            + (ly * hx) * plane[y_high, x_low]) + (ly * lx) * plane[y_high, x_high]


def roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=False):
    """(N, C, H, W) float32, (K, 5) -> (K, C, PH, PW) float32, one output element at a time (facts §5)."""
    features = np.asarray(features, np.float32)
    rois = np.asarray(rois, np.float32)
    ph_n, pw_n = output_size
    scale = F32(spatial_scale)
    offset = F32(0.5) if aligned else F32(0)
    out = np.zeros((rois.shape[0], features.shape[1], ph_n, pw_n), np.float32)
    for k, (b, x1, y1, x2, y2) in enumerate(rois):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = (x2 * scale - offset) - sx, (y2 * scale - offset) - sy
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_h, bin_w = roi_h / F32(ph_n), roi_w / F32(pw_n)
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / F32(ph_n)))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / F32(pw_n)))
        count = F32(max(gh * gw, 1))
        for c in range(features.shape[1]):
            plane = features[int(b), c]
            for ph in range(ph_n):
                for pw in range(pw_n):
                    total = F32(0)
                    for iy in range(gh):
                        y = (sy + F32(ph) * bin_h) + (F32(iy + 0.5) * bin_h) / F32(gh)
                        for ix in range(gw):
                            x = (sx + F32(pw) * bin_w) + (F32(ix + 0.5) * bin_w) / F32(gw)
                            total = total + _bilinear(plane, y, x)
                    out[k, c, ph, pw] = total / count
    return out


def _source(in_size, out_size, d):
    """ATen linear source index and weights of output position d (facts §1), float32."""
    s = F32(in_size) / F32(out_size)
    src = max(s * (F32(d) + F32(0.5)) - F32(0.5), F32(0))
    i0 = min(math.floor(src), in_size - 1)
    l1 = min(max(src - F32(i0), F32(0)), F32(1))
    return i0, (i0 + 1 if i0 < in_size - 1 else i0), F32(1) - l1, l1


def resize_bilinear(image, out_h, out_w):
    """(C, H, W) -> (C, out_h, out_w) float32, one pixel at a time: weights ly*lx, taps summed left to right (ATen's
    scalar kernel; facts §1 gives the weights)."""
    image = np.asarray(image, np.float32)
    c_n, h, w = image.shape
    out = np.zeros((c_n, out_h, out_w), np.float32)
    for c in range(c_n):
        for oy in range(out_h):
            y0, y1, ly0, ly1 = _source(h, out_h, oy)
            for ox in range(out_w):
                x0, x1, lx0, lx1 = _source(w, out_w, ox)
                w00, w01, w10, w11 = ly0 * lx0, ly0 * lx1, ly1 * lx0, ly1 * lx1
                out[c, oy, ox] = (((w00 * image[c, y0, x0] + w01 * image[c, y0, x1]) + w10 * image[c, y1, x0])
                                  + w11 * image[c, y1, x1])
    return out


def paste_masks(masks, boxes, image_shape, padding=1):
    """(N, M, M), (N, 4) -> (N, H, W): pad, grow the box, truncate, resize the whole padded mask to the box's size,
    then copy the part inside the image (torchvision roi_heads.paste_mask_in_image, literally; facts §7)."""
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32)
    im_h, im_w = image_shape
    m = masks.shape[-1]
    scale = F32((m + 2 * padding) / m)
    out = np.zeros((masks.shape[0], im_h, im_w), np.float32)
    for n in range(masks.shape[0]):
        padded = np.pad(masks[n], padding)
        x1, y1, x2, y2 = boxes[n]
        w_half, h_half = (x2 - x1) * F32(0.5) * scale, (y2 - y1) * F32(0.5) * scale
        xc, yc = (x2 + x1) * F32(0.5), (y2 + y1) * F32(0.5)
        bx1, by1, bx2, by2 = (int(v) for v in (xc - w_half, yc - h_half, xc + w_half, yc + h_half))  # toward 0
        w, h = max(bx2 - bx1 + 1, 1), max(by2 - by1 + 1, 1)
        resized = resize_bilinear(padded[None], h, w)[0]
        for row in range(max(by1, 0), min(by2 + 1, im_h)):
            for col in range(max(bx1, 0), min(bx2 + 1, im_w)):
                out[n, row, col] = resized[row - by1, col - bx1]
    return out


# --- how far two correct evaluations of ATen's bilinear resize may be apart ------------------------------------------

def resize_error_bound(image, out_h, out_w, unit_roundoff=2.0 ** -24):
    """Per-pixel bound (C, OH, OW) on |a - b| for any two correct evaluations a, b of ATen's bilinear resize
    (align_corners=False, no antialias, facts §1) of `image` (C, H, W) in a floating type of unit roundoff u
    (2**-24 for float32, 2**-53 for float64).

    Derivation. Per axis (n -> m) the exact source coordinate of output d is z = s*(d + 1/2) - 1/2 with
    s = fl(n / m) (an IEEE division: every build rounds it the same). Builds differ in how they evaluate z: a
    multiply then a subtract (two roundings), one fused multiply-add (one rounding), or src in double and then rounded.
    Each is within u*(2|z| + 1) of z: |fl(s*(d+1/2)) - s*(d+1/2)| <= u*(|z| + 1/2), the subtraction's rounding
    <= u*|z| (up to O(u^2)); in double, |s_double - s| <= u*s moves z by u*(|z| + 1/2) and the rounding to the
    type adds u*|z|. So two builds' source coordinates differ by at most dz = 2u*(2|z| + 1). Clamping at 0 and at
    n - 1 is 1-Lipschitz, and lambda = src - floor(src) is exact (Sterbenz), so the weights move by at most dz.
    The bilinear interpolant f(y, x) is continuous and, inside a cell, its partial derivative along y is a convex
    combination of the cell's two vertical neighbour differences (likewise for x). A floor that flips moves the sample
    into the adjacent cell, so |f(y', x') - f(y, x)| <= dz_y * Dy + dz_x * Dx, with Dy, Dx the largest neighbour
    differences along y and x in the 4 x 4 source patch rows i0-1..i0+2, columns j0-1..j0+2 around the sample
    (i0, j0 as ours computes them). The interpolation itself is at most 7 roundings (3 weight products, 4 products and
    3 sums, or the separable form's 6), each <= u times an intermediate bounded by the patch's max |v| (weights are in
    [0, 1] and sum to 1): <= 10u*max|v| for one evaluation with the weight errors, 20u*max|v| between two.
    Hence bound = dz_y * Dy + dz_x * Dx + 20u * max|v| per output pixel.
    """
    img = np.asarray(image, np.float64)                                     # (C, H, W)
    c, h, w = img.shape
    u = float(unit_roundoff)

    def axis(n, m):
        dtype = np.float32 if u == 2.0 ** -24 else np.float64
        s = float(dtype(n) / dtype(m))
        z = s * (np.arange(m) + 0.5) - 0.5                                  # (m,) exact value, in double
        src = np.maximum(z, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)               # (m,)
        return 2 * u * (2 * np.abs(z) + 1), i0

    dz_y, iy = axis(h, out_h)                                               # (OH,), (OH,)
    dz_x, ix = axis(w, out_w)                                               # (OW,), (OW,)
    dy = np.abs(np.diff(img, axis=1)) if h > 1 else np.zeros((c, 1, w))      # (C, H-1, W)
    dx = np.abs(np.diff(img, axis=2)) if w > 1 else np.zeros((c, h, 1))      # (C, H, W-1)

    def patch_max(a, rows, cols):
        """max of a[:, r + (-1..2), q + (-1..2)] (clipped to the array) for every r in rows, q in cols."""
        _, ah, aw = a.shape
        out = np.zeros((a.shape[0], len(rows), len(cols)))
        for di in range(-1, 3):
            r = np.clip(rows + di, 0, ah - 1)
            for dj in range(-1, 3):
                q = np.clip(cols + dj, 0, aw - 1)
                out = np.maximum(out, a[:, r][:, :, q])
        return out

    return (dz_y[None, :, None] * patch_max(dy, iy, ix) + dz_x[None, None, :] * patch_max(dx, iy, ix)
            + 20 * u * patch_max(np.abs(img), iy, ix))                      # (C, OH, OW)
