"""Progress reporting: long loops (training updates, generation) say how far along they are.

A :class:`Progress` is any callable taking ``(done, total, **figures)``: ``done`` of ``total``
units finished, plus the latest figures worth showing beside a bar (a loss, a learning rate).
The library calls it; the caller decides what it becomes: a terminal progress bar, a line in
a run's log, or nothing (:func:`no_progress`). Callers rate-limit, not the library.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, **figures: float) -> None: ...


def no_progress(done: int, total: int, **figures: float) -> None:
    """A :class:`Progress` that shows nothing."""
