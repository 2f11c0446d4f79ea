"""Every public op of minimaskrcnn.ops keeps torchvision's dtype behaviour (issue 12): float64 stays float64 (computed
in float64, so that a float64 reference measures float32 error), float16 stays float16, and the integer types
torchvision accepts give what torchvision gives. Values are compared with torchvision run on the same dtype.

Where torchvision refuses a dtype (float16 or integer boxes in nms, integer features in roi_align, int16/int32/int64
images in interpolate, mixed feature/RoI dtypes) ours accepts it and computes in float32; those cases are documented
at the ops and not compared here. The box utilities' integer dtypes are covered in test_boxes.py; NMS in float64 in
test_nms.py.
"""
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import naive
import oracle
from minimaskrcnn import ops

FLOATS = [np.float16, np.float32, np.float64]
UNIT_ROUNDOFF = {np.float32: 2.0 ** -24, np.float64: 2.0 ** -53}
INT_VIEW = {np.float16: np.int16, np.float32: np.int32, np.float64: np.int64}


def bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    np.testing.assert_array_equal(a.view(INT_VIEW[a.dtype.type]), b.view(INT_VIEW[b.dtype.type]))


def f16_ulp(x) -> float:
    """The spacing of float16 at the largest |x| (the coarsest rounding step of a float16 result below it)."""
    return float(np.spacing(np.float16(np.abs(x).max()))) if np.size(x) else 0.0


def random_rois(rng, k, h, w):
    xy = rng.uniform(-2, max(h, w), (k, 2))                                # (k, 2)
    wh = rng.exponential(max(h, w) / 3, (k, 2))                            # (k, 2)
    return np.concatenate([np.zeros((k, 1)), xy, xy + wh], axis=1)          # (k, 5) batch 0, x1, y1, x2, y2


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(FLOATS), h=st.integers(1, 12), w=st.integers(1, 12),
       k=st.integers(0, 6), sampling=st.integers(-1, 2), aligned=st.booleans())
@example(seed=0, dtype=np.float64, h=6, w=7, k=4, sampling=2, aligned=False)      # issue 12: float64 gave float32
def test_roi_align_dtype(seed, dtype, h, w, k, sampling, aligned):
    """float32 and float64: bitwise torchvision's kernel of that dtype. float16: torchvision's Half kernel rounds
    every coordinate and partial sum to half precision (measured: 9% of its outputs equal its float32 result rounded,
    differences up to 0.013 for values ~1.5); ours is that float32 result rounded once, bitwise, in float16."""
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((1, 2, h, w)).astype(dtype)
    rois = random_rois(rng, k, h, w).astype(dtype)
    ours = ops.roi_align(feats, rois, (2, 3), 0.5, sampling, aligned)
    ref = tv.ops.roi_align(torch.from_numpy(feats), torch.from_numpy(rois), (2, 3), 0.5, sampling, aligned).numpy()
    assert ours.dtype == ref.dtype == dtype
    if dtype == np.float16:
        ref = tv.ops.roi_align(torch.from_numpy(feats.astype(np.float32)), torch.from_numpy(rois.astype(np.float32)),
                               (2, 3), 0.5, sampling, aligned).numpy().astype(np.float16)
    bitwise(ours, ref)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(FLOATS), k=st.integers(0, 8))
def test_multiscale_roi_align_dtype(seed, dtype, k):
    torch = oracle.torch()
    from torchvision.ops.poolers import MultiScaleRoIAlign
    rng = np.random.default_rng(seed)
    maps = [rng.standard_normal((2, 64 // s, 48 // s)).astype(dtype) for s in (4, 8, 16, 32)]
    xy = rng.uniform(0, 40, (k, 2))
    boxes = np.concatenate([xy, xy + np.exp(rng.uniform(0, 5, (k, 2)))], axis=1).astype(dtype)   # (k, 4)
    ours = ops.multiscale_roi_align(maps, boxes, (64, 48), 3, 2)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 3, 2)
    as_torch = (lambda a: torch.from_numpy(a.astype(np.float32))) if dtype == np.float16 else torch.from_numpy
    ref = pooler({str(i): as_torch(m)[None] for i, m in enumerate(maps)}, [as_torch(boxes)], [(64, 48)]).numpy()
    t16 = pooler({str(i): torch.from_numpy(m)[None] for i, m in enumerate(maps)}, [torch.from_numpy(boxes)],
                 [(64, 48)])
    assert ours.dtype == t16.dtype.__str__().replace("torch.", "") == np.dtype(dtype).name
    bitwise(ours, ref.astype(dtype))      # float16: torchvision's float32 result rounded (see test_roi_align_dtype)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(FLOATS + [np.uint8]), h=st.integers(1, 20),
       w=st.integers(1, 20), oh=st.integers(1, 40), ow=st.integers(1, 40))
def test_resize_bilinear_dtype(seed, dtype, h, w, oh, ow):
    """float32 / float64: within naive.resize_error_bound with that type's unit roundoff (the source coordinate's
    rounding differs between builds; derived there). float16: torch computes in float32 with an intermediate rounded
    to half (<= 1/2 ulp16, carried through weights summing to 1) and rounds the result (<= 1/2 ulp16); ours rounds
    the float32 result once (<= 1/2 ulp16): apart by <= 1.5 ulp16 of max|x| plus the float32 bound. uint8: torch's
    two passes each round to an integer (<= 0.5 + 0.5) with weights quantised to 14-15 bits (<= 2 * 255 * 2**-15 =
    0.016); ours rounds once (<= 0.5): apart by < 2, so by at most 1 after both are integers."""
    torch = oracle.torch()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (2, h, w)).astype(np.uint8) if dtype == np.uint8 else \
        (rng.standard_normal((2, h, w)) * 2).astype(dtype)
    ours = ops.resize_bilinear(x, oh, ow)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(oh, ow), mode="bilinear",
                                          align_corners=False)[0].numpy()
    assert ours.dtype == ref.dtype == dtype and ours.shape == (2, oh, ow)
    err = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    if dtype == np.uint8:
        assert err.max() <= 1
        return
    bound = naive.resize_error_bound(x, oh, ow, UNIT_ROUNDOFF.get(dtype, 2.0 ** -24))
    if dtype == np.float16:
        bound = bound + 1.5 * f16_ulp(x)
    assert (err <= bound).all(), float((err / bound).max())


def test_resize_image_keeps_float64():
    torch = oracle.torch()
    x = np.random.default_rng(3).random((3, 61, 47))
    ours = ops.resize_image(x)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=min(800 / 47, 1333 / 61),
                                          mode="bilinear", align_corners=False, recompute_scale_factor=True)[0]
    assert ours.dtype == np.float64 and ours.shape == tuple(ref.shape)
    assert (np.abs(ours - ref.numpy()) <= naive.resize_error_bound(x, *ours.shape[1:], 2.0 ** -53)).all()


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), mask_dtype=st.sampled_from(FLOATS + [np.uint8]),
       box_dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(0, 4), m=st.sampled_from([28, 5, 1]))
def test_paste_masks_dtype(seed, mask_dtype, box_dtype, n, m):
    """The output has the masks' dtype, the boxes are grown in theirs. Tolerances: facts §10.4's 1e-6 for float32
    and float64 (torch's FMA contraction in the weights); float16 and uint8 as in test_resize_bilinear_dtype."""
    torch = oracle.torch()
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 256, (n, m, m)).astype(np.uint8) if mask_dtype == np.uint8 else \
        rng.random((n, m, m)).astype(mask_dtype)
    xy = rng.uniform(0, 40, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 30, (n, 2))], axis=1).astype(box_dtype)   # (n, 4)
    ours = ops.paste_masks(masks, boxes, (50, 60))
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (50, 60))[:, 0].numpy()
    assert ours.dtype == ref.dtype == mask_dtype and ours.shape == (n, 50, 60)
    atol = {np.uint8: 1, np.float16: 1.5 * f16_ulp(masks) + 1e-6}.get(mask_dtype, 1e-6)
    assert np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max(initial=0) <= atol


@settings(max_examples=15)
@given(dtype=st.sampled_from(FLOATS), sizes=st.lists(st.sampled_from([16, 32, 45.5, 64, 128, 512]), min_size=1,
                                                    max_size=3),
       ratios=st.lists(st.sampled_from([0.25, 0.5, 1.0, 1.7, 2.0]), min_size=1, max_size=3))
def test_cell_anchors_dtype(dtype, sizes, ratios):
    torch = oracle.torch()
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    torch_dtype = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64}[dtype]
    ref = AnchorGenerator().generate_anchors(sizes, ratios, dtype=torch_dtype).numpy()
    bitwise(ops.cell_anchors(sizes, ratios, dtype), ref)


@settings(max_examples=10)
@given(dtype=st.sampled_from(FLOATS), hp=st.integers(1, 8).map(lambda v: 32 * v), wp=st.integers(1, 8).map(lambda v: 32 * v))
def test_grid_anchors_dtype(dtype, hp, wp):
    """AnchorGenerator makes the anchors in the feature maps' dtype (float16 anchors round large coordinates)."""
    torch = oracle.torch()
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    shapes = [(hp // s, wp // s) for s in (4, 8, 16, 32)]
    sizes, ratios = ((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4
    maps = [torch.zeros((1, 1) + s, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype) for s in shapes]
    images = ImageList(torch.zeros((1, 3, hp, wp), dtype=maps[0].dtype), [(hp, wp)])
    ref = AnchorGenerator(sizes, ratios)(images, maps)[0].numpy()
    bitwise(ops.grid_anchors(shapes, (hp, wp), sizes, ratios, dtype=dtype), ref)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(FLOATS + [np.int64]), n=st.integers(0, 20))
def test_box_coder_dtype(seed, dtype, n):
    """encode / decode in torch's promoted dtype: float16 stays float16 (every operation rounds to half, as NumPy's
    float16 arithmetic does), integers give float32. Values: torch's float32 log / exp are up to 1 ulp from the
    correctly rounded ones ours use (facts §4.3; in float16 a float32 result rounded to half may tie differently from
    a float64 one). encode: dw = ww * log(.) then differs by <= 1 ulp + 1/2 ulp of the product: 2 ulp of each value.
    decode: pred_w = exp(dw) * w differs by <= 1.5 ulp(pred_w), and x1 = ctr - 0.5 * pred_w by half that plus its own
    rounding, in absolute terms: <= 2 ulp of the largest |coordinate|; dx, dy paths are bitwise."""
    torch = oracle.torch()
    from torchvision.models.detection._utils import BoxCoder
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    ref_boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], axis=1)
    proposals = ref_boxes + rng.uniform(-0.5, 0.5, (n, 4)) * 4
    proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 1)
    deltas = rng.normal(0, 0.5, (n, 4)) * (10 if dtype == np.int64 else 1)
    cast = (lambda a: np.round(a).astype(dtype)) if dtype == np.int64 else (lambda a: a.astype(dtype))
    coder, weights = BoxCoder((10.0, 10.0, 5.0, 5.0)), (10.0, 10.0, 5.0, 5.0)
    enc = ops.encode_boxes(cast(ref_boxes), cast(proposals), weights)
    t_enc = coder.encode_single(torch.from_numpy(cast(ref_boxes)), torch.from_numpy(cast(proposals))).numpy()
    dec = ops.decode_boxes(cast(deltas), cast(ref_boxes), weights)
    t_dec = coder.decode_single(torch.from_numpy(cast(deltas)), torch.from_numpy(cast(ref_boxes))).numpy()
    assert enc.dtype == t_enc.dtype and dec.dtype == t_dec.dtype
    if dtype != np.int64:                        # int64 reference boxes: torch makes int64 weights, not compared
        assert (np.abs(enc - t_enc) <= 2 * np.spacing(np.abs(t_enc))).all()
    assert (np.abs(dec - t_dec) <= 2 * np.spacing(np.abs(t_dec).max(initial=0))).all()


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(FLOATS), n=st.integers(0, 20))
def test_fpn_levels_clip_and_small_boxes_dtype(seed, dtype, n):
    torch, tv = oracle.torch(), oracle.torchvision()
    from torchvision.ops.poolers import LevelMapper
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-20, 600, (n, 2))
    boxes = np.concatenate([xy, xy + np.exp(rng.uniform(0, 6.5, (n, 2)))], axis=1).astype(dtype)
    t = torch.from_numpy(boxes)
    levels = ops.fpn_levels(boxes)
    assert levels.dtype == np.int64
    np.testing.assert_array_equal(levels, LevelMapper(2, 5)([t]).numpy())
    bitwise(ops.clip_boxes(boxes, (500, 400)), tv.ops.clip_boxes_to_image(t, (500, 400)).numpy())
    keep = ops.remove_small_boxes(boxes, 3.0)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, tv.ops.remove_small_boxes(t, 3.0).numpy())
