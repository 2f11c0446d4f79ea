"""The Numba kernels of minimaskrcnn.ops run as plain Python (NUMBA_DISABLE_JIT=1) and still agree with naive.py.

This exercises the pure-Python path of every kernel (prange as range, NumPy scalars instead of typed locals), so
code that only works when compiled, or only when interpreted, shows up. Inputs are small: it is slow by design.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import naive
from conftest import checkout_env

HERE = Path(__file__).resolve().parent


def check_kernels_without_jit():
    import numba
    from minimaskrcnn import ops
    from minimaskrcnn.ops.nms import _nms_kernel
    assert numba.config.DISABLE_JIT, "expected NUMBA_DISABLE_JIT=1"
    assert not hasattr(_nms_kernel, "py_func"), "the kernel is still a Numba dispatcher"
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):                                         # nms, both dtypes
        xy = rng.uniform(0, 50, (40, 2))
        b = np.concatenate([xy, xy + rng.uniform(0, 20, (40, 2))], axis=1).astype(dtype)
        b[:3] = b[3]                                                                # identical boxes, zero area
        b[4, 2:] = b[4, :2]
        s = np.round(rng.random(40) * 5)                                            # ties
        for thr in (0.0, 0.5, 0.7):
            np.testing.assert_array_equal(ops.nms(b, s, thr), naive.nms(b, s, thr))
        idx = rng.integers(0, 3, 40)
        assert set(ops.batched_nms(b, s, idx, 0.5)) <= set(range(40))
    feats = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)                   # roi_align
    xy = rng.uniform(-4, 8, (6, 2))
    rois = np.concatenate([rng.integers(0, 2, (6, 1)), xy, xy + rng.uniform(-1, 6, (6, 2))], axis=1)
    rois = rois.astype(np.float32)
    for sampling, aligned in [(2, False), (0, True), (-1, False)]:
        np.testing.assert_array_equal(ops.roi_align(feats, rois, (2, 3), 0.5, sampling, aligned),
                                      naive.roi_align(feats, rois, (2, 3), 0.5, sampling, aligned))
    arange = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(ops.roi_align(arange, [[0, 1, 1, 3, 3]], 2, 1.0, 2)[0, 0], [[9, 10], [14, 15]])
    x = rng.standard_normal((2, 5, 7)).astype(np.float32)                          # resize
    for oh, ow in [(9, 4), (5, 7), (1, 13)]:
        np.testing.assert_array_equal(ops.resize_bilinear(x, oh, ow), naive.resize_bilinear(x, oh, ow))
    masks = rng.random((4, 5, 5)).astype(np.float32)                               # paste
    boxes = np.array([[1, 1, 6, 8], [-3, 2, 4, 4], [5, 5, 12, 9], [2, 2, 2.2, 2.4]], np.float32)
    np.testing.assert_array_equal(ops.paste_masks(masks, boxes, (9, 10)), naive.paste_masks(masks, boxes, (9, 10)))
    print("ok")


def test_kernels_agree_with_naive_without_jit():
    env = checkout_env(NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c",
                           "import test_nojit as t; t.check_kernels_without_jit()"],
                          env=env, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
