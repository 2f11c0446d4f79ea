"""minimaskrcnn.ops nms / batched_nms against torchvision.ops and the loop reference in naive.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import oracle
from minimaskrcnn import ops
from minimaskrcnn.ops.nms import VANILLA_MIN_BOXES, _nms_kernel


def clustered_boxes(rng, n, scale=200.0):
    """(n, 4) boxes in overlapping clusters (so that NMS has work to do), with zero-area, inverted and duplicated
    boxes mixed in."""
    centres = rng.uniform(0, scale, (max(1, n // 6), 2))                       # (n/6, 2)
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, scale / 40, (n, 2))  # (n, 2)
    wh = rng.uniform(2, scale / 5, (n, 2))                                     # (n, 2)
    b = np.concatenate([c - wh / 2, c + wh / 2], axis=1)                       # (n, 4)
    kind = rng.integers(0, 10, n)
    b[kind == 0, 2:] = b[kind == 0, :2]                                        # zero area
    b[kind == 1] = b[kind == 1][:, [2, 3, 0, 1]]                               # inverted
    if n:
        dup = kind == 2
        b[dup] = b[rng.integers(0, n, int(dup.sum()))]                         # identical boxes
    return b


def scores_for(rng, n, ties):
    s = rng.random(n)
    return np.round(s * 4) / 4 if ties else rng.permutation(n) / max(n, 1) + 1e-3   # distinct when not ties


THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 120), thr=st.sampled_from(THRESHOLDS),
       float64=st.booleans(), ties=st.booleans())
def test_nms_matches_torchvision(seed, n, thr, float64, ties):
    """Identical keep lists, ties included (both sort stably)."""
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(seed)
    dtype = np.float64 if float64 else np.float32
    b, s = clustered_boxes(rng, n).astype(dtype), scores_for(rng, n, ties).astype(dtype)
    keep = ops.nms(np.repeat(b, 2, axis=0)[::2], s, thr)                      # non-contiguous view
    ref = tv.ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr).numpy()
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, ref)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 60), thr=st.sampled_from(THRESHOLDS),
       float64=st.booleans(), ties=st.booleans())
def test_nms_kernel_matches_loop_reference(seed, n, thr, float64, ties):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if float64 else np.float32
    b, s = clustered_boxes(rng, n).astype(dtype), scores_for(rng, n, ties)
    order = np.argsort(-s, kind="stable").astype(np.int64)
    np.testing.assert_array_equal(_nms_kernel(b, order, thr), naive.nms(b, s, thr))


def test_nms_hand_crafted():
    b = np.array([[0, 0, 10, 10],      # 0: score .9, kept
                  [1, 0, 11, 10],      # 1: IoU with 0 = 90/110 = 0.82 -> suppressed at 0.5
                  [20, 20, 30, 30],    # 2: disjoint, kept
                  [0, 0, 10, 10],      # 3: identical to 0, tied score with 0 -> after 0 (stable) -> suppressed
                  [20, 20, 30, 25]],   # 4: IoU with 2 = 50/100 = 0.5 exactly -> NOT suppressed (> only)
                 np.float32)
    s = np.array([0.9, 0.8, 0.7, 0.9, 0.6], np.float32)
    np.testing.assert_array_equal(ops.nms(b, s, 0.5), [0, 2, 4])
    np.testing.assert_array_equal(ops.nms(b, s, 0.49), [0, 2])


def test_iou_at_threshold_is_kept_as_torchvision():
    torch, tv = oracle.torch(), oracle.torchvision()
    # IoU 70/100: float32 0.7 (= 0.69999999 < 0.7 in double) and float64 0.7: neither is > 0.7
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 7]], np.float32)
    s = np.array([0.9, 0.8], np.float32)
    for dtype in (np.float32, np.float64):
        ref = tv.ops.nms(torch.from_numpy(b.astype(dtype)), torch.from_numpy(s.astype(dtype)), 0.7).numpy()
        np.testing.assert_array_equal(ops.nms(b.astype(dtype), s, 0.7), ref)
        np.testing.assert_array_equal(ref, [0, 1])


def test_empty_and_zero_area():
    assert ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5).dtype == np.int64
    assert ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert ops.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5).shape == (0,)
    # two empty boxes: IoU 0/0 = NaN is not > thr: both kept, as torchvision
    np.testing.assert_array_equal(ops.nms(np.ones((2, 4), np.float32), np.array([1.0, 2.0]), 0.0), [1, 0])


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), thr=st.sampled_from(THRESHOLDS[1:4]),
       num_classes=st.sampled_from([1, 3, 91]), ties=st.booleans())
def test_batched_nms_coordinate_trick_path_matches_torchvision(seed, n, thr, num_classes, ties):
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(seed)
    b = np.abs(clustered_boxes(rng, n, 1333.0)).astype(np.float32)
    s = scores_for(rng, n, ties).astype(np.float32)
    idx = rng.integers(0, num_classes, n)
    ref = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(idx), thr).numpy()
    np.testing.assert_array_equal(ops.batched_nms(b, s, idx, thr), ref)


def test_batched_nms_reproduces_the_coordinate_trick_rounding():
    """Class 90 shifts these boxes by 90 * 1334: the float32 rounding of the shifted coordinates makes the IoU
    <= 0.5 although it is 0.5000018 unshifted. torchvision keeps both boxes; exact per-class NMS would not."""
    torch, tv = oracle.torch(), oracle.torchvision()
    b = np.array([[210.78674, 604.2252, 274.10364, 648.2022],
                  [231.89227, 604.2252, 295.20917, 648.2022],
                  [0.0, 0.0, 1333.0, 800.0]], np.float32)
    s = np.array([0.9, 0.8, 0.1], np.float32)
    idx = np.array([90, 90, 0])
    np.testing.assert_array_equal(ops.nms(b[:2], s[:2], 0.5), [0])                 # exact: suppressed
    ref = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(idx), 0.5).numpy()
    np.testing.assert_array_equal(ref, [0, 1, 2])
    np.testing.assert_array_equal(ops.batched_nms(b, s, idx, 0.5), ref)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(VANILLA_MIN_BOXES, 2500), num_classes=st.sampled_from([1, 5, 91]))
def test_batched_nms_vanilla_path_matches_torchvision(seed, n, num_classes):
    """More than 1000 boxes: per-class NMS (no coordinate rounding). Without score ties the lists are identical."""
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(seed)
    b = np.abs(clustered_boxes(rng, n, 1333.0)).astype(np.float32)
    s = scores_for(rng, n, ties=False).astype(np.float32)
    idx = rng.integers(0, num_classes, n)
    ref = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(idx), 0.7).numpy()
    keep = ops.batched_nms(b, s, idx, 0.7)
    np.testing.assert_array_equal(keep, ref)
    # the vanilla path is exact per-class NMS
    per_class = np.concatenate([np.flatnonzero(idx == c)[ops.nms(b[idx == c], s[idx == c], 0.7)]
                                for c in np.unique(idx)])
    np.testing.assert_array_equal(np.sort(keep), np.sort(per_class))


def test_batched_nms_vanilla_path_with_ties_same_set_and_untied_order():
    """torchvision's final sort is unstable: among tied scores only the set can be compared; ours is ascending."""
    torch, tv = oracle.torch(), oracle.torchvision()
    rng = np.random.default_rng(3)
    n = 1500
    b = np.abs(clustered_boxes(rng, n, 1333.0)).astype(np.float32)
    s = (np.round(rng.random(n) * 20) / 20).astype(np.float32)             # 21 distinct values
    idx = rng.integers(0, 4, n)
    keep = ops.batched_nms(b, s, idx, 0.5)
    ref = tv.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(idx), 0.5).numpy()
    assert set(keep.tolist()) == set(ref.tolist()) and len(keep) == len(ref)
    np.testing.assert_array_equal(s[keep], s[ref])                           # same score sequence
    for value in np.unique(s[keep]):                                          # ties: ascending index here
        group = keep[s[keep] == value]
        assert np.all(np.diff(group) > 0)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.nms(np.zeros((2, 4)), np.zeros(3), 0.5), r"scores: expected shape \(2,\)"),
    (lambda: ops.nms(np.zeros((2, 3)), np.zeros(2), 0.5), "boxes: expected a last axis of length 4"),
    (lambda: ops.nms(np.full((1, 4), np.nan), np.zeros(1), 0.5), "boxes: expected no NaN"),
    (lambda: ops.nms(np.zeros((1, 4)), np.full(1, np.nan), 0.5), "scores: expected no NaN"),
    (lambda: ops.nms(np.zeros((1, 4)), np.zeros(1), -0.1), "iou_threshold: expected a number >= 0"),
    (lambda: ops.nms(np.zeros((1, 4)), np.zeros(1), float("nan")), "iou_threshold: expected a finite number"),
    (lambda: ops.nms(np.zeros((1, 4)), np.zeros(1), "0.5"), "iou_threshold: expected a real number"),
    (lambda: ops.batched_nms(np.zeros((1, 4)), np.zeros(1), np.zeros(1), 0.5), "idxs: expected an integer array"),
    (lambda: ops.batched_nms(np.zeros((2, 4)), np.zeros(2), np.zeros(1, int), 0.5), r"idxs: expected shape \(2,\)"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
