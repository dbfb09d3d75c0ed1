"""Do per-step negatives sharpen a decision the model makes partly right? Path-star graphs with
a learnable hint (``task.star_graph.hint_rate``), split by hinted and unhinted test problems.

    python docs/experiments/hint.py ROOT [ROOT ...]

Reads every warehouse under the ROOTs (made by ``goal_arms.py run`` with
``task.star_graph.hint_rate`` among its overrides) and prints, per warehouse, method and data
size, on the hinted test problems and on the others apart:

- whole-path and first-step accuracy, mean over seeds with min-max;
- how often the first step is an arm out of the start at all (right or wrong), so first-step
  accuracy can be read against picking an arm at random (on hinted problems the right arm is
  the hint-labelled one, so following the hint and a right first step are the same);
- each method's paired difference from ``nll_control``, in whole-path and in first-step
  accuracy, (the same pairs and updates with each
  rejected side set to its chosen side) with a 95% bootstrap interval over seeds and problems
  (``curves.compare`` on that subset of the test problems).

It also counts, per size, how many of the per-step pairs come from hinted training problems,
and appends one JSON row per cell to ``docs/experiments/hint.jsonl``.

Why: on the standard graph no small model learns the decision, so a negative at it only moves
probability among arms the model cannot tell apart (docs/experiments/goal_arms.md). The hint
makes a share of the decisions learnable from one lookup. If the negatives sharpen a
partly learnt decision faster than the positives alone, per-step DPO is above ``nll_control``
on the hinted problems at the sizes where SFT has not yet learnt the hint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import yaml

from synthdata_assets.config import load_config
from synthdata_assets.curves import compare
from synthdata_assets.tasks import star_graph as sg

HERE = Path(__file__).resolve().parent
ROWS = HERE / "hint.jsonl"
METHODS = ("sft", "rft", "per_step_dpo", "nll_control", "dpo")


def _first_steps(evaluations: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """Each evaluation with the problem's ``hinted`` flag, whether its first line is a true
    first step, and whether it is an arm's first node."""
    specs = dict(zip(problems["problem_id"], problems["spec"], strict=True))
    parsed = {pid: sg.StarProblem.from_spec(pid, spec) for pid, spec in specs.items()}
    firsts = {pid: {str(a[0]) for a in p.arms()} for pid, p in parsed.items()}
    right = {pid: {str(path[0]) for path in p.paths} for pid, p in parsed.items()}
    rows = []
    for pid, completion in zip(evaluations["problem_id"], evaluations["completion"], strict=True):
        lines = sg.parse_path(completion or "")
        first = lines[0] if lines else None
        rows.append(
            {
                "hinted": parsed[pid].hinted,
                "first_right": first in right[pid],
                "picks_arm": first in firsts[pid],
            }
        )
    return pl.concat([evaluations, pl.DataFrame(rows)], how="horizontal")


def pair_sources(home: Path, problems: pl.DataFrame) -> dict[int, dict[str, int]]:
    """Per data size (seed 0): how many per-step pairs come from hinted training problems."""
    pairs = pl.read_parquet(home / "tables" / "preference_pairs" / "**" / "*.parquet")
    hinted = problems.select(
        "problem_id", hinted=pl.col("spec").str.contains('"hinted": true', literal=True)
    )
    pairs = pairs.filter((pl.col("seed") == 0) & (pl.col("kind") == "per_step"))
    counts = pairs.join(hinted, on="problem_id").group_by("data_size", "hinted").len()
    out: dict[int, dict[str, int]] = {}
    for size, flag, n in counts.iter_rows():
        out.setdefault(size, {})["hinted" if flag else "unhinted"] = n
    return out


def table(home: Path) -> list[dict]:
    """One row per method, data size and subset (hinted or not) of one warehouse."""
    config = yaml.safe_load((home / "study.yaml").read_text())
    resolved = load_config(config_path=str(home / "study.yaml"))
    star = resolved.task.star_graph
    problems = pl.read_parquet(home / "tables" / "problems.parquet")
    evaluations = pl.read_parquet(home / "tables" / "evaluations" / "**" / "*.parquet")
    evaluations = _first_steps(evaluations, problems)
    sources = pair_sources(home, problems)
    rows = []
    for flag in (True, False):
        subset = evaluations.filter(pl.col("hinted") == flag)
        paired = compare(subset, reference="nll_control").paired
        # The same comparison on the first step alone: the decision the hint is about, apart
        # from the lookups after it.
        first = compare(
            subset.with_columns(is_correct=pl.col("first_right")), reference="nll_control"
        ).paired
        per_seed = subset.group_by("method", "data_size", "seed").agg(
            accuracy=pl.col("is_correct").mean(),
            first_step=pl.col("first_right").mean(),
            picks_arm=pl.col("picks_arm").mean(),
            n=pl.len(),
        )
        for (method, size), cell in per_seed.group_by("method", "data_size"):
            if method not in METHODS:
                continue
            diff = paired.filter((pl.col("method") == method) & (pl.col("data_size") == size))
            fdiff = first.filter((pl.col("method") == method) & (pl.col("data_size") == size))
            rows.append(
                {
                    "home": str(home),
                    "degree": star.degree,
                    "goal_arms": star.goal_arms,
                    "hint_rate": star.hint_rate,
                    "hint_labels": star.hint_labels,
                    "pool_seed": resolved.task.pool_seed,
                    "dpo_sft_weight": resolved.training.dpo_sft_weight,
                    "overrides": {k: v for k, v in config.items() if k != "preset"},
                    "subset": "hinted" if flag else "unhinted",
                    "test_problems": int(cell["n"].max()),
                    "method": method,
                    "data_size": size,
                    "seeds": sorted(cell["seed"].to_list()),
                    "accuracy": cell["accuracy"].mean(),
                    "accuracy_range": [cell["accuracy"].min(), cell["accuracy"].max()],
                    "first_step": cell["first_step"].mean(),
                    "picks_arm": cell["picks_arm"].mean(),
                    "per_step_pairs_seed0": sources.get(size, {}),
                    "minus_control_points": diff["difference"].item() if diff.height else None,
                    "minus_control_ci": [diff["ci_low"].item(), diff["ci_high"].item()]
                    if diff.height
                    else None,
                    "first_minus_control_points": fdiff["difference"].item()
                    if fdiff.height
                    else None,
                    "first_minus_control_ci": [fdiff["ci_low"].item(), fdiff["ci_high"].item()]
                    if fdiff.height
                    else None,
                }
            )
    return sorted(rows, key=lambda r: (r["data_size"], r["subset"], METHODS.index(r["method"])))


def print_table(rows: list[dict]) -> None:
    print(
        "| hint_rate | pool | size | subset | seeds | method | accuracy | first step | "
        "an arm | minus nll_control | first step minus nll_control |"
    )
    print("| ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        acc = r["accuracy_range"]
        diff, fdiff = (
            f"{r[f'{key}_points']:+.1f} ({r[f'{key}_ci'][0]:+.1f}, {r[f'{key}_ci'][1]:+.1f})"
            if r[f"{key}_ci"] and r["method"] != "nll_control"
            else ""
            for key in ("minus_control", "first_minus_control")
        )
        print(
            f"| {r['hint_rate']} | {r['pool_seed']} | {r['data_size']} | {r['subset']} "
            f"({r['test_problems']}) | {len(r['seeds'])} | {r['method']} | "
            f"{100 * r['accuracy']:.1f} ({100 * acc[0]:.1f}-{100 * acc[1]:.1f}) | "
            f"{100 * r['first_step']:.1f} | {100 * r['picks_arm']:.1f} | {diff} | {fdiff} |"
        )
    sources = {(r["home"], r["data_size"]): r["per_step_pairs_seed0"] for r in rows}
    for (home, size), counts in sorted(sources.items()):
        print(f"per-step pairs at {size} (seed 0), {Path(home).name}: {counts}")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    homes = sorted(h.parent for r in argv for h in Path(r).glob("*/study.yaml"))
    rows = [row for home in homes for row in table(home)]
    print_table(rows)
    with ROWS.open("a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
