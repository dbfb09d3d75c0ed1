"""How often SFT's data and each model's test solutions hold a spurious step line.

    python docs/experiments/spurious_lines.py HOME [LABEL] [--by-size]

``HOME`` is a warehouse (``SYNTHDATA_HOME``, or a copy of its ``tables/``) of one embedded
partition. Lines are labelled with the task's ground truth (``embedded.step_labels``):
``spurious`` is a true step line about a dead end (a derived quantity the target does not
need), which the oracle teacher inserts before a needed step at ``teacher.spurious_rate``.
``dead_end`` counts any line that names a dead end, true or not. For the teacher's verified
solutions (what SFT trains on) and for every method's greedy test solutions (the
``evaluations`` table): the share of solutions with at least one spurious line, spurious
lines per solution, the share with a dead-end line, and the accuracy of solutions with and
without a dead-end line. Appends one row to ``spurious_lines.jsonl`` next to this file, over
all of the warehouse's partitions; with ``--by-size`` (twenty-ninth session), one row per data
size instead (its ``data_size`` field set), over that size's seeds, with per-step DPO's share
of test solutions with a dead-end line minus ``nll_control``'s, paired by problem and seed, and
its 95% bootstrap interval over test problems: what the negatives do to those lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

from synthdata_assets.steps import split_steps
from synthdata_assets.tasks import embedded

OUT = Path(__file__).with_name("spurious_lines.jsonl")
BOOTSTRAP = 2000


def has_dead_end(spec: str, solution: str) -> bool:
    """Whether ``solution`` has a step line naming one of its problem's dead ends."""
    dead = {q.name for q in embedded._parse(spec).spurious}
    return any(embedded.step_name(s.strip()) in dead for s in split_steps(solution, "lines"))


def _labelled(specs: dict[str, str], rows: pl.DataFrame, text: str) -> pl.DataFrame:
    """``rows`` with each solution's (column ``text``) spurious lines and whether it has a
    dead-end line: what every count below reads, so each solution is parsed once."""
    spurious, dead = [], []
    for pid, solution in rows.select("problem_id", text).iter_rows():
        spurious.append(embedded.step_labels(specs[pid], solution).count("spurious"))
        dead.append(has_dead_end(specs[pid], solution))
    return rows.with_columns(
        spurious_lines=pl.Series(spurious, dtype=pl.Int64),
        has_dead_end=pl.Series(dead, dtype=pl.Boolean),
    )


def _paired_dead_end(a: pl.DataFrame, b: pl.DataFrame) -> dict:
    """Labelled solutions ``a``'s share with a dead-end line minus ``b``'s, in points, paired
    by (seed, problem), with a 95% bootstrap interval that resamples test problems."""
    keys = ["seed", "problem_id"]
    both = a.select(*keys, "has_dead_end").join(
        b.select(*keys, other="has_dead_end"), on=keys, how="inner"
    )
    # summed over seeds, per problem, in the problems' sorted order
    per_problem = (
        both.group_by("problem_id")
        .agg((pl.col("has_dead_end").cast(pl.Int64) - pl.col("other").cast(pl.Int64)).sum())
        .sort("problem_id")
    )
    diff = per_problem["has_dead_end"].to_numpy().astype(float)
    per_seed = both.height / len(diff)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    means = diff[draws].mean(axis=1) / per_seed
    low, high = np.percentile(100 * means, [2.5, 97.5])
    return {
        "points": round(100 * diff.mean() / per_seed, 2),
        "ci95": [round(float(low), 2), round(float(high), 2)],
        "pairs": both.height,
    }


def _count(rows: pl.DataFrame) -> dict:
    """The figures of one group of :func:`_labelled` solutions."""
    n = rows.height
    dead = rows["has_dead_end"]

    def acc(flag: bool) -> float | None:
        group = rows.filter(dead == flag)
        right = int(group["is_correct"].cast(pl.Int64).sum())
        return round(100 * right / group.height, 1) if group.height else None

    return {
        "n": n,
        "with_spurious_%": round(100 * int((rows["spurious_lines"] > 0).sum()) / n, 1),
        "spurious_per_solution": round(int(rows["spurious_lines"].sum()) / n, 3),
        "with_dead_end_%": round(100 * int(dead.sum()) / n, 1),
        "acc_with_dead_end": acc(True),
        "acc_without_dead_end": acc(False),
    }


def _at(frame: pl.DataFrame, size: int | None) -> pl.DataFrame:
    """``frame``'s rows of one data size (None: all of them)."""
    return frame if size is None else frame.filter(pl.col("data_size") == size)


def main(home: str, label: str = "", *flags: str) -> None:
    if set(flags) - {"--by-size"}:
        raise SystemExit(f"unknown flags {sorted(set(flags) - {'--by-size'})}; only --by-size")
    tables = Path(home) / "tables"
    problems = pl.read_parquet(tables / "problems.parquet")
    specs = dict(problems.select("problem_id", "spec").iter_rows())
    teacher = pl.read_parquet(tables / "teacher_solutions" / "**" / "*.parquet")
    teacher = _labelled(specs, teacher.filter(pl.col("is_correct")), "solution")
    evals = pl.read_parquet(tables / "evaluations" / "**" / "*.parquet")
    evals = _labelled(
        specs, evals.with_columns(pl.col("is_correct").fill_null(False)), "completion"
    )
    methods = sorted(evals["method"].unique())
    sizes = sorted(evals["data_size"].unique()) if flags else [None]
    for size in sizes:
        row = {
            "home": home,
            "label": label,
            "cpu": torch.backends.cpu.get_cpu_capability(),
            **({} if size is None else {"data_size": size}),
            "sft_data": _count(_at(teacher, size)),
        }
        scored = {m: _at(evals, size).filter(pl.col("method") == m) for m in methods}
        for method in methods:
            row[method] = _count(scored[method])
        if size is not None and {"per_step_dpo", "nll_control"} <= set(methods):
            row["dead_end_per_step_dpo_minus_control"] = _paired_dead_end(
                scored["per_step_dpo"], scored["nll_control"]
            )
        print(json.dumps(row))
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
