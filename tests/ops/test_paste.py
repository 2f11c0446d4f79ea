"""minimaskrcnn.ops paste_masks against torchvision roi_heads.paste_masks_in_image and naive.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import oracle
from minimaskrcnn import ops

# facts §10.4: paste (same masks and boxes) <= 1e-6. torch's interpolate contracts FMAs on AVX2/AVX512 (even in the
# source index: fma(1/3, 1.5, -0.5) = 1.5e-8 where float32 gives 0) and its result depends on the thread count, so
# this is not bitwise; measured max 9.2e-7 in-process on this machine.
PASTE_ATOL = 1e-6


def random_boxes(rng, n, h, w, margin=0.2, padding=1, mask_size=28):
    """(n, 4) boxes in image pixels, partly outside the image, tiny (< 1 px) and inverted ones included.

    torchvision's paste slices break (raise, or wrap through negative bounds) when the grown box starts right of /
    below the image or ends before column / row -1; such boxes are redrawn here (paste_masks gives zeros for them,
    see `test_empty_and_outside`)."""
    out = np.zeros((n, 4), np.float32)
    scale = np.float32((mask_size + 2 * padding) / mask_size)
    for i in range(n):
        while True:
            xy = rng.uniform(-margin, 1.1, 2) * [w, h]
            wh = rng.exponential(max(h, w) / 5, 2) * rng.choice([1.0, 0.01, -0.3], p=[0.8, 0.1, 0.1])
            b = np.concatenate([xy, xy + wh]).astype(np.float32)[None]       # (1, 4)
            x1, y1, x2, y2 = ops.paste.expand_boxes(b, scale).astype(np.int64)[0]
            if x1 <= w and y1 <= h and x2 >= -1 and y2 >= -1:
                out[i] = b[0]
                break
    return out


def torchvision_paste(masks, boxes, shape, padding=1):
    torch = oracle.torch()
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    out = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), shape, padding)
    return out[:, 0].numpy()


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 5), m=st.sampled_from([28, 14, 5, 1]),
       h=st.integers(1, 160), w=st.integers(1, 160), padding=st.sampled_from([1, 0, 2]), float64=st.booleans())
def test_paste_matches_torchvision(seed, n, m, h, w, padding, float64):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, m, m)).astype(np.float32)
    boxes = random_boxes(rng, n, h, w, padding=padding, mask_size=m)
    masks = masks.astype(np.float64) if float64 else masks
    ref = torchvision_paste(masks, boxes, (h, w), padding)
    ours = ops.paste_masks(masks, boxes, (h, w), padding=padding)
    assert ours.dtype == ref.dtype and ours.shape == (n, h, w)          # float64 masks stay float64, as torchvision
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PASTE_ATOL)


def test_paste_full_size_case_measured():
    """28x28 masks into 480x640 (the COCO case): within 1e-6, and mostly bitwise."""
    rng = np.random.default_rng(7)
    masks = rng.random((10, 28, 28)).astype(np.float32)
    boxes = random_boxes(rng, 10, 480, 640)
    ours, ref = ops.paste_masks(masks, boxes, (480, 640)), torchvision_paste(masks, boxes, (480, 640))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PASTE_ATOL)
    assert np.mean(ours != ref) < 0.1


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 4), h=st.integers(1, 40), w=st.integers(1, 40),
       padding=st.sampled_from([1, 0]))
def test_paste_kernel_matches_loop_reference(seed, n, h, w, padding):
    """naive.py resizes the whole padded mask to the box size and copies the visible part; the kernel only computes
    the visible part: the results must be bitwise equal."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, 6, 6)).astype(np.float32)
    boxes = random_boxes(rng, n, h, w, margin=0.6, padding=padding, mask_size=6)
    np.testing.assert_array_equal(ops.paste_masks(masks, boxes, (h, w), padding),
                                  naive.paste_masks(masks, boxes, (h, w), padding))


def test_paste_hand_computed():
    # a 1x1 mask of 1 padded to 3x3 (scale 3), box [2, 2, 3, 3] grows to [1, 1, 4, 4] (w = h = 4 with TO_REMOVE):
    # the 3x3 map (0 0 0 / 0 1 0 / 0 0 0) resized to 4x4 at scale 0.75: src = 0.75*(d + 0.5) - 0.5 =
    # 0 (clamped), 0.625, 1.375, 2.125 -> weights of the centre 0, 0.625, 0.625, 0 (the last clamps to index 2)
    out = ops.paste_masks(np.ones((1, 1, 1), np.float32), np.array([[2, 2, 3, 3]], np.float32), (6, 6))
    profile = np.array([0, 0.625, 0.625, 0], np.float32)
    expected = np.zeros((6, 6), np.float32)
    expected[1:5, 1:5] = profile[:, None] * profile[None, :]
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out, torchvision_paste(np.ones((1, 1, 1), np.float32),
                                                         np.array([[2, 2, 3, 3]], np.float32), (6, 6)))


def test_truncation_toward_zero():
    # grown box x1 = -0.8 -> 0 (trunc), not -1 (floor): the mask starts at column 0 with source offset 0
    m = np.zeros((1, 2, 2), np.float32)
    b = np.array([[-0.2, 0.0, 1.0, 2.0]], np.float32)           # scale 2: x1' = 0.4 - 1.2 = -0.8 -> 0
    np.testing.assert_array_equal(ops.paste_masks(m + 1, b, (4, 4)), torchvision_paste(m + 1, b, (4, 4)))


def test_empty_and_outside():
    assert ops.paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (7, 9)).shape == (0, 7, 9)
    # boxes entirely right of / below the image give zeros (torchvision raises for some of these)
    out = ops.paste_masks(np.ones((2, 3, 3)), np.array([[50, 0, 60, 5], [-30, -30, -20, -20]]), (10, 10))
    assert out.shape == (2, 10, 10) and not out.any()


@pytest.mark.parametrize("call, match", [
    (lambda: ops.paste_masks(np.zeros((1, 3, 4)), np.zeros((1, 4)), (5, 5)), r"masks: expected shape \(N, M, M\)"),
    (lambda: ops.paste_masks(np.zeros((2, 3, 3)), np.zeros((1, 4)), (5, 5)), r"boxes: expected shape \(2, 4\)"),
    (lambda: ops.paste_masks(np.zeros((1, 3, 3)), [[0, 0, np.inf, 1]], (5, 5)), "boxes: expected finite"),
    (lambda: ops.paste_masks(np.zeros((1, 3, 3)), np.zeros((1, 4)), (5,)), r"image_shape: expected \(H, W\)"),
    (lambda: ops.paste_masks(np.zeros((1, 3, 3)), np.zeros((1, 4)), (5, 5), padding=-1), "padding: expected"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
