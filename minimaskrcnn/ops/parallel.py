"""Running a serial Numba kernel on several threads, instead of a `parallel=True` kernel.

Numba's `prange` lowering is what made the first run of a fresh install slow: the four parallel kernels (RoIAlign,
mask pasting, resize, matterport's crop-and-resize) cost about 1 s of compilation each more than the same loop
compiled serially (measured, empty cache, same process). A serial `nogil` kernel over a slice of the items, called
from a few threads, parallelizes as well for these calls, each of which is milliseconds of work per thread.

The network's own layer kernels between two BLAS products run the same way (nn/: the Winograd transforms, im2col, the
bias / residual epilogues, max pooling). There they gain only when OpenBLAS's idle threads sleep instead of spinning
on the other core after each product (`nn.threads.let_blas_threads_sleep`, which the command line applies).

The thread count is Numba's (`numba.get_num_threads()`), which `minimaskrcnn.set_num_threads` sets: one setting for
everything. Thread t of T takes items t, t + T, t + 2T, ...: interleaved, so that items of unequal cost (masks of
different box sizes, RoIs of different sampling grids) spread evenly. Every item is computed by one thread with the
same arithmetic whatever T is, so results are bitwise the same for any thread count.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def run_interleaved(kernel, n: int, *args) -> None:
    """`kernel(*args, t, T)` for t in range(T), T = min(numba.get_num_threads(), n) (at least 1): thread 0 is the
    caller's, the others come from a shared pool. The kernel must release the GIL (`nogil=True`) and write disjoint
    parts of its output."""
    threads = max(1, min(numba.get_num_threads(), n))
    if threads == 1:
        kernel(*args, 0, 1)
        return
    pool = _get_pool(threads - 1)
    futures = [pool.submit(kernel, *args, t, threads) for t in range(1, threads)]
    try:
        kernel(*args, 0, threads)
    finally:
        for f in futures:
            f.result()                   # waits for all; re-raises a worker's exception


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < workers:         # grown, never shrunk: a smaller T uses fewer of its threads
            _pool, _pool_size = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minimaskrcnn"), workers
        return _pool
