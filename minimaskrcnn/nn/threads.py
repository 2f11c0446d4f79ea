"""How many CPU threads the network uses: the multi-threaded kernels (Numba's thread setting) and every BLAS pool
loaded in the process (NumPy's OpenBLAS for the convolutions' GEMMs; SciPy's, a separate copy, when it is loaded).

Several processes on one machine (the distributed runner, a batch job) must each use their share of the cores: two
2-thread pools in one process, or two 2-thread processes on 2 cores, spin and preempt each other. `set_num_threads(n)`
limits both kinds of pool at run time:

- Numba: `numba.set_num_threads(n)`, capped at the pool size fixed at import (`NUMBA_NUM_THREADS`). Numba keeps the
  setting per calling thread: call it from the thread that calls `predict`. The multi-threaded kernels
  (`minimaskrcnn.ops.parallel`) read this same setting.
- BLAS: the thread count of a BLAS library is a process-wide setting of that library, reached through its C API
  (`openblas_set_num_threads`, `MKL_Set_Num_Threads`). The libraries already loaded are found by path (Linux: the
  process's memory map; elsewhere: NumPy's and SciPy's bundled-library folders) and called through ctypes, the way
  threadpoolctl does it, without depending on threadpoolctl. A BLAS this module does not know keeps its own setting;
  the environment variables read at load (`OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`, set before importing NumPy; the
  command line does this for `--threads`) limit every kind.

Standard library, NumPy and Numba only: the network may import it.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys

# Symbol names of the OpenBLAS builds NumPy and SciPy wheels ship (scipy-openblas: "scipy_" prefix, "64_" suffix for
# the ILP64 build NumPy >= 2 uses; plain builds from a system package have neither), and of MKL.
_OPENBLAS_PREFIXES = ("openblas", "scipy_openblas")
_OPENBLAS_SUFFIXES = ("", "64_")
_MKL_SET = "MKL_Set_Num_Threads"
_MKL_GET = "MKL_Get_Max_Threads"

# After each product OpenBLAS's threads wait for the next one by spinning (sched_yield in a loop) for 2^28 cycles,
# about 0.1 s, before they sleep (OpenBLAS blas_server.c, thread_timeout). Between two products the network runs its
# own kernels on threads of its own (ops/parallel.py), which then share the cores with the spinning threads: with them
# the parallel Winograd transforms, im2col and bias kernels gained nothing (800x1066, native kernel: 1.39-1.45 s
# against 1.43-1.50 s serial), with OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles, OpenBLAS's minimum: sleep at once; a
# product then wakes its threads, microseconds) 1.22-1.32 s (2026-12-02, three interleaved rounds of 5). OpenBLAS
# reads the variable once, when it loads.
BLAS_SLEEP_VARIABLES = {"OPENBLAS_THREAD_TIMEOUT": "4"}


def let_blas_threads_sleep() -> bool:
    """Make the OpenBLAS libraries loaded from now on put idle threads to sleep at once instead of spinning
    (`BLAS_SLEEP_VARIABLES`; a variable already set is left as it is). A process-wide choice, so the application makes
    it (the `minimaskrcnn` command does); it reaches NumPy's OpenBLAS only if NumPy is not imported yet, which is what
    it returns."""
    for name, value in BLAS_SLEEP_VARIABLES.items():
        os.environ.setdefault(name, value)
    return "numpy" not in sys.modules


def set_num_threads(n: int) -> list:
    """Use at most `n` threads in the multi-threaded kernels (Numba's setting, `ops.parallel`) and in every loaded
    BLAS. Returns `blas_pools()` after.

    Both are capped at the CPUs this process may run on (more threads than cores only preempt each other; Numba's
    pool is that size anyway unless NUMBA_NUM_THREADS says otherwise).

    NumPy's and SciPy's BLAS are loaded first if they are not yet; another BLAS loaded later keeps its own setting
    until the next call.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer number of threads, got {n!r}")
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _load_scipy_blas()
    for pool in _loaded_blas():
        pool.set(min(n, usable_cpus()))
    return blas_pools()


def _load_scipy_blas() -> None:
    """Load SciPy's BLAS now, so that it is limited too: where SciPy is installed (not a dependency of minimaskrcnn,
    but common), Numba imports it, and its OpenBLAS (a second copy) is otherwise loaded later, during a first
    compilation, and would keep one thread per core."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:                   # no SciPy: no second BLAS to limit
        pass


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def get_num_threads() -> int:
    """Numba's current thread count for the calling thread (the BLAS ones: `blas_pools()`)."""
    import numba
    return numba.get_num_threads()


def blas_pools() -> list:
    """The BLAS libraries loaded in this process: dicts with `path`, `api` ("openblas" or "mkl"), `num_threads`, and
    for OpenBLAS its `corename` (the kernel actually in use, e.g. "Haswell" or "SkylakeX") and `config`."""
    return [pool.info() for pool in _loaded_blas()]


# ----------------------------------------------------------------------------------------------------------------
# Finding the loaded libraries
# ----------------------------------------------------------------------------------------------------------------

class _Pool:
    def __init__(self, path: str, lib, api: str, prefix: str = ""):
        self.path, self.lib, self.api, self.prefix = path, lib, api, prefix

    def _fn(self, name, restype):
        fn = getattr(self.lib, self.prefix.replace("{}", name))
        fn.restype = restype
        return fn

    def set(self, n: int) -> None:
        if self.api == "openblas":
            self._fn("set_num_threads", None)(ctypes.c_int(n))
        else:
            self._fn(_MKL_SET, None)(ctypes.byref(ctypes.c_int(n)))

    def info(self) -> dict:
        if self.api == "mkl":
            return {"path": self.path, "api": "mkl", "num_threads": int(self._fn(_MKL_GET, ctypes.c_int)())}
        return {"path": self.path, "api": "openblas", "num_threads": int(self._fn("get_num_threads", ctypes.c_int)()),
                "corename": self._fn("get_corename", ctypes.c_char_p)().decode(errors="replace"),
                "config": self._fn("get_config", ctypes.c_char_p)().decode(errors="replace")}


def _loaded_blas() -> list:
    pools, seen = [], set()
    for path in _candidate_paths():
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        lib = _open_loaded(path)
        if lib is None:
            continue
        pool = _as_pool(path, lib)
        if pool is not None:
            pools.append(pool)
    return pools


def _candidate_paths() -> list:
    """Shared libraries whose name says OpenBLAS or MKL: mapped into this process (Linux), else bundled with NumPy
    and SciPy (wheels put them in `numpy.libs/`, `numpy/.dylibs/`, `scipy.libs/`, ...)."""
    maps = "/proc/self/maps"
    if os.path.exists(maps):
        with open(maps) as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    else:
        paths = set()
        for name in ("numpy", "scipy"):
            module = sys.modules.get(name)
            if module is None or not getattr(module, "__file__", None):
                continue
            package = os.path.dirname(module.__file__)
            for folder in (package + ".libs", os.path.join(package, ".dylibs"), package):
                paths.update(glob.glob(os.path.join(folder, "*")))
    return sorted(p for p in paths if any(key in os.path.basename(p).lower() for key in ("openblas", "mkl_rt")))


def _open_loaded(path: str):
    """A ctypes handle of `path` only if the process has already loaded it (never loads a second BLAS)."""
    mode = getattr(os, "RTLD_NOLOAD", 0)
    try:
        return ctypes.CDLL(path, mode=mode)
    except OSError:
        return None


def _as_pool(path: str, lib):
    for prefix in _OPENBLAS_PREFIXES:
        for suffix in _OPENBLAS_SUFFIXES:
            pattern = f"{prefix}_{{}}{suffix}"
            if all(hasattr(lib, pattern.replace("{}", f)) for f in ("set_num_threads", "get_num_threads",
                                                                      "get_corename", "get_config")):
                return _Pool(path, lib, "openblas", pattern)
    if hasattr(lib, _MKL_SET) and hasattr(lib, _MKL_GET):
        return _Pool(path, lib, "mkl", "{}")
    return None
