"""minimaskrcnn.ops roi_align / fpn_levels / multiscale_roi_align against torchvision.ops (roi_align,
poolers.LevelMapper, MultiScaleRoIAlign), hand-computed cases and the loop reference in naive.py."""
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import oracle
from minimaskrcnn import ops

# 5x5 map with value 5*y + x: bilinear interpolation of a linear function is exact, so an in-range sample at
# (y, x) reads 5y + x and a bin is 5 * mean(y) + mean(x) of its samples.
ARANGE = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)

GOLDEN = [
    # roi (b, x1, y1, x2, y2), output, sampling, aligned, expected
    # 2x2 bins of 1 px over [1, 3]: samples y, x in {1.25, 1.75} for bin (0, 0) -> 5*1.5 + 1.5 = 9, etc.
    ((0, 1, 1, 3, 3), (2, 2), 2, False, [[9, 10], [14, 15]]),
    # aligned: start 0.5, samples {0.75, 1.25} -> mean 1 -> 5*1 + 1 = 6
    ((0, 1, 1, 3, 3), (2, 2), 2, True, [[6, 7], [11, 12]]),
    # x samples -3 (outside [-1, W]: adds 0 but counts) and -1 (inside, clamped to 0); y in {0.25, 0.75}:
    # (0 + 0 + 5*0.25 + 5*0.75) / 4 = 1.25
    ((0, -4, 0, 0, 1), (1, 1), 2, False, [[1.25]]),
    # samples at 4.0 and 5.0 (<= W, inside) both clamp to the last row/column: 5*4 + 4 = 24
    ((0, 3.5, 3.5, 5.5, 5.5), (1, 1), 2, False, [[24]]),
    # a point RoI is widened to 1 px when not aligned: samples {2.25, 2.75} -> 5*2.5 + 2.5 = 15
    ((0, 2, 2, 2, 2), (1, 1), 2, False, [[15]]),
    # ... but not when aligned: size 0, samples at 1.5 -> 5*1.5 + 1.5 = 9
    ((0, 2, 2, 2, 2), (1, 1), 2, True, [[9]]),
    # adaptive sampling: ceil(2/1) = 2 rows x ceil(4/1) = 4 columns; mean y 1, mean x 2 -> 7
    ((0, 0, 0, 4, 2), (1, 1), 0, False, [[7]]),
    # adaptive, aligned, size 0: grid 0 x 0, count max(0, 1) = 1 -> 0
    ((0, 2, 2, 2, 2), (1, 1), 0, True, [[0]]),
    # entirely outside (beyond -1): every sample adds 0 -> 0
    ((0, -10, -10, -4, -4), (1, 1), 2, False, [[0]]),
]


@pytest.mark.parametrize("roi, out, sampling, aligned, expected", GOLDEN)
def test_golden_arange(roi, out, sampling, aligned, expected):
    got = ops.roi_align(ARANGE, np.array([roi], np.float32), out, 1.0, sampling, aligned)
    np.testing.assert_array_equal(got[0, 0], np.array(expected, np.float32))
    torch, tv = oracle.torch(), oracle.torchvision()
    ref = tv.ops.roi_align(torch.from_numpy(ARANGE), torch.tensor([roi], dtype=torch.float32), out, 1.0, sampling,
                           aligned).numpy()
    np.testing.assert_array_equal(got, ref)


def random_rois(rng, k, n, h, w, scale):
    """(k, 5) RoIs in image pixels: inside, partly and fully outside, zero-size, inverted, huge, integer-valued."""
    span_y, span_x = h / scale, w / scale
    xy = rng.uniform(-0.5, 1.3, (k, 2)) * [span_x, span_y]                  # (k, 2)
    wh = rng.exponential(0.3, (k, 2)) * [span_x, span_y]                    # (k, 2)
    kind = rng.integers(0, 8, k)
    wh[kind == 0] = 0.0
    wh[kind == 1] *= -1.0
    wh[kind == 2] *= 20.0
    b = np.concatenate([xy, xy + wh], axis=1)                               # (k, 4)
    b[kind == 3] = np.round(b[kind == 3])
    return np.concatenate([rng.integers(0, n, (k, 1)), b], axis=1).astype(np.float32)   # (k, 5)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 17),
       w=st.integers(1, 17), k=st.integers(0, 12), ph=st.integers(1, 7), pw=st.integers(1, 7),
       scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 0.125, 2.0]), sampling=st.integers(-1, 3),
       aligned=st.booleans(), layout=st.sampled_from(["c", "strided", "channels_last", "float64"]))
def test_roi_align_bitwise_torchvision(seed, n, c, h, w, k, ph, pw, scale, sampling, aligned, layout):
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, c, h, w)).astype(np.float32)
    rois = random_rois(rng, k, n, h, w, scale)
    arg = {"c": feats, "strided": np.repeat(feats, 2, axis=3)[..., ::2],
           "channels_last": np.ascontiguousarray(feats.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
           "float64": feats.astype(np.float64)}[layout]
    ours = ops.roi_align(arg, rois, (ph, pw), scale, sampling, aligned)
    if layout == "float64":                      # float64 is computed in float64, as torchvision's double kernel
        feats, rois = feats.astype(np.float64), rois.astype(np.float64)
    ref = tv.ops.roi_align(torch.from_numpy(feats), torch.from_numpy(rois), (ph, pw), scale, sampling,
                           aligned).numpy()
    assert ours.dtype == ref.dtype and ours.shape == (k, c, ph, pw)
    view = np.int64 if layout == "float64" else np.int32
    np.testing.assert_array_equal(ours.view(view), ref.view(view))             # bitwise, signed zeros included


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(0, 4),
       scale=st.sampled_from([1.0, 0.5, 1 / 3]), sampling=st.integers(-1, 2), aligned=st.booleans())
def test_roi_align_kernel_matches_loop_reference(seed, h, w, k, scale, sampling, aligned):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    rois = random_rois(rng, k, 2, h, w, scale)
    rois[:, 3:] = np.minimum(rois[:, 3:], rois[:, 1:3] + 3 * max(h, w) / scale)   # keep adaptive grids small
    np.testing.assert_array_equal(ops.roi_align(feats, rois, (3, 2), scale, sampling, aligned),
                                  naive.roi_align(feats, rois, (3, 2), scale, sampling, aligned))


def test_nan_at_the_origin_propagates_through_out_of_range_samples_as_torchvision():
    # an out-of-range sample multiplies zero weights with element (0, 0): NaN there poisons the bin, as torchvision
    torch, tv = oracle.torch(), oracle.torchvision()
    f = ARANGE.copy()
    f[0, 0, 0, 0] = np.nan
    rois = np.array([[0, -10, -10, -4, -4], [0, 3, 3, 4, 4]], np.float32)
    ours = ops.roi_align(f, rois, 1, 1.0, 2)
    ref = tv.ops.roi_align(torch.from_numpy(f), torch.from_numpy(rois), 1, 1.0, 2).numpy()
    np.testing.assert_array_equal(ours, ref)
    assert np.isnan(ours[0, 0, 0, 0]) and ours[1, 0, 0, 0] == 5 * 3.5 + 3.5


@pytest.mark.parametrize("call, match", [
    (lambda: ops.roi_align(ARANGE[0], np.zeros((1, 5)), 2, 1.0, 2), "features: expected 4 dimensions"),
    (lambda: ops.roi_align(ARANGE, np.zeros((1, 4)), 2, 1.0, 2), "rois: expected a last axis of length 5"),
    (lambda: ops.roi_align(ARANGE, [[0, np.nan, 0, 1, 1]], 2, 1.0, 2), "rois: expected finite values"),
    (lambda: ops.roi_align(ARANGE, [[1, 0, 0, 1, 1]], 2, 1.0, 2), r"rois: expected column 0 .* \[0, 1\)"),
    (lambda: ops.roi_align(ARANGE, [[0.5, 0, 0, 1, 1]], 2, 1.0, 2), "rois: expected column 0 to hold integer"),
    (lambda: ops.roi_align(ARANGE, np.zeros((1, 5)), 0, 1.0, 2), "output_size: expected an integer >= 1"),
    (lambda: ops.roi_align(ARANGE, np.zeros((1, 5)), (2, 2, 2), 1.0, 2), "output_size: expected an int or a"),
    (lambda: ops.roi_align(ARANGE, np.zeros((1, 5)), 2, 0.0, 2), "spatial_scale: expected a number > 0"),
    (lambda: ops.roi_align(ARANGE, np.zeros((1, 5)), 2, 1.0, 2.0), "sampling_ratio: expected an integer"),
    (lambda: ops.roi_align(ARANGE, np.zeros((1, 5)), 2, 1.0, 2, aligned=1), "aligned: expected a bool"),
    (lambda: ops.multiscale_roi_align([], np.zeros((1, 4)), (8, 8), 2, 2), "features: expected a non-empty"),
    (lambda: ops.multiscale_roi_align([np.zeros((2, 4, 4)), np.zeros((3, 2, 2))], np.zeros((1, 4)), (16, 16), 2,
                                      2), "features: expected the same number of channels"),
    (lambda: ops.fpn_levels(np.zeros((2, 4)), k_min=5, k_max=2), "k_max: expected >= k_min"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def level_mapper(k_min=2, k_max=5):
    oracle.torchvision()
    from torchvision.ops.poolers import LevelMapper
    return LevelMapper(k_min, k_max)


def test_fpn_levels_boundaries():
    """FPN Eq. 1 with canonical 224 at level 4: sqrt(area) 112 -> P3, 224 -> P4, 448 -> P5; the eps 1e-6 moves
    each boundary down by a relative 7e-7; tiny boxes clamp to P2, huge ones to P5."""
    torch = oracle.torch()
    b = np.array([[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 111.9999, 112],
                  [0, 0, 223.9999, 224], [0, 0, 223.99, 224], [0, 0, 1, 1], [0, 0, 2000, 2000],
                  [0, 0, 0, 0], [5, 5, 4, 4]], np.float32)
    ours = ops.fpn_levels(b)
    np.testing.assert_array_equal(ours, [1, 2, 3, 1, 2, 1, 0, 3, 0, 0])
    np.testing.assert_array_equal(ours, level_mapper()([torch.from_numpy(b)]).numpy())


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(0, 200))
def test_fpn_levels_match_level_mapper(seed, k):
    torch = oracle.torch()
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, (k, 2))
    b = np.concatenate([xy, xy + np.exp(rng.uniform(-3, 7.5, (k, 2)))], axis=1).astype(np.float32)
    np.testing.assert_array_equal(ops.fpn_levels(b), level_mapper()([torch.from_numpy(b)]).numpy())


def test_fpn_levels_negative_area_has_no_level():
    np.testing.assert_array_equal(ops.fpn_levels(np.array([[0, 0, 10, -10]], np.float32)), [-1])


@settings(max_examples=40)
@given(img_h=st.integers(8, 1400), pad=st.integers(0, 31), img_w=st.integers(8, 1400))
def test_infer_scales_match_torchvision(img_h, pad, img_w):
    torch = oracle.torch()
    from torchvision.ops.poolers import _infer_scale
    hp = -(-(img_h + pad) // 32) * 32
    shapes = [(8, hp // s, 3) for s in (4, 8, 16, 32)]
    ours = ops.infer_scales(shapes, (img_h, img_w))
    ref = [_infer_scale(torch.zeros((1,) + s[:1] + s[1:2] + (3,)), [img_h, img_w]) for s in shapes]
    assert ours == ref


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), img_h=st.integers(40, 700), img_w=st.integers(40, 700),
       k=st.integers(0, 40), out=st.sampled_from([7, 14, (5, 3)]), sampling=st.sampled_from([2, 0]),
       reordered=st.booleans())
def test_multiscale_roi_align_matches_torchvision(seed, img_h, img_w, k, out, sampling, reordered):
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(seed)
    hp, wp = -(-img_h // 32) * 32, -(-img_w // 32) * 32
    maps = [rng.standard_normal((3, hp // s, wp // s)).astype(np.float32) for s in (4, 8, 16, 32)]
    xy = rng.uniform(-20, [img_w, img_h], (k, 2))
    boxes = np.concatenate([xy, xy + np.exp(rng.uniform(0, 6.5, (k, 2)))], axis=1).astype(np.float32)
    ours = ops.multiscale_roi_align(ops.channels_last_views(maps) if reordered else maps, boxes, (img_h, img_w),
                                    out, sampling)
    pooler = tv.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], out, sampling)
    x = OrderedDict((str(i), torch.from_numpy(m)[None]) for i, m in enumerate(maps))
    x["pool"] = torch.zeros((1, 3, 1, 1))                                        # present but not pooled
    ref = pooler(x, [torch.from_numpy(boxes)], [(img_h, img_w)]).numpy()
    np.testing.assert_array_equal(ours.view(np.int32), ref.view(np.int32))


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9))
def test_channels_last_views_are_equal_maps_laid_out_as_roi_align_samples_them(seed, c, h, w):
    rng = np.random.default_rng(seed)
    maps = [rng.standard_normal((c, h, w)).astype(np.float32), rng.standard_normal((c, w, h))[:, ::2]]
    for view, m in zip(ops.channels_last_views(maps), maps):
        np.testing.assert_array_equal(view, m)
        assert view.dtype == m.dtype and view.transpose(1, 2, 0).flags.c_contiguous   # roi_align's copy is a no-op


def test_multiscale_single_map_pools_everything_from_it():
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(0)
    fmap = rng.standard_normal((2, 25, 30)).astype(np.float32)
    boxes = np.array([[0, 0, 50, 40], [10, 10, 90, 90], [0, 0, 3, 3]], np.float32)
    ours = ops.multiscale_roi_align([fmap], boxes, (100, 120), 4, 2)
    ref = tv.ops.MultiScaleRoIAlign(["0"], 4, 2)({"0": torch.from_numpy(fmap)[None]}, [torch.from_numpy(boxes)],
                                                [(100, 120)]).numpy()
    np.testing.assert_array_equal(ours, ref)
