"""The activation trace: an ordered, named record of every intermediate of one forward pass.

Config, weights and activations are kept apart (as in llama2.c): stage functions take what they need and return
arrays; the spine (`model.py`) records each named result here when asked to. Arrays keep the layout and coordinate
convention documented at the place they are produced (feature maps `(C, H, W)`, boxes `(K, 4)` as x1, y1, x2, y2 in
resized-image pixels unless the name says otherwise). `timings` holds the wall time of each stage in seconds.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np


class Trace(OrderedDict):
    """Ordered mapping stage name -> np.ndarray, plus `timings` (stage -> seconds) and `summary()`."""

    def __init__(self, *args, keep_arrays: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_arrays = keep_arrays
        self.timings: OrderedDict[str, float] = OrderedDict()

    def record(self, **arrays):
        """Store named intermediates, in call order (a no-op when the run keeps only timings)."""
        if self.keep_arrays:
            self.update(arrays)

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def summary(self, file=None) -> str:
        """One line per entry: name, shape, dtype, min, max. Printed to `file` if given; always returned."""
        rows = [f"{'stage':<28} {'shape':<22} {'dtype':<8} {'min':>12} {'max':>12}"]
        for name, a in self.items():
            a = np.asarray(a)
            if a.size and np.issubdtype(a.dtype, np.number):
                lo, hi = f"{a.min():12.5g}", f"{a.max():12.5g}"
            else:
                lo = hi = f"{'-':>12}"
            rows.append(f"{name:<28} {str(tuple(a.shape)):<22} {str(a.dtype):<8} {lo} {hi}")
        text = "\n".join(rows)
        if file is not None:
            print(text, file=file)
        return text

    def __repr__(self) -> str:
        return self.summary()
