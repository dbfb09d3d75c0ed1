"""Tables of ``oracle_pits.jsonl``: each arm against the NLL-only control of the same cell.

An arm is a mode (``mc``, ``slips``, ...) with its training overrides and its starting model
(``init``); a cell is one warehouse partition SIZE|SEED. For every arm this prints its mean
greedy accuracy over seeds, and its difference to the ``nll`` row of the same warehouse,
partition and starting model, with the arm's training overrides but ``dpo_beta`` (with the NLL
term on, the control's DPO term has no gradient at any beta): mean ± standard deviation over
seeds, and the number of seeds in which the arm is below the control. The latest row of a
cell counts (reproduction checks append copies).

    python docs/experiments/oracle_summary.py [HOME ...]

HOME limits the rows to those warehouses (default: every row). Pure reading; no torch.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROWS = Path(__file__).with_name("oracle_pits.jsonl")


def arm(row: dict) -> str:
    """The arm's name: mode, overrides and starting model."""
    parts = [row["pits"]]
    parts += [f"{k}={v:g}" for k, v in sorted((row.get("training") or {}).items())]
    if row.get("init"):
        parts.append(f"init={row['init']}")
    return " ".join(parts)


def control_arm(row: dict) -> str:
    """The name of ``row``'s control: ``nll`` with its starting model and its training
    overrides but ``dpo_beta``."""
    training = {k: v for k, v in (row.get("training") or {}).items() if k != "dpo_beta"}
    return arm({"pits": "nll", "training": training, "init": row.get("init")})


def latest(rows: list[dict]) -> dict[tuple, dict]:
    """``(home, size, seed, init, arm) -> row``, the last row of each."""
    out = {}
    for row in rows:
        out[(row["home"], row["size"], row["seed"], row.get("init"), arm(row))] = row
    return out


def summary(rows: list[dict]) -> list[str]:
    cells = latest(rows)
    groups: dict[tuple, list[dict]] = {}
    for (home, size, _, init, name), row in cells.items():
        groups.setdefault((row["pool_seed"], home, size, init, name), []).append(row)
    header = "| pool | size | arm | seeds | accuracy | minus nll | below nll | start |"
    lines = [header, "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (pool, home, size, init, name), group in sorted(groups.items(), key=_order):
        group.sort(key=lambda r: r["seed"])
        acc = [r["per_step_dpo"] for r in group]
        diffs = []
        for r in group:
            control = cells.get((home, size, r["seed"], init, control_arm(r)))
            if control is not None and control is not r:
                diffs.append(r["per_step_dpo"] - control["per_step_dpo"])
        start = [r.get("init_accuracy", r["sft"]) for r in group]
        lines.append(
            f"| {pool} | {size} | {name} | {len(group)} | {statistics.mean(acc):.1f} | "
            f"{_spread(diffs)} | {sum(d < 0 for d in diffs) if diffs else '—'} | "
            f"{statistics.mean(start):.1f} |"
        )
    return lines


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}"


def _order(item: tuple) -> tuple:
    (pool, home, size, init, name), _ = item
    return (pool, home, init or "", size, name)


def read_rows() -> list[dict]:
    """Every row of ``oracle_pits.jsonl``, in file order."""
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


def main(*homes: str) -> None:
    rows = read_rows()
    if homes:
        rows = [r for r in rows if r["home"] in homes]
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main(*sys.argv[1:])
