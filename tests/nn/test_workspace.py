"""minimaskrcnn/nn/workspace.py: scratch buffers, and the malloc setting `reuse_freed_memory`."""
import subprocess
import sys

import numpy as np

from conftest import checkout_env
from minimaskrcnn.nn.workspace import scratch

# In a fresh process, with or without the setting: bytes in mmapped blocks (mallinfo2's hblkhd) and in the heap
# (arena) while a 64 MB array is alive
PROBE = """
import ctypes, sys
import numpy as np
if sys.argv[1] == "on":
    from minimaskrcnn.nn.workspace import reuse_freed_memory
    assert reuse_freed_memory()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
a = np.ones(2**24, np.float32)
print(libc.mallinfo2().hblkhd, libc.mallinfo2().arena)
"""


def probe(setting):
    res = subprocess.run([sys.executable, "-c", PROBE, setting], env=checkout_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return [int(v) for v in res.stdout.split()]


def test_reuse_freed_memory_puts_large_arrays_on_the_heap_instead_of_fresh_mappings():
    mapped, heap = probe("off")
    assert mapped >= 2**26                                          # glibc's default: a 64 MB array is its own mmap
    mapped, heap = probe("on")
    assert mapped < 2**26 <= heap                                    # now it is heap memory (trimmed only past 1 GB)


def test_scratch_reuses_one_buffer_per_slot_and_grows_it():
    a = scratch("test-slot", (4, 5))
    b = scratch("test-slot", (2, 3))
    assert a.dtype == np.float32 and b.base is a.base                # the same buffer, smaller view
    c = scratch("test-slot", (10, 10))
    assert c.shape == (10, 10) and c.base is not a.base
