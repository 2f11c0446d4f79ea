"""The activation trace: an ordered, named record of every intermediate of one forward pass.

Config, weights and activations are kept apart (as in llama2.c): stage functions take what they need and return
arrays; the spine (`model.py`) records each named result here when asked to. Arrays keep the layout and coordinate
convention documented at the place they are produced (feature maps `(C, H, W)`, boxes `(K, 4)` as x1, y1, x2, y2 in
resized-image pixels unless the name says otherwise). `timings` holds the wall time of each stage in seconds.

Trace files (`save_trace`, `load_trace`; the layout is documented in docs/trace_format.md): an uncompressed or
compressed `.npz`, one array per stage under its trace name (`normalized`, `P2`, `proposals`, ...; no batch axis),
in forward order, plus an optional `_meta` entry (a 0-d string holding JSON: format, version, producer, config,
timings). Anyone's implementation can write one with `np.savez`.
"""
from __future__ import annotations

import json
import time
import zipfile
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from minimaskrcnn.atomic import atomic_path

FORMAT = "minimaskrcnn-trace"
FORMAT_VERSION = 1
META_KEY = "_meta"


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


# --- trace files --------------------------------------------------------------------------------------------------

def trace_to_fill(trace) -> tuple:
    """(Trace, returned) for a `predict(..., trace=)` argument: the given Trace (e.g. `Trace(keep_arrays=False)`, the
    stage timings alone), a new full one for True, a timings-only one that is not returned for False. (A Trace is a
    mapping: an empty one is falsy, hence the isinstance.)"""
    if isinstance(trace, Trace):
        return trace, True
    return Trace(keep_arrays=bool(trace)), bool(trace)


def save_trace(trace, path, compress: bool = False, **meta) -> None:
    """Write `trace` (name -> array, in order) to `path` as `.npz`, with `meta` (JSON-able) under `_meta`.
    compress: zlib (about half the size for a photo, mostly from the masks; several times slower)."""
    info = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    timings = getattr(trace, "timings", None)
    if timings:
        info.setdefault("timings", dict(timings))
    arrays = OrderedDict((name, np.asarray(a)) for name, a in trace.items())
    bad = [n for n, a in arrays.items() if a.dtype == object or n == META_KEY]
    if bad:
        raise ValueError(f"trace: stage {bad[0]!r} cannot be stored (object array or reserved name)")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:       # a file object: numpy appends no ".npz"
        (np.savez_compressed if compress else np.savez)(f, **arrays, **{META_KEY: np.array(json.dumps(info))})


def load_trace(path) -> tuple[Trace, dict]:
    """(Trace of the stages in file order, metadata dict) of a trace `.npz`. One-line ValueError if it is not one."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":                # every zip (an .npz is one) starts so
                raise ValueError(f"{path}: not a trace file (not an .npz archive)")
        with np.load(path, allow_pickle=False) as f:
            arrays = OrderedDict((name, f[name]) for name in f.files)
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        raise ValueError(f"{path}: not a readable trace file ({reason})") from None
    except ValueError as e:                      # pickled (object) arrays, a corrupt member
        text = " ".join(str(e).split())
        raise ValueError(text if text.startswith(f"{path}:") else f"{path}: not a trace file ({text})") from None
    meta = {}
    if META_KEY in arrays:
        try:
            meta = json.loads(str(arrays.pop(META_KEY)))
        except ValueError:
            raise ValueError(f"{path}: the {META_KEY} entry is not JSON") from None
    if not arrays:
        raise ValueError(f"{path}: the file holds no stage")
    for name, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{path}: stage {name!r} is not numeric (dtype {a.dtype})")
    return Trace(arrays), meta
