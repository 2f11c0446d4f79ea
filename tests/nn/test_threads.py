"""minimaskrcnn.set_num_threads (nn/threads.py): Numba's pool and every loaded BLAS follow it.

The oracle for the BLAS side is threadpoolctl, which reads each loaded library's own thread count through its C API
(an independent implementation of the lookup that nn/threads.py does); missing, the test FAILS. Each case runs in a
fresh process, so that this pytest process's pools are never changed, and with the thread variables removed from
its environment, so that only the call under test can limit the pools. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE pass
through unchanged.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threadpoolctl_or_fail():
    try:
        import threadpoolctl  # noqa: F401
    except ImportError as e:
        pytest.fail(f"threadpoolctl (the oracle of the BLAS thread counts) cannot be imported: {e}. "
                    "Install with: pip install '.[test]'", pytrace=False)


def run_fresh(code: str, *args: str, drop=(), **extra) -> dict:
    """The last stdout line (JSON) of `code` run with `args` in a fresh process without the thread variables (and
    the variables in `drop`), with the `extra` ones."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES and k not in drop}
    env.update(extra, PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


PROBE = """
import json, os, numpy as np, numba
import minimaskrcnn
from threadpoolctl import threadpool_info
before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
ours = minimaskrcnn.set_num_threads({n})
import scipy.linalg.cython_blas     # SciPy's OpenBLAS, which Numba's first compilation would load after the call
after = [p for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps({{"before": before, "after": [p["num_threads"] for p in after],
                   "paths": sorted(p["filepath"] for p in after), "our_paths": sorted(p["path"] for p in ours),
                   "ours": [p["num_threads"] for p in ours], "numba": numba.get_num_threads(),
                   "numba_pool": numba.config.NUMBA_NUM_THREADS, "cpus": len(os.sched_getaffinity(0))}}))
"""


@pytest.mark.parametrize("n", [1, 2, 64])
def test_every_blas_and_numba_follow_set_num_threads(n):
    threadpoolctl_or_fail()
    r = run_fresh(PROBE.format(n=n))
    assert len(r["paths"]) >= 2, "threadpoolctl found fewer than NumPy's and SciPy's BLAS: the probe proves little"
    assert r["our_paths"] == r["paths"], "set_num_threads must find every BLAS threadpoolctl finds (NumPy's, SciPy's)"
    # never more threads than the CPUs the process may use (OpenBLAS itself would grow to 64)
    expected = min(n, r["cpus"])
    assert r["after"] == [expected] * len(r["paths"]), r
    assert r["ours"] == r["after"]
    assert r["numba"] == min(n, r["numba_pool"])


def test_the_probe_can_see_a_pool_that_was_not_limited():
    # Without the call the pools run with the core count: the probe above would notice a set_num_threads that did
    # nothing (on a 1-core machine this cannot be shown, and the test says so).
    threadpoolctl_or_fail()
    if os.cpu_count() < 2:
        pytest.fail("needs >= 2 cores to tell a limited pool from an unlimited one", pytrace=False)
    r = run_fresh(PROBE.format(n=os.cpu_count()))
    assert min(r["before"]) >= 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_thread_counts_are_a_clear_value_error(bad):
    from minimaskrcnn.nn.threads import set_num_threads
    with pytest.raises(ValueError, match="positive integer"):
        set_num_threads(bad)


# CPU seconds this process uses while its main thread sleeps 0.2 s right after a BLAS product on 2 threads: what
# OpenBLAS's idle thread burns spinning (its default) or not (after let_blas_threads_sleep, which must come before
# NumPy loads OpenBLAS)
IDLE_CPU = """
import sys, time
if sys.argv[1] == "sleep":
    from minimaskrcnn.nn.threads import let_blas_threads_sleep
    assert let_blas_threads_sleep()
import numpy as np
a = np.ones((1024, 1024), np.float32)
for _ in range(3):
    a @ a
c0 = time.process_time()
time.sleep(0.2)
print(time.process_time() - c0)
"""


def idle_cpu_seconds(mode: str) -> float:
    return run_fresh(IDLE_CPU, mode, drop=("OPENBLAS_THREAD_TIMEOUT",), OPENBLAS_NUM_THREADS="2")


def test_let_blas_threads_sleep_stops_openblas_spinning_between_products():
    assert os.cpu_count() >= 2, "needs 2 cores: one for the spinning BLAS thread"
    # measured here: 0.106 CPU-s spinning, 0.0001 asleep; the margins allow for a loaded machine (a spinning thread
    # descheduled half the time still burns 0.05)
    assert idle_cpu_seconds("spin") > 0.03            # OpenBLAS's default: its idle thread spins ~0.1 s
    assert idle_cpu_seconds("sleep") < 0.01           # asleep at once


def test_let_blas_threads_sleep_keeps_a_value_already_set_and_says_when_numpy_is_loaded():
    code = ("import json, os; os.environ['OPENBLAS_THREAD_TIMEOUT'] = '20'; from minimaskrcnn.nn.threads import "
            "let_blas_threads_sleep as f; a = f(); import numpy; b = f();"
            "print(json.dumps([a, b, os.environ['OPENBLAS_THREAD_TIMEOUT']]))")
    assert run_fresh(code, drop=("OPENBLAS_THREAD_TIMEOUT",)) == [True, False, "20"]
