"""mold_image and the scikit-image 0.16 resize against scikit-image 0.16 and matterport's own mold_inputs.

Oracles: tests/oracles/skimage_resize_dump.py (skimage 0.16.2 in the oracle environment: uint8 images resized as
utils.resize_image does, float32 masks as utils.unmold_mask does, and the transform matrices it estimates), and the
molded images of the parity cases and of a few more photos (matterport's mold_inputs, tests/oracles/matterport_dump.py
and tests/oracles/mrcnn_mold_dump.py).

Tolerances, derived:
  * the matrix: skimage estimates it by an SVD whose last bits depend on the LAPACK build (measured: ours and the
    oracle's numpy differ by up to 1.2e-13 in the offsets, while our `resize_matrix` run *inside* the oracle venv
    equals skimage's bit for bit): atol 1e-12.
  * float32 masks (28 x 28 sources): cast to float32 the offsets can round to neighbouring floats, moving a sample
    by <= 1 ulp of its coordinate (< 28: 1.9e-6 px); bilinear values change by <= that times the largest
    neighbour difference (< 1 for probabilities) plus float32 rounding of the blend (2 ulp of 1, 2.4e-7):
    atol 2.2e-6; a binarization flip is only possible within that of 0.5.
  * uint8 images (float64 maths): a 1e-13 matrix difference moves a sample by ~1e-13 px, its value by
    <= 255 * 1e-13 * (gradient) < 1e-10, so only a value within 1e-10 of an integer can truncate differently:
    every differing pixel must differ by exactly 1 and sit within 1e-9 of an integer in our float64 result.
"""
import numpy as np
import pytest

import matterport_cases as mc
import matterport_oracle
import naive_matterport as naive
from minimaskrcnn.matterport.config import MatterportConfig
from minimaskrcnn.matterport.mold import _warp_bilinear_kernel, mold_image, resize_matrix, resize_plan, resize_skimage016

NEAR_INTEGER = 1e-9     # see the module docstring
MASK_ATOL = 2.2e-6      # see the module docstring


@pytest.fixture(scope="module")
def ref():
    out = matterport_oracle.cached_run("skimage_resize_dump.py", {"seed": 0})
    with np.load(out / "resize.npz") as d:
        return {k: d[k] for k in d.files}


def test_matrix_close_to_skimage(ref):
    for k in range(21):
        h, w, oh, ow = ref[f"matrix{k}_shape"]
        m = ref[f"matrix{k}"].copy()
        m[2], m[0, 1], m[1, 0] = (0, 0, 1), 0, 0
        np.testing.assert_allclose(resize_matrix(h, w, oh, ow), m, rtol=0, atol=1e-12)


def test_uint8_resize_equals_skimage_up_to_lapack_ties(ref):
    flips = total = 0
    for k in range(21):
        img, want = ref[f"img{k}"], ref[f"img{k}_u8"]
        got = resize_skimage016(img, *want.shape[:2])
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref[f"img{k}_out"], rtol=0, atol=1e-9)
        diff = got.astype(np.uint8).astype(int) - want
        bad = diff != 0
        assert np.all(np.abs(diff) <= 1)
        assert np.all(np.abs(got - np.round(got))[bad] < NEAR_INTEGER)
        flips, total = flips + bad.sum(), total + bad.size
    print(f"uint8 pixels truncated differently (all at an exact integer): {flips}/{total}")


def test_float32_mask_resize_equals_skimage(ref):
    for k in range(30):
        m, want = ref[f"mask{k}"], ref[f"mask{k}_out"]
        got = resize_skimage016(m, *want.shape)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=MASK_ATOL)
        flips = (got >= 0.5) != (want >= 0.5)
        assert np.all(np.abs(got[flips] - 0.5) < MASK_ATOL)


def test_warp_kernel_matches_loops():
    """The Numba warp (before skimage's clip) against the scalar loop of tests/naive_matterport.py, both dtypes."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for _ in range(8):
            h, w, oh, ow = (int(v) for v in rng.integers(1, 12, 4))
            img = rng.normal(0, 1, (h, w)).astype(dtype)
            m = resize_matrix(h, w, oh, ow).astype(dtype)
            out = np.empty((oh, ow, 1), dtype)
            _warp_bilinear_kernel(img[None], m[0, 0], m[0, 2], m[1, 1], m[1, 2], out)
            np.testing.assert_array_equal(out[..., 0], naive.skimage016_bilinear(img, oh, ow, m))


@pytest.mark.parametrize("case,stem", mc.mold_photos())
def test_mold_image_equals_matterport(case, stem):
    d = mc.mold(case, stem)
    cfg = mc.model(case, mc.photos(case)[0]).cfg        # what the reader made of the case's .h5 + the overrides
    molded, window, _ = mold_image(d["image"], cfg)
    np.testing.assert_array_equal(window, d["window"])
    assert molded.shape == d["molded"].shape
    diff = np.abs(molded - d["molded"])
    # a differing pixel is a uint8 truncation flip (test_uint8_resize...): exactly one grey level, float32-rounded
    assert np.all((diff == 0) | (np.abs(diff - 1) < 1e-4))
    print(f"{case}/{stem}: {int((diff > 0).sum())} of {diff.size} molded values one level off")


def test_resize_plan_rules():
    cfg = MatterportConfig()
    assert resize_plan(480, 640, cfg) == (1024 / 640, (768, 1024))         # 800 / 480 would make 1067 > 1024
    pad64 = cfg.replace(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=768)
    assert resize_plan(300, 451, pad64) == (768 / 300, (768, 1155))           # no IMAGE_MAX_DIM cap in pad64
    assert resize_plan(600, 1200, cfg)[1] == (512, 1024)                    # capped by IMAGE_MAX_DIM in square
    assert resize_plan(2000, 1500, cfg)[0] == 1 * 1024 / 2000               # never up, but down to fit 1024


def test_odd_padding_goes_below_and_right():
    """utils.resize_image: top = (P - h) // 2, the odd pixel at the bottom / right (the parity cases pad evenly)."""
    cfg = MatterportConfig(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64)
    img = np.full((61, 100, 3), 200, np.uint8)              # scale 64/61: resized to (64, 105), padded to (64, 128)
    molded, window, scale = mold_image(img, cfg)
    assert molded.shape == (64, 128, 3) and scale == 64 / 61
    np.testing.assert_array_equal(window, [0, 11, 64, 116])  # 23 columns of padding: 11 left, 12 right
    np.testing.assert_array_equal(molded[:, :11], np.broadcast_to(-np.float32(cfg.MEAN_PIXEL), (64, 11, 3)))
    sq = MatterportConfig(IMAGE_MAX_DIM=128, IMAGE_MIN_DIM=64)
    _, window, _ = mold_image(np.zeros((33, 128, 3), np.uint8), sq)
    np.testing.assert_array_equal(window, [47, 0, 80, 128])  # scale capped to 128/128 = 1; 95 rows: 47 above, 48 below
