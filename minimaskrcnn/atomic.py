"""Atomic, input-protecting file writes: the one mechanism every writer of the package uses (`io.files`, the trace
files of `trace.py`).

A file is written to a temporary file in the target's folder and renamed over the target (`os.replace`), so a reader
never sees half a file and an interrupted run leaves none. A target that is one of the run's input files (same
resolved path or same inode, see `protect`) is refused with ValueError. Standard library only.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile

__all__ = ["protect", "atomic_path"]


def protect(paths) -> frozenset:
    """The set `write_*` refuse to write over: resolved paths and (device, inode) of the given input files."""
    keys = set()
    for p in paths:
        keys.add(os.path.realpath(p))
        with contextlib.suppress(OSError):
            st = os.stat(p)
            keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


def _check_not_input(path: str, protected: frozenset) -> None:
    hit = os.path.realpath(path) in protected
    if not hit and protected:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            hit = (st.st_dev, st.st_ino) in protected
    if hit:
        raise ValueError(f"{path}: refusing to overwrite an input file")


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, protected=frozenset()):
    """Yield a temporary path next to `path` (same extension, so format detection by name works) and rename it over
    `path` when the block succeeds; remove it when the block fails."""
    path = os.fspath(path)
    _check_not_input(path, protected)
    folder, base = os.path.split(os.path.abspath(path))
    root, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{root}.", suffix=f".part{ext}")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())                              # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
