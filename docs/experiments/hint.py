"""Do per-step negatives sharpen a decision the model makes partly right? Path-star graphs with
a learnable hint (``task.star_graph.hint_rate``), split by hinted and unhinted test problems.

    python docs/experiments/hint.py ROOT [ROOT ...]
    python docs/experiments/hint.py plot docs/experiments/hint.png

Reads every warehouse under the ROOTs (made by ``goal_arms.py run`` with
``task.star_graph.hint_rate`` among its overrides) and prints, per warehouse, method and data
size, on the hinted test problems and on the others apart:

- whole-path and first-step accuracy, mean over seeds with min-max;
- how often the first step is an arm out of the start at all (right or wrong), so first-step
  accuracy can be read against picking an arm at random (on hinted problems the right arm is
  the hint-labelled one, so following the hint and a right first step are the same);
- each method's paired difference from ``nll_control`` (the same pairs and updates with each
  rejected side set to its chosen side), in whole-path and in first-step accuracy, with a 95%
  bootstrap interval over seeds and problems (``curves.compare`` on that subset of the test
  problems).

It also counts, per size and subset, the per-step pairs (every seed) by what the rejected
side's first line names (``first_line_kind``), and appends one JSON row per cell to
``docs/experiments/hint.jsonl``, with how the warehouse's rollouts were graded (``rollouts``:
"whole path" since ``2851070``; rows without the field were all graded on the completion
alone, so every first pit was step 1). ``plot`` draws per-step DPO's and RFT's differences from
``nll_control`` on the hinted problems from those rows (per warehouse and size of three or
more seeds, the last row with the most seeds).

Why: on the standard graph no small model learns the decision, so a negative at it only moves
probability among arms the model cannot tell apart (docs/experiments/goal_arms.md). The hint
makes a share of the decisions learnable from one lookup. If the negatives sharpen a
partly learnt decision faster than the positives alone, per-step DPO is above ``nll_control``
on the hinted problems at the sizes where SFT has not yet learnt the hint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import polars as pl
import yaml

from synthdata_assets import study
from synthdata_assets.config import ExperimentConfig, load_config
from synthdata_assets.curves import compare
from synthdata_assets.orchestrate import recorded_stages
from synthdata_assets.tasks import star_graph as sg

sys.path.insert(0, str(Path(__file__).parent))
from didactic_epochs import append_rows, warehouses  # noqa: E402
from first_step_mass import kind_of  # noqa: E402

HERE = Path(__file__).resolve().parent
ROWS = HERE / "hint.jsonl"
METHODS = ("sft", "rft", "per_step_dpo", "nll_control", "dpo")


def _first_steps(evaluations: pl.DataFrame, parsed: dict[str, sg.StarProblem]) -> pl.DataFrame:
    """Each evaluation with the problem's ``hinted`` flag, whether its first line is a true
    first step, and whether it is an arm's first node."""
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


# first_step_mass.KINDS with the hint labels that no arm starts with split out of the last two.
NEGATIVE_KINDS = (
    "right_arm",
    "wrong_arm",
    "start",
    "goal",
    "hint_label",
    "other_node",
    "elsewhere",
)


def first_line_kind(problem: sg.StarProblem, text: str, hint: frozenset[int]) -> str:
    """What the first line of ``text`` names (``first_step_mass.kind_of``), with a hint label
    that no arm out of the start begins with (deeper in an arm, or not in the graph) apart."""
    lines = sg.parse_path(text)
    line = lines[0] if lines else ""
    kind = kind_of(problem, line)
    if kind in ("other_node", "elsewhere") and line.isdigit() and int(line) in hint:
        return "hint_label"
    return kind


def negatives(home: Path, parsed: dict[str, sg.StarProblem], hint: frozenset[int]) -> dict:
    """Per data size and subset (every seed): how many per-step pairs there are, and what the
    rejected side's first line names. A ``right_arm`` there is a pair whose negative took the
    right first step: cut there (no rollout after it finished; every such negative before
    star_graph rollouts were graded on the whole path) or at the goal it then missed."""
    pairs = pl.read_parquet(home / "tables" / "preference_pairs" / "**" / "*.parquet")
    pairs = pairs.filter(pl.col("kind") == "per_step")
    out: dict = {}
    for size, pid, rejected in pairs.select("data_size", "problem_id", "rejected").iter_rows():
        problem = parsed[pid]
        cell = out.setdefault(size, {}).setdefault(
            "hinted" if problem.hinted else "unhinted", dict.fromkeys(NEGATIVE_KINDS, 0)
        )
        cell[first_line_kind(problem, rejected, hint)] += 1
    return out


def rollout_grading(home: Path, config: ExperimentConfig) -> str:
    """How the warehouse's rollouts were graded: "whole path" where every partition that has
    its ``step_rollouts`` made them after star_graph rollouts came to be graded on the prefix's
    steps and the completion (the recorded fingerprint is one this code accepts:
    ``study.STAGE_REVISIONS``), else "completion alone" (every first pit at step 1). A
    partition stopped before its rollouts is left out."""
    os.environ["DAGSTER_HOME"] = str(home / "dagster")  # the warehouse's instance
    accepted = study.accepted_fingerprints(config)["step_rollouts"]
    recorded = [
        recorded_stages(("step_rollouts",), study.partition_key(size, seed)).get("step_rollouts")
        for size, seed in config.partition_keys
    ]
    made = [r for r in recorded if r is not None]  # a partition stopped unfinished has none
    whole = bool(made) and all(r.fingerprint in accepted for r in made)
    return "whole path" if whole else "completion alone"


def table(home: Path) -> list[dict]:
    """One row per method, data size and subset (hinted or not) of one warehouse."""
    config = yaml.safe_load((home / "study.yaml").read_text())
    resolved = load_config(config_path=str(home / "study.yaml"))
    grading = rollout_grading(home, resolved)
    star = resolved.task.star_graph
    hint = sg.StarGraphParams(**star.model_dump()).hint_set
    problems = pl.read_parquet(home / "tables" / "problems.parquet")
    parsed = {  # every problem, parsed once for the evaluations and the pairs
        pid: sg.StarProblem.from_spec(pid, spec)
        for pid, spec in problems.select("problem_id", "spec").iter_rows()
    }
    evaluations = pl.read_parquet(home / "tables" / "evaluations" / "**" / "*.parquet")
    evaluations = _first_steps(evaluations, parsed)
    kinds = negatives(home, parsed, hint)
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
                    "rollouts": grading,
                    "subset": "hinted" if flag else "unhinted",
                    "test_problems": int(cell["n"].max()),
                    "method": method,
                    "data_size": size,
                    "seeds": sorted(cell["seed"].to_list()),
                    "accuracy": cell["accuracy"].mean(),
                    "accuracy_range": [cell["accuracy"].min(), cell["accuracy"].max()],
                    "first_step": cell["first_step"].mean(),
                    "picks_arm": cell["picks_arm"].mean(),
                    "per_step_negatives": kinds.get(size, {}).get("hinted" if flag else "unhinted"),
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
    print()
    print("What the per-step negatives' first lines name (pairs of every seed):")
    print()
    print(f"| home | size | subset | pairs | {' | '.join(NEGATIVE_KINDS)} |")
    print("| --- | ---: | --- | ---: |" + " ---: |" * len(NEGATIVE_KINDS))
    cells = {(r["home"], r["data_size"], r["subset"]): r["per_step_negatives"] for r in rows}
    for (home, size, subset), counts in sorted(cells.items()):
        if not counts:
            continue
        n = sum(counts.values())
        shares = " | ".join(f"{100 * counts[k] / n:.0f}%" for k in NEGATIVE_KINDS)
        print(f"| {Path(home).parent.name} | {size} | {subset} | {n} | {shares} |")


def _label(row: dict) -> str:
    training = row["overrides"].get("training", {})
    budget = f"lr {training.get('dpo_learning_rate', 2e-4):g}"
    if "dpo_epochs" in training:
        budget += f" x{training['dpo_epochs']}"
    if "dpo_beta" in training:
        budget += f", beta {training['dpo_beta']:g}"
    arms = "" if row["goal_arms"] == 1 else f", {row['goal_arms']} right arms"
    arms += "" if row["hint_rate"] == 0.5 else f", hint rate {row['hint_rate']:g}"
    rule = row["overrides"].get("credit", {}).get("pit_rule")
    pits = f", {rule}" if rule else ""
    # rows without the field were written before star_graph rollouts were graded on the path
    pits += ", whole-path grading" if row.get("rollouts") == "whole path" else ""
    if "rollouts_per_prefix" in row["overrides"].get("credit", {}):
        pits += f", M={row['overrides']['credit']['rollouts_per_prefix']}"
    size = f"n={row['data_size']} ({len(row['seeds'])})"
    return f"{budget}, pool {row['pool_seed']}{arms}{pits}, {size}"


def plot(path: Path) -> None:
    """Per-step DPO's and RFT's differences from ``nll_control`` on the hinted problems, whole
    path and first step, with their intervals: one line per recorded warehouse and size with
    three or more seeds (of its rows in ``hint.jsonl``, the last with the most seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {}
    for line in ROWS.read_text().splitlines():
        row = json.loads(line)
        # a warehouse rerun under other settings is another line (more seeds are not)
        settings = {k: v for k, v in row["overrides"].items() if k != "seeds"}
        key = (
            row["home"],
            json.dumps(settings, sort_keys=True),
            row["data_size"],
            row["method"],
        )
        wanted = (
            row["subset"] == "hinted"
            and row["method"] in ("per_step_dpo", "rft")
            and len(row["seeds"]) >= 3  # not the one-seed probes
            and len(row["seeds"]) >= len(last.get(key, {}).get("seeds", []))
        )
        if wanted:
            last[key] = row  # the most seeds of a warehouse and size, then the last row
    cells = sorted(
        {(home, settings, size) for home, settings, size, _ in last},
        key=lambda c: _label(last[(*c, "rft")]),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(cells) + 1.6), sharey=True)
    for ax, method in zip(axes, ("per_step_dpo", "rft"), strict=True):
        for i, cell in enumerate(cells):
            row = last[(*cell, method)]
            for key, shift, marker, name in (
                ("minus_control", -0.15, "o", "whole path"),
                ("first_minus_control", 0.15, "s", "first step"),
            ):
                mid, (low, high) = row[f"{key}_points"], row[f"{key}_ci"]
                ax.errorbar(
                    mid, i + shift, xerr=[[mid - low], [high - mid]], fmt=marker, capsize=2,
                    color="C0" if key == "minus_control" else "C1", label=name if i == 0 else None,
                )  # fmt: skip
        ax.axvline(0, color="grey", linestyle=":")
        ax.set_title(f"{method} minus nll_control", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yticks(range(len(cells)), [_label(last[(*c, "rft")]) for c in cells], fontsize=8)
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, fontsize=8)
    fig.suptitle("Hinted test problems: points against nll_control, 95% CI", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    if argv[0] == "plot":
        plot(Path(argv[1]))
        return
    rows = [row for home in warehouses(argv) for row in table(home)]
    print_table(rows)
    append_rows(ROWS, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
