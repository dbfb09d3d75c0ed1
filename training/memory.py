"""Giving a finished stage's memory back to the operating system.

Every stage of a run shares one process (unless ``execution.process_per_stage``), and each
peaks on a different working set: SFT's activations, the samplers' KV caches, DPO's pairs.
glibc's allocator keeps what a stage frees in the process's heap for later use, and later
stages, with other shapes, fit little of their own into it: the demo's run at 2000 problems
grew from 0.6 GB to 2.2 GB over its stages (docs/benchmarks.md). torch has no call for this
on the CPU (``torch.cuda.empty_cache`` is the GPU's), and no well-kept library does it, so
:func:`return_freed_memory` asks glibc directly (``malloc_trim``), after a stage's model is
gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None under another C library (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def return_freed_memory() -> None:
    """Collect garbage, then return the heap's free pages to the operating system (where the C
    library can: glibc's ``malloc_trim``). Objects still referenced keep their memory."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
