"""Least-recently-used eviction for the tests' on-disk caches (calibrated models, ONNX exports, oracle outputs).

Not a test module. Every cache entry is keyed by all that determines it, so a code change makes new entries and the
old ones are never read again: without eviction they pile up run after run (one CI machine filled its disk that
way: 37 GB of kept pytest temporaries and 9 GB of stale oracle outputs). An entry's mtime is its last use
(`touch`); `evict` deletes the oldest entries until the cache is under its cap.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable


def touch(entry: Path) -> None:
    """Mark `entry` (a file or a directory) as just used."""
    try:
        os.utime(entry)
    except FileNotFoundError:           # evicted by a parallel session in between
        pass


def _size(entry: Path) -> int:
    if entry.is_dir():
        return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
    return entry.stat().st_size


def evict(entries: Iterable[Path], max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used of `entries` until their total size is at most `max_bytes`; never `keep`
    (the entry the caller is about to use). Returns what was deleted."""
    found = []
    for p in entries:
        try:
            found.append((p.stat().st_mtime, _size(p), p))
        except FileNotFoundError:       # evicted by a parallel session
            pass
    total, deleted = sum(size for _, size, _ in found), []
    for _, size, p in sorted(found, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if keep is not None and p == keep:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        total -= size
        deleted.append(p)
    return deleted
