"""How often SFT's data and each model's test solutions hold a spurious step line.

    python docs/experiments/spurious_lines.py HOME [LABEL]

``HOME`` is a warehouse (``SYNTHDATA_HOME``, or a copy of its ``tables/``) of one embedded
partition. Lines are labelled with the task's ground truth (``embedded.step_labels``):
``spurious`` is a true step line about a dead end (a derived quantity the target does not
need), which the oracle teacher inserts before a needed step at ``teacher.spurious_rate``.
``dead_end`` counts any line that names a dead end, true or not. For the teacher's verified
solutions (what SFT trains on) and for every method's greedy test solutions (the
``evaluations`` table): the share of solutions with at least one spurious line, spurious
lines per solution, the share with a dead-end line, and the accuracy of solutions with and
without a dead-end line. Appends one row to ``spurious_lines.jsonl`` next to this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import torch

from synthdata_assets.steps import split_steps
from synthdata_assets.tasks import embedded

OUT = Path(__file__).with_name("spurious_lines.jsonl")


def _count(specs: dict[str, str], rows: pl.DataFrame, text: str) -> dict:
    n = spurious_sol = spurious_lines = dead_sol = 0
    right = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for pid, solution, correct in rows.select("problem_id", text, "is_correct").iter_rows():
        world = embedded._parse(specs[pid])
        dead = {q.name for q in world.spurious}
        labels = embedded.step_labels(specs[pid], solution)
        names = [embedded.step_name(s.strip()) for s in split_steps(solution, "lines")]
        k = labels.count("spurious")
        has_dead = any(name in dead for name in names)
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


def main(home: str, label: str = "") -> None:
    tables = Path(home) / "tables"
    problems = pl.read_parquet(tables / "problems.parquet")
    specs = dict(problems.select("problem_id", "spec").iter_rows())
    teacher = pl.read_parquet(tables / "teacher_solutions" / "**" / "*.parquet")
    evals = pl.read_parquet(tables / "evaluations" / "**" / "*.parquet")
    row = {
        "home": home,
        "label": label,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "sft_data": _count(specs, teacher.filter(pl.col("is_correct")), "solution"),
    }
    evals = evals.with_columns(pl.col("is_correct").fill_null(False))
    for method in sorted(evals["method"].unique()):
        row[method] = _count(specs, evals.filter(pl.col("method") == method), "completion")
    print(json.dumps(row))
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
