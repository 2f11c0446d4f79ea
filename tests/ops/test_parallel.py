"""minimaskrcnn.ops.parallel: serial kernels on several threads give the same bits for any thread count."""
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minimaskrcnn import ops
from minimaskrcnn.matterport.roi_align import crop_and_resize
from minimaskrcnn.ops.parallel import run_interleaved


@given(n=st.integers(0, 9), threads=st.integers(1, numba.config.NUMBA_NUM_THREADS))
def test_every_share_runs_once_on_its_own_thread(n, threads):
    calls, lock = [], threading.Lock()

    def kernel(log, first, step):
        with lock:
            log.append((first, step, threading.get_ident()))

    numba.set_num_threads(threads)
    try:
        run_interleaved(kernel, n, calls)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    t = max(1, min(threads, n))
    assert sorted((f, s) for f, s, _ in calls) == [(f, t) for f in range(t)]
    assert len({ident for _, _, ident in calls}) == t                   # one thread per share, the caller's first
    assert [ident for f, _, ident in calls if f == 0] == [threading.get_ident()]


def test_a_failing_share_raises_in_the_caller():
    def kernel(first, step):
        if first == 1:
            raise RuntimeError("share 1 failed")

    numba.set_num_threads(2)
    with pytest.raises(RuntimeError, match="share 1 failed"):
        run_interleaved(kernel, 2)


def _with_threads(n, fn):
    numba.set_num_threads(n)
    try:
        return fn()
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40))
def test_one_and_two_threads_are_bitwise_equal(seed, n):
    """The machines this runs on have 2 CPUs (NUMBA_NUM_THREADS 2): set_num_threads(2) fails on fewer."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((1, 8, 24, 32)).astype(np.float32)
    xy = rng.uniform(0, 24, (n, 2))
    rois = np.concatenate([np.zeros((n, 1)), xy, xy + rng.uniform(1, 12, (n, 2))], axis=1).astype(np.float32)
    masks = rng.random((n, 28, 28)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], axis=1).astype(np.float32)
    image = rng.random((3, n, 17)).astype(np.float32)
    norm = rng.uniform(-0.2, 1.2, (n, 4)).astype(np.float32)      # normalized (y1, x1, y2, x2), any order
    runs = [_with_threads(t, lambda: (ops.roi_align(feats, rois, 7, 0.5, 2), ops.paste_masks(masks, boxes, (50, 60)),
                                      ops.resize_bilinear(image, 2 * n + 1, 31),
                                      crop_and_resize(feats[0].transpose(1, 2, 0), norm, 7)))
            for t in (1, 2)]
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one.view(np.int32), two.view(np.int32))
