"""Argument checks shared by the public ops: every failure is a `ValueError` naming the argument and what was expected.

The public functions of `minimaskrcnn.ops` call these before handing C-contiguous arrays of a known dtype to their
Numba kernels, so a kernel never sees a shape, dtype or value it was not written for.
"""
from __future__ import annotations

import numbers

import numpy as np

# torchvision ops/_utils.py `_upcast`: float32/float64 stay, other floats become float32; int32/int64 stay, narrower
# integers become int32. numpy's unsigned 32/64-bit integers have no torch counterpart; uint32 widens to int64.
_INT_UPCAST = {1: np.int32, 2: np.int32, 4: np.int32, 8: np.int64}


def array(name: str, x, ndim: int | None = None, last: int | None = None, shape: tuple | None = None) -> np.ndarray:
    """`x` as a numeric (bool-free, complex-free) ndarray with the expected ndim / last axis / shape (None = any)."""
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged nested sequences and the like
        raise ValueError(f"{name}: expected an array, got {type(x).__name__} ({e})") from None
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real numeric (integer or floating) array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if last is not None and (a.ndim == 0 or a.shape[-1] != last):
        raise ValueError(f"{name}: expected a last axis of length {last}, got shape {a.shape}")
    if shape is not None and (len(shape) != a.ndim or any(s is not None and s != t for s, t in zip(shape, a.shape))):
        want = str(tuple("*" if s is None else s for s in shape)).replace("'", "")
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    return a


def upcast(name: str, a: np.ndarray) -> np.ndarray:
    """torchvision `_upcast` dtype rule for box arithmetic (see `_INT_UPCAST`)."""
    if a.dtype.kind == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    if a.dtype == np.uint64:
        raise ValueError(f"{name}: uint64 boxes are not supported (no torch counterpart); use int64")
    if a.dtype.kind == "u" and a.dtype.itemsize == 4:
        return a.astype(np.int64)
    return a.astype(_INT_UPCAST[a.dtype.itemsize], copy=False)


def floating(name: str, a: np.ndarray) -> np.ndarray:
    """float64 stays float64, every other numeric dtype becomes float32 (C-contiguous copy only if needed)."""
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    return np.ascontiguousarray(a, dtype=dtype)


def finite(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, found NaN or infinity")
    return a


def not_nan(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{name}: expected no NaN values")
    return a


def real(name: str, x, low: float | None = None, low_inclusive: bool = True) -> float:
    """A finite real Python/NumPy scalar (not bool), optionally bounded below, as a Python float."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a real number, got {x!r}")
    v = float(x)
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        rel = ">=" if low_inclusive else ">"
        raise ValueError(f"{name}: expected a number {rel} {low}, got {v}")
    return v


def integer(name: str, x, low: int | None = None) -> int:
    """A Python/NumPy integer (not bool), optionally bounded below, as a Python int."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Integral, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {x!r}")
    v = int(x)
    if low is not None and v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v}")
    return v


def pair(name: str, x, low: int = 1) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each >= low."""
    if isinstance(x, (tuple, list, np.ndarray)):
        if len(x) != 2:
            raise ValueError(f"{name}: expected an int or a (height, width) pair, got {x!r}")
        return integer(name, x[0], low), integer(name, x[1], low)
    v = integer(name, x, low)
    return v, v
