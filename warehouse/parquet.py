"""Atomic Parquet files.

A table file is either absent or complete: it is written to a hidden temporary file in
the same folder and renamed over the target, which POSIX makes atomic. A run killed
mid-write leaves at most a hidden ``.NAME.tmp-*`` file, which no reader globs and the
next write of that file removes. Object stores (any non-local fsspec URL) publish an
object only when its upload completes, so there the plain write is already atomic.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl
from upath import UPath

_TMP_MARK = ".tmp-"


def _is_local(path: UPath | Path) -> bool:
    return (
        isinstance(path, Path)
        and not isinstance(path, UPath)
        or (isinstance(path, UPath) and path.protocol in ("", "file", "local"))
    )


def temp_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path`` that no ``*.parquet`` glob matches."""
    return path.with_name(f".{path.name}{_TMP_MARK}{uuid.uuid4().hex[:12]}")


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files left by killed writers of ``path``."""
    for stale in path.parent.glob(f".{path.name}{_TMP_MARK}*"):
        stale.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to the local file ``path`` the same way: the old file or the new one."""
    remove_stale_temps(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet_atomic(frame: pl.DataFrame, path: UPath | Path) -> None:
    """Write ``frame`` to ``path`` so that readers see the old file or the new one, whole."""
    if not _is_local(path):
        with path.open("wb") as handle:
            frame.write_parquet(handle)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_sibling(target)
    try:
        frame.write_parquet(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_parquet(path: UPath | Path) -> pl.DataFrame:
    """Read a table file written by :func:`write_parquet_atomic`."""
    if _is_local(path):
        return pl.read_parquet(Path(path))
    with path.open("rb") as handle:
        return pl.read_parquet(handle)
