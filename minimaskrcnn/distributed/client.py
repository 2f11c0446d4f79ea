"""The driver side: connecting to a Dask scheduler (or starting a local cluster), checking its workers, and feeding
them images with a bounded number in flight, yielding each image's results as it completes.

Faults. A task whose worker dies is run again elsewhere by the scheduler (up to distributed's
`scheduler.allowed-failures` deaths, default 3, then KilledWorker); a task that raises an unexpected exception is
retried `retries` times (`Client.submit(retries=)`); an image that fails on bad input is not retried but comes back as
`ImageResult.error`, reported by name while the others go on. At most `ahead` images are in flight (their bytes and
results held by the client): a run over a million files needs no more memory than one over a hundred.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator, Optional

from minimaskrcnn.distributed.tasks import (ImageJob, ImageResult, RunSpec, WorkerInfo, probe, segment_frames,
                                            segment_image, worker_version)

__all__ = ["DistributedError", "connect", "check_workers", "submit_images", "map_frames", "absolute_weights"]

WAIT_FOR_WORKERS_S = 60        # a scheduler without workers: how long to wait for the first to join
PROBE_TIMEOUT_S = 600          # loading the model on every worker (a first download of the COCO weights included)
RETRIES = 2                    # retries of a task that raised an unexpected exception (not a worker's death)
FRAMES_PER_TASK = 8            # video: 8 frames of 768x576 are 10.6 MB in, as much back, and 8 detections of work,
                               # against ~10 ms of scheduling per task


class DistributedError(RuntimeError):
    """The cluster cannot run the job: unreachable scheduler, no workers, a worker without minimaskrcnn or the
    weights. One line, naming the address or worker."""

    __module__ = "minimaskrcnn.distributed"


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError('running on a Dask cluster needs dask.distributed: pip install "minimaskrcnn[distributed]"') \
            from None
    return distributed


@contextlib.contextmanager
def connect(scheduler: Optional[str] = None, workers: Optional[int] = None):
    """A `distributed.Client` of the scheduler at `scheduler` (tcp://host:port), or of a new local cluster of
    `workers` single-threaded worker processes on 127.0.0.1, closed (and the cluster stopped) on exit. The connect
    timeout is Dask's `distributed.comm.timeouts.connect` (default 30 s)."""
    distributed = _import_distributed()
    if (scheduler is None) == (workers is None):
        raise ValueError("connect: give either a scheduler address or a number of workers")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: expected a positive number of worker processes, got {workers}")
    with contextlib.ExitStack() as stack:
        if workers is not None:
            import logging
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR))          # a free port: 8787 may be taken
            address = cluster.scheduler_address
        else:
            address = scheduler
        try:
            client = distributed.Client(address, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise DistributedError(f"cannot reach the Dask scheduler at {address}: {_text(e)}") from None
        stack.enter_context(client)
        yield client


def check_workers(client, weights: str, load=None) -> WorkerInfo:
    """Load the model on every worker now (kept for the run) and check that all run this minimaskrcnn version with
    the same classes. DistributedError naming the worker otherwise."""
    from minimaskrcnn._version import __version__
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
    except (TimeoutError, OSError):
        raise DistributedError(f"the Dask scheduler at {client.scheduler.address} has no workers "
                               f"(waited {WAIT_FOR_WORKERS_S} s)") from None
    # First `Client.run` (in each worker's event loop, answered at once): a worker that cannot import minimaskrcnn
    # fails there with the ImportError, whereas a task it cannot unpickle breaks its scheduler connection and hangs.
    for addr, version in client.run(worker_version, on_error="return").items():
        if isinstance(version, BaseException):
            raise DistributedError(f"worker {addr} cannot run minimaskrcnn ({_text(version)}): install minimaskrcnn "
                                   f"{__version__} where the workers run") from None
        if version != __version__:
            raise DistributedError(f"worker {addr} runs minimaskrcnn {version}, this is {__version__}: install "
                                   f"the same version everywhere")
    token = uuid.uuid4().hex[:8]
    probes = {addr: client.submit(probe, weights, load, workers=[addr], allow_other_workers=False, pure=False,
                                  key=f"minimaskrcnn-probe-{token}-{addr}")
              for addr in client.scheduler_info()["workers"]}
    infos = {}
    for addr, future in probes.items():
        try:
            infos[addr] = future.result(timeout=PROBE_TIMEOUT_S)
        except Exception as e:
            raise DistributedError(f"worker {addr} cannot load the weights {weights}: {_text(e)}") from None
    first = next(iter(infos.values()))
    if any(info.class_names != first.class_names for info in infos.values()):
        raise DistributedError(f"the workers load different models for {weights} (their class names differ)")
    return first


def submit_images(client, jobs, spec: RunSpec, *, retries: int = RETRIES, ahead: Optional[int] = None) \
        -> Iterator[ImageResult]:
    """Run `segment_image` on every `ImageJob` of the iterable `jobs` (an (index, path, image_id, stem) tuple whose
    bytes are read here, lazily), yielding `ImageResult`s in completion order; at most `ahead` in flight (default:
    twice the cluster's threads, at least 4)."""
    distributed = _import_distributed()
    if ahead is None:
        ahead = max(4, 2 * sum(client.nthreads().values()))
    token = uuid.uuid4().hex[:8]
    pending = distributed.as_completed(loop=client.loop)
    work = iter(jobs)
    in_flight, job_of = 0, {}

    def feed() -> Iterator[ImageResult]:
        nonlocal in_flight
        for index, path, image_id, stem in work:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                yield ImageResult(index, path, error=_text(e))
                continue
            future = client.submit(segment_image, ImageJob(index, path, data, image_id, stem), spec,
                                   key=f"minimaskrcnn-image-{token}-{index}", pure=False, retries=retries)
            job_of[future.key] = (index, path)
            pending.add(future)
            in_flight += 1
            if in_flight >= ahead:
                return

    yield from feed()
    while in_flight:
        future = next(pending)
        in_flight -= 1
        index, path = job_of.pop(future.key)
        try:
            result = future.result()
        except Exception as e:                                       # retries exhausted, or KilledWorker
            result = ImageResult(index, path, error=f"{path}: {type(e).__name__}: {_text(e)}")
        future.release()
        yield result
        yield from feed()


def map_frames(client, frames, spec: RunSpec, *, chunk: int = FRAMES_PER_TASK, retries: int = RETRIES,
               ahead: Optional[int] = None):
    """`segment_frames` over the iterable `frames` of (frame index, (H, W, 3) uint8) in chunks of `chunk` frames,
    yielding each frame's `FrameOutput` in input order; at most `ahead` chunks in flight (default: twice the
    cluster's threads, at least 2). A chunk that fails for good raises here."""
    import collections
    import itertools
    if ahead is None:
        ahead = max(2, 2 * sum(client.nthreads().values()))
    token = uuid.uuid4().hex[:8]
    in_flight = collections.deque()
    work = iter(frames)
    for k in itertools.count():
        batch = list(itertools.islice(work, chunk))
        if not batch:
            break
        data = client.scatter(batch, hash=False)                     # to a worker now, not inside the task graph
        in_flight.append(client.submit(segment_frames, data, spec, key=f"minimaskrcnn-frames-{token}-{k}",
                                       pure=False, retries=retries))
        if len(in_flight) >= ahead:
            yield from _take(in_flight.popleft())
    while in_flight:
        yield from _take(in_flight.popleft())


def _take(future) -> list:
    result = future.result()
    future.release()
    return result


def _text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def absolute_weights(weights: str) -> str:
    """A weights file as an absolute path (the workers' working folder is not ours); an official name unchanged."""
    return os.path.abspath(weights) if os.path.exists(weights) else weights
