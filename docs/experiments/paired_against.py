"""Paired accuracy differences of every method against one chosen method, per data size.

The scaling report pairs every method against SFT, and per-step DPO against ``nll_control``.
This script pairs them against any method of the study (``nll_control`` unless given), with
the report's own bootstrap (``synthdata_assets.curves.compare``: 2000 resamples of seeds and
test problems, 95% interval):

    python docs/experiments/paired_against.py HOME [HOME ...] [--against METHOD]

A table per HOME (a warehouse of a finished study), in points, with the (seed, problem)
pairs the method gets right and the reference wrong (wins) and the reverse (losses).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from synthdata_assets.curves import compare
from warehouse import Warehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("homes", nargs="+", type=Path, help="study warehouses")
    parser.add_argument("--against", default="nll_control", help="the reference method")
    args = parser.parse_args()
    for home in args.homes:
        evaluations = pl.read_parquet(Warehouse(home).tables / "evaluations" / "**/*.parquet")
        methods = evaluations["method"].unique(maintain_order=True).to_list()
        if args.against not in methods:
            raise SystemExit(f"{home}: no method {args.against!r} (has {', '.join(methods)})")
        paired = compare(evaluations, reference=args.against).paired
        print(f"\n{home}: method minus {args.against}, points (95% CI)\n")
        print("| method | size | diff | 95% CI | wins | losses |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in paired.filter(pl.col("method") != "base").iter_rows(named=True):
            print(
                f"| {r['method']} | {r['data_size']} | {r['difference']:+.1f} "
                f"| {r['ci_low']:+.1f} to {r['ci_high']:+.1f} | {r['wins']} | {r['losses']} |"
            )


if __name__ == "__main__":
    main()
