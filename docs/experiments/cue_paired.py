"""The shortcut-cue study's shares with their spread: paired differences against SFT.

``@cue_following`` gives, per size, seed and method, the share of misleading test choices
(a dead end stated before the step to take) that the greedy answers follow. This script adds
what the printed table lacks: the mean over seeds with its spread, and for each method the
paired difference to SFT (same seed, same test problem) with a 95% bootstrap interval over
seeds and problems, as the scaling report does for accuracy.

    python docs/experiments/cue_paired.py HOME

HOME is the warehouse of ``docs/experiments/cue_seeds.yaml``. Prints a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from warehouse import Warehouse

RESAMPLES = 2000


def main(home: str) -> None:
    evals = pl.read_parquet(Warehouse(Path(home)).tables / "evaluations" / "**/*.parquet")
    cued = evals.filter(pl.col("cue_points") > 0).select(
        "data_size", "seed", "method", "problem_id", "cue_points", "cue_followed"
    )
    sft = cued.filter(pl.col("method") == "sft").select(
        "data_size", "seed", "problem_id", sft="cue_followed"
    )
    rng = np.random.default_rng(0)
    print("| size | method | share followed, mean ± sd over seeds | minus SFT | 95% CI | seeds |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for (size, method), group in sorted(cued.group_by("data_size", "method")):
        per_seed = group.group_by("seed").agg(
            share=pl.col("cue_followed").sum() / pl.col("cue_points").sum()
        )
        shares = 100 * per_seed["share"].to_numpy()
        paired = group.join(sft, on=["data_size", "seed", "problem_id"])
        diff, low, high = _paired(paired, rng)
        sd = f" ± {shares.std(ddof=1):.1f}" if len(shares) > 1 else ""
        print(
            f"| {size} | {method} | {shares.mean():.1f}{sd} | {diff:+.1f} | "
            f"{low:+.1f} to {high:+.1f} | {len(shares)} |"
        )


def _paired(paired: pl.DataFrame, rng: np.random.Generator) -> tuple[float, float, float]:
    """Difference in share followed (points) against SFT, pooled over seeds and problems,
    with a percentile interval from resampling seeds, then problems within each seed."""
    by_seed = [
        (g["cue_points"].to_numpy(), g["cue_followed"].to_numpy(), g["sft"].to_numpy())
        for _, g in sorted(paired.group_by("seed"))
    ]

    def share(groups: list) -> float:
        points = sum(p.sum() for p, _, _ in groups)
        return (
            100 * (sum(f.sum() for _, f, _ in groups) - sum(s.sum() for _, _, s in groups)) / points
        )

    draws = []
    for _ in range(RESAMPLES):
        seeds = rng.integers(len(by_seed), size=len(by_seed))
        sample = []
        for k in seeds:
            p, f, s = by_seed[k]
            rows = rng.integers(len(p), size=len(p))
            sample.append((p[rows], f[rows], s[rows]))
        draws.append(share(sample))
    low, high = np.percentile(draws, [2.5, 97.5])
    return share(by_seed), float(low), float(high)


if __name__ == "__main__":
    main(*sys.argv[1:])
