"""RoIAlign (Mask R-CNN §3) bitwise as torchvision's CPU kernel, and the FPN level assignment that feeds it.

Shape glossary
    N: images in the feature batch
    C: channels
    H, W: feature map height and width
    K: number of RoIs
    PH, PW: pooled output height and width (7 x 7 for the box head, 14 x 14 for the mask head)
    L: number of pyramid levels pooled from (P2..P5: 4)

RoIs are (K, 5) as batch_idx, x1, y1, x2, y2 in image pixels; `spatial_scale` maps them onto the feature map.
Boxes for the multi-scale pooler are (K, 4) as x1, y1, x2, y2 in resized-image pixels.

Order of float32 operations (facts §5, torchvision csrc/ops/cpu/roi_align_kernel.cpp), per RoI:
    start = x1*scale - offset (offset 0.5 if aligned else 0); size = end - start, at least 1 if not aligned;
    bin = size / PW; grid = sampling_ratio, or ceil(size / PW) if sampling_ratio <= 0; count = max(gh*gw, 1);
    sample x = (start + pw*bin) + ((ix + 0.5)*bin) / gw; bilinear value ((w1*v1 + w2*v2) + w3*v3) + w4*v4;
    out = (sum over iy, then ix, from 0) / count. Samples outside [-1, H] x [-1, W] add 0 but still count.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import _validate as V
from .parallel import run_interleaved
from .boxes import box_area


@njit(cache=True)
def _bilinear_taps(y, x, height, width):
    """Flat positions (y*W + x) of the 4 neighbours and their weights w1..w4 for one sample (y, x of the kernel's
    dtype T, float32 or float64), as torchvision's pre_calc_for_bilinear_interpolate<T>. An out-of-range sample gets
    position 0 and weight 0."""
    T = type(y)
    zero, one = T(0), T(1)
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0, 0, 0, 0, zero, zero, zero, zero
    if y <= zero:
        y = zero
    if x <= zero:
        x = zero
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = T(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = T(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - T(y_low), x - T(x_low)
    hy, hx = one - ly, one - lx
    return (y_low * width + x_low, y_low * width + x_high, y_high * width + x_low, y_high * width + x_high,
            hy * hx, hy * lx, ly * hx, ly * lx)


@njit(cache=True, nogil=True)
def _roi_align_kernel(features, rois, batch_idx, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, out,
                      first, step):
    """features (N, H, W, C) channels-last and rois (K, 5), both of dtype T (float32 or float64), batch_idx (K,)
    int64 -> out (K, C, PH, PW) of dtype T, RoIs first, first + step, ...: torchvision's
    roi_align_forward_kernel_impl<T>, all arithmetic in T. Numba compiles one version per dtype.

    Threads take interleaved RoIs (`run_interleaved`). Each sample's 4 taps are computed once and applied to all
    channels at once (contiguous in channels-last memory); every channel still accumulates its samples in
    torchvision's order (iy outer, ix inner, from 0), so each output element is bitwise torchvision's.
    """
    n, height, width, channels = features.shape
    k_rois = rois.shape[0]
    T = features.dtype.type
    flat = features.reshape(n, height * width, channels)            # (N, H*W, C)
    scale = T(spatial_scale)
    offset = T(0.5) if aligned else T(0.0)
    one = T(1)
    for k in range(first, k_rois, step):
        start_w = rois[k, 1] * scale - offset
        start_h = rois[k, 2] * scale - offset
        roi_w = rois[k, 3] * scale - offset - start_w
        roi_h = rois[k, 4] * scale - offset - start_h
        if not aligned:                                              # legacy: force malformed RoIs to 1x1
            roi_w = max(roi_w, one)
            roi_h = max(roi_h, one)
        bin_h = roi_h / T(pooled_h)
        bin_w = roi_w / T(pooled_w)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / T(pooled_h)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / T(pooled_w)))
        count = T(max(grid_h * grid_w, 1))
        gh, gw = max(grid_h, 0), max(grid_w, 0)                       # a negative grid (aligned) samples nothing
        v = flat[batch_idx[k]]                                        # (H*W, C)
        acc = np.empty(channels, features.dtype)                        # (C,) one bin, all channels
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                acc[:] = 0
                for iy in range(gh):
                    y = (start_h + T(ph) * bin_h) + (T(iy + 0.5) * bin_h) / T(gh)
                    for ix in range(gw):
                        x = (start_w + T(pw) * bin_w) + (T(ix + 0.5) * bin_w) / T(gw)
                        p1, p2, p3, p4, w1, w2, w3, w4 = _bilinear_taps(y, x, height, width)
                        v1, v2, v3, v4 = v[p1], v[p2], v[p3], v[p4]  # (C,) each
                        for c in range(channels):
                            acc[c] += ((w1 * v1[c] + w2 * v2[c]) + w3 * v3[c]) + w4 * v4[c]
                for c in range(channels):
                    out[k, c, ph, pw] = acc[c] / count


def roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=False) -> np.ndarray:
    """(N, C, H, W) features and (K, 5) RoIs as batch_idx, x1, y1, x2, y2 -> (K, C, PH, PW), bitwise equal to
    torchvision `ops.roi_align` on CPU for float32 and float64. sampling_ratio <= 0 samples ceil(roi size / output
    size) points per bin. NaN/infinite RoIs raise (torchvision would read out of bounds).

    Dtypes: the features' dtype decides, and the RoIs are converted to it (torchvision requires both to be equal).
    float64 is computed in float64 and float32 in float32, as torchvision. float16 returns float16 but is computed in
    float32 and rounded once at the end, where torchvision's Half kernel rounds every coordinate, weight and partial
    sum to half precision: the result is torchvision's float32 result on the same inputs, rounded. Integer
    features (which torchvision refuses) are computed in float32 and give float32."""
    f = V.array("features", features, ndim=4)
    features_dtype = f.dtype
    r = V.finite("rois", V.array("rois", rois, ndim=2, last=5))
    ph, pw = V.pair("output_size", output_size)
    scale = V.real("spatial_scale", spatial_scale, low=0.0, low_inclusive=False)
    ratio = V.integer("sampling_ratio", sampling_ratio)
    if not isinstance(aligned, (bool, np.bool_)):
        raise ValueError(f"aligned: expected a bool, got {aligned!r}")
    batch = r[:, 0].astype(np.int64)                                   # (K,) torchvision truncates to int
    if r.shape[0] and (np.any(batch != r[:, 0]) or batch.min() < 0 or batch.max() >= f.shape[0]):
        raise ValueError(f"rois: expected column 0 to hold integer batch indices in [0, {f.shape[0]})")
    # channels-last copy: ~8x faster sampling than (N, C, H, W) for 256 channels (measured), no copy if the input
    # already is a transposed channels-last array
    dtype = np.float64 if f.dtype == np.float64 else np.float32         # the kernel's T
    f = np.ascontiguousarray(f.transpose(0, 2, 3, 1), dtype=dtype)     # (N, C, H, W) -> (N, H, W, C)
    r = np.ascontiguousarray(r, dtype=dtype)                           # (K, 5)
    out = np.empty((r.shape[0], f.shape[3], ph, pw), dtype)                 # (K, C, PH, PW)
    run_interleaved(_roi_align_kernel, r.shape[0], f, r, batch, scale, ph, pw, ratio, bool(aligned), out)
    return out.astype(np.float16) if features_dtype == np.float16 else out


def channels_last_views(maps) -> list:
    """The (C, H, W) maps with their values reordered in memory channels-last, (H, W, C), each returned as a
    (C, H, W) view of that copy: equal arrays, on which `roi_align` makes no copy of its own. A map pooled more
    than once (Mask R-CNN pools P2..P5 for the box head, then again for the mask head) is reordered only once this
    way: ~26 ms per 800x1066 image on the 2-core Zen 4 machine for the four levels."""
    return [np.ascontiguousarray(np.asarray(m).transpose(1, 2, 0)).transpose(2, 0, 1) for m in maps]   # (C, H, W)


def infer_scales(feature_shapes, image_size) -> list[float]:
    """Per level 2 ** round(log2(fh / img_h)) (torchvision poolers `_infer_scale`: height only; the ratio is taken
    in double, its log2 in float32 (evaluated in double and rounded), the round is half to even)."""
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"image_size: expected (h, w), got {image_size!r}")
    img_h = V.integer("image_size[0]", image_size[0], 1)
    scales = []
    for i, shape in enumerate(feature_shapes):
        fh = V.integer(f"feature_shapes[{i}] height", shape[-2], 1)
        approx = np.float32(fh / img_h)                                 # torch.tensor(approx_scale): float32
        scales.append(2.0 ** float(np.round(_log2_f32(approx))))
    return scales


def _log2_f32(x):
    """float32 log2 as torch's (double log2 rounded to float32 agrees with it, facts §10.1 item 2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(np.asarray(x, np.float64)).astype(np.float32)


def fpn_levels(boxes, k_min=2, k_max=5, canonical_scale=224, canonical_level=4, eps=1e-6) -> np.ndarray:
    """FPN Eq. 1 level of each (K, 4) box, as an index 0..k_max-k_min (torchvision poolers.LevelMapper):
    floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps) clamped to [k_min, k_max], minus k_min.

    All in float32 in LevelMapper's order (s / 224, log2, + 4, + eps). torch's float32 sqrt is not correctly rounded
    (it differs from IEEE sqrt by 1 ulp in ~20% of values, facts §5), so a box whose level sits within ~1e-6 of a
    boundary may map to the neighbouring level in torchvision. Boxes with a negative area get -1 (no level).
    """
    b = V.array("boxes", boxes, ndim=2, last=4)
    k_min, k_max = V.integer("k_min", k_min), V.integer("k_max", k_max)
    if k_max < k_min:
        raise ValueError(f"k_max: expected >= k_min ({k_min}), got {k_max}")
    s0 = V.real("canonical_scale", canonical_scale, low=0.0, low_inclusive=False)
    lvl0 = V.real("canonical_level", canonical_level)
    eps = V.real("eps", eps)
    area = box_area(np.asarray(b, np.float64) if b.dtype == np.float64 else np.asarray(b, np.float32))  # (K,)
    dt = area.dtype.type
    with np.errstate(invalid="ignore"):
        s = np.sqrt(area)                                                # (K,)
    log2 = _log2_f32(s / dt(s0)).astype(area.dtype) if dt is np.float32 else np.log2(s / s0)  # (K,)
    target = np.floor((dt(lvl0) + log2) + dt(eps))                       # (K,)
    target = np.clip(target, k_min, k_max)                               # (K,) NaN stays NaN, as torch.clamp
    # A box with one negative side has a NaN level; torchvision casts it to a garbage int64 that matches no level
    # (the RoI is pooled from nothing and stays 0). Here it is -1, with the same effect in `multiscale_roi_align`.
    levels = np.full(target.shape, -1, np.int64)                         # (K,)
    ok = ~np.isnan(target)
    levels[ok] = target[ok].astype(np.int64) - k_min
    return levels


def multiscale_roi_align(features, boxes, image_size, output_size, sampling_ratio,
                         canonical_scale=224, canonical_level=4) -> np.ndarray:
    """RoIAlign of (K, 4) boxes of one image from the level FPN Eq. 1 assigns them (torchvision MultiScaleRoIAlign
    for a single image, facts §5) -> (K, C, PH, PW) in the order of `boxes`, of the first map's dtype as
    `roi_align` gives it (float64 and float16 stay, anything else is float32).

    features: L maps (C, Hl, Wl) (P2..P5, torchvision's featmap names '0'..'3'); image_size: (h, w) of the resized,
    unpadded image. Scales are inferred as `infer_scales`, k_min/k_max = -log2 of the first/last scale. With a
    single map every box is pooled from it.
    """
    if not isinstance(features, (tuple, list)) or len(features) == 0:
        raise ValueError("features: expected a non-empty sequence of (C, H, W) maps")
    maps = [V.array(f"features[{i}]", f, ndim=3) for i, f in enumerate(features)]
    if len({m.shape[0] for m in maps}) != 1:
        raise ValueError(f"features: expected the same number of channels on every level, got "
                         f"{[m.shape[0] for m in maps]}")
    b = V.finite("boxes", V.array("boxes", boxes, ndim=2, last=4))
    ph, pw = V.pair("output_size", output_size)
    scales = infer_scales([m.shape for m in maps], image_size)
    kernel_dtype = np.float64 if maps[0].dtype == np.float64 else np.float32
    out_dtype = np.float16 if maps[0].dtype == np.float16 else kernel_dtype   # torchvision: x_filtered[0].dtype
    rois = np.zeros((b.shape[0], 5), kernel_dtype)                       # (K, 5) batch index 0, then the box
    rois[:, 1:] = b
    if len(maps) == 1:
        return roi_align(maps[0][None], rois, (ph, pw), scales[0], sampling_ratio)
    k_min = int(-np.log2(np.float32(scales[0])))
    k_max = int(-np.log2(np.float32(scales[-1])))
    levels = fpn_levels(b, k_min, k_max, canonical_scale, canonical_level)   # (K,) 0..L-1
    out = np.zeros((b.shape[0], maps[0].shape[0], ph, pw), out_dtype)    # (K, C, PH, PW)
    for level, (fmap, scale) in enumerate(zip(maps, scales)):
        idx = np.flatnonzero(levels == level)                            # (K_l,)
        if idx.size:
            out[idx] = roi_align(fmap[None], rois[idx], (ph, pw), scale, sampling_ratio)
    return out
