"""Where each method puts its probability at the first step of a path-star solution.

    python docs/experiments/first_step_mass.py [--hinted] HOME [HOME ...]

For every (data size, seed) partition of each warehouse (a `didactic`-style study on
``star_graph``) and every trained method, scores the test questions and splits the
probability of the first solution token among what that token would name: a right arm (the
first node of a true path), a wrong arm out of the start, the start, the goal, another node
of the graph, or anything else (a label not in the graph, a newline, end of text). Node labels
are one token each in this task's tokenizer (checked). It also counts the same kinds among
the first lines of the per-step pairs' rejected sides: what the negatives push down.

``--hinted`` scores the hinted test problems alone (``task.star_graph.hint_rate``; rows get
``"subset": "hinted"``), where the right arm is the one whose first node is a hint label.

Prints one line per warehouse, method and size (mean over seeds) and appends JSON rows to
``docs/experiments/first_step_mass.jsonl``. It measures the mechanism behind
``goal_arms.py``'s question: does the probability the negatives take off their tokens go to
the right arms, and does it raise them above the wrong ones (docs/experiments/goal_arms.md)?
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import torch

from synthdata_assets.tasks import star_graph as sg
from training.checkpoint import load_checkpoint
from training.prompts import format_prompt
from warehouse.layout import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
from didactic_epochs import append_rows  # noqa: E402

HERE = Path(__file__).resolve().parent
ROWS = HERE / "first_step_mass.jsonl"
METHODS = ("sft", "rft", "per_step_dpo", "nll_control", "dpo")
KINDS = ("right_arm", "wrong_arm", "start", "goal", "other_node", "elsewhere")


def node_kinds(p: sg.StarProblem) -> dict[str, set[int]]:
    """The graph's nodes by the first of ``KINDS`` (but ``elsewhere``) each belongs to."""
    groups = {
        "right_arm": {a[0] for a in p.paths},
        "wrong_arm": {a[0] for a in p.arms()},
        "start": {p.start},
        "goal": {p.goal},
        "other_node": {n for e in p.edges for n in e},
    }
    taken: set[int] = set()
    for kind, group in groups.items():
        groups[kind] = group - taken
        taken |= group
    return groups


def kind_of(p: sg.StarProblem, line: str) -> str:
    """Which of ``KINDS`` a first line names."""
    node = int(line) if line.strip().isdigit() else None
    return next((k for k, group in node_kinds(p).items() if node in group), "elsewhere")


def first_token_probs(
    folder: Path, problems: list[sg.StarProblem]
) -> Iterator[tuple[sg.StarProblem, torch.Tensor, dict[int, int]]]:
    """Per problem, the checkpoint's probabilities of the first solution token, with the
    token id of every label below 1000 that is one token."""
    model, tokenizer = load_checkpoint(str(folder))
    model.eval()
    label_ids = {}
    for n in range(1000):
        ids = tokenizer(str(n), add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            label_ids[n] = ids[0]
    with torch.no_grad():
        for p in problems:
            ids = tokenizer(format_prompt(p.question))["input_ids"]
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            yield p, torch.softmax(logits, -1), label_ids


def masses(folder: Path, problems: list[sg.StarProblem]) -> dict[str, float]:
    """Mean probability of each kind of first token over ``problems``."""
    total = dict.fromkeys(KINDS, 0.0)
    for p, probs, label_ids in first_token_probs(folder, problems):
        kinds = node_kinds(p)
        if not set().union(*kinds.values()) <= label_ids.keys():
            raise SystemExit(f"{folder}: a node label of {p.problem_id} is not one token")
        seen = 0.0
        for kind, group in kinds.items():
            mass = float(probs[[label_ids[n] for n in group]].sum()) if group else 0.0
            total[kind] += mass
            seen += mass
        total["elsewhere"] += 1.0 - seen
    return {k: v / len(problems) for k, v in total.items()}


def rejected_kinds(warehouse: Warehouse, problems: dict[str, sg.StarProblem]) -> dict:
    """Shares of ``KINDS`` among the first lines of the per-step pairs' rejected sides, over
    every partition of the warehouse (the negatives per-step DPO pushes down)."""
    pairs = pl.read_parquet(warehouse.tables / "preference_pairs" / "**" / "*.parquet")
    pairs = pairs.filter(pl.col("kind") == "per_step")
    counts = dict.fromkeys(KINDS, 0)
    for pid, rejected in zip(pairs["problem_id"], pairs["rejected"], strict=True):
        lines = sg.parse_path(rejected)
        counts[kind_of(problems[pid], lines[0] if lines else "")] += 1
    return {k: round(v / pairs.height, 3) for k, v in counts.items()} | {"pairs": pairs.height}


def trained_checkpoints(warehouse: Warehouse) -> list[tuple[str, int, int, Path]]:
    """(method, data size, seed, folder) of every trained method's checkpoint in ``METHODS``."""
    found = []
    for folder in sorted(warehouse.checkpoints.glob("*/data_size=*/seed=*")):
        method = folder.parents[1].name
        if method in METHODS:
            size, seed = (int(part.name.split("=")[1]) for part in (folder.parent, folder))
            found.append((method, size, seed, folder))
    return found


def _where(home: str) -> str:
    """A warehouse by its last two folders (the root names the pool or the settings)."""
    return "/".join(Path(home).parts[-2:])


def main(homes: list[str]) -> None:
    hinted = homes[:1] == ["--hinted"]
    homes = homes[1:] if hinted else homes
    subset = {"subset": "hinted"} if hinted else {}
    rows = []
    for home in map(Path, homes):
        warehouse = Warehouse(home)
        table = pl.read_parquet(warehouse.table_file("problems"))
        test = table.filter(pl.col("split") == "test")
        every = {
            pid: sg.StarProblem.from_spec(pid, spec)
            for pid, spec in zip(table["problem_id"], table["spec"], strict=True)
        }
        problems = [every[pid] for pid in test["problem_id"] if every[pid].hinted or not hinted]
        negatives = rejected_kinds(warehouse, every)
        print(json.dumps({"home": str(home), "rejected_first_lines": negatives}), flush=True)
        rows.append({"home": str(home), "method": "per_step_pairs", "rejected": negatives})
        for method, size, seed, folder in trained_checkpoints(warehouse):
            row = {"home": str(home), "method": method, "data_size": size, "seed": seed} | subset
            rows.append(row | masses(folder, problems))
            print(json.dumps(rows[-1]), flush=True)
    frame = pl.DataFrame([r for r in rows if "rejected" not in r])
    summary = (
        frame.group_by("home", "method", "data_size")
        .agg(pl.col(KINDS).mean().round(3), seeds=pl.len())
        .sort("home", "data_size", "method")
    )
    print("| home | size | method | seeds | " + " | ".join(KINDS) + " |")
    print("| --- | ---: | --- | ---: |" + " ---: |" * len(KINDS))
    for r in summary.iter_rows(named=True):
        cells = " | ".join(f"{r[k]:.3f}" for k in KINDS)
        print(
            f"| {_where(r['home'])} | {r['data_size']} | {r['method']} | {r['seeds']} | {cells} |"
        )
    control = frame.filter(pl.col("method") == "nll_control").select(
        "home", "data_size", "seed", control=pl.col("right_arm")
    )
    diffs = (
        frame.join(control, on=["home", "data_size", "seed"])
        .with_columns(diff=pl.col("right_arm") - pl.col("control"))
        .group_by("home", "method", "data_size")
        .agg(mean=pl.col("diff").mean(), low=pl.col("diff").min(), high=pl.col("diff").max())
        .filter(pl.col("method") != "nll_control")
        .sort("home", "data_size", "method")
    )
    print("\nright_arm minus nll_control's, per seed (mean, min to max):")
    for r in diffs.iter_rows(named=True):
        print(
            f"| {_where(r['home'])} | {r['data_size']} | {r['method']} | "
            f"{r['mean']:+.3f} ({r['low']:+.3f} to {r['high']:+.3f}) |"
        )
    append_rows(ROWS, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
