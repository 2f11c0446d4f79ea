"""Scratch buffers that live from one convolution to the next.

The im2col columns and the Winograd tiles of a large feature map take tens of MB per block (`IM2COL_BLOCK_BYTES`,
`winograd.BLOCK_BYTES`). Allocated afresh, every call gets new pages from the operating system (glibc serves such
sizes by mmap and returns them on free), and the kernel zeroes each 4 kB page on first touch: 160 MB of faults for one
Winograd convolution of the mask head, as long as its GEMMs. Reused, they are faulted in once per process.

One set per thread, so concurrent `predict` calls in different threads never share a buffer. A buffer is only valid
until the next request for the same slot: callers use it within one function and never return it.
"""
from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def scratch(slot: str, shape: tuple) -> np.ndarray:
    """An uninitialised float32 array of `shape` backed by this thread's buffer `slot`, grown when too small."""
    size = int(np.prod(shape))
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(slot)
    if buf is None or buf.size < size:
        buf = buffers[slot] = np.empty(size, np.float32)
    return buf[:size].reshape(shape)
