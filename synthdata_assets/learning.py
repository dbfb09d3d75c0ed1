"""The model stages as plain functions: base model, SFT, policy samples, RFT, evaluation.

Each stage takes tables (polars frames) and folders, and returns a table: a trained model
is a Hugging Face folder plus one row of the ``checkpoints`` table describing it. The
Dagster assets in ``defs/models.py`` are thin wrappers around these functions.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch

from synthdata_assets.config import ExperimentConfig, TrainingConfig
from synthdata_assets.datasets import embedded_params
from synthdata_assets.tasks import embedded
from synthdata_assets.verify import grade_many
from training.checkpoint import load_checkpoint, load_model_reference, save_checkpoint
from training.generation import SamplingParams, TransformersGenerator, make_generator
from training.model import build_tiny_llama, count_parameters
from training.prompts import format_example, format_prompt
from training.sft import train_sft
from training.tokenizer import build_tokenizer

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

SAMPLE_SCHEMA = {
    "problem_id": pl.String,
    "sample_id": pl.String,
    "solution": pl.String,
    "final_answer": pl.String,
    "is_correct": pl.Boolean,
    "answer": pl.String,
    "num_tokens": pl.Int64,
    "finish_reason": pl.String,
}

EVAL_SCHEMA = {
    "method": pl.String,
    "problem_id": pl.String,
    "completion": pl.String,
    "extracted": pl.String,
    "is_correct": pl.Boolean,
    "n_samples": pl.Int64,
    "n_correct_samples": pl.Int64,
}

# Easier problems per phase-2 pretraining update: each is seen about twice at batch 32.
_EASY_PER_STEP = 16
# Phase 1 of pretraining (the arithmetic table): short examples, large batches, a high
# learning rate and weight decay, which is what gets a tiny model off the loss plateau of
# learning a modular table (measured on 2 cores: the mod-7 table of the demo preset, 8 names
# per fact, to loss 0.0000 in 2500 updates of 64, about a minute, though other problem pools
# needed more, see ModelConfig.arithmetic_steps; long mixed texts left a mod-23 table at
# chance after 1500 updates). The checkpoint row reports phase 2's stats.
_DRILL_TRAINING = TrainingConfig(
    batch_size=64, learning_rate=3e-3, weight_decay=0.1, warmup_ratio=0.02, bf16=False
)


def _checkpoint_row(method: str, path: Path | str, base: str, stats, model) -> dict:
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


def build_base_model(
    config: ExperimentConfig, problems: pl.DataFrame, folder: Path, log: Log
) -> pl.DataFrame:
    """The base learner. tiny-llama: build a tokenizer and pretrain on the task's world."""
    if config.model.name != "tiny-llama":
        model, _ = load_model_reference(
            config.model.name, allow_hub_download=config.model.allow_hub_download
        )
        row = _checkpoint_row("base", config.model.name, "", None, model)
        return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)
    if config.task.name != "embedded":
        raise ValueError(
            "model.name 'tiny-llama' is pretrained on the embedded task's world only; "
            "for gsm8k/math set model.name to a Hugging Face model folder"
        )
    params = embedded_params(config)
    seed = config.task.pool_seed + 10_000
    drill = embedded.arithmetic_drill(params, seed=seed)
    m = config.model
    easy = embedded.easy_problems(params, seed=seed, n=max(m.pretrain_steps, 1) * _EASY_PER_STEP)
    tokenizer = build_tokenizer(
        [p + c for p, c in drill]
        + [q + "\n" + sol for q, sol in easy]
        + problems["question"].to_list()
    )
    model = build_tiny_llama(m, tokenizer, seed=config.task.pool_seed)
    log(f"base model: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)}")
    stats, drill_accuracy = None, None
    if m.arithmetic_steps > 0:
        # Phase 1: the arithmetic table, loss on results only (see embedded.arithmetic_drill).
        log(f"pretraining phase 1: {len(drill)} arithmetic facts, {m.arithmetic_steps} updates")
        stats = train_sft(
            model,
            tokenizer,
            drill,
            config=_DRILL_TRAINING,
            seed=config.task.pool_seed,
            max_seq_len=m.max_seq_len,
            log=log,
            max_steps=m.arithmetic_steps,
        )
        drill_accuracy = _drill_accuracy(model, tokenizer, drill)
        log(f"pretraining phase 1: arithmetic drill accuracy {drill_accuracy:.1%} (greedy)")
    if m.pretrain_steps > 0:
        # Phase 2: easier problems in the task's format, with the facts mixed in so that the
        # table is not forgotten.
        log(f"pretraining phase 2: {len(easy)} easier problems, {m.pretrain_steps} updates")
        mixture = [format_example(q, sol) for q, sol in easy] + drill
        stats = train_sft(
            model,
            tokenizer,
            mixture,
            config=config.training,
            seed=config.task.pool_seed + 1,
            max_seq_len=m.max_seq_len,
            log=log,
            max_steps=m.pretrain_steps,
        )
    save_checkpoint(model, tokenizer, folder, {"method": "base", "preset": config.preset})
    row = _checkpoint_row("base", folder, "", stats, model)
    row["drill_accuracy"] = drill_accuracy
    return pl.DataFrame([row], schema={**CHECKPOINT_SCHEMA, "drill_accuracy": pl.Float64})


def _drill_accuracy(model, tokenizer, drill: Sequence[tuple[str, str]]) -> float:
    """Share of the arithmetic drill's facts the model completes right, greedily (one token:
    results are single tokens). Phase 1 is a lottery at a fixed budget (see ModelConfig
    .arithmetic_steps); this says whether the base model got the table."""
    outputs = TransformersGenerator(model, tokenizer, batch_size=256).generate(
        [prompt for prompt, _ in drill], SamplingParams(max_new_tokens=1)
    )
    right = sum(o[0].text.strip() == c.strip() for o, (_, c) in zip(outputs, drill, strict=True))
    return right / len(drill)


def fine_tune(
    config: ExperimentConfig,
    method: str,
    init_path: str,
    examples: Sequence[tuple[str, str]],
    folder: Path,
    seed: int,
    log: Log,
) -> pl.DataFrame:
    """SFT (and RFT): fine-tune the model at ``init_path`` on (question, solution) pairs."""
    model, tokenizer = load_checkpoint(init_path)
    if not examples:
        # RFT of a policy that solved nothing has nothing to train on: the method's model
        # is its starting point, recorded as such (0 examples) rather than failing the run.
        log(f"{method}: no verified positives to train on; the model stays its initialisation")
        row = _checkpoint_row(method, init_path, init_path, None, model)
        return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)
    pairs = [format_example(q, s) for q, s in examples]
    stats = train_sft(
        model,
        tokenizer,
        pairs,
        config=config.training,
        seed=seed,
        max_seq_len=config.model.max_seq_len,
        log=log,
    )
    save_checkpoint(model, tokenizer, folder, {"method": method, "init": init_path, "seed": seed})
    row = _checkpoint_row(method, folder, init_path, stats, model)
    return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)


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


def _generator(config: ExperimentConfig, path: str, log: Log):
    extra = {}
    if config.sampling.backend == "vllm":
        # vLLM's dtype "auto" would run our float32 checkpoints in bf16 and change the samples.
        extra["dtype"] = config.model.dtype
    return make_generator(
        config.sampling.backend, path, batch_size=config.sampling.batch_size, log=log, **extra
    )


def sample_solutions(
    config: ExperimentConfig,
    model_path: str,
    problems: pl.DataFrame,
    *,
    n: int,
    temperature: float,
    seed: int,
    id_prefix: str,
    log: Log,
    generator=None,
) -> pl.DataFrame:
    """``n`` graded samples per problem from the model at ``model_path`` (or ``generator``,
    already built over it)."""
    generator = generator or _generator(config, model_path, log)
    params = SamplingParams(
        n=n,
        temperature=temperature,
        top_p=config.sampling.top_p,
        max_new_tokens=config.sampling.max_new_tokens,
        seed=seed,
    )
    prompts = [format_prompt(q) for q in problems["question"]]
    outputs = generator.generate(prompts, params)
    rows = []
    for pid, gold, completions in zip(
        problems["problem_id"], problems["answer"], outputs, strict=True
    ):
        for j, c in enumerate(completions):
            rows.append(
                {
                    "problem_id": pid,
                    "sample_id": f"{pid}/{id_prefix}/{seed}/{j}",
                    "solution": c.text,
                    "answer": gold,
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                }
            )
    grades = grade_many(
        [r["solution"] for r in rows], [r["answer"] for r in rows], config.answer_format
    )
    for r, g in zip(rows, grades, strict=True):
        r["final_answer"], r["is_correct"] = g.extracted, g.is_correct
    return pl.DataFrame(rows, schema=SAMPLE_SCHEMA)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct among ``n`` samples (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_model(
    config: ExperimentConfig,
    method: str,
    model_path: str,
    test: pl.DataFrame,
    seed: int,
    log: Log,
) -> pl.DataFrame:
    """Greedy answers to the test split, plus ``eval_samples`` samples for pass@k."""
    start = time.perf_counter()
    generator = _generator(config, model_path, log)
    greedy = sample_solutions(
        config,
        model_path,
        test,
        n=1,
        temperature=0.0,
        seed=seed,
        id_prefix="greedy",
        log=log,
        generator=generator,
    )
    sampled = sample_solutions(
        config,
        model_path,
        test,
        n=config.sampling.eval_samples,
        temperature=config.sampling.temperature,
        seed=seed,
        id_prefix="eval",
        log=log,
        generator=generator,
    )
    counts = sampled.group_by("problem_id").agg(
        n_samples=pl.len(), n_correct_samples=pl.col("is_correct").sum().cast(pl.Int64)
    )
    table = (
        greedy.rename({"solution": "completion", "final_answer": "extracted"})
        .join(counts, on="problem_id", how="left")
        .with_columns(method=pl.lit(method))
        .select(list(EVAL_SCHEMA))
        .cast(EVAL_SCHEMA)
    )
    log(
        f"{method}: accuracy {table['is_correct'].mean():.3f} on {table.height} test problems "
        f"({time.perf_counter() - start:.1f}s)"
    )
    return table


def summarize_evaluations(table: pl.DataFrame, k_values: Sequence[int]) -> pl.DataFrame:
    """Accuracy and pass@k per method."""
    rows = []
    for method, group in table.group_by("method", maintain_order=True):
        row = {"method": method[0], "accuracy": float(group["is_correct"].mean())}
        for k in k_values:
            scores = [
                pass_at_k(n, c, k)
                for n, c in zip(group["n_samples"], group["n_correct_samples"], strict=True)
            ]
            row[f"pass@{k}"] = sum(scores) / len(scores)
        rows.append(row)
    return pl.DataFrame(rows)


def seeded(seed: int) -> None:
    """Seed Python and torch for a stage (generation seeds itself per call)."""
    random.seed(seed)
    torch.manual_seed(seed)
