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


def _has_dead_end(specs: dict[str, str], problem_id: str, solution: str) -> bool:
    """Whether ``solution`` has a step line naming one of its problem's dead ends."""
    dead = {q.name for q in embedded._parse(specs[problem_id]).spurious}
    return any(embedded.step_name(s.strip()) in dead for s in split_steps(solution, "lines"))


def _paired_dead_end(specs: dict[str, str], evals: pl.DataFrame, a: str, b: str) -> dict:
    """Method ``a``'s share of solutions with a dead-end line minus ``b``'s, in points, paired
    by (seed, problem), with a 95% bootstrap interval that resamples test problems."""
    flags = {}
    for method in (a, b):
        rows = evals.filter(pl.col("method") == method)
        flags[method] = {
            (seed, pid): _has_dead_end(specs, pid, text)
            for seed, pid, text in rows.select("seed", "problem_id", "completion").iter_rows()
        }
    keys = sorted(flags[a].keys() & flags[b].keys())
    problems = sorted({pid for _, pid in keys})
    index = {pid: i for i, pid in enumerate(problems)}
    diff = np.zeros(len(problems))  # summed over seeds, per problem
    for key in keys:
        diff[index[key[1]]] += flags[a][key] - flags[b][key]
    per_seed = len(keys) / len(problems)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(problems), size=(BOOTSTRAP, len(problems)))
    means = diff[draws].mean(axis=1) / per_seed
    low, high = np.percentile(100 * means, [2.5, 97.5])
    return {
        "points": round(100 * diff.mean() / per_seed, 2),
        "ci95": [round(float(low), 2), round(float(high), 2)],
        "pairs": len(keys),
    }


def _count(specs: dict[str, str], rows: pl.DataFrame, text: str) -> dict:
    n = spurious_sol = spurious_lines = dead_sol = 0
    right = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for pid, solution, correct in rows.select("problem_id", text, "is_correct").iter_rows():
        k = embedded.step_labels(specs[pid], solution).count("spurious")
        has_dead = _has_dead_end(specs, pid, solution)
        n += 1
        spurious_sol += k > 0
        spurious_lines += k
        dead_sol += has_dead
        total[has_dead] += 1
        right[has_dead] += bool(correct)

    def acc(flag: bool) -> float | None:
        return round(100 * right[flag] / total[flag], 1) if total[flag] else None

    return {
        "n": n,
        "with_spurious_%": round(100 * spurious_sol / n, 1),
        "spurious_per_solution": round(spurious_lines / n, 3),
        "with_dead_end_%": round(100 * dead_sol / n, 1),
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
    evals = pl.read_parquet(tables / "evaluations" / "**" / "*.parquet")
    evals = evals.with_columns(pl.col("is_correct").fill_null(False))
    sizes = sorted(evals["data_size"].unique()) if flags else [None]
    for size in sizes:
        row = {
            "home": home,
            "label": label,
            "cpu": torch.backends.cpu.get_cpu_capability(),
            **({} if size is None else {"data_size": size}),
            "sft_data": _count(specs, _at(teacher, size).filter(pl.col("is_correct")), "solution"),
        }
        scored = _at(evals, size)
        for method in sorted(evals["method"].unique()):
            row[method] = _count(specs, scored.filter(pl.col("method") == method), "completion")
        if size is not None and {"per_step_dpo", "nll_control"} <= set(evals["method"]):
            row["dead_end_per_step_dpo_minus_control"] = _paired_dead_end(
                specs, scored, "per_step_dpo", "nll_control"
            )
        print(json.dumps(row))
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
