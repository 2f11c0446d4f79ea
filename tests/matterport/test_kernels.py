"""The matterport family's kernels against TensorFlow 1.15 / scikit-image 0.16 themselves and slow loop references.

Oracles: tests/oracles/tf_ops_dump.py (TF's non_max_suppression, crop_and_resize and round on seeded tie-heavy
inputs) and tests/oracles/skimage_resize_dump.py (skimage 0.16 resizes), both run in the oracle environment and
cached by tests/matterport_oracle.cached_run; tests/naive_matterport.py for the hypothesis tests.
Tolerances: crop_and_resize is bitwise (same float32 operations in the same order, no FMA on either side), the NMS
indices are exact, tf.round and the level rule are exact.
"""
import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import matterport_oracle
import naive_matterport as naive
from minimaskrcnn.matterport.roi_align import crop_and_resize, roi_levels
from minimaskrcnn.matterport.tf_nms import non_max_suppression


def _tf_ops():
    out = matterport_oracle.cached_run("tf_ops_dump.py", {"seed": 0})
    with np.load(out / "tf_ops.npz") as d:
        return {k: d[k] for k in d.files}


def test_nms_equals_tensorflow_including_ties_and_repeats():
    d = _tf_ops()
    repeats = 0
    for k in range(40):
        limit, thr = d[f"nms{k}_args"]
        got = non_max_suppression(d[f"nms{k}_boxes"], d[f"nms{k}_scores"], int(limit), float(thr))
        np.testing.assert_array_equal(got, d[f"nms{k}_out"], err_msg=f"case {k}")
        repeats += len(got) > len(set(got.tolist()))
    assert repeats > 5          # the inputs do exercise TF's repeated zero-area selections


def test_crop_and_resize_equals_tensorflow_bitwise():
    d = _tf_ops()
    for k in range(12):
        ref = d[f"car{k}_out"]
        got = crop_and_resize(d[f"car{k}_img"], d[f"car{k}_boxes"], ref.shape[1])
        np.testing.assert_array_equal(got, ref, err_msg=f"case {k}")


def test_round_half_to_even_as_tf_round():
    d = _tf_ops()
    np.testing.assert_array_equal(np.round(d["round_in"]), d["round_out"])


boxes_st = hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.just(4)),
                      elements=st.floats(-0.375, 1.375, width=32))


@given(img=hnp.arrays(np.float32, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 3)),
                      elements=st.floats(-10, 10, width=32)),
       boxes=boxes_st, size=st.integers(1, 8))
def test_crop_and_resize_kernel_matches_loops(img, boxes, size):
    np.testing.assert_array_equal(crop_and_resize(img, boxes, size), naive.crop_and_resize(img, boxes, size))


@given(boxes=boxes_st, data=st.data(), thr=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), limit=st.integers(0, 15))
def test_nms_with_distinct_scores_is_greedy_nms(boxes, data, thr, limit):
    """Distinct scores and positive areas: no ties, no repeats, so TF's NMS is plain greedy NMS (IoU >= thr)."""
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:]) + 0.01],
                           axis=1).astype(np.float32)
    scores = np.float32(data.draw(st.permutations(range(len(boxes))))) / len(boxes)
    got = non_max_suppression(boxes, scores, limit, thr)
    ref = naive.greedy_nms(boxes, scores, limit, thr)
    np.testing.assert_array_equal(got, ref)


@given(level=st.integers(-3, 8), frac=st.sampled_from([-0.5, 0.5, 0.0, 0.25, -0.25]),
       shape=st.sampled_from([(1024, 1024), (512, 768), (640, 640)]))
def test_levels_round_half_to_even(level, frac, shape):
    """A box whose log2 ratio is exactly level + frac (a power-of-two side ratio): halves go to the even level."""
    area = shape[0] * shape[1]
    side = 224.0 / np.sqrt(area) * 2.0 ** (level + frac)        # normalized sqrt(h*w)
    box = np.array([[0, 0, side, side]], np.float32)
    lv = np.log(np.sqrt(np.float32(side) * np.float32(side)) / (np.float32(224) / np.sqrt(np.float32(area))))
    expected = min(5, max(2, 4 + int(np.round(lv / np.log(np.float32(2))))))
    assert roi_levels(box, shape)[0] == expected
    if frac in (0.5, -0.5) and abs(lv / np.log(np.float32(2)) - (level + frac)) < 1e-6:
        assert expected == min(5, max(2, 4 + 2 * round((level + frac) / 2)))   # the even neighbour


def test_zero_boxes_go_to_level_2():
    assert roi_levels(np.zeros((3, 4), np.float32), (1024, 1024)).tolist() == [2, 2, 2]
