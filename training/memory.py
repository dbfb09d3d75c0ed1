"""Giving a sampling stage's freed memory back to the operating system, and bounding oneDNN's
caches of CPU kernels.

Every stage of a run shares one process (unless ``execution.process_per_stage``), and each
peaks on a different working set: SFT's activations, the samplers' KV caches, DPO's pairs.
glibc's allocator keeps what a stage frees in the process's heap for later use, and later
stages, with other shapes, fit little of their own into it: the demo's run at 2000 problems
grew from 0.6 GB to 2.2 GB over its stages. torch has no call for this on the CPU
(``torch.cuda.empty_cache`` is the GPU's), and no well-kept library does it, so
:func:`return_freed_memory` asks glibc directly (``malloc_trim``).

The sampling stages call it once their engine has closed (``policy_samples`` before RFT,
``step_rollouts`` before the DPO stages): on the demo's 500-problem run the trim after the
rollouts took the process from 1.14 GB to 0.77 GB before DPO (with a trim after every stage,
the run's peak went from 1.61 to 1.41 GB). Nowhere else, as measured: after a training run
it returned tens of MB, and each trim makes the next stage fault its working set back in,
which made each DPO stage after another 1-2 s slower (of 15-18 s); the evaluation stage,
last in its run, loads engines of one shape in a row, so a trim between them only costs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# oneDNN, which runs torch's bf16 matmuls on the CPU, keeps every kernel it builds in two caches
# keyed by shape (its own primitive cache and ideep's), 1024 entries each by default. Training
# batches grouped by length and sampling batches that shrink as sequences finish give nearly
# every matmul a new shape, so the caches only grow: in the demo a DPO stage's process held
# about 0.75 GB more with them than with 8 entries each, with no stage slower
# (docs/benchmarks.md). Entries are reused only within a forward pass of one shape (one
# decoding step), which a few entries hold.
KERNEL_CACHE_CAPACITY = 8
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Cap oneDNN's kernel caches at ``capacity`` entries each, where the environment does not
    set them already. The caches read their capacity when first used, so this counts when it
    runs before the process's first bf16 matmul (``import training`` runs it); the processes
    a run starts inherit it."""
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None under another C library (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def return_freed_memory() -> None:
    """Return the heap's free pages to the operating system, where the C library can (glibc's
    ``malloc_trim``, a few milliseconds). Objects still referenced keep their memory. No
    ``gc.collect()`` here: a stage's tensors are freed as their last reference goes, and a full
    collection in a run's process (dagster, transformers and polars loaded) takes 0.3 s or
    more, which after every engine of the evaluation stage added up to seconds per partition."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
