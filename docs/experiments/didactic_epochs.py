"""The didactic study against the SFT budget: the `didactic` preset at one data size, three
seeds, for several values of ``training.epochs``, each in its own warehouse.

    python docs/experiments/didactic_epochs.py ROOT SIZE EPOCHS [EPOCHS ...] [-- KEY=VALUE ...]

runs ``synthdata run`` for each number of epochs (warehouse ``ROOT/epochs=E``; a warehouse
already there is reused stage by stage, so the preset's own warehouse can stand in for its
epochs), then reads every ``first_step_curves`` table and writes

- ``docs/experiments/didactic_epochs.md``: first-step accuracy per method and SFT epochs,
  mean over seeds with min-max, and the paired difference of each method from SFT;
- ``docs/results/didactic-epochs.png``: the same against epochs, with the 1/degree line.

Extra ``KEY=VALUE`` pairs after ``--`` are YAML overrides of the preset (dotted keys, e.g.
``training.dpo_learning_rate=1e-3``); they name the output files' suffix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def nested(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run(root: Path, size: int, epochs: int, extra: dict) -> Path:
    config = {"preset": "didactic", "data_sizes": [size], **extra}
    config["training"] = {**extra.get("training", {}), "epochs": epochs}
    return run_study(root / f"epochs={epochs}", config)


def run_study(home: Path, config: dict) -> Path:
    """``synthdata run`` on ``config`` (written to ``home/study.yaml``) into the warehouse
    ``home``, its output in ``home/run.log``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "study.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "SYNTHDATA_CONFIG": str(home / "study.yaml"),
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    with (home / "run.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-m", "synthdata_assets.cli", "run"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return home


def warehouses(roots: list[str]) -> list[Path]:
    """The study warehouses under each root (a folder per study, its ``study.yaml`` in it)."""
    return sorted(h.parent for r in roots for h in Path(r).glob("*/study.yaml"))


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the JSON-lines file ``path``."""
    with path.open("a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def first_steps(home: Path, size: int, epochs: int) -> pl.DataFrame:
    table = pl.read_parquet(home / "tables" / "first_step_curves.parquet")
    return table.filter(pl.col("data_size") == size).with_columns(epochs=pl.lit(epochs))


def summarize(table: pl.DataFrame) -> pl.DataFrame:
    sft = table.filter(pl.col("method") == "sft").select(
        "epochs", "seed", sft_first=pl.col("first_step_accuracy")
    )
    return (
        table.join(sft, on=["epochs", "seed"])
        .with_columns(diff=pl.col("first_step_accuracy") - pl.col("sft_first"))
        .group_by("method", "epochs")
        .agg(
            seeds=pl.len(),
            first=pl.col("first_step_accuracy").mean(),
            first_min=pl.col("first_step_accuracy").min(),
            first_max=pl.col("first_step_accuracy").max(),
            path=pl.col("accuracy").mean(),
            diff=pl.col("diff").mean(),
            diff_min=pl.col("diff").min(),
            diff_max=pl.col("diff").max(),
        )
        .sort("method", "epochs")
    )


def write_markdown(summary: pl.DataFrame, size: int, chance: float, suffix: str, path: Path):
    lines = [
        f"# Didactic study against SFT epochs ({size} problems{suffix})",
        "",
        f"`python docs/experiments/didactic_epochs.py`; first-step accuracy (%) of greedy "
        f"answers to 500 test problems, mean over seeds (min-max); 1/degree = "
        f"{100 * chance:.0f}%. Difference from SFT: same seed, in points (min-max over seeds).",
        "",
        "| method | SFT epochs | seeds | first step | whole path | minus SFT |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary.iter_rows(named=True):
        lines.append(
            f"| {r['method']} | {r['epochs']} | {r['seeds']} | {100 * r['first']:.1f} "
            f"({100 * r['first_min']:.1f}-{100 * r['first_max']:.1f}) | {100 * r['path']:.1f} | "
            f"{100 * r['diff']:+.1f} ({100 * r['diff_min']:+.1f} to {100 * r['diff_max']:+.1f}) |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(summary: pl.DataFrame, chance: float, size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in ("base", "sft", "rft", "per_step_dpo", "dpo"):
        rows = summary.filter(pl.col("method") == method).sort("epochs")
        if not rows.height:
            continue
        y = [100 * v for v in rows["first"]]
        low = [m - 100 * v for m, v in zip(y, rows["first_min"], strict=True)]
        high = [100 * v - m for m, v in zip(y, rows["first_max"], strict=True)]
        ax.errorbar(
            rows["epochs"].to_list(), y, yerr=[low, high], marker="o", capsize=3, label=method
        )
    ax.axhline(100 * chance, color="grey", linestyle=":", label="1/degree")
    ax.set_xlabel("SFT epochs")
    ax.set_ylabel("first step right (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Path-star graphs, {size} problems: mean over seeds, bars min-max", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    extra_pairs = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    root, size, epochs = Path(argv[0]), int(argv[1]), [int(e) for e in argv[2:]]
    extra = nested(extra_pairs)
    suffix = "".join(f", {p}" for p in extra_pairs)
    tables = [first_steps(run(root, size, e, extra), size, e) for e in epochs]
    summary = summarize(pl.concat(tables))
    degree = extra.get("task", {}).get("star_graph", {}).get("degree", 2)
    tag = "".join(f"_{p.split('=')[0].split('.')[-1]}{p.split('=')[1]}" for p in extra_pairs)
    write_markdown(summary, size, 1 / degree, suffix, HERE / f"didactic_epochs{tag}.md")
    plot(summary, 1 / degree, size, REPO / "docs" / "results" / f"didactic-epochs{tag}.png")
    print((HERE / f"didactic_epochs{tag}.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
