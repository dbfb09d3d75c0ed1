"""Does each method write "some hint label" first, right or wrong? Path-star graphs with a
learnable hint (``task.star_graph.hint_rate``), the first solution token's probability.

    python docs/experiments/hint_shortcut.py HOME [HOME ...]

For every (data size, seed) partition of each warehouse and every trained method, scores the
test questions and sums the probability of the first solution token on the hint labels:

- on the hinted problems, on the right arm (the one hint label out of the start) and on the
  other hint labels (none of which is an arm out of the start);
- on the unhinted problems, on every hint label (none is an arm out of the start there, so
  all of it is the shortcut "write some hint label").

Prints the mean over seeds per warehouse, method and size, and each method's difference from
``nll_control`` per seed (mean, min to max), and appends JSON rows to
``docs/experiments/hint_shortcut.jsonl``.

Why: with a rarer hint (``hint_rate: 0.25``) SFT's first line on hinted test problems was a
hint label every time, the right one 43% of the time (one seed), and per-step DPO fell far
below ``nll_control`` there. If its negatives push hint labels down wherever they were written,
including on unhinted problems where they are wrong, they push down the right arm of the
hinted problems with them: a negative lowers its token also where that token is right. (They
do not: per-step DPO's probability on hint labels in the unhinted problems is the control's,
docs/experiments/hint.md table 9.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from synthdata_assets.config import load_config
from synthdata_assets.tasks import star_graph as sg
from warehouse.layout import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
from didactic_epochs import append_rows  # noqa: E402
from first_step_mass import first_token_probs, trained_checkpoints  # noqa: E402

HERE = Path(__file__).resolve().parent
ROWS = HERE / "hint_shortcut.jsonl"
FIGURES = ("hinted_right_arm", "hinted_other_hint", "unhinted_hint")


def shortcut_masses(
    folder: Path, problems: list[sg.StarProblem], hint: frozenset[int]
) -> dict[str, float]:
    """Mean first-token probability on the right arm and the other hint labels (hinted
    problems), and on every hint label (unhinted problems)."""
    sums = dict.fromkeys(FIGURES, 0.0)
    counts = {"hinted": 0, "unhinted": 0}
    for p, probs, label_ids in first_token_probs(folder, problems):
        if not hint <= label_ids.keys():
            raise SystemExit(f"{folder}: a hint label is not one token")
        on = {label: float(probs[label_ids[label]]) for label in hint}
        if p.hinted:
            right = {a[0] for a in p.paths}
            sums["hinted_right_arm"] += sum(v for k, v in on.items() if k in right)
            sums["hinted_other_hint"] += sum(v for k, v in on.items() if k not in right)
            counts["hinted"] += 1
        else:
            sums["unhinted_hint"] += sum(on.values())
            counts["unhinted"] += 1
    return {
        f: sums[f] / max(1, counts["hinted" if f.startswith("hinted") else "unhinted"])
        for f in FIGURES
    }


def main(homes: list[str]) -> None:
    rows = []
    for home in map(Path, homes):
        warehouse = Warehouse(home)
        config = load_config(config_path=str(home / "study.yaml"))
        hint = sg.StarGraphParams(**config.task.star_graph.model_dump()).hint_set
        if not hint:
            raise SystemExit(f"{home}: no hint (task.star_graph.hint_rate is 0)")
        table = pl.read_parquet(warehouse.table_file("problems")).filter(pl.col("split") == "test")
        problems = [
            sg.StarProblem.from_spec(pid, spec)
            for pid, spec in zip(table["problem_id"], table["spec"], strict=True)
        ]
        for method, size, seed, folder in trained_checkpoints(warehouse):
            row = {"home": str(home), "method": method, "data_size": size, "seed": seed}
            rows.append(row | shortcut_masses(folder, problems, hint))
            print(json.dumps(rows[-1]), flush=True)
    frame = pl.DataFrame(rows)
    summary = (
        frame.group_by("home", "method", "data_size")
        .agg(pl.col(FIGURES).mean(), seeds=pl.len())
        .sort("home", "data_size", "method")
    )
    print("\n| home | size | method | seeds | " + " | ".join(FIGURES) + " |")
    print("| --- | ---: | --- | ---: |" + " ---: |" * len(FIGURES))
    for r in summary.iter_rows(named=True):
        cells = " | ".join(f"{r[f]:.3f}" for f in FIGURES)
        where = Path(r["home"]).name
        print(f"| {where} | {r['data_size']} | {r['method']} | {r['seeds']} | {cells} |")
    control = frame.filter(pl.col("method") == "nll_control").select(
        "home", "data_size", "seed", *[pl.col(f).alias(f"{f}_control") for f in FIGURES]
    )
    diffs = frame.join(control, on=["home", "data_size", "seed"]).filter(
        pl.col("method") != "nll_control"
    )
    print("\nminus nll_control's, per seed (mean, min to max):")
    print("| home | size | method | " + " | ".join(FIGURES) + " |")
    print("| --- | ---: | --- |" + " --- |" * len(FIGURES))
    for (home, size, method), group in diffs.group_by(
        "home", "data_size", "method", maintain_order=True
    ):
        cells = []
        for f in FIGURES:
            d = group[f] - group[f"{f}_control"]
            cells.append(f"{d.mean():+.3f} ({d.min():+.3f} to {d.max():+.3f})")
        print(f"| {Path(home).name} | {size} | {method} | " + " | ".join(cells) + " |")
    append_rows(ROWS, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
