"""The model of a worker process: loaded once per process and kept (keyed by the weights and their file's size and
mtime), and run one image at a time with the worker's threads.

A Dask worker with k threads may run k tasks at once. Each `predict` would use every core it is given (the
multi-threaded kernels of `minimaskrcnn.ops.parallel` and the BLAS), so here one `predict` runs at a time per
process, under a lock, with Numba's and the BLAS's thread counts set to k: the process uses k cores, never k * k, and
holds one set of activations (README "Speed and memory" gives a process's peak); the other task threads meanwhile
decode input and encode PNGs. For throughput on one machine, single-threaded workers (`--workers N`, `dask worker --nthreads
1`) avoid the lock altogether.

Dask's nanny starts worker processes with OMP/MKL/OPENBLAS_NUM_THREADS=1 (distributed's `nanny.pre-spawn-environ`);
the BLAS count is raised to k at run time through threadpoolctl (part of the `distributed` extra) when k > 1.
"""
from __future__ import annotations

import json
import os
import threading

__all__ = ["weights_key", "get_model", "worker_threads", "predict"]

_lock = threading.Lock()          # one predict at a time per process, and one load
_cached: dict = {}                # weights key -> model; at most one entry (a new key evicts the old model)
_blas_threads = [None]            # the BLAS thread count last set in this process


def weights_key(weights: str, load=None) -> tuple:
    """(weights, size, mtime_ns, load options) for a file, (weights, load options) for an official name: a changed
    file is loaded again."""
    options = json.dumps(load or {}, sort_keys=True)
    if os.path.exists(weights):
        st = os.stat(weights)
        return (os.path.realpath(weights), st.st_size, st.st_mtime_ns, options)
    return (weights, options)


def get_model(weights: str, load=None):
    """This process's model for `weights` and the keyword arguments `load` of `minimaskrcnn.load` (matterport's
    config= and class_names=), loaded on first use."""
    key = weights_key(weights, load)
    with _lock:
        model = _cached.get(key)
        if model is None:
            import minimaskrcnn
            _cached.clear()                                          # free the previous model before loading
            model = _cached[key] = minimaskrcnn.load(weights, **(load or {}))
    return model


def worker_threads():
    """The thread count of the Dask worker this runs in, or None outside a worker."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return int(getattr(worker, "state", worker).nthreads)


def _set_threads(n) -> None:
    """Numba's count for the calling thread (its setting is per thread) and, when it changes, the BLAS's."""
    if n is None:
        return
    import numba
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    if _blas_threads[0] != n:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:                                          # then the BLAS keeps its start-up count
            return
        threadpool_limits(limits=n, user_api="blas")
        _blas_threads[0] = n


def predict(model, image, score_threshold: float, keep=None):
    """`model.predict(image, score_threshold)` under the process lock with the worker's threads, filtered to the
    label indices `keep` (None: all), as the command line's detector does."""
    import numpy as np
    with _lock:
        _set_threads(worker_threads())
        det = model.predict(image, score_threshold=score_threshold)
    return det if keep is None else det.select(np.isin(det.labels, np.asarray(keep, dtype=np.int64)))
