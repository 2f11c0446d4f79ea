"""Empty inputs (issue 12): every op gives what torchvision gives for zero boxes / RoIs / masks, checked by running
torchvision on the same empty input.

batched_nms returns an empty int64 result for any empty `boxes` whatever the other arguments (torchvision's
coordinate-trick path returns first when boxes.numel() == 0, before it looks at scores or idxs). clip_boxes slices
any shape. Where torchvision accepts a malformed empty array only because its indexing happens not to fail on it
(box_area / remove_small_boxes / fpn_levels of a (0, 5) array, which it would also accept non-empty and read the
first 4 columns of), ours refuses the shape with a ValueError, empty or not (`test_malformed_shapes_are_refused`).
"""
import numpy as np
import pytest

import oracle
from minimaskrcnn import ops

SHAPES = [(0, 4), (0,), (0, 5), (4, 0), (0, 0)]


def as_torch(a):
    return None if a is None else oracle.torch().from_numpy(a)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("scores", [None, "empty"])
@pytest.mark.parametrize("idxs", [None, "empty"])
@pytest.mark.parametrize("threshold", [0.5, None])
def test_batched_nms_on_empty_boxes_matches_torchvision(shape, dtype, scores, idxs, threshold):
    tv = oracle.torchvision()
    boxes = np.zeros(shape, dtype)
    scores = np.zeros(0, np.float32) if scores else None
    idxs = np.zeros(0, np.int64) if idxs else None
    ref = tv.ops.batched_nms(as_torch(boxes), as_torch(scores), as_torch(idxs), threshold).numpy()
    ours = ops.batched_nms(boxes, scores, idxs, threshold)
    assert ours.dtype == ref.dtype == np.int64 and ours.shape == ref.shape == (0,)


def test_batched_nms_on_an_empty_list():
    assert ops.batched_nms([], None, None, None).dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_boxes_through_every_box_op(dtype):
    torch, tv = oracle.torch(), oracle.torchvision()
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.ops.poolers import LevelMapper
    empty, two = np.zeros((0, 4), dtype), np.array([[0, 0, 2, 2], [1, 1, 3, 4]], dtype)
    te, t2 = torch.from_numpy(empty), torch.from_numpy(two)
    pairs = [
        (ops.nms(empty, np.zeros(0, dtype), 0.5), tv.ops.nms(te, torch.from_numpy(np.zeros(0, dtype)), 0.5)),
        (ops.box_area(empty), tv.ops.box_area(te)),
        (ops.box_iou(empty, two), tv.ops.box_iou(te, t2)),
        (ops.box_iou(two, empty), tv.ops.box_iou(t2, te)),
        (ops.box_iou(empty, empty), tv.ops.box_iou(te, te)),
        (ops.clip_boxes(empty, (5, 5)), tv.ops.clip_boxes_to_image(te, (5, 5))),
        (ops.remove_small_boxes(empty, 1.0), tv.ops.remove_small_boxes(te, 1.0)),
        (ops.fpn_levels(empty), LevelMapper(2, 5)([te])),
        (ops.encode_boxes(empty, empty, (1.0, 1.0, 1.0, 1.0)), BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(te, te)),
        (ops.decode_boxes(empty, empty, (1.0, 1.0, 1.0, 1.0)), BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(te, te)),
    ]
    for i, (ours, ref) in enumerate(pairs):
        ref = ref.numpy()
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, (i, ours.dtype, ref.dtype, ours.shape, ref.shape)


@pytest.mark.parametrize("shape", [(0,), (4, 0), (0, 0), (0, 3, 4)])
def test_clip_boxes_keeps_any_empty_shape(shape):
    tv = oracle.torchvision()
    boxes = np.zeros(shape, np.float32)
    ref = tv.ops.clip_boxes_to_image(as_torch(boxes), (5, 5)).numpy()
    ours = ops.clip_boxes(boxes, (5, 5))
    assert ours.dtype == ref.dtype and ours.shape == ref.shape == shape


def test_clip_boxes_of_several_boxes_per_row_as_torchvision():
    """(N, C, 4) boxes, as roi_heads' post-processing clips them per class."""
    tv = oracle.torchvision()
    boxes = np.random.default_rng(0).uniform(-5, 15, (3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(ops.clip_boxes(boxes, (7, 9)),
                                  tv.ops.clip_boxes_to_image(as_torch(boxes), (7, 9)).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_rois_masks_and_maps(dtype):
    torch, tv = oracle.torch(), oracle.torchvision()
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from torchvision.ops.poolers import MultiScaleRoIAlign
    feats = np.ones((1, 2, 8, 8), dtype)
    ours = ops.roi_align(feats, np.zeros((0, 5), dtype), 2, 1.0, 2)
    ref = tv.ops.roi_align(torch.from_numpy(feats), torch.zeros((0, 5), dtype=ref_dtype(dtype)), 2, 1.0, 2).numpy()
    assert ours.dtype == ref.dtype and ours.shape == ref.shape == (0, 2, 2, 2)
    maps = [np.ones((2, 16, 16), dtype), np.ones((2, 8, 8), dtype)]
    pooler = MultiScaleRoIAlign(["0", "1"], 3, 2)
    ref = pooler({str(i): torch.from_numpy(m)[None] for i, m in enumerate(maps)},
                 [torch.zeros((0, 4), dtype=ref_dtype(dtype))], [(64, 64)]).numpy()
    ours = ops.multiscale_roi_align(maps, np.zeros((0, 4), dtype), (64, 64), 3, 2)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape == (0, 2, 3, 3)
    ref = paste_masks_in_image(torch.zeros((0, 1, 28, 28), dtype=ref_dtype(dtype)),
                               torch.zeros((0, 4), dtype=ref_dtype(dtype)), (20, 30)).numpy()
    ours = ops.paste_masks(np.zeros((0, 28, 28), dtype), np.zeros((0, 4), dtype), (20, 30))
    assert ours.dtype == ref.dtype and ours.shape[1:] == (20, 30) and ours.size == ref.size == 0


def ref_dtype(dtype):
    torch = oracle.torch()
    return {np.float32: torch.float32, np.float64: torch.float64}[dtype]


@pytest.mark.parametrize("call", [
    lambda b: ops.box_area(b), lambda b: ops.remove_small_boxes(b, 1.0), lambda b: ops.fpn_levels(b),
    lambda b: ops.nms(b, np.zeros(len(b)), 0.5), lambda b: ops.box_iou(b, b)])
@pytest.mark.parametrize("shape", [(0, 5), (0,), (4, 0), (2, 5)])
def test_malformed_shapes_are_refused(call, shape):
    with pytest.raises(ValueError, match="boxes"):
        call(np.zeros(shape, np.float32))
