"""RFT from pi_sft on the control's chosen sides: does the choice of positives unlearn the cue?

In the cue study ([rft_from_sft.md](rft_from_sft.md), section 2) RFT from pi_sft keeps the
shortcut cue while ``nll_control`` (per-step DPO's stage without its negatives) unlearns most
of what per-step DPO does. The two differ in what they train on (the control's chosen sides
sit more on problems where the cue misleads: one per negative with a pit, so problems where
pi_sft also fails weigh more) and in how (1.2-1.3 times the updates, at two fifths of the
learning rate, in the DPO trainer). This trains the pipeline's RFT stage exactly as
``training.rft_init: sft`` does (``models.fine_tune`` from the partition's pi_sft, RFT's
epochs and learning rate, seeded as the stage seeds itself) on the control's examples instead
of RFT's: the per-step pairs' chosen sides, each with its problem's question, drawn at random
(seeded) down to as many as RFT's own examples, so the number of updates is RFT's too. Only
the choice of positives then differs from RFT from pi_sft.

    OMP_NUM_THREADS=1 python docs/experiments/rft_on_chosen.py train CONFIG HOME SIZE SEED \
        [VARIANT [FIELD=VALUE ...]]
    python docs/experiments/rft_on_chosen.py report HOME [HOME ...]

``train`` takes the cue study's config (``docs/experiments/cue_rft_from_sft*.yaml``) and its
warehouse, and appends a row to ``rft_on_chosen.jsonl`` beside this file: the examples'
figures and each test problem's greedy grade and cue columns, as the ``evaluations`` asset
records them. VARIANT ``matched`` (the default) is the above, method ``rft_on_chosen``;
``all`` trains on every chosen side, as many as the control trains (1.7-2.0 times RFT's
examples), method ``rft_on_all_chosen``; ``own`` trains on RFT's own examples, method
``rft_own``: without overrides a check that this reproduces the warehouse's ``rft`` rows (it
prints their accuracy beside its own). Each FIELD=VALUE (JSON) overrides a field of
``training`` (e.g. ``learning_rate=2e-4 epochs=2``, the control's schedule); the method's name
then ends in them.

``report`` adds the rows to a warehouse's evaluations, each variant a method, and prints
each one's accuracy and the share of misleading choices it follows, with paired differences (95%
bootstrap intervals over seeds and problems) against SFT, RFT (from pi_sft in those
warehouses), the control and per-step DPO, by ``curves.compare`` and ``cue_paired.py``'s own
bootstrap.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from synthdata_assets import models
from synthdata_assets.config import load_config
from synthdata_assets.curves import compare
from synthdata_assets.evaluations import with_cue_columns
from training.config import TrainingConfig
from warehouse import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
from cue_paired import _paired  # noqa: E402
from sft_forgetting import greedy, write_row  # noqa: E402

OUT = Path(__file__).with_name("rft_on_chosen.jsonl")
# The method each variant's rows are reported as.
METHODS = {"matched": "rft_on_chosen", "all": "rft_on_all_chosen", "own": "rft_own"}
AGAINST = ("sft", "rft", "nll_control", "per_step_dpo")
# The evaluations columns the report reads.
ROW_SCHEMA = {
    "method": pl.String,
    "data_size": pl.Int64,
    "seed": pl.Int64,
    "problem_id": pl.String,
    "is_correct": pl.Boolean,
    "cue_points": pl.Int64,
    "cue_followed": pl.Int64,
}


def _partition(tables: Path, stage: str, size: int, seed: int) -> pl.DataFrame:
    return pl.read_parquet(tables / stage / f"data_size={size}" / f"seed={seed}.parquet")


def chosen_examples(
    pairs: pl.DataFrame, problems: pl.DataFrame, count: int | None, seed: int
) -> list[tuple[str, str]]:
    """``count`` of the per-step pairs' chosen sides (the control's positives, repeats and
    all), drawn without replacement with ``seed`` (None: every one, in the pairs' order), as
    (question, solution) pairs."""
    chosen = pairs.filter(pl.col("kind") == "per_step").join(
        problems.select("problem_id", "question"), on="problem_id"
    )
    examples = list(zip(chosen["question"], chosen["chosen"], strict=True))
    if count is None:
        return examples
    if count > len(examples):
        raise ValueError(f"{count} examples asked of {len(examples)} chosen sides")
    return random.Random(seed).sample(examples, count)


def cmd_train(
    config_path: str, home: str, size: str, seed: str, variant: str = "matched", *settings: str
) -> None:
    if variant not in METHODS:
        raise SystemExit(f"VARIANT is one of {', '.join(METHODS)}, not {variant!r}")
    size_, seed_ = int(size), int(seed)
    started = time.monotonic()
    config = load_config(config_path=config_path)
    overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in settings)}
    training = TrainingConfig.model_validate(config.training.model_dump() | overrides)
    if config.training.rft_init != "sft":
        raise SystemExit(f"{config_path}: RFT of this study starts from the base, not pi_sft")
    tables = Warehouse(Path(home)).tables
    problems = pl.read_parquet(tables / "problems.parquet")
    samples = _partition(tables, "policy_samples", size_, seed_)
    own = models.rft_examples(samples, problems, config.training.rft_max_per_problem)
    if variant == "own":
        examples = own
    else:
        pairs = _partition(tables, "preference_pairs", size_, seed_)
        count = len(own) if variant == "matched" else None
        examples = chosen_examples(pairs, problems, count, seed_)
    sft_path = _partition(tables, "sft_model", size_, seed_)["path"][0]
    test = problems.filter(pl.col("split") == "test")
    models.seeded(seed_)  # as the partition's training stage seeds itself (defs.models.trained)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rft"
        row = models.fine_tune(
            training, "rft", sft_path, examples, folder,
            seed=seed_, max_seq_len=config.model.max_seq_len, log=lambda _m: None,
        )  # fmt: skip
        solutions = greedy(config, str(folder), test, seed_)
    table = with_cue_columns(solutions.rename({"solution": "completion"}), test)
    table = table.sort("problem_id")
    if variant == "own":
        evals = _partition(tables, "evaluations", size_, seed_).filter(pl.col("method") == "rft")
        print(
            f"RFT's own examples: accuracy {100 * table['is_correct'].mean():.1f}, the "
            f"warehouse's rft {100 * evals['is_correct'].mean():.1f}"
        )
    write_row(
        OUT,
        {
            "home": home,
            "config": config_path,
            "pool_seed": config.task.pool_seed,
            "size": size_,
            "seed": seed_,
            "variant": variant,
            "training": overrides,
            "examples": len(examples),
            "updates": int(row["train_steps"][0]),
            "accuracy": round(100 * float(table["is_correct"].mean()), 1),
            "seconds": round(time.monotonic() - started, 1),
            "problem_id": table["problem_id"].to_list(),
            "is_correct": [bool(c) for c in table["is_correct"]],
            "cue_points": table["cue_points"].to_list(),
            "cue_followed": table["cue_followed"].to_list(),
        },
    )


def method_name(row: dict) -> str:
    """A row's method: its variant's, then its training overrides."""
    settings = "".join(f",{k}={v}" for k, v in sorted(row.get("training", {}).items()))
    return METHODS[row.get("variant", "matched")] + (f"@{settings[1:]}" if settings else "")


def _rows(home: str) -> pl.DataFrame:
    """This warehouse's rows of ``train`` (the latest of each variant, size and seed) as
    evaluations rows, each variant's method as :data:`METHODS` names it."""
    latest = {}
    for line in OUT.read_text().splitlines():
        r = json.loads(line)
        if Path(r["home"]).resolve() == Path(home).resolve():
            latest[(method_name(r), r["size"], r["seed"])] = r
    if not latest:
        raise SystemExit(f"no rows of {home} in {OUT}")
    return pl.concat(
        pl.DataFrame(
            {
                "method": method,
                "data_size": size,
                "seed": seed,
                "problem_id": r["problem_id"],
                "is_correct": r["is_correct"],
                "cue_points": r["cue_points"],
                "cue_followed": r["cue_followed"],
            },
            schema=ROW_SCHEMA,
        )
        for (method, size, seed), r in sorted(latest.items())
    )


def cmd_report(*homes: str) -> None:
    rng = np.random.default_rng(0)
    for home in homes:
        evals = pl.read_parquet(Warehouse(Path(home)).tables / "evaluations" / "**/*.parquet")
        ours = _rows(home)
        evals = pl.concat([evals.select(ours.columns).cast(ours.schema), ours]).filter(
            pl.col("data_size").is_in(ours["data_size"].unique().to_list())
        )
        print(f"\n{home}: each variant minus each method, points (95% CI)\n")
        print("| method | size | against | accuracy | cue followed |")
        print("| --- | ---: | --- | ---: | ---: |")
        cued = evals.filter(pl.col("cue_points") > 0)
        ours_methods = sorted(set(ours["method"]))
        for against in AGAINST:
            paired = compare(evals, reference=against).paired
            for r in paired.filter(pl.col("method").is_in(ours_methods)).iter_rows(named=True):
                reference = cued.filter(
                    (pl.col("method") == against) & (pl.col("data_size") == r["data_size"])
                ).select("seed", "problem_id", reference="cue_followed")
                mine = cued.filter(
                    (pl.col("method") == r["method"]) & (pl.col("data_size") == r["data_size"])
                ).join(reference, on=["seed", "problem_id"])
                diff, low, high = _paired(mine, rng)
                print(
                    f"| {r['method']} | {r['data_size']} | {against} | {r['difference']:+.1f} "
                    f"({r['ci_low']:+.1f}, {r['ci_high']:+.1f}) | {diff:+.1f} "
                    f"({low:+.1f}, {high:+.1f}) |"
                )
        print("\nMean over seeds (sd):\n")
        print("| size | method | accuracy % | cue followed % |")
        print("| ---: | --- | ---: | ---: |")
        per_seed = (
            evals.group_by("data_size", "method", "seed")
            .agg(
                accuracy=100 * pl.col("is_correct").mean(),
                cue=100 * pl.col("cue_followed").sum() / pl.col("cue_points").sum(),
            )
            .group_by("data_size", "method")
            .agg(
                pl.col("accuracy").mean().alias("acc"),
                pl.col("accuracy").std().alias("acc_sd"),
                pl.col("cue").mean().alias("cue"),
                pl.col("cue").std().alias("cue_sd"),
            )
            .sort("data_size", "method")
        )
        shown = [*AGAINST, *ours_methods]
        for r in per_seed.filter(pl.col("method").is_in(shown)).iter_rows(named=True):
            print(
                f"| {r['data_size']} | {r['method']} | {_spread(r['acc'], r['acc_sd'])} | "
                f"{_spread(r['cue'], r['cue_sd'])} |"
            )


def _spread(mean: float, sd: float | None) -> str:
    """Mean ± sd; the mean alone where one seed gives no sd."""
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


if __name__ == "__main__":
    commands = {"train": cmd_train, "report": cmd_report}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
