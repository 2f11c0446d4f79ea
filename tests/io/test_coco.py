"""rle: bitwise the strings of pycocotools, on random and adversarial masks and on the official COCO annotations."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pycocotools import mask as coco_mask

from conftest import COCO_39769
from minimaskrcnn.io import coco as rle


def _theirs(m: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))


def _assert_same_as_pycocotools(m: np.ndarray) -> None:
    ours, theirs = rle.encode(m), _theirs(m)
    assert ours["size"] == [int(v) for v in theirs["size"]] == list(m.shape)
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == theirs["counts"].decode("ascii")
    np.testing.assert_array_equal(rle.decode(ours), coco_mask.decode(theirs))
    np.testing.assert_array_equal(rle.decode(theirs), m.astype(np.uint8))        # their bytes counts read back
    assert rle.area(ours) == int(coco_mask.area(theirs))
    assert rle.to_bbox(ours) == coco_mask.toBbox(theirs).tolist()


shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@given(hnp.arrays(bool, shapes))
def test_random_masks(m):
    _assert_same_as_pycocotools(m)


@given(shapes, st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_random_masks_of_any_density(shape, density, seed):
    _assert_same_as_pycocotools(np.random.default_rng(seed).random(shape) < density)


@given(shapes, st.integers(1, 7), st.integers(0, 6), st.booleans())
def test_stripes(shape, period, phase, vertical):
    h, w = shape
    y, x = np.mgrid[:h, :w]
    _assert_same_as_pycocotools(((x if vertical else y) + phase) % period == 0)


@given(shapes, st.data())
def test_single_pixel(shape, data):
    m = np.zeros(shape, bool)
    m[data.draw(st.integers(0, shape[0] - 1)), data.draw(st.integers(0, shape[1] - 1))] = True
    _assert_same_as_pycocotools(m)


@given(shapes, st.data())
def test_rectangles(shape, data):
    h, w = shape
    y0, x0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    m = np.zeros(shape, bool)
    m[y0:data.draw(st.integers(y0 + 1, h)), x0:data.draw(st.integers(x0 + 1, w))] = True
    _assert_same_as_pycocotools(m)


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (23, 1), (480, 640)])
def test_empty_and_full(shape):
    _assert_same_as_pycocotools(np.zeros(shape, bool))
    _assert_same_as_pycocotools(np.ones(shape, bool))


def test_large_runs_need_many_groups():
    """Counts and count differences of millions (5 to 7 groups of 5 bits, both signs)."""
    m = np.zeros((3000, 3001), bool)
    m[2999, 3000] = True                           # one huge background run, then 1
    _assert_same_as_pycocotools(m)
    m[0, 0] = True                                 # 0, 1, huge, 1: a huge positive then a huge negative difference
    m[:, 1500] = True
    _assert_same_as_pycocotools(m)


def test_encode_many_equals_pycocotools_stack():
    rng = np.random.default_rng(0)
    stack = rng.random((12, 37, 29)) < rng.random((12, 1, 1))
    stack[0] = False
    stack[1] = True
    theirs = coco_mask.encode(np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in rle.encode_many(stack)] == [t["counts"].decode() for t in theirs]


def test_integer_masks_nonzero_is_foreground():
    m = np.array([[0, 3], [255, 0]], np.uint8)
    assert rle.encode(m) == rle.encode(m != 0)


def test_official_coco_polygons():
    """The val2017 annotations of image 39769: polygon -> pycocotools RLE -> mask -> our encoding, identical."""
    data = json.loads((COCO_39769 / "instances_val2017_39769.json").read_text())
    image = data["images"][0]
    h, w = image["height"], image["width"]
    assert len(data["annotations"]) == 6
    for ann in data["annotations"]:
        theirs = coco_mask.merge(coco_mask.frPyObjects(ann["segmentation"], h, w))
        m = coco_mask.decode(theirs)
        ours = rle.encode(m.astype(bool))
        assert ours["counts"] == theirs["counts"].decode("ascii")
        assert rle.area(ours) == int(coco_mask.area(theirs))
        assert rle.to_bbox(ours) == coco_mask.toBbox(theirs).tolist()
        assert abs(rle.area(ours) - ann["area"]) < 0.05 * ann["area"]   # polygon area vs rasterized, as COCO


def test_uncompressed_counts_accepted():
    m = np.zeros((4, 5), bool)
    m[1:3, 2:4] = True
    counts = [9, 2, 2, 2, 5]                       # column-major: 2 columns and 1 pixel unset, 2 set, 2 unset, ...
    np.testing.assert_array_equal(rle.decode({"size": [4, 5], "counts": counts}), m)
    theirs = coco_mask.frPyObjects({"size": [4, 5], "counts": counts}, 4, 5)
    assert rle.encode(m)["counts"] == theirs["counts"].decode()


@pytest.mark.parametrize("bad, match", [
    ({"size": [2, 2], "counts": "0"}, "sum"),
    ({"size": [2, 2], "counts": "5"}, "sum"),
    ({"size": [2, 2], "counts": "a"}, "middle of a number"),
    ({"size": [2, 2], "counts": "0~"}, "outside"),
    ({"size": [2, 2], "counts": [1, -1, 4]}, "negative"),
    ({"counts": "4"}, "size"),
    ("4", "dict"),
])
def test_malformed_rle(bad, match):
    with pytest.raises(ValueError, match=match):
        rle.decode(bad)


def test_float_masks_rejected():
    with pytest.raises(ValueError, match="binarize"):
        rle.encode(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        rle.encode(np.zeros((2, 3, 3), bool))
