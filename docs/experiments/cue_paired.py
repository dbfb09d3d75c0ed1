"""The shortcut-cue study's shares with their spread: paired differences against SFT (or
another method), and a plot.

``@cue_following`` gives, per size, seed and method, the share of misleading test choices
(a dead end stated before the step to take) that the greedy answers follow. This script adds
what the printed table lacks: the mean over seeds with its spread, and for each method the
paired difference to SFT (same seed, same test problem) with a 95% bootstrap interval over
seeds and problems, as the scaling report does for accuracy.

    python docs/experiments/cue_paired.py HOME [HOME ...] [--against METHOD]
        [--plot PNG [--labels LABEL ...]]

Each HOME is the warehouse of a cue study (``docs/experiments/cue_seeds.yaml``,
``cue_defaults.yaml``, ``cue_defaults_pool7.yaml``); a table is printed per HOME.
``--against`` names the method the differences are taken against (``sft`` unless given;
``nll_control``: what per-step DPO's negatives change beside the same stage without them).
``--plot`` draws, per HOME, the shares followed and the paired differences to SFT and to
``nll_control`` (where the study has it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from warehouse import Warehouse

RESAMPLES = 2000
# The order methods are drawn in, the study's own (the scaling report's).
ORDER = ("base", "sft", "rft", "per_step_dpo", "nll_control", "dpo")
# The plot's panels per study: the shares, then the differences to each of these methods.
PANELS = ("share", "sft", "nll_control")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("homes", nargs="+", type=Path, help="cue study warehouses")
    parser.add_argument("--against", default="sft", help="the method differences are taken to")
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    parser.add_argument("--labels", nargs="+", help="the plot's name for each HOME, in order")
    args = parser.parse_args()
    labels = args.labels or [home.name for home in args.homes]
    if len(labels) != len(args.homes):
        parser.error(f"--labels: {len(labels)} labels for {len(args.homes)} warehouses")
    # Each study's rows against each method a table or a panel needs, bootstrapped once.
    references = {args.against, *(PANELS[1:] if args.plot else ())}
    studies = {}
    for home in args.homes:
        cued = _cued(home)
        present = set(cued["method"])
        studies[home] = {
            against: _rows(cued, against, home)
            for against in references
            if against == args.against or against in present
        }
        print(f"\n{home}\n")
        _table(studies[home][args.against], args.against)
    if args.plot:
        _plot(studies, labels, args.plot)
        print(f"\nplot: {args.plot}")


def _cued(home: Path) -> pl.DataFrame:
    """Every evaluated test problem that holds a misleading choice, per size, seed and method."""
    evals = pl.read_parquet(Warehouse(home).tables / "evaluations" / "**/*.parquet")
    return evals.filter(pl.col("cue_points") > 0).select(
        "data_size", "seed", "method", "problem_id", "cue_points", "cue_followed"
    )


def _rows(cued: pl.DataFrame, against: str, home: Path) -> list[dict]:
    """Per size and method: the share followed per seed, and the paired difference to
    ``against`` with its interval."""
    reference = cued.filter(pl.col("method") == against).select(
        "data_size", "seed", "problem_id", reference="cue_followed"
    )
    if not reference.height:
        sys.exit(f"no method {against!r} in {home}: {sorted(set(cued['method']))}")
    rng = np.random.default_rng(0)
    rows = []
    for (size, method), group in sorted(cued.group_by("data_size", "method")):
        per_seed = group.group_by("seed").agg(
            share=pl.col("cue_followed").sum() / pl.col("cue_points").sum()
        )
        paired = group.join(reference, on=["data_size", "seed", "problem_id"])
        diff, low, high = _paired(paired, rng)
        shares = 100 * per_seed["share"].to_numpy()
        rows.append({"size": size, "method": method, "shares": shares, "diff": (diff, low, high)})
    return rows


def _table(rows: list[dict], against: str) -> None:
    print(
        "| size | method | share followed, mean ± sd over seeds | "
        f"minus {against} | 95% CI | seeds |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        shares, (diff, low, high) = row["shares"], row["diff"]
        sd = f" ± {shares.std(ddof=1):.1f}" if len(shares) > 1 else ""
        print(
            f"| {row['size']} | {row['method']} | {shares.mean():.1f}{sd} | {diff:+.1f} | "
            f"{low:+.1f} to {high:+.1f} | {len(shares)} |"
        )


def _paired(paired: pl.DataFrame, rng: np.random.Generator) -> tuple[float, float, float]:
    """Difference in share followed (points) against the reference method, pooled over seeds
    and problems, with a percentile interval from resampling seeds, then problems within each
    seed."""
    by_seed = [
        (g["cue_points"].to_numpy(), g["cue_followed"].to_numpy(), g["reference"].to_numpy())
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


def _plot(studies: dict[Path, dict[str, list[dict]]], labels: list[str], path: Path) -> None:
    """One row per study (its rows per reference method, from :func:`_rows`): the share
    followed per method and size (mean over seeds, bars min-max), then the paired difference
    to SFT and to nll_control (95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(studies), 3, figsize=(15, 3.6 * len(studies)), squeeze=False, sharey="col"
    )
    colors = dict(zip(ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for axes_row, label, by_reference in zip(axes, labels, studies.values(), strict=True):
        any_rows = next(iter(by_reference.values()))
        present = {row["method"] for row in any_rows}
        sizes = sorted({row["size"] for row in any_rows})
        methods = [m for m in ORDER if m in present] + sorted(present - set(ORDER))
        width = 0.8 / len(methods)
        for ax, panel in zip(axes_row, PANELS, strict=True):
            rows = by_reference.get("sft" if panel == "share" else panel)
            if rows is None:
                ax.set_visible(False)
                continue
            for k, method in enumerate(methods):
                if panel != "share" and method in ("base", panel):
                    continue
                xs, ys, lows, highs = [], [], [], []
                for row in rows:
                    if row["method"] != method:
                        continue
                    xs.append(sizes.index(row["size"]) + (k - (len(methods) - 1) / 2) * width)
                    if panel == "share":
                        shares = row["shares"]
                        ys.append(shares.mean())
                        lows.append(shares.mean() - shares.min())
                        highs.append(shares.max() - shares.mean())
                    else:
                        diff, low, high = row["diff"]
                        ys.append(diff)
                        lows.append(diff - low)
                        highs.append(high - diff)
                ax.errorbar(
                    xs, ys, yerr=[lows, highs], fmt="o", capsize=3, label=method,
                    color=colors.get(method),
                )  # fmt: skip
            ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
            ax.set_xlabel("training problems (data size)")
            ax.grid(alpha=0.3)
            if panel == "share":
                ax.set_ylabel(f"{label}\nmisleading choices followed (%)")
                ax.set_title("Share followed: mean over seeds, bars min-max", fontsize=10)
                ax.legend(fontsize=8)
            else:
                ax.axhline(0, color="black", linewidth=0.8)
                ax.set_ylabel(f"minus {panel} (points)")
                ax.set_title(f"Paired difference vs. {panel}, 95% interval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
