"""The tests' own cache eviction (tests/disk_cache.py): without it stale entries filled a CI machine's disk."""
import os

from hypothesis import given, settings, strategies as st

import disk_cache


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=8), cap=st.integers(0, 20000),
       keep_index=st.integers(0, 7))
def test_evict_deletes_oldest_first_down_to_the_cap(tmp_path_factory, sizes, cap, keep_index):
    root = tmp_path_factory.mktemp("cache")
    paths = []
    for i, size in enumerate(sizes):            # entry i last used at time 1000 + i: entry 0 is the oldest
        p = root / f"e{i}"
        if i % 2:                               # files and directories alike
            p.mkdir()
            (p / "a").write_bytes(b"x" * size)
        else:
            p.write_bytes(b"x" * size)
        os.utime(p, (1000 + i, 1000 + i))
        paths.append(p)
    keep = paths[keep_index % len(paths)]
    deleted = disk_cache.evict(root.iterdir(), cap, keep=keep)
    size = dict(zip(paths, sizes))
    evictable = [p for p in paths if p != keep]                     # oldest first
    assert deleted == evictable[:len(deleted)]                      # least recently used first, never `keep`
    assert all(p.exists() == (p not in deleted) for p in paths)
    remaining = sum(size[p] for p in paths if p not in deleted)
    assert remaining <= cap or deleted == evictable                 # under the cap, or nothing left to delete
    if deleted:                                                     # and no more than needed
        assert remaining + size[deleted[-1]] > cap


def test_touch_makes_an_entry_newest(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"x" * 10), new.write_bytes(b"x" * 10)
    os.utime(old, (1000, 1000)), os.utime(new, (2000, 2000))
    disk_cache.touch(old)
    assert disk_cache.evict([old, new], 10) == [new]
    disk_cache.touch(tmp_path / "gone")          # a concurrently evicted entry is not an error
