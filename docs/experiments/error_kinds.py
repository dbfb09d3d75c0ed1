"""Where each method's greedy test solutions first go wrong, from a warehouse's evaluations.

    python docs/experiments/error_kinds.py HOME [METHOD ...]
    python docs/experiments/error_kinds.py HOME --minus METHOD_A METHOD_B
    python docs/experiments/error_kinds.py --rows HOME [--minus ARM_A ARM_B]
    python docs/experiments/error_kinds.py --lines HOME [METHOD ...]

HOME is a warehouse of the chain task (``synthdata run`` with ``SYNTHDATA_HOME=HOME``). For each
method (default: every method evaluated) and data size, the share (%) of (seed, test problem)
solutions by the kind of their first error, as ``errors.first_error`` names it (``right``: no
error; ``other_name``: a line naming a quantity that is not the next step; ``operator``,
``constant``, ``read``, ``table``: a line naming the right step with a wrong operator,
constant, value read or result; ...). ``--minus A B``: A's share minus B's per kind and size,
mean ± sd over seeds. ``--rows``: the same from the ``first_errors`` that ``oracle_pits.py``
records in ``oracle_pits.jsonl`` for warehouse HOME, one arm per method (``mc``, ``nll``,
``slips``, ...). ``--lines``: instead of the first error, the number of step lines a solution
writes minus the gold solution's (``+1``: one line too many; ``<-1`` and ``>+2`` gather the
rest). Pure reading; no model runs.
"""

from __future__ import annotations

import collections
import statistics
import sys
from pathlib import Path

import polars as pl

from synthdata_assets.tasks import embedded
from warehouse import Warehouse
from warehouse.query import run_query, table_sources

sys.path.insert(0, str(Path(__file__).parent))
import errors  # noqa: E402
import oracle_summary  # noqa: E402


def kinds(home: str, methods: tuple[str, ...] = (), lines: bool = False) -> pl.DataFrame:
    """One row per (method, data_size, seed, kind) of the warehouse's evaluations: the number
    of solutions and their share (%) of the cell. ``lines``: the kind is :func:`extra_lines`
    instead of the first error."""
    warehouse = Warehouse(Path(home))
    problems = pl.read_parquet(warehouse.table_file("problems"))
    spec = dict(zip(problems["problem_id"], problems["spec"], strict=True))
    parsed: dict[str, embedded.EmbeddedProblem] = {}
    if "evaluations" not in table_sources(warehouse):
        raise SystemExit(f"{home}: no evaluations partitions")
    # every partition on disk, through the warehouse's own views (as `synthdata sql` reads it)
    columns = ["method", "data_size", "seed", "problem_id", "completion"]
    result = run_query(f"SELECT {', '.join(columns)} FROM evaluations", warehouse)
    evals = pl.DataFrame(result.rows, schema=columns, orient="row")
    if methods:
        evals = evals.filter(pl.col("method").is_in(methods))
    counts: collections.Counter = collections.Counter()
    for method, size, seed, pid, text in evals.select(
        "method", "data_size", "seed", "problem_id", "completion"
    ).iter_rows():
        if pid not in parsed:
            parsed[pid] = embedded.EmbeddedProblem.from_spec(pid, spec[pid])
        kind = (extra_lines if lines else errors.first_error)(parsed[pid], text or "")
        counts[(method, int(size), int(seed), kind)] += 1
    return _shares(counts)


def extra_lines(problem: embedded.EmbeddedProblem, text: str) -> str:
    """How many more step lines ("After ...") ``text`` writes than the gold solution."""
    d = sum(line.startswith("After") for line in text.splitlines()) - len(embedded.solve(problem))
    return "<-1" if d < -1 else ">+2" if d > 2 else f"{d:+d}"


def row_kinds(home: str) -> pl.DataFrame:
    """The same from the ``first_errors`` of ``oracle_pits.jsonl`` rows of warehouse HOME,
    one arm (``oracle_summary.arm``) per method; the latest row of each cell counts."""
    rows = oracle_summary.read_rows()
    cells = oracle_summary.latest([r for r in rows if r["home"] == home and r.get("first_errors")])
    counts: collections.Counter = collections.Counter()
    for (_, size, seed, _, name), row in cells.items():
        for kind, n in row["first_errors"].items():
            counts[(name, size, seed, kind)] += n
    if not counts:
        raise SystemExit(f"no oracle_pits.jsonl rows of {home} with first_errors")
    return _shares(counts)


def _shares(counts: collections.Counter) -> pl.DataFrame:
    rows = [(*key, n) for key, n in counts.items()]
    frame = pl.DataFrame(
        rows, schema=["method", "data_size", "seed", "kind", "solutions"], orient="row"
    )
    cell = ("method", "data_size", "seed")
    return frame.with_columns(
        share=100 * pl.col("solutions") / pl.col("solutions").sum().over(cell)
    ).sort(*cell, "kind")


ORDER = ["right", "other_name", "dead_end", "operator", "constant", "read", "table"]


def _columns(kinds_: list[str]) -> list[str]:
    return [k for k in ORDER if k in kinds_] + sorted(k for k in kinds_ if k not in ORDER)


def shares_table(frame: pl.DataFrame) -> list[str]:
    """Mean share (%) over seeds per method, size and kind."""
    columns = _columns(frame["kind"].unique().to_list())
    full = _complete(frame)
    mean = full.group_by("method", "data_size", "kind").agg(pl.col("share").mean())
    lines = ["| method | size | seeds | " + " | ".join(columns) + " |"]
    lines.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |")
    seeds = full.group_by("method", "data_size").agg(pl.col("seed").n_unique())
    for method, size, n in seeds.sort("method", "data_size").iter_rows():
        cell = mean.filter((pl.col("method") == method) & (pl.col("data_size") == size))
        share = dict(zip(cell["kind"], cell["share"], strict=True))
        lines.append(
            f"| {method} | {size} | {n} | " + " | ".join(f"{share[c]:.1f}" for c in columns) + " |"
        )
    return lines


def difference_table(frame: pl.DataFrame, a: str, b: str) -> list[str]:
    """``a`` minus ``b`` in share points per size and kind: mean ± sd over the seeds both
    have."""
    full = _complete(frame.filter(pl.col("method").is_in([a, b])))
    if set(full["method"].unique().to_list()) != {a, b}:
        raise SystemExit(f"need rows of both {a!r} and {b!r}")
    columns = _columns(full["kind"].unique().to_list())
    wide = full.pivot(on="method", index=["data_size", "seed", "kind"], values="share")
    wide = wide.drop_nulls([a, b]).with_columns(diff=pl.col(a) - pl.col(b))
    lines = ["| size | seeds | " + " | ".join(columns) + " |"]
    lines.append("| ---: | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for size in sorted(wide["data_size"].unique().to_list()):
        cell = wide.filter(pl.col("data_size") == size)
        cells = []
        for kind in columns:
            values = cell.filter(pl.col("kind") == kind)["diff"].to_list()
            sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):+.1f}{sd}")
        lines.append(f"| {size} | {cell['seed'].n_unique()} | " + " | ".join(cells) + " |")
    return lines


def _complete(frame: pl.DataFrame) -> pl.DataFrame:
    """Every kind present in every cell (share 0 where a cell has none of it)."""
    cells = frame.select("method", "data_size", "seed").unique()
    every = cells.join(frame.select("kind").unique(), how="cross")
    return every.join(
        frame.select("method", "data_size", "seed", "kind", "share"),
        on=["method", "data_size", "seed", "kind"],
        how="left",
    ).with_columns(pl.col("share").fill_null(0.0))


def main(*args: str) -> None:
    args_ = list(args)
    from_rows, lines = "--rows" in args_, "--lines" in args_
    for flag in ("--rows", "--lines"):
        if flag in args_:
            args_.remove(flag)
    minus = None
    if "--minus" in args_:
        i = args_.index("--minus")
        minus = (args_[i + 1], args_[i + 2])
        del args_[i : i + 3]
    home, *methods = args_
    frame = row_kinds(home) if from_rows else kinds(home, tuple(methods), lines)
    print("\n".join(difference_table(frame, *minus) if minus else shares_table(frame)))


if __name__ == "__main__":
    main(*sys.argv[1:])
