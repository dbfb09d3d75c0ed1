"""A finished stage's freed memory goes back to the operating system (training/memory.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

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


_SHAPES = """
import os, sys, torch
import training  # caps the caches unless the environment sets them
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
linear = torch.nn.Linear(64, 256)
before = rss()
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    for rows in range(1, 1500, 3):  # a new shape every time, as length-grouped batches are
        linear(torch.randn(rows, 64))
print(rss() - before, os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"])
"""


def _growth(env: dict[str, str]) -> tuple[float, str]:
    """RSS growth (MB) of a fresh process over 500 matmul shapes, and its cache capacity, under
    this environment without the cache variables, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if k not in memory.KERNEL_CACHE_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", _SHAPES],
        env={**inherited, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    grown, capacity = done.stdout.split()
    return float(grown), capacity


def test_kernel_caches_are_capped_on_import_unless_the_environment_sets_them() -> None:
    capped, capacity = _growth({})
    assert capacity == str(memory.KERNEL_CACHE_CAPACITY)
    default = dict.fromkeys(memory.KERNEL_CACHE_VARIABLES, "1024")  # oneDNN's own default
    uncapped, capacity = _growth(default)
    assert capacity == "1024"  # a value the user set is kept
    if uncapped < 100:
        pytest.skip(f"bf16 matmuls here build no cached oneDNN kernels ({uncapped:.0f} MB)")
    assert capped < uncapped / 2, (capped, uncapped)
