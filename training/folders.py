"""The temporary names of a checkpoint folder being written, and the clean-up of those a
killed writer left (see :mod:`training.checkpoint`, "Atomic writes").

Torch-free on purpose: ``synthdata run`` cleans up before its runs start and holds no model
itself, and importing torch and transformers for this would add 0.3 GB to a process that
stays alive beside every run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def partial_folder(final: Path, tag: str) -> Path:
    """Where a checkpoint for ``final`` is written before it is renamed into place."""
    return final.parent / f".{final.name}.partial-{tag}"


def old_folder(final: Path, tag: str) -> Path:
    """Where the checkpoint it replaces waits between the two renames."""
    return final.parent / f".{final.name}.old-{tag}"


def remove_partial_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.NAME.partial-*`` and ``.NAME.old-*`` folders that killed writers left
    under ``root``. Only safe while no checkpoint is being written there (the warehouse lock
    is held). Returns what it removed."""
    removed = []
    for pattern in (".*.partial-*", ".*.old-*"):
        for path in Path(root).rglob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
