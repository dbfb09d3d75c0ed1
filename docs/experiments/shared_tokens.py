"""Does lowering a token where a negative wrote it lower the same token where it is right?

    python docs/experiments/shared_tokens.py HOME [METHOD [CONTROL [N]]]
    python docs/experiments/shared_tokens.py --table

HOME is a warehouse of the chain task (``synthdata run`` with ``SYNTHDATA_HOME=HOME``) whose
runs include METHOD (default ``per_step_dpo``) and CONTROL (default ``nll_control``: the same
stage on the same chosen sides without the negatives). For every materialized (size, seed):

1. the *pushed* tokens: for each of the partition's per-step pairs (``preference_pairs``,
   ``kind = per_step``), the first token where the rejected side parts from the chosen side,
   counted by token and by the role it has in its step line ("After Cid, Fay has 9 - 3 = 6.":
   ``read`` Cid, ``name`` Fay, ``op`` -, ``b`` 3, ``c`` 6; ``answer`` the answer's value);
2. the gold solutions of the first N (default 1000) test problems under teacher forcing, scored
   by METHOD's, CONTROL's and pi_sft's models: the log-probability each gives the right token at
   every position of those roles.

Per (size, seed) and role it writes one JSON row to ``shared_tokens.jsonl`` next to this file:
mean log-probability of the right token for each model; METHOD minus CONTROL split by whether
the right token is one the negatives pushed down in that role (``pushed``: the most pushed
tokens that make up half of the role's departures; ``rest``: the role's other tokens); and the
Spearman correlation, over the role's tokens, between how often a token was pushed down and
METHOD minus CONTROL at its right positions. If negatives lowered the tokens they pushed
against wherever they occur, METHOD minus CONTROL is lower on ``pushed`` than on ``rest`` and
the correlation is negative. Run with one torch thread (``OMP_NUM_THREADS=1``). ``--table``
prints the rows as a table per (warehouse, role): each figure's mean ± sd over the cells, and in
how many cells METHOD gave the right token less probability than CONTROL.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import time
from pathlib import Path

import polars as pl

from training.checkpoint import load_checkpoint
from warehouse import Warehouse
from warehouse.query import run_query, table_sources

sys.path.insert(0, str(Path(__file__).parent))
import base_recipe  # noqa: E402
import sft_forgetting  # noqa: E402

OUT = Path(__file__).with_name("shared_tokens.jsonl")
ROLES = ("read", "name", "op", "b", "c", "answer")


def first_departure(tokenizer, chosen: str, rejected: str) -> tuple[str | None, int] | None:
    """(role, token) of the first token where ``rejected`` parts from ``chosen``
    (:func:`sft_forgetting.roles_of`); None where it never does (a prefix of it)."""
    a = tokenizer(chosen, add_special_tokens=False)["input_ids"]
    b = tokenizer(rejected, add_special_tokens=False)["input_ids"]
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if i is None:
        return None
    return sft_forgetting.roles_of(tokenizer, b[: i + 1])[i], b[i]


def pushed_tokens(pairs: pl.DataFrame, tokenizer) -> dict[str, collections.Counter]:
    """For each role, how many per-step pairs' rejected sides first part from their chosen
    side on each token."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for chosen, rejected in pairs.select("chosen", "rejected").iter_rows():
        departure = first_departure(tokenizer, chosen, rejected)
        if departure is not None and departure[0] is not None:
            counts[departure[0]][departure[1]] += 1
    return counts


def gold_logprobs(folder: str, test: pl.DataFrame) -> list[tuple[str, int, float]]:
    """(role, right token, log-probability) at every scored position of the gold solutions of
    ``test``, under the model at ``folder`` (teacher forcing)."""
    model, tokenizer = load_checkpoint(folder)
    model.eval()
    return [
        (role, token, logp)
        for role, token, logp, _ in sft_forgetting.gold_scores(model, tokenizer, test)
        if role in ROLES
    ]


def _spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (ties at their mean rank), None below three points or
    where either side is constant."""
    if len(x) < 3:
        return None
    rho = pl.DataFrame({"x": x, "y": y}).select(pl.corr("x", "y", method="spearman")).item()
    return None if rho is None or rho != rho else round(rho, 3)


def cell(home: str, size: int, seed: int, method: str, control: str, n: int) -> None:
    started = time.monotonic()
    warehouse = Warehouse(Path(home))
    problems = pl.read_parquet(warehouse.table_file("problems"))
    test = problems.filter(pl.col("split") == "test").head(n)
    folders = {
        name: _paths(warehouse, table)[(size, seed)]
        for name, table in (("method", method), ("control", control), ("sft", "sft"))
    }
    tokenizer = load_checkpoint(folders["sft"])[1]
    pairs = pl.read_parquet(warehouse.partition_file("preference_pairs", size, seed))
    pushed = pushed_tokens(pairs.filter(pl.col("kind") == "per_step"), tokenizer)
    scored = {name: gold_logprobs(folder, test) for name, folder in folders.items()}
    for role in ROLES:
        idx = [i for i, (r, _, _) in enumerate(scored["sft"]) if r == role]
        if not idx:
            continue
        tokens = [scored["sft"][i][1] for i in idx]
        lp = {name: [rows[i][2] for i in idx] for name, rows in scored.items()}
        diff = [a - b for a, b in zip(lp["method"], lp["control"], strict=True)]
        counts = pushed.get(role, collections.Counter())
        total, covered, top = sum(counts.values()), 0, set()
        for token, c in counts.most_common():
            if covered >= 0.5 * total:
                break
            top.add(token)
            covered += c
        by_token: dict[int, list[float]] = collections.defaultdict(list)
        for t, d in zip(tokens, diff, strict=True):
            by_token[t].append(d)
        keys = sorted(by_token)
        row = {
            "home": home,
            "size": size,
            "seed": seed,
            "method": method,
            "control": control,
            "role": role,
            "positions": len(idx),
            "departures": total,
            "pushed_tokens": [tokenizer.decode([t]).strip() for t in sorted(top)],
            **{f"logp_{name}": round(statistics.fmean(v), 4) for name, v in lp.items()},
            "diff": round(statistics.fmean(diff), 4),
            "diff_pushed": _mean([d for t, d in zip(tokens, diff, strict=True) if t in top]),
            "diff_rest": _mean([d for t, d in zip(tokens, diff, strict=True) if t not in top]),
            "spearman_pushed_diff": _spearman(
                [float(counts.get(t, 0)) for t in keys],
                [statistics.fmean(by_token[t]) for t in keys],
            ),
            "seconds": round(time.monotonic() - started, 1),
            "cpu_model": base_recipe._cpu(),
        }
        sft_forgetting.write_row(OUT, row)


def _mean(v: list[float]) -> float | None:
    return round(statistics.fmean(v), 4) if v else None


def _paths(warehouse: Warehouse, method: str) -> dict[tuple[int, int], str]:
    """The checkpoint folder of ``method``'s model per (size, seed), through the warehouse's
    own views (as ``synthdata sql`` reads them)."""
    if f"{method}_model" not in table_sources(warehouse):
        raise SystemExit(f"{warehouse.root}: no {method}_model partitions")
    rows = run_query(f"SELECT data_size, seed, path FROM {method}_model", warehouse).rows
    return {(int(size), int(seed)): path for size, seed, path in rows}


def main(home: str, method: str = "per_step_dpo", control: str = "nll_control", n: str = "1000"):
    for size, seed in sorted(_paths(Warehouse(Path(home)), control)):
        cell(home, size, seed, method, control, int(n))


def table() -> None:
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for line in OUT.read_text().splitlines():
        row = json.loads(line)
        groups[(row["home"], row["role"])].append(row)

    def spread(values: list[float]) -> str:
        if len(values) < 2:
            return f"{values[0]:+.3f}" if values else ""
        return f"{statistics.fmean(values):+.3f} ± {statistics.stdev(values):.3f}"

    print(
        "| warehouse | role | cells | departures | log p sft | log p control "
        "| method - control | below control | pushed - rest | Spearman |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (home, role), rows in sorted(
        groups.items(), key=lambda kv: (kv[0][0], ROLES.index(kv[0][1]))
    ):
        diff = [r["diff"] for r in rows]
        gap = [
            r["diff_pushed"] - r["diff_rest"]
            for r in rows
            if r["diff_pushed"] is not None and r["diff_rest"] is not None
        ]
        rho = [r["spearman_pushed_diff"] for r in rows if r["spearman_pushed_diff"] is not None]
        print(
            f"| {Path(home).name} | {role} | {len(rows)} "
            f"| {statistics.fmean(r['departures'] for r in rows):.0f} "
            f"| {statistics.fmean(r['logp_sft'] for r in rows):.3f} "
            f"| {statistics.fmean(r['logp_control'] for r in rows):.3f} "
            f"| {spread(diff)} | {sum(d < 0 for d in diff)} of {len(diff)} "
            f"| {spread(gap)} | {spread(rho)} |"
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        table()
    else:
        main(*sys.argv[1:])
