"""A finished stage's freed memory goes back to the operating system (training/memory.py)."""

from __future__ import annotations

import gc

import pytest

from training import memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(memory._malloc_trim() is None, reason="not glibc: nothing to trim")
def test_memory_freed_between_live_objects_is_returned() -> None:
    # 400 MB of small blocks, one in 16 kept alive: glibc keeps the holes between the live ones
    # in the heap, so freeing the rest returns nothing to the OS until the heap is trimmed.
    blocks = [bytearray(4000) for _ in range(100_000)]
    kept = blocks[::16]
    del blocks
    gc.collect()
    before = _rss_mb()
    memory.return_freed_memory()
    after = _rss_mb()
    assert len(kept) == 6250
    assert before - after > 200, (before, after)
