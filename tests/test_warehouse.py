"""The IO manager, atomic writes, and the read-only SQL layer."""

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from warehouse import Warehouse
from warehouse.io_manager import ParquetIOManager
from warehouse.parquet import read_parquet, write_parquet_atomic
from warehouse.query import QueryError, ReadOnlyError, check_read_only, run_query

PARTS = dg.MultiPartitionsDefinition(
    {
        "data_size": dg.StaticPartitionsDefinition(["10", "20"]),
        "seed": dg.StaticPartitionsDefinition(["0", "1"]),
    }
)


def _assets(payload: dict[str, int]):
    @dg.asset(partitions_def=PARTS)
    def widgets(context: dg.AssetExecutionContext) -> pl.DataFrame:
        size = int(context.partition_key.keys_by_dimension["data_size"])
        return pl.DataFrame({"i": list(range(size)), "v": [payload["v"]] * size})

    @dg.asset(partitions_def=PARTS)
    def widget_totals(widgets: pl.DataFrame) -> pl.DataFrame:
        return widgets.group_by("data_size", "seed").agg(pl.col("v").sum())

    @dg.asset
    def pool() -> pl.DataFrame:
        return pl.DataFrame({"name": ["a", "b"]})

    return [widgets, widget_totals, pool]


def _materialize(warehouse: Warehouse, assets, key: str | None, payload: dict[str, int]):
    instance = dg.DagsterInstance.ephemeral()
    resources = {"io_manager": ParquetIOManager(base_path=str(warehouse.tables))}
    return dg.materialize(assets, partition_key=key, resources=resources, instance=instance)


def test_partitions_are_hive_files_with_lineage(warehouse: Warehouse) -> None:
    payload = {"v": 1}
    assets = _assets(payload)
    result = _materialize(warehouse, assets[:2], "20|1", payload)
    path = warehouse.tables / "widgets" / "data_size=20" / "seed=1.parquet"
    assert path.is_file()
    frame = pl.read_parquet(path)
    assert frame.height == 20
    assert frame["run_id"].unique().to_list() == [result.run_id]
    assert frame["data_size"].unique().to_list() == [20]
    assert frame["seed"].unique().to_list() == [1]
    # The downstream asset loaded the same partition and was stamped too.
    totals = pl.read_parquet(warehouse.tables / "widget_totals" / "data_size=20" / "seed=1.parquet")
    assert totals["v"].to_list() == [20]

    _materialize(warehouse, [assets[2]], None, payload)
    pool = pl.read_parquet(warehouse.tables / "pool.parquet")
    assert set(pool.columns) == {"name", "run_id"}


def test_rerun_replaces_the_partition(warehouse: Warehouse) -> None:
    payload = {"v": 1}
    first = _materialize(warehouse, _assets(payload)[:1], "10|0", payload)
    payload["v"] = 7
    second = _materialize(warehouse, _assets(payload)[:1], "10|0", payload)
    frame = pl.read_parquet(warehouse.tables / "widgets" / "data_size=10" / "seed=0.parquet")
    assert frame["v"].unique().to_list() == [7]
    assert frame["run_id"].unique().to_list() == [second.run_id] != [first.run_id]
    assert list((warehouse.tables / "widgets" / "data_size=10").iterdir()) == [
        warehouse.tables / "widgets" / "data_size=10" / "seed=0.parquet"
    ]


def test_row_count_and_schema_reach_the_ui(warehouse: Warehouse) -> None:
    payload = {"v": 1}
    result = _materialize(warehouse, _assets(payload)[:1], "10|1", payload)
    (event,) = result.asset_materializations_for_node("widgets")
    assert event.metadata["dagster/row_count"].value == 10
    names = [c.name for c in event.metadata["dagster/column_schema"].schema.columns]
    assert names == ["i", "v", "run_id", "data_size", "seed"]


def test_non_dataframe_output_is_a_clear_error(warehouse: Warehouse) -> None:
    @dg.asset
    def not_a_frame() -> dict:
        return {"a": 1}

    resources = {"io_manager": ParquetIOManager(base_path=str(warehouse.tables))}
    with pytest.raises(TypeError, match="polars DataFrames.*not_a_frame returned dict"):
        dg.materialize([not_a_frame], resources=resources)


# A child process that starts rewriting a table file and is SIGKILLed mid-way: either
# while the Parquet bytes are being written, or after writing but before the rename.
_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import polars as pl
    import warehouse.parquet as wp

    target, stage = Path(sys.argv[1]), sys.argv[2]
    frame = pl.DataFrame({"x": list(range(200_000)), "s": ["payload"] * 200_000})
    if stage == "during-write":
        real = pl.DataFrame.write_parquet
        def half_then_die(self, file, *args, **kwargs):
            real(self, file, *args, **kwargs)
            data = Path(file).read_bytes()
            Path(file).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        pl.DataFrame.write_parquet = half_then_die
    else:
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        wp.os.replace = die
    wp.write_parquet_atomic(frame, target)
    """
)


@pytest.mark.parametrize("stage", ["during-write", "before-rename"])
@pytest.mark.parametrize("existing", [False, True])
def test_killed_writer_leaves_no_partial_file(tmp_path: Path, stage: str, existing: bool) -> None:
    target = tmp_path / "tables" / "t" / "data_size=10" / "seed=0.parquet"
    old = pl.DataFrame({"x": [1, 2, 3]})
    if existing:
        write_parquet_atomic(old, target)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), stage])
    assert proc.returncode == -9, "the writer should have died by SIGKILL"
    folder = target.parent
    # What a reader globs is either the old complete file or nothing.
    assert sorted(p.name for p in folder.glob("*.parquet")) == (
        ["seed=0.parquet"] if existing else []
    )
    if existing:
        assert read_parquet(target).equals(old)
    leftovers = list(folder.glob(".seed=0.parquet.tmp-*"))
    assert leftovers, "the killed writer's temporary file is where we expect it"
    # The next write replaces the file and sweeps the stale temporary.
    new = pl.DataFrame({"x": [9]})
    write_parquet_atomic(new, target)
    assert read_parquet(target).equals(new)
    assert [p.name for p in folder.iterdir()] == ["seed=0.parquet"]


def test_failed_write_raises_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"

    class Boom(pl.DataFrame):
        def write_parquet(self, *args, **kwargs):  # type: ignore[override]
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(Boom({"x": [1]}), target)
    assert list(tmp_path.iterdir()) == []


def _seed_tables(warehouse: Warehouse) -> None:
    for size, seed in [(10, 0), (20, 0), (20, 1)]:
        frame = pl.DataFrame(
            {
                "problem_id": [f"p{i}" for i in range(size)],
                "is_correct": [i % 2 == 0 for i in range(size)],
            }
        ).with_columns(data_size=pl.lit(size), seed=pl.lit(seed), run_id=pl.lit("r"))
        write_parquet_atomic(
            frame,
            warehouse.tables / "teacher_solutions" / f"data_size={size}" / f"seed={seed}.parquet",
        )
    write_parquet_atomic(
        pl.DataFrame({"split": ["train", "test"]}), warehouse.tables / "problems.parquet"
    )


def test_sql_sees_every_partition_and_unpartitioned_tables(warehouse: Warehouse) -> None:
    _seed_tables(warehouse)
    result = run_query(
        "SELECT data_size, seed, count(*) AS n, avg(is_correct::INT) AS rate "
        "FROM teacher_solutions "
        "GROUP BY ALL ORDER BY ALL",
        warehouse,
    )
    assert result.columns == ["data_size", "seed", "n", "rate"]
    assert result.rows == [(10, 0, 10, 0.5), (20, 0, 20, 0.5), (20, 1, 20, 0.5)]
    assert run_query("SELECT count(*) FROM problems", warehouse).rows == [(2,)]
    tables = run_query("SHOW TABLES", warehouse).rows
    assert {t[0] for t in tables} == {"problems", "teacher_solutions"}


def test_named_query_runs(warehouse: Warehouse) -> None:
    _seed_tables(warehouse)
    result = run_query("@teacher_pass_rate", warehouse)
    assert result.columns[:2] == ["data_size", "seed"]
    assert len(result.rows) == 3
    with pytest.raises(QueryError, match="no named query '@nope'.*@teacher_pass_rate"):
        run_query("@nope", warehouse)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO problems VALUES ('x')",
        "DELETE FROM problems",
        "UPDATE problems SET split = 'x'",
        "DROP VIEW problems",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO 'out.csv'",
        "ATTACH 'other.duckdb'",
        "SELECT 1; DELETE FROM problems",
        "INSTALL httpfs",
        "SET threads = 1",
    ],
)
def test_writes_are_refused_with_a_clear_message(warehouse: Warehouse, sql: str) -> None:
    _seed_tables(warehouse)
    with pytest.raises(ReadOnlyError, match="read-only"):
        run_query(sql, warehouse)
    # Nothing was touched.
    assert run_query("SELECT count(*) FROM problems", warehouse).rows == [(2,)]
    assert not (Path.cwd() / "out.csv").exists()


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1", "WITH a AS (SELECT 1) SELECT * FROM a", "DESCRIBE SELECT 1", "EXPLAIN SELECT 1"],
)
def test_reads_are_allowed(sql: str) -> None:
    assert check_read_only(sql)


def test_unknown_table_lists_what_exists(warehouse: Warehouse) -> None:
    _seed_tables(warehouse)
    with pytest.raises(QueryError, match="problems, teacher_solutions"):
        run_query("SELECT * FROM step_rollouts", warehouse)
    with pytest.raises(QueryError, match="parse"):
        run_query("SELEC nonsense", warehouse)
