"""Slow loop references for the matterport family's Numba kernels (tests/matterport/test_kernels.py).

Written from the TensorFlow / scikit-image semantics stated in the kernels' docstrings, one scalar at a time in
numpy float32 (or float64) scalars, with no vectorisation, so a vectorisation or indexing slip in a kernel shows.
"""
import math

import numpy as np

f32 = np.float32


def crop_and_resize(img, boxes, size):
    """tf.image.crop_and_resize (bilinear, extrapolation 0) of one (H, W, C) float32 map, loop by loop."""
    h, w, c = img.shape
    out = np.zeros((len(boxes), size, size, c), np.float32)
    for b, (y1, x1, y2, x2) in enumerate(np.asarray(boxes, np.float32)):
        hs = (y2 - y1) * f32(h - 1) / f32(size - 1) if size > 1 else f32(0)
        ws = (x2 - x1) * f32(w - 1) / f32(size - 1) if size > 1 else f32(0)
        for i in range(size):
            in_y = y1 * f32(h - 1) + f32(i) * hs if size > 1 else f32(0.5 * (y1 + y2) * (h - 1))
            for j in range(size):
                in_x = x1 * f32(w - 1) + f32(j) * ws if size > 1 else f32(0.5 * (x1 + x2) * (w - 1))
                if in_y < 0 or in_y > h - 1 or in_x < 0 or in_x > w - 1:
                    continue                                   # stays 0
                t, bo = int(math.floor(in_y)), int(math.ceil(in_y))
                le, ri = int(math.floor(in_x)), int(math.ceil(in_x))
                dy, dx = in_y - f32(t), in_x - f32(le)
                for d in range(c):
                    top = img[t, le, d] + (img[t, ri, d] - img[t, le, d]) * dx
                    bottom = img[bo, le, d] + (img[bo, ri, d] - img[bo, le, d]) * dx
                    out[b, i, j, d] = top + (bottom - top) * dy
    return out


def tf_iou(a, b):
    ay1, ay2 = min(a[0], a[2]), max(a[0], a[2])
    ax1, ax2 = min(a[1], a[3]), max(a[1], a[3])
    by1, by2 = min(b[0], b[2]), max(b[0], b[2])
    bx1, bx2 = min(b[1], b[3]), max(b[1], b[3])
    area_a, area_b = (ay2 - ay1) * (ax2 - ax1), (by2 - by1) * (bx2 - bx1)
    if area_a <= 0 or area_b <= 0:
        return f32(0)
    inter = max(min(ay2, by2) - max(ay1, by1), f32(0)) * max(min(ax2, bx2) - max(ax1, bx1), f32(0))
    return inter / (area_a + area_b - inter)


def greedy_nms(boxes, scores, max_output, threshold):
    """Greedy NMS over *distinct* scores and positive areas (order by descending score), TF 1.15's IoU and its
    measured rule: suppressed when IoU >= threshold."""
    boxes = np.asarray(boxes, np.float32)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if len(keep) == max_output:
            break
        if all(tf_iou(boxes[i], boxes[k]) < f32(threshold) for k in keep):
            keep.append(i)
    return np.array(keep, np.int64)


def skimage016_bilinear(image, out_h, out_w, matrix):
    """skimage 0.16 _warp_fast order 1, mode constant 0, of an (H, W) float array with the metric `matrix`."""
    t = image.dtype.type
    m = matrix.astype(image.dtype)
    rows, cols = image.shape
    out = np.zeros((out_h, out_w), image.dtype)

    def px(r, c):
        return image[r, c] if 0 <= r < rows and 0 <= c < cols else t(0)

    for r in range(out_h):
        for c in range(out_w):
            x = m[0, 0] * t(c) + m[0, 2]
            y = m[1, 1] * t(r) + m[1, 2]
            r0, c0 = int(math.floor(y)), int(math.floor(x))
            r1, c1 = int(math.ceil(y)), int(math.ceil(x))
            dy, dx = y - t(r0), x - t(c0)
            top = (t(1) - dx) * px(r0, c0) + dx * px(r0, c1)
            bottom = (t(1) - dx) * px(r1, c0) + dx * px(r1, c1)
            out[r, c] = (t(1) - dy) * top + dy * bottom
    return out
