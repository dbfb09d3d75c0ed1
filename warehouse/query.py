"""SQL over the warehouse with DuckDB.

Each table is a view over its Parquet files (``tables/<name>.parquet`` or every
``tables/<name>/**/*.parquet``), created in a fresh in-memory database per connection:
there is no shared ``.duckdb`` file for parallel runs to fight over, and a view always
sees the partitions written so far. Given the study's partitions, a partitioned table's view
holds those partitions only (a data size removed from the configuration stays on disk, out
of the way), and ``<name>_all`` holds every partition on disk. Named queries live in
``warehouse/sql/*.sql`` and are run as ``@name``. DuckDB installs and loads no extension
(an ``http://`` path is an error, not a download).

:func:`run_query` is read-only: it accepts SELECT-like statements (SELECT, WITH,
DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) and refuses anything that writes.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import duckdb

from warehouse.layout import Warehouse

SQL_DIR = Path(__file__).with_name("sql")
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(ValueError):
    """A query could not be run; the message says why."""


class ReadOnlyError(QueryError):
    """A statement that would write was refused."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def table_sources(warehouse: Warehouse) -> dict[str, str]:
    """Table name -> the Parquet path or glob that holds it (tables with data only)."""
    sources: dict[str, str] = {}
    if not warehouse.tables.is_dir():
        return sources
    for entry in sorted(warehouse.tables.iterdir()):
        if entry.is_file() and entry.suffix == ".parquet" and not entry.name.startswith("."):
            sources[entry.stem] = str(entry)
        elif entry.is_dir() and next(entry.rglob("*.parquet"), None) is not None:
            sources[entry.name] = str(entry / "**" / "*.parquet")
    return sources


def stored_partitions(warehouse: Warehouse) -> set[tuple[int, int]]:
    """The ``(data_size, seed)`` partitions with a file on disk in any partitioned table."""
    found: set[tuple[int, int]] = set()
    if not warehouse.tables.is_dir():
        return found
    for path in warehouse.tables.glob("*/data_size=*/seed=*.parquet"):
        size, seed = path.parent.name.removeprefix("data_size="), path.stem.removeprefix("seed=")
        if size.isdigit() and seed.isdigit():
            found.add((int(size), int(seed)))
    return found


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(
    warehouse: Warehouse, partitions: Collection[tuple[int, int]] | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per warehouse table; partitioned tables
    keep only ``partitions`` (``(data_size, seed)`` pairs) when given."""
    con = duckdb.connect(
        ":memory:",
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
    )
    sources = table_sources(warehouse)
    keep = ""
    if partitions is not None:
        pairs = ", ".join(f"({int(size)}, {int(seed)})" for size, seed in sorted(partitions))
        keep = f" WHERE (data_size, seed) IN ({pairs or '(NULL, NULL)'})"
    for name, source in sources.items():
        scan = (
            f"SELECT * FROM read_parquet({_quote_literal(source)}, union_by_name = true, "
            "hive_partitioning = false)"
        )
        partitioned = "**" in source
        if partitioned and keep:
            con.execute(f"CREATE VIEW {_quote_ident(name + '_all')} AS {scan}")
        con.execute(f"CREATE VIEW {_quote_ident(name)} AS {scan}{keep if partitioned else ''}")
    # Each model asset stores one row per trained model; `checkpoints` is all of them.
    model_tables = [name for name in sources if name.endswith("_model")]
    if model_tables:
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {_quote_ident(n)}" for n in model_tables)
        con.execute(f"CREATE VIEW checkpoints AS {union}")
    return con


def named_queries() -> dict[str, Path]:
    """``name -> file`` for the queries shipped in ``warehouse/sql``."""
    return {path.stem: path for path in sorted(SQL_DIR.glob("*.sql"))}


def resolve_sql(text: str) -> str:
    """The SQL to run: ``@name`` loads a named query, anything else is SQL itself."""
    stripped = text.strip()
    if stripped.startswith("@"):
        queries = named_queries()
        name = stripped[1:]
        if name not in queries:
            known = ", ".join(f"@{q}" for q in queries) or "none"
            raise QueryError(f"no named query {stripped!r} (known: {known})")
        return queries[name].read_text()
    return text


def check_read_only(sql: str) -> list[duckdb.Statement]:
    """Parse ``sql`` and refuse it unless every statement only reads."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"could not parse the query: {exc}") from None
    if not statements:
        raise QueryError("empty query")
    for statement in statements:
        if statement.type not in _READ_ONLY:
            kind = statement.type.name
            raise ReadOnlyError(
                f"refused: `synthdata sql` is read-only and this is a {kind} statement "
                f"({statement.query.strip()[:60]!r}). The warehouse is written only by "
                "materializing assets; query it with SELECT, WITH, DESCRIBE, SHOW or SUMMARIZE."
            )
    return statements


def run_query(
    sql: str, warehouse: Warehouse, partitions: Collection[tuple[int, int]] | None = None
) -> QueryResult:
    """Run read-only SQL (or ``@name``) against the warehouse (its views kept to
    ``partitions`` when given); the last statement's rows."""
    statements = check_read_only(resolve_sql(sql))
    con = connect(warehouse, partitions)
    try:
        relation = None
        for statement in statements:
            relation = con.execute(statement.query)
        assert relation is not None
        columns = [d[0] for d in relation.description] if relation.description else []
        return QueryResult(columns=columns, rows=relation.fetchall())
    except duckdb.CatalogException as exc:
        known = ", ".join(table_sources(warehouse)) or "none yet: materialize some assets"
        raise QueryError(f"{exc}\ntables in {warehouse.tables}: {known}") from None
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    finally:
        con.close()
