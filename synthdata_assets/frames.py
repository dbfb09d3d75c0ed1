"""Checks on input tables: required columns, no nulls, no duplicated keys.

Each check raises ``ValueError`` naming the table (``name``) and what is wrong with it, so a
bad input fails where it enters instead of as a wrong number further on.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl


def require(df: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise unless ``df`` has every column of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {df.columns}")


def no_nulls(df: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise if any of ``columns`` holds a null."""
    for c in columns:
        n = df[c].null_count()
        if n:
            raise ValueError(f"{name}.{c} has {n} null value(s)")


def typed(
    df: pl.DataFrame, schema: dict[str, pl.DataType], name: str, nullable: Iterable[str] = ()
) -> pl.DataFrame:
    """``df``'s columns of ``schema``, cast to its types, none of them null but ``nullable``."""
    require(df, schema, name)
    out = df.select(pl.col(c).cast(dtype) for c, dtype in schema.items())
    no_nulls(out, [c for c in out.columns if c not in set(nullable)], name)
    return out


def first_row(df: pl.DataFrame) -> dict:
    """The first row as a dict (for error messages that show an example)."""
    return df.row(0, named=True)


def no_duplicates(df: pl.DataFrame, key: list[str], name: str) -> None:
    """Raise if two rows share the same values in the ``key`` columns."""
    dup = df.filter(pl.struct(key).is_duplicated())
    if dup.height:
        raise ValueError(
            f"{name} has {dup.height} rows with a duplicated key {key}, e.g. "
            f"{ {k: first_row(dup)[k] for k in key} }"
        )
