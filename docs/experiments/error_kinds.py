"""Where each method's greedy test solutions first go wrong, from a warehouse's evaluations.

    python docs/experiments/error_kinds.py HOME [METHOD ...]

HOME is a warehouse of the chain task (``synthdata run`` with ``SYNTHDATA_HOME=HOME``). For each
method (default: every method evaluated) and data size, the share (%) of (seed, test problem)
solutions by the kind of their first error, as ``errors.first_error`` names it (``right``: no
error; ``other_name``: a line naming a quantity that is not the next step; ``operator``,
``constant``, ``read``, ``table``: a line naming the right step with a wrong operator,
constant, value read or result; ...). Pure reading of Parquet tables; no model runs.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import polars as pl

from synthdata_assets.tasks import embedded
from warehouse import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import errors  # noqa: E402


def kinds(home: str, methods: tuple[str, ...] = ()) -> pl.DataFrame:
    """One row per (method, data_size, kind): solutions and their share of the cell."""
    warehouse = Warehouse(Path(home))
    problems = pl.read_parquet(warehouse.table_file("problems"))
    spec = dict(zip(problems["problem_id"], problems["spec"], strict=True))
    parsed: dict[str, embedded.EmbeddedProblem] = {}
    files = sorted(warehouse.partition_file("evaluations", 0, 0).parent.parent.glob("*/*.parquet"))
    if not files:
        raise SystemExit(f"{home}: no evaluations partitions")
    evals = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    if methods:
        evals = evals.filter(pl.col("method").is_in(methods))
    counts: collections.Counter = collections.Counter()
    for method, size, pid, text in evals.select(
        "method", "data_size", "problem_id", "completion"
    ).iter_rows():
        if pid not in parsed:
            parsed[pid] = embedded.EmbeddedProblem.from_spec(pid, spec[pid])
        counts[(method, size, errors.first_error(parsed[pid], text or ""))] += 1
    rows = [(m, int(s), k, n) for (m, s, k), n in counts.items()]
    frame = pl.DataFrame(rows, schema=["method", "data_size", "kind", "solutions"], orient="row")
    return frame.with_columns(
        share=100 * pl.col("solutions") / pl.col("solutions").sum().over("method", "data_size")
    ).sort("method", "data_size", "kind")


def main(home: str, *methods: str) -> None:
    table = (
        kinds(home, methods)
        .pivot(on="kind", index=["method", "data_size"], values="share")
        .fill_null(0.0)
    )
    order = ["right", "other_name", "operator", "constant", "read", "table"]
    columns = [c for c in order if c in table.columns]
    columns += sorted(c for c in table.columns if c not in {*order, "method", "data_size"})
    print("| method | size | " + " | ".join(columns) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for row in table.sort("method", "data_size").iter_rows(named=True):
        cells = " | ".join(f"{row[c]:.1f}" for c in columns)
        print(f"| {row['method']} | {int(row['data_size'])} | {cells} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
