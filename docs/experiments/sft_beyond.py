"""SFT past the study's largest size, so that a method's data multiplier is measured where
it beats SFT's largest partition instead of being cut off there.

    python docs/experiments/sft_beyond.py sft CONFIG SIZE SEED [KEY=VALUE ...]
    python docs/experiments/sft_beyond.py report CONFIG WAREHOUSE [OUT.md]
    python docs/experiments/sft_beyond.py epochs CONFIG [WAREHOUSE [PLOT.png]]

The multiplier reads a method's accuracy off SFT's measured curve and never extrapolates it
(``synthdata_assets.curves``): where a method at 1000 problems already beats SFT at the
study's largest size, that size is only a lower bound and drops out of the summary. The
paper measures its multipliers against SFT trained on up to 8x more data; this does the same.

``sft`` fine-tunes the base as the ``sft_model`` asset does under CONFIG (the experiment's
YAML file, e.g. ``docs/experiments/choices_from_data_rpo4.yaml``) for partition (SIZE, SEED),
with the task's training pool raised to SIZE where SIZE exceeds it: the generated pool is a
prefix-stable stream, so the study's pool is the first ``task.n_train_pool`` problems of the
raised one and the test split is unchanged (both checked). The training problems are nested
like the study's: the study's whole pool first, in the seed's order, then the added problems
in the seed's order, so every size's problems hold every smaller size's; at sizes within the
study's pool this is exactly ``training_subset``. ``KEY=VALUE`` overrides a ``training``
setting (``epochs=6``: SFT with twice the updates); such rows are kept apart (field
``training``) and never enter ``report``'s SFT curve. The model is scored by greedy decoding on
the test split as the ``evaluations`` asset scores it; the row (``sft_beyond.jsonl``) keeps
each test problem's grade, in test order, as a string of 0/1. Under ``training.select_epoch:
validation`` the epoch is chosen as the asset chooses it, on held-out problems none of which is
in the raised pool; the row adds ``chosen_epoch`` and ``validation_curve``.

``report`` adds CONFIG's rows of plain SFT to the ``evaluations`` of WAREHOUSE (that config's
run) as method ``sft`` and prints the study's report (``curves.report_markdown``) on them:
every multiplier against the longer SFT curve. A size of SFT measured in the warehouse is
taken from the warehouse, never from the rows. ``epochs`` prints, per size, SFT's accuracy at
the warehouse's epochs and at each ``epochs=N`` of the rows, beside the warehouse's other
methods (mean ± sd over seeds; without WAREHOUSE, the rows alone), and with PLOT draws them
against data size. Run with one torch thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from synthdata_assets import curves, models
from synthdata_assets.config import load_config
from synthdata_assets.problems import _order_key, problem_pool, validation_split
from synthdata_assets.teacher import teacher_solutions

sys.path.insert(0, str(Path(__file__).parent))
from sft_forgetting import greedy, write_row  # noqa: E402

OUT = Path(__file__).with_name("sft_beyond.jsonl")
REPO = Path(__file__).resolve().parents[2]


def _config_name(config_path: str) -> str:
    """The config as a repository path (rows name it so, wherever the script ran)."""
    path = Path(config_path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def nested_subset(pool: pl.DataFrame, study_pool: int, size: int, seed: int) -> pl.DataFrame:
    """The first ``size`` training problems: the study's pool (its first ``study_pool``
    training problems) in the seed's order, then the rest of ``pool`` in the seed's order."""
    train = pool.filter(pl.col("split") == "train").with_row_index("_k")
    if train.height < size:
        raise ValueError(f"size {size} exceeds the {train.height} training problems")
    keys = [_order_key(seed, pid) for pid in train["problem_id"]]
    return (
        train.with_columns(pl.Series("_order", keys), (pl.col("_k") >= study_pool).alias("_added"))
        .sort("_added", "_order")
        .head(size)
        .drop("_k", "_order", "_added")
    )


def _pools(config_path: str, size: int):
    """(config, the study's pool, the raised pool), with the two checked to agree."""
    config = load_config(config_path=config_path)
    study = problem_pool(config.task)
    raised_n = max(size, config.task.n_train_pool)
    raised = problem_pool(config.task.model_copy(update={"n_train_pool": raised_n}))
    for split in ("train", "test"):
        a = study.filter(pl.col("split") == split).select("problem_id", "question")
        b = raised.filter(pl.col("split") == split).select("problem_id", "question").head(a.height)
        if not a.equals(b):
            raise RuntimeError(f"the raised pool's {split} split does not extend the study's")
    if (
        raised.filter(pl.col("split") == "test").height
        != study.filter(pl.col("split") == "test").height
    ):
        raise RuntimeError("the raised pool's test split differs from the study's")
    return config, study, raised


def cmd_sft(config_path: str, size: str, seed: str, *settings: str) -> None:
    size_, seed_ = int(size), int(seed)
    overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in settings)}
    started = time.monotonic()
    config, study, pool = _pools(config_path, size_)
    training = config.training.model_copy(update=overrides)
    subset = nested_subset(pool, config.task.n_train_pool, size_, seed_)
    table = teacher_solutions(
        config.teacher, subset, seed_, answer_format=config.answer_format, log=lambda _m: None
    )
    examples = models.sft_examples(table, pool)
    validation = None
    if training.select_epoch == "validation":
        # As the sft_model asset chooses its epoch; none of the problems is in the raised pool.
        validation = validation_split(config.task, training.validation_problems, pool)
    models.seeded(seed_)  # as the partition's training stage seeds itself (defs.models.trained)
    with tempfile.TemporaryDirectory() as tmp:
        row = models.fine_tune(
            training, "sft", _base_path(config), examples,
            Path(tmp) / "sft", seed=seed_, max_seq_len=config.model.max_seq_len,
            log=lambda _m: None, validation=validation, scoring=config,
        )  # fmt: skip
        trained_s = time.monotonic() - started
        test = study.filter(pl.col("split") == "test")
        solutions = greedy(config, str(Path(tmp) / "sft"), test, seed_)
    grades = dict(zip(solutions["problem_id"], solutions["is_correct"], strict=True))
    correct = "".join("1" if grades[pid] else "0" for pid in test["problem_id"])
    write_row(
        OUT,
        {
            "config": _config_name(config_path),
            "pool_seed": config.task.pool_seed,
            "size": size_,
            "seed": seed_,
            "training": overrides,
            "n_train_pool": pool.filter(pl.col("split") == "train").height,
            "sft_examples": len(examples),
            "updates": int(row["train_steps"][0]) if "train_steps" in row.columns else None,
            "train_loss": round(float(row["train_loss"][0]), 4),
            "accuracy": round(100 * correct.count("1") / len(correct), 1),
            "train_seconds": round(trained_s, 1),
            "seconds": round(time.monotonic() - started, 1),
            **(
                {
                    "chosen_epoch": row["chosen_epoch"][0],
                    "validation_curve": row["validation_curve"][0].to_list(),
                }
                if validation is not None
                else {}
            ),
            "correct": correct,
        },
    )


def _base_path(config) -> str:
    from synthdata_assets.pretrain import SHIPPED_BASE

    if config.model.name != "embedded-base":
        raise ValueError(f"only the shipped base is supported here, not {config.model.name!r}")
    return str(SHIPPED_BASE)


def rows_of(config_path: str) -> dict:
    """This config's rows of plain SFT (no ``training`` override) by (size, seed), the
    latest of each."""
    name = _config_name(config_path)
    rows = {}
    if OUT.exists():
        for line in OUT.read_text().splitlines():
            r = json.loads(line)
            if r["config"] == name and not r.get("training"):
                rows[(r["size"], r["seed"])] = r
    return rows


def cmd_report(config_path: str, warehouse: str, out: str = "") -> None:
    config = load_config(config_path=config_path)
    study = problem_pool(config.task)
    test_ids = study.filter(pl.col("split") == "test")["problem_id"].to_list()
    evals = pl.read_parquet(f"{warehouse}/tables/evaluations/*/*.parquet").select(
        "method", "data_size", "seed", "problem_id", "is_correct"
    )
    have = set(evals.filter(pl.col("method") == "sft").select("data_size", "seed").iter_rows())
    seeds = set(evals["seed"].unique().to_list())
    extra = [
        pl.DataFrame(
            {
                "method": "sft",
                "data_size": size,
                "seed": seed,
                "problem_id": test_ids,
                "is_correct": [c == "1" for c in r["correct"]],
            },
            schema=evals.schema,
        )
        for (size, seed), r in sorted(rows_of(config_path).items())
        if (size, seed) not in have and seed in seeds
    ]
    sizes = sorted({f.item(0, "data_size") for f in extra})
    evaluations = pl.concat([evals, *extra])
    table = curves.scaling_table(evaluations)
    comparison = curves.compare(evaluations, reference="sft", chance=config.chance_rate)
    plot = Path(out).with_suffix(".png") if out else Path(tempfile.mkdtemp()) / "curves.png"
    curves.plot_curves(table, comparison, plot)
    control = curves.control_comparison(evaluations, chance=config.chance_rate)
    markdown = curves.report_markdown(table, comparison, plot, control=control)
    header = (
        f"# {_config_name(config_path)}: multipliers against SFT measured up to "
        f"{max(sizes, default=0)} problems\n\n"
        f"`python docs/experiments/sft_beyond.py report {_config_name(config_path)} WAREHOUSE`:"
        f" SFT at {', '.join(map(str, sizes))} problems from `sft_beyond.py` rows "
        f"({len(extra)} (size, seed) cells), every other figure from WAREHOUSE, the config's "
        f"`synthdata run` ({warehouse}).\n\n"
    )
    markdown = markdown.replace("# Scaling curves", "## Scaling curves", 1)
    print(header + markdown)
    if out:
        Path(out).write_text(header + markdown)


def cmd_epochs(config_path: str, warehouse: str = "", plot: str = "") -> None:
    config = load_config(config_path=config_path)
    name = _config_name(config_path)
    cells: dict[tuple[str, int], dict[int, float]] = {}
    if warehouse:
        evals = pl.read_parquet(f"{warehouse}/tables/evaluations/*/*.parquet")
        acc = evals.group_by("method", "data_size", "seed").agg(pl.col("is_correct").mean() * 100)
        for method, size, seed, a in acc.iter_rows():
            if method != "base":
                label = f"sft {config.training.epochs} epochs" if method == "sft" else method
                cells.setdefault((label, size), {})[seed] = a
    for line in OUT.read_text().splitlines():
        r = json.loads(line)
        if r["config"] == name and set(r.get("training") or {}) == {"epochs"}:
            label = f"sft {r['training']['epochs']} epochs"
            cells.setdefault((label, r["size"]), {})[r["seed"]] = r["accuracy"]
    sizes = sorted({size for _, size in cells})
    labels = sorted({m for m, _ in cells}, key=lambda m: (not m.startswith("sft"), _num(m), m))
    print(f"| method | {' | '.join(map(str, sizes))} |")
    print(f"| --- |{' ---: |' * len(sizes)}")
    for label in labels:
        row = []
        for size in sizes:
            v = list(cells.get((label, size), {}).values())
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            row.append(f"{statistics.mean(v):.1f} ± {sd:.1f} ({len(v)})" if v else "")
        print(f"| {label} | {' | '.join(row)} |")
    if plot:
        _plot_epochs(cells, labels, name, Path(plot))


def _plot_epochs(cells: dict, labels: list[str], title: str, path: Path) -> None:
    """Accuracy against data size per label: seed mean, bars min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in labels:
        points = sorted((size, list(v.values())) for (m, size), v in cells.items() if m == label)
        xs = [size for size, _ in points]
        means = [statistics.mean(v) for _, v in points]
        low = [m - min(v) for m, (_, v) in zip(means, points, strict=True)]
        high = [max(v) - m for m, (_, v) in zip(means, points, strict=True)]
        style = "-" if label.startswith("sft") else "--"
        ax.errorbar(xs, means, yerr=[low, high], fmt=style + "o", capsize=3, label=label)
    ax.set_xscale("log")
    sizes = sorted({size for _, size in cells})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("synthetic training problems (data size)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"SFT by epochs: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def _num(label: str) -> int:
    words = label.split()
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0


if __name__ == "__main__":
    commands = {"sft": cmd_sft, "report": cmd_report, "epochs": cmd_epochs}
    commands[sys.argv[1]](*sys.argv[2:])
