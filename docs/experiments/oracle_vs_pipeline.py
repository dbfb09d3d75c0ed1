"""Rows of ``oracle_pits.jsonl`` against their warehouse's own methods.

``oracle_summary.py`` compares each arm with an ``nll`` row of the same cell; this compares
it with the cell's ``per_step_dpo``, ``nll_control`` and ``sft`` evaluations in the warehouse
itself (``oracle_pits.py`` modes ``mc`` and ``nll`` reproduce the first two to the digit), so
an arm needs no control rows of its own. For each (pool, size, arm): the arm's mean greedy
accuracy over seeds, the warehouse's three methods at the same cells, the arm minus per-step
DPO and minus the control (mean ± standard deviation over seeds), the number of seeds below
the control, and the first errors of the greedy solutions by kind, per 1000 test problems
(``first_errors`` of the rows; for the control, :func:`sft_forgetting.first_error_kinds` on
its evaluations). The latest row of a cell counts.

    python docs/experiments/oracle_vs_pipeline.py ARM[,ARM...] [FIRST_ROW]

FIRST_ROW (default 0) skips the file's earlier rows. Reads each row's partition of the
warehouse it names, under the row's config (``oracle_pits.Partition``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
import sft_forgetting  # noqa: E402
from oracle_pits import Partition  # noqa: E402

ROWS = Path(__file__).with_name("oracle_pits.jsonl")
KINDS = ("dead_end", "other_name", "table", "operator")


def _pipeline(part: Partition) -> tuple[dict[str, float], dict[str, int]]:
    """The partition's greedy accuracy (%) of each method, and the first-error kinds of its
    control's solutions."""
    evals = part.table("evaluations").with_columns(pl.col("is_correct").fill_null(False))
    accuracy = {
        method: round(100 * float(rows["is_correct"].mean()), 1)
        for (method,), rows in evals.group_by("method")
    }
    control = evals.filter(pl.col("method") == "nll_control")
    test = part.problems.filter(pl.col("split") == "test")
    errors = sft_forgetting.first_error_kinds(
        control.select("problem_id", solution="completion"), test
    )
    return accuracy, errors


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}"


def _per_seed(kinds: list[dict[str, int]]) -> str:
    return " / ".join(f"{statistics.mean(k.get(kind, 0) for k in kinds):.0f}" for kind in KINDS)


def main(arms: str, first_row: str = "0") -> None:
    wanted = arms.split(",")
    lines = ROWS.read_text().splitlines()[int(first_row) :]
    latest = {}
    for row in map(json.loads, lines):
        if row["pits"] in wanted:
            latest[(row["home"], row["size"], row["seed"], row["pits"])] = row
    cells: dict[tuple, list] = {}
    for (home, size, seed, arm), row in sorted(latest.items()):
        accuracy, control_errors = _pipeline(Partition(home, row["config"], size, seed))
        psd, ctl, sft = (accuracy[m] for m in ("per_step_dpo", "nll_control", "sft"))
        cells.setdefault((row["pool_seed"], size, arm), []).append(
            (row["per_step_dpo"], psd, ctl, sft, row["first_errors"], control_errors)
        )
    print(
        "| pool | size | arm | seeds | arm | per-step DPO | control | SFT | arm minus per-step DPO "
        f"| arm minus control | below control | first errors {' / '.join(KINDS)}: arm "
        "| control |"
    )
    print(
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    )
    for (pool, size, arm), got in sorted(cells.items()):
        mean = [statistics.mean(x[i] for x in got) for i in range(4)]
        above_dpo = [x[0] - x[1] for x in got]
        above_control = [x[0] - x[2] for x in got]
        print(
            f"| {pool} | {size} | `{arm}` | {len(got)} | {mean[0]:.1f} | {mean[1]:.1f} "
            f"| {mean[2]:.1f} | {mean[3]:.1f} | {_spread(above_dpo)} | {_spread(above_control)} "
            f"| {sum(d < 0 for d in above_control)} | {_per_seed([x[4] for x in got])} "
            f"| {_per_seed([x[5] for x in got])} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
