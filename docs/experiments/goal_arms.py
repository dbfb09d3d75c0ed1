"""Do per-step negatives beat the same stage without them when a decision has several right
answers? The `didactic` preset on path-star graphs with ``goal_arms`` arms to the goal.

    python docs/experiments/goal_arms.py run ROOT DEGREE GOAL_ARMS [GOAL_ARMS ...] [-- K=V ...]
    python docs/experiments/goal_arms.py table ROOT [ROOT ...]

``run`` runs ``synthdata run`` on the preset with ``task.star_graph.degree: DEGREE`` and each
``goal_arms`` value, each in its own warehouse ``ROOT/degree=D,goal_arms=K`` (one already there
is reused stage by stage); extra ``K=V`` pairs after ``--`` are YAML overrides of the
preset (dotted keys, e.g. ``data_sizes=[3000]``).

``table`` reads every warehouse under the ROOTs and prints, per (degree, goal_arms), method and
data size: whole-path accuracy and first-step accuracy, mean over seeds with min-max, and each
method's paired difference from ``nll_control`` (per-step DPO's stage with its negatives taken
out: the same chosen sides, pairs and updates) with its 95% bootstrap interval over seeds and
problems (``curves.compare``). It appends one JSON row per cell to
``docs/experiments/goal_arms.jsonl``.

Why: in the embedded chain task every decision has one right answer, and a negative at a pit
moved its probability onto other wrong answers (docs/experiments/oracle_pits.md). With
``goal_arms = k`` of ``degree`` arms ending at the goal, the decision has k right answers and
``degree - k`` wrong ones; lowering the one wrong arm raises every right one, while the NLL of
one right arm lowers the others. If the negatives help anywhere on this kind of task, it is
at ``goal_arms = degree - 1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import yaml

from synthdata_assets.config import load_config
from synthdata_assets.curves import compare

sys.path.insert(0, str(Path(__file__).parent))
from didactic_epochs import append_rows, nested, run_study, warehouses  # noqa: E402

HERE = Path(__file__).resolve().parent
ROWS = HERE / "goal_arms.jsonl"
METHODS = ("sft", "rft", "per_step_dpo", "nll_control", "dpo")


def run(root: Path, degree: int, goal_arms: int, extra: dict) -> Path:
    task = extra.get("task", {})
    star = {**task.get("star_graph", {}), "degree": degree, "goal_arms": goal_arms}
    config = {"preset": "didactic", **extra, "task": {**task, "star_graph": star}}
    return run_study(root / f"degree={degree},goal_arms={goal_arms}", config)


def table(home: Path) -> list[dict]:
    """One row per method and data size of one warehouse."""
    config = yaml.safe_load((home / "study.yaml").read_text())
    resolved = load_config(config_path=str(home / "study.yaml"))
    first = pl.read_parquet(home / "tables" / "first_step_curves.parquet")
    evaluations = pl.read_parquet(home / "tables" / "evaluations" / "**" / "*.parquet")
    paired = compare(evaluations, reference="nll_control").paired
    rows = []
    for (method, size), cell in first.group_by("method", "data_size"):
        if method not in METHODS:
            continue
        diff = paired.filter((pl.col("method") == method) & (pl.col("data_size") == size))
        rows.append(
            {
                "home": str(home),
                "degree": resolved.task.star_graph.degree,
                "goal_arms": resolved.task.star_graph.goal_arms,
                "pool_seed": resolved.task.pool_seed,
                "dpo_sft_weight": resolved.training.dpo_sft_weight,
                "overrides": {k: v for k, v in config.items() if k != "preset"},
                "method": method,
                "data_size": size,
                "seeds": sorted(cell["seed"].to_list()),
                "accuracy": cell["accuracy"].mean(),
                "accuracy_range": [cell["accuracy"].min(), cell["accuracy"].max()],
                "first_step": cell["first_step_accuracy"].mean(),
                "first_step_range": [
                    cell["first_step_accuracy"].min(),
                    cell["first_step_accuracy"].max(),
                ],
                "minus_control_points": diff["difference"].item() if diff.height else None,
                "minus_control_ci": [diff["ci_low"].item(), diff["ci_high"].item()]
                if diff.height
                else None,
            }
        )
    return sorted(rows, key=lambda r: (r["data_size"], METHODS.index(r["method"])))


def print_table(rows: list[dict]) -> None:
    print(
        "| degree | goal_arms | pool | DPO's NLL weight | size | seeds | method | accuracy | "
        "first step | minus nll_control |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        acc = r["accuracy_range"]
        fs = r["first_step_range"]
        ci = r["minus_control_ci"]
        diff = (
            f"{r['minus_control_points']:+.1f} ({ci[0]:+.1f}, {ci[1]:+.1f})"
            if ci and r["method"] != "nll_control"
            else ""
        )
        print(
            f"| {r['degree']} | {r['goal_arms']} | {r['pool_seed']} | {r['dpo_sft_weight']} | "
            f"{r['data_size']} | {len(r['seeds'])} | {r['method']} | "
            f"{100 * r['accuracy']:.1f} ({100 * acc[0]:.1f}-{100 * acc[1]:.1f}) | "
            f"{100 * r['first_step']:.1f} ({100 * fs[0]:.1f}-{100 * fs[1]:.1f}) | {diff} |"
        )


def main(argv: list[str]) -> None:
    command, *rest = argv
    extra = {}
    if "--" in rest:
        at = rest.index("--")
        rest, extra = rest[:at], nested(rest[at + 1 :])
    if command == "run":
        root, degree, *arms = rest
        homes = [run(Path(root), int(degree), int(k), extra) for k in arms]
    elif command == "table":
        homes = warehouses(rest)
    else:
        raise SystemExit(__doc__)
    rows = [row for home in homes for row in table(home)]
    print_table(rows)
    append_rows(ROWS, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
