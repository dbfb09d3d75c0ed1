"""H6: a task whose mistakes have several wrong candidates. More dead ends per problem.

    python docs/experiments/dead_ends.py pretrain DEAD_ENDS DRAWS OUT [SEED]
    python docs/experiments/dead_ends.py continue DEAD_ENDS FOLDER STEPS LR OUT
    python docs/experiments/dead_ends.py score DEAD_ENDS FOLDER

At a per-step pair's pit, pi_sft's probability sits on two tokens (``negative_margins.md``),
so lowering the wrong one moves the weights the way the positive's NLL already does. With
more dead-end siblings per choice, a wrong step has several candidates, and a negative could
point its own way. Testing that needs a base that reads such questions: ``pretrain`` runs
``pretrain_draws`` with the shipped recipe but ``dead_ends`` dead ends per pretraining problem,
scored on the task with as many; ``continue`` continues a base's phase 2 on that recipe's own
corpus (as ``sft_forgetting.py continue`` does for the shipped recipe); ``score`` gives greedy
accuracy on validation and on the test splits of pools 0 and 7, with the kind of each greedy
solution's first error (``errors.first_error``). Rows go to ``dead_ends.jsonl``. Run with
``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import polars as pl
import torch

from synthdata_assets.config import load_config
from synthdata_assets.pretrain import (
    VALIDATION_SEED,
    greedy_accuracy,
    pretrain_draws,
    pretraining_corpus,
)
from synthdata_assets.problems import generated_split, problem_pool
from synthdata_assets.tasks import embedded
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainingConfig
from training.lora import load_trainable
from training.sft import train_sft

sys.path.insert(0, str(Path(__file__).parent))
from base_p import recipe_p  # noqa: E402
from errors import first_error  # noqa: E402

OUT = Path(__file__).with_name("dead_ends.jsonl")


def _config(dead_ends: int, pool_seed: int = 0):
    return load_config(
        "demo",
        overrides={"task": {"pool_seed": pool_seed, "embedded": {"n_distractors": dead_ends}}},
    )


def _record(row: dict) -> None:
    row = {"cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()} | row
    print(json.dumps(row), flush=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")


def cmd_pretrain(dead_ends: str, draws: str, out: str, seed: str = "0") -> None:
    recipe = recipe_p(dead_ends=int(dead_ends), seed=int(seed))
    meta = pretrain_draws(
        recipe, Path(out), draws=int(draws), score_on=_config(int(dead_ends)), jobs=2,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    kept = meta["recipe"]["seed"]
    for row in meta["draws"]:
        if row["seed"] == kept:
            row["pool0"] = round(100 * meta["greedy_accuracy"]["accuracy"], 1)
        _record({"cmd": "pretrain", "dead_ends": int(dead_ends), "folder": out, **row})


def cmd_continue(dead_ends: str, folder: str, steps: str, lr: str, out: str) -> None:
    """Continue ``folder``'s phase 2 (chains + drill of the recipe with ``dead_ends``, batch
    32) for ``steps`` updates at peak ``lr`` (warmup and cosine decay as the trainer does), with
    batch order seed 100, then score it."""
    started = time.monotonic()
    recipe = recipe_p(dead_ends=int(dead_ends))
    drill, chains = pretraining_corpus(recipe)
    config = TrainingConfig(batch_size=recipe.chain_batch_size, learning_rate=float(lr), bf16=False)
    model, tokenizer, stored = load_trainable(folder, config)
    stats = train_sft(
        model, tokenizer, chains + drill, config=config, seed=100,
        max_seq_len=recipe.max_seq_len, max_steps=int(steps),
    )  # fmt: skip
    save_checkpoint(model, tokenizer, Path(out), {"method": "base-continued"}, dtype=stored)
    row = {"cmd": "continue", "dead_ends": int(dead_ends), "start": folder, "folder": out}
    row |= {"steps": int(steps), "learning_rate": float(lr)}
    row |= {"loss": round(stats.mean_loss_last_10pct, 4)}
    _record(row | _scores(int(dead_ends), out) | {"seconds": round(time.monotonic() - started)})


def cmd_score(dead_ends: str, folder: str) -> None:
    row = {"cmd": "score", "dead_ends": int(dead_ends), "folder": folder}
    _record(row | _scores(int(dead_ends), folder))


def _scores(dead_ends: int, folder: str) -> dict:
    model, tokenizer = load_checkpoint(folder)
    config = _config(dead_ends)
    validation = generated_split(config.task, "validation", 1000, seed=VALIDATION_SEED)
    row = {"validation": round(100 * greedy_accuracy(model, tokenizer, config, validation), 1)}
    for pool in (0, 7):
        config = _config(dead_ends, pool)
        test = problem_pool(config.task).filter(pl.col("split") == "test")
        row[f"pool{pool}"] = round(100 * greedy_accuracy(model, tokenizer, config, test), 1)
    row["first_error"] = _first_errors(model, tokenizer, config)
    return row


def _first_errors(model, tokenizer, config) -> dict:
    """The first error of each greedy solution on 200 test problems, by kind
    (``errors.first_error``: ``dead_end``, ``other_name``, ``read``, ``operator``,
    ``constant``, ``table``, ...)."""
    from synthdata_assets.evaluations import greedy_solutions
    from training.generation.transformers_engine import TransformersGenerator

    test = problem_pool(config.task).filter(pl.col("split") == "test").head(200)
    out = greedy_solutions(
        TransformersGenerator(model, tokenizer, batch_size=64), test, config.sampling, seed=0,
        answer_format=config.answer_format,
    )  # fmt: skip
    kinds = collections.Counter(
        first_error(embedded.EmbeddedProblem.from_spec(row["problem_id"], row["spec"]), text)
        for row, text in zip(test.iter_rows(named=True), out["solution"], strict=True)
    )
    return dict(kinds.most_common())


if __name__ == "__main__":
    commands = {"pretrain": cmd_pretrain, "continue": cmd_continue, "score": cmd_score}
    commands[sys.argv[1]](*sys.argv[2:])
