"""Does a base pretrained on shorter chains than the task's leave SFT something to teach?

The shipped base's phase 2 trains on chains of one to four steps, the task's own world (two to
four): SFT on the teacher's solutions is then more of the base's own pretraining, after a
learning-rate restart, and lands below the base (sft_forgetting.md). Here the base's phase 2
stops at MAX_STEPS steps (``PretrainRecipe(max_steps=MAX_STEPS)``), so the task's longer chains
are what SFT has to teach, as GSM8K's format and length are what the paper's SFT teaches
DeepSeek-Math.

    python docs/experiments/short_chains.py pretrain MAX_STEPS [FOLDER]
    python docs/experiments/short_chains.py eval FOLDER POOL_SEED
    python docs/experiments/short_chains.py sft FOLDER SIZE SEED POOL_SEED LR [EPOCHS]

``pretrain`` trains the base into FOLDER (default /tmp/short_chains/max{MAX_STEPS}) and scores it;
``eval`` scores a folder; ``sft`` fine-tunes FOLDER as the demo preset's ``sft_model`` does (the
oracle teacher's verified solutions of the partition's SIZE problems, 3 epochs, batch 32, peak
lr LR) and scores it. Scores: greedy accuracy on the pool's 1000 test problems, overall and by
the problem's number of steps. Rows are appended to ``short_chains.jsonl`` next to this file.
Run with one torch thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
import base_recipe  # noqa: E402
import sft_forgetting as sf  # noqa: E402
from base_p import recipe_p  # noqa: E402

from synthdata_assets import models  # noqa: E402
from synthdata_assets.pretrain import pretrain_base  # noqa: E402
from synthdata_assets.problems import training_subset  # noqa: E402
from synthdata_assets.tasks import embedded  # noqa: E402
from synthdata_assets.teacher import teacher_solutions  # noqa: E402
from training.checkpoint import save_checkpoint  # noqa: E402
from training.lora import load_trainable  # noqa: E402
from training.prompts import format_example  # noqa: E402
from training.sft import train_sft  # noqa: E402

OUT = Path(__file__).with_name("short_chains.jsonl")


def score(folder: str, pool_seed: int) -> dict:
    """Greedy test accuracy (%), overall and by number of steps."""
    test = sf._problems(pool_seed).filter(pl.col("split") == "test")
    greedy = sf.greedy(sf._config(pool_seed), folder, test, 0)
    specs = dict(test.select("problem_id", "spec").iter_rows())
    by = collections.defaultdict(list)
    for pid, ok in greedy.select("problem_id", "is_correct").iter_rows():
        by[embedded.EmbeddedProblem.from_spec(pid, specs[pid]).n_steps].append(ok)
    return {
        "accuracy": round(100 * float(greedy["is_correct"].mean()), 1),
        "by_steps": {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by.items())},
    }


def record(row: dict) -> None:
    sf.write_row(OUT, {"cpu_model": base_recipe._cpu(), **row})


def cmd_pretrain(max_steps: str, folder: str = "") -> None:
    recipe = recipe_p(max_steps=int(max_steps))
    out = folder or f"/tmp/short_chains/max{max_steps}"
    started = time.monotonic()
    meta = pretrain_base(recipe, Path(out), log=lambda m: print(m, flush=True))
    row = {
        "cmd": "pretrain",
        "max_steps": recipe.max_steps,
        "folder": out,
        "drill_accuracy": round(meta["drill_accuracy"], 4),
        "loss_last_10pct": round(meta["final_loss"], 4),
        "pretrain_seconds": round(time.monotonic() - started, 1),
    }
    for pool in (0, 7):
        row[f"pool{pool}"] = score(out, pool)
    record(row)


def cmd_eval(folder: str, pool_seed: str) -> None:
    record(
        {"cmd": "eval", "folder": folder, "pool_seed": int(pool_seed)}
        | score(folder, int(pool_seed))
    )


def train_from(
    folder: str, size: int, seed: int, pool_seed: int, out: Path, **training: float
) -> dict:
    """SFT of the base at ``folder`` on the demo preset's teacher solutions of the partition
    (``sft_model``'s data and trainer), with ``training`` overriding the preset's settings."""
    config = sf._config(pool_seed)
    problems = sf._problems(pool_seed)
    subset = training_subset(problems, size, seed)
    table = teacher_solutions(
        config.teacher, subset, seed, answer_format=config.answer_format, log=lambda _m: None
    )
    pairs = [format_example(q, s) for q, s in models.sft_examples(table, problems)]
    settings = config.training.model_copy(update=training)
    models.seeded(seed)
    model, tokenizer, stored = load_trainable(folder, settings)
    stats = train_sft(
        model, tokenizer, pairs, config=settings, seed=seed, max_seq_len=config.model.max_seq_len
    )
    save_checkpoint(model, tokenizer, out, {"method": "sft"}, dtype=stored)
    return {
        "sft_examples": len(pairs),
        "updates": stats.steps,
        "loss": round(stats.mean_loss_last_10pct, 4),
    }


def cmd_sft(folder: str, size: str, seed: str, pool_seed: str, lr: str, epochs: str = "3") -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_from(
            folder, int(size), int(seed), int(pool_seed), Path(tmp) / "sft",
            learning_rate=float(lr), epochs=int(epochs),
        )  # fmt: skip
        row = {
            "cmd": "sft",
            "base": folder,
            "size": int(size),
            "seed": int(seed),
            "pool_seed": int(pool_seed),
            "learning_rate": float(lr),
            "epochs": int(epochs),
            **trained,
            **score(str(Path(tmp) / "sft"), int(pool_seed)),
            "seconds": round(time.monotonic() - started, 1),
        }
    record(row)


if __name__ == "__main__":
    {"pretrain": cmd_pretrain, "eval": cmd_eval, "sft": cmd_sft}[sys.argv[1]](*sys.argv[2:])
