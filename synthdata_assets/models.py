"""The trained models: the base learner, SFT and RFT (assets ``base_model``, ``sft_model``,
``rft_model``).

Each stage takes tables (polars frames) and a folder, and returns one row of the
``checkpoints`` table (:data:`CHECKPOINT_SCHEMA`, built by :func:`checkpoint_row`) describing
the Hugging Face model folder it wrote.

The base learner is, by ``model.name``: ``embedded-base``, the shipped pretrained base of the
embedded task (:mod:`synthdata_assets.pretrain`; the demo and embedded presets); or
``tiny-llama``, a tiny model built and pretrained inside the run (the tiny preset, so tests
need no shipped weights) in two phases: phase 1 drills the task's arithmetic table (short
examples, loss on the result only, large batches, a high learning rate and weight decay:
:data:`DRILL_TRAINING`); phase 2 trains on easier problems in the task's format with the
drill mixed in, so the table is not forgotten. Any other name is a Hugging Face model
folder, used as it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch

from synthdata_assets import pretrain
from synthdata_assets.config import ExperimentConfig, TaskConfig
from synthdata_assets.problems import embedded_params, star_graph_params
from synthdata_assets.tasks import embedded, star_graph
from training.checkpoint import load_checkpoint, load_model_reference, save_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.generation import SamplingParams
from training.generation.transformers_engine import TransformersGenerator
from training.lora import load_trainable, merged
from training.model import build_tiny_llama, count_parameters
from training.progress import Progress, no_progress
from training.prompts import format_example, format_prompt
from training.sft import TrainStats, train_sft
from training.tokenizer import build_tokenizer
from training.trainer import is_main_rank

Log = Callable[[str], None]

CHECKPOINT_SCHEMA = {
    "method": pl.String,
    "path": pl.String,
    "base": pl.String,
    "train_examples": pl.Int64,
    "train_steps": pl.Int64,
    "train_loss": pl.Float64,
    "tokens_per_second": pl.Float64,
    "train_seconds": pl.Float64,
    "parameters": pl.Int64,
}

# The columns a row gains where the stage chose its epoch by validation (fine_tune).
VALIDATION_COLUMNS = {
    "chosen_epoch": pl.Int64,
    "validation_accuracy": pl.Float64,
    "validation_curve": pl.List(pl.Float64),
}

# Easier problems per phase-2 pretraining update: each is seen about twice at batch 32.
EASY_PER_STEP = 16
# Held-out walks whose greedy accuracy the star_graph base records (as drill_accuracy).
WALKS_CHECKED = 300
# Phase 1 of pretraining: what gets a tiny model off the loss plateau of a modular table.
DRILL_TRAINING = TrainingConfig(
    batch_size=64, learning_rate=3e-3, weight_decay=0.1, warmup_ratio=0.02, bf16=False
)


def checkpoint_row(
    method: str, path: Path | str, base: str, stats: TrainStats | None, model: torch.nn.Module
) -> dict:
    """One ``checkpoints`` row: the folder, what it started from, and its training figures
    (none when the stage had nothing to train on and kept its starting model)."""
    return {
        "method": method,
        "path": str(path),
        "base": base,
        "train_examples": stats.examples if stats else 0,
        "train_steps": stats.steps if stats else 0,
        "train_loss": stats.mean_loss_last_10pct if stats else None,
        "tokens_per_second": stats.tokens_per_second if stats else None,
        "train_seconds": stats.seconds if stats else None,
        "parameters": count_parameters(model),
    }


def untrained_row(method: str, init_path: str, model: torch.nn.Module) -> pl.DataFrame:
    """The row of a method that had nothing to train on: its model is its starting point,
    recorded as such (0 examples) rather than failing the run."""
    row = checkpoint_row(method, init_path, init_path, None, model)
    return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)


def saved_row(
    model,
    tokenizer,
    folder: Path,
    *,
    method: str,
    init_path: str,
    seed: int,
    stats: TrainStats,
    dtype: torch.dtype | None = None,
) -> dict:
    """Write a trained model's folder (in ``dtype``: the one its initialisation was stored
    in, see :func:`training.checkpoint.load_for_training`); its ``checkpoints`` row."""
    meta = {"method": method, "init": init_path, "seed": seed}
    save_checkpoint(model, tokenizer, folder, meta, dtype=dtype)
    return checkpoint_row(method, folder, init_path, stats, model)


def build_base_model(
    model_config: ModelConfig,
    training: TrainingConfig,
    task: TaskConfig,
    folder: Path,
    *,
    meta: dict,
    log: Log,
    progress: Progress = no_progress,
) -> pl.DataFrame:
    """The base learner: the shipped ``embedded-base``, a named Hugging Face folder,
    tiny-llama pretrained here on the embedded task's world (the small presets that test the
    pipeline), or on star_graph on walks through graphs. No tokenizer ever sees a test
    question."""
    if model_config.name == pretrain.SHIPPED_NAME:
        return shipped_base_row(task)
    if model_config.name != "tiny-llama":
        model, _ = load_model_reference(
            model_config.name, allow_hub_download=model_config.allow_hub_download
        )
        row = checkpoint_row("base", model_config.name, "", None, model)
        return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)
    if task.name == "star_graph":
        return _star_graph_base(
            model_config, training, task, folder, meta=meta, log=log, progress=progress
        )
    if task.name != "embedded":
        raise ValueError(
            "model.name 'tiny-llama' is built for the generated tasks only (embedded, "
            "star_graph); for gsm8k/math set model.name to a Hugging Face model folder"
        )
    params = embedded_params(task.embedded)
    seed = task.pool_seed + 10_000
    drill = embedded.arithmetic_drill(params, seed=seed)
    n_easy = max(model_config.pretrain_steps, 1) * EASY_PER_STEP
    easy = embedded.easy_problems(params, seed=seed, n=n_easy)
    tokenizer = build_tokenizer([p + c for p, c in drill] + [q + "\n" + sol for q, sol in easy])
    model = build_tiny_llama(model_config, tokenizer, seed=task.pool_seed)
    log(f"base model: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)}")
    stats, drill_accuracy = None, None
    train = {"seed": task.pool_seed, "max_seq_len": model_config.max_seq_len, "log": log}
    if model_config.arithmetic_steps > 0:
        log(f"pretraining phase 1: {len(drill)} arithmetic facts")
        stats = train_sft(
            model,
            tokenizer,
            drill,
            config=DRILL_TRAINING,
            max_steps=model_config.arithmetic_steps,
            progress=progress,
            **train,
        )
        drill_accuracy = pretrain.drill_accuracy_of(model, tokenizer, drill)
        log(f"pretraining phase 1: arithmetic drill accuracy {drill_accuracy:.1%} (greedy)")
    if model_config.pretrain_steps > 0:
        log(f"pretraining phase 2: {len(easy)} easier problems, the drill mixed in")
        mixture = [format_example(q, sol) for q, sol in easy] + drill
        stats = train_sft(
            model,
            tokenizer,
            mixture,
            config=training,
            max_steps=model_config.pretrain_steps,
            progress=progress,
            **{**train, "seed": task.pool_seed + 1},
        )
    save_checkpoint(model, tokenizer, folder, meta)
    row = checkpoint_row("base", folder, "", stats, model)
    row["drill_accuracy"] = drill_accuracy
    return pl.DataFrame([row], schema={**CHECKPOINT_SCHEMA, "drill_accuracy": pl.Float64})


def _star_graph_base(
    model_config: ModelConfig,
    training: TrainingConfig,
    task: TaskConfig,
    folder: Path,
    *,
    meta: dict,
    log: Log,
    progress: Progress,
) -> pl.DataFrame:
    """A tiny-llama for path-star graphs, pretrained on ``model.pretrain_steps`` batches of
    fresh walks (:func:`star_graph.walk_examples`: every step a lookup, never the first step
    out of the start), so the base reads a graph as a pretrained model reads text and SFT
    has only the task's decision left to teach. ``pretrain_steps: 0`` gives an untrained
    model, which is Bachmann & Nagarajan's setting (training from scratch)."""
    params = star_graph_params(task.star_graph)
    seed = task.pool_seed + 10_000
    tokenizer = build_tokenizer(star_graph.tokenizer_texts(params, seed=seed))
    model = build_tiny_llama(model_config, tokenizer, seed=task.pool_seed)
    log(f"base model: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)}")
    stats, walk_accuracy = None, None
    if model_config.pretrain_steps > 0:
        n = model_config.pretrain_steps * training.batch_size
        walks = star_graph.walk_examples(params, n, seed=seed)
        log(f"pretraining: {model_config.pretrain_steps} updates on {n} fresh walks")
        stats = train_sft(
            model,
            tokenizer,
            [format_example(q, sol) for q, sol in walks],
            config=training.model_copy(update={"epochs": 1}),
            max_steps=model_config.pretrain_steps,
            seed=task.pool_seed,
            max_seq_len=model_config.max_seq_len,
            log=log,
            progress=progress,
        )
        held_out = star_graph.walk_examples(params, WALKS_CHECKED, seed=seed + 1)
        walk_accuracy = star_graph_walk_accuracy(model, tokenizer, held_out)
        log(f"pretraining: held-out walks followed to the goal {walk_accuracy:.1%} (greedy)")
    save_checkpoint(model, tokenizer, folder, meta)
    row = checkpoint_row("base", folder, "", stats, model)
    row["drill_accuracy"] = walk_accuracy
    return pl.DataFrame([row], schema={**CHECKPOINT_SCHEMA, "drill_accuracy": pl.Float64})


def star_graph_walk_accuracy(model, tokenizer, walks: Sequence[tuple[str, str]]) -> float:
    """Share of walks (question, solution) the model writes exactly, greedily."""
    outputs = TransformersGenerator(model, tokenizer, batch_size=256).generate(
        [format_prompt(q) for q, _ in walks], SamplingParams(max_new_tokens=64)
    )
    right = sum(
        star_graph.parse_path(o[0].text) == star_graph.parse_path(sol)
        for o, (_, sol) in zip(outputs, walks, strict=True)
    )
    return right / len(walks)


def shipped_base_row(task: TaskConfig, folder: Path = pretrain.SHIPPED_BASE) -> pl.DataFrame:
    """The ``checkpoints`` row of the shipped base, after checking that it was pretrained for
    this task's world (the same modulus and operations, the chain graph)."""
    if not (folder / "meta.json").is_file():
        raise ValueError(f"model.name 'embedded-base': no pretrained base at {folder}")
    meta = pretrain.shipped_meta(folder)
    recipe = meta["recipe"]
    knobs = task.embedded
    wanted = {
        "modulus": knobs.modulus,
        "multiply": knobs.multiply,
        "max_constant": knobs.max_constant,
        "shuffle": knobs.shuffle,
    }
    if (
        task.name != "embedded"
        or knobs.graph != "chain"
        or any(recipe[k] != v for k, v in wanted.items())
    ):
        raise ValueError(
            f"model.name 'embedded-base' was pretrained for the embedded chain task with "
            f"{_world(recipe)}; this task is {task.name} ({knobs.graph}, "
            f"{_world(knobs.model_dump())}). "
            "Run `synthdata pretrain` for this world and set model.name to its folder, or use "
            "model.name 'tiny-llama'"
        )
    model, _ = load_checkpoint(str(folder))
    row = checkpoint_row("base", folder, "", None, model)
    row["drill_accuracy"] = meta.get("drill_accuracy")
    return pl.DataFrame([row], schema={**CHECKPOINT_SCHEMA, "drill_accuracy": pl.Float64})


def _world(knobs: dict) -> str:
    return ", ".join(
        f"{k} {knobs.get(k)}" for k in ("modulus", "multiply", "max_constant", "shuffle")
    )


def build_study_base_model(config: ExperimentConfig, folder: Path, log: Log) -> pl.DataFrame:
    """The base model of a study's configuration, as the ``base_model`` asset builds it (for
    scripts and benchmarks that need one outside a run)."""
    return build_base_model(
        config.model,
        config.training,
        config.task,
        folder,
        meta={"method": "base", "preset": config.preset},
        log=log,
    )


def fine_tune(
    training: TrainingConfig,
    method: str,
    init_path: str,
    examples: Sequence[tuple[str, str]],
    folder: Path,
    *,
    seed: int,
    max_seq_len: int,
    log: Log,
    progress: Progress = no_progress,
    validation: pl.DataFrame | None = None,
    scoring: ExperimentConfig | None = None,
) -> pl.DataFrame | None:
    """SFT (and RFT): fine-tune the model at ``init_path`` on (question, solution) pairs.
    None on a training rank other than 0 (:mod:`synthdata_assets.ranks`).

    With ``validation`` (problems, see :func:`synthdata_assets.problems.validation_split`)
    the stage keeps the epoch whose greedy accuracy on them, sampled and graded as
    ``scoring`` says, is best (``training.select_epoch: validation``); the row gains
    ``chosen_epoch``, ``validation_accuracy`` (that epoch's) and ``validation_curve`` (every
    epoch's); ``train_steps`` and ``train_loss`` stay those of the whole run."""
    if not examples:
        # RFT of a policy that solved nothing has nothing to train on.
        log(f"{method}: no verified positives to train on; the model stays its initialisation")
        model, _ = load_checkpoint(init_path)
        return untrained_row(method, init_path, model)
    model, tokenizer, stored = load_trainable(init_path, training, lambda m: log(f"{method}: {m}"))
    pairs = [format_example(q, s) for q, s in examples]
    validate = None
    if validation is not None:
        if scoring is None:
            raise ValueError("scoring the validation problems needs the study's config")
        problems = validation

        def validate(trained: torch.nn.Module) -> float:
            return pretrain.greedy_accuracy(trained, tokenizer, scoring, problems)

    stats = train_sft(
        model,
        tokenizer,
        pairs,
        config=training,
        seed=seed,
        max_seq_len=max_seq_len,
        log=log,
        progress=progress,
        validate=validate,
    )
    if not is_main_rank():  # one of several training ranks: rank 0 saves (synthdata_assets.ranks)
        return None
    row = saved_row(
        merged(model),
        tokenizer,
        folder,
        method=method,
        init_path=init_path,
        seed=seed,
        stats=stats,
        dtype=stored,
    )
    if validate is None:
        return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)
    chosen = stats.chosen_epoch
    row |= {
        "chosen_epoch": chosen,
        "validation_accuracy": stats.validation[chosen - 1] if chosen else None,
        "validation_curve": stats.validation,
    }
    return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA | VALIDATION_COLUMNS)


def sft_examples(teacher_solutions: pl.DataFrame, problems: pl.DataFrame) -> list[tuple[str, str]]:
    """The verified teacher positives as (question, solution) pairs."""
    positives = teacher_solutions.filter(pl.col("is_correct")).join(
        problems.select("problem_id", "question"), on="problem_id"
    )
    return list(zip(positives["question"], positives["solution"], strict=True))


def rft_examples(
    samples: pl.DataFrame, problems: pl.DataFrame, max_per_problem: int
) -> list[tuple[str, str]]:
    """Verified self-generated positives, deduplicated, at most ``max_per_problem`` each."""
    positives = (
        samples.filter(pl.col("is_correct"))
        .unique(subset=["problem_id", "solution"], keep="first", maintain_order=True)
        .group_by("problem_id", maintain_order=True)
        .head(max_per_problem)
        .join(problems.select("problem_id", "question"), on="problem_id")
    )
    return list(zip(positives["question"], positives["solution"], strict=True))


def seeded(seed: int) -> None:
    """Seed Python and torch for a training stage (generation seeds itself per call)."""
    random.seed(seed)
    torch.manual_seed(seed)
