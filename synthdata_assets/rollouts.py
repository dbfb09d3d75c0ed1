"""The credit-assignment stages as plain functions: step rollouts, advantages, pairs, DPO.

The formulas (Q-values, advantages, pits, pair shapes) live in :mod:`synthdata_assets.credit`;
this module runs the models around them. The Dagster assets in ``defs/credit.py`` are thin
wrappers.

Step rollouts
-------------
A rolled-out sample (a negative of ``policy_samples``, at most
``credit.max_negatives_per_problem`` per problem, and the positives too when
``credit.rollout_positives`` is set) with ``L`` steps has prefixes ``0..L-1`` to roll out
(prefix ``L`` is the finished sample, whose value is its grade). The prompt of prefix ``i`` is
the problem's prompt followed by the sample's first ``i`` steps, which end with a newline, so
a rollout starts on a fresh line. Each completion is graded as ``prefix + completion``.

Every prompt of a partition goes to the generator in ONE call, which batches across samples
and prefixes (the transformers generator keeps ``sampling.batch_size`` prompts x M samples in
flight, refilling finished places, and prefills the prefixes of one sample once). Identical
prompts are generated once: prefix 0 is the same for every negative of a problem, and so is
any shared opening step.

Reuse
-----
A rollout is identified by ``rollout_key`` (a digest of the checkpoint's identity, the prompt
text, temperature, top-p, max_new_tokens and the seed) and ``rollout_idx``. Both backends
draw sample ``j`` of a prompt from a stream seeded by (seed, prompt, j), so a rollout with the
same key and index is the same completion whether it is generated now or was generated
before. ``step_rollouts`` therefore reads its previous file for the partition and generates
only the (key, index) pairs it lacks: re-estimating Q with another policy, K or pit rule
generates nothing, and raising M generates only the new indices. The checkpoint's identity is
the Dagster run that wrote it, so retraining pi_sft invalidates every rollout.

Early stop (``credit.early_stop``)
----------------------------------
Off by default. On, the prefixes are rolled out in rounds (prefix 0 of every sample, then
prefix 1, ...; each round one batched call) and a negative stops after its first pit, the
first prefix ``i >= 1`` whose M rollouts all fail: its later prefixes are never generated and
their Q is null in ``step_advantages``. It needs ``pit_rule: first_zero``. The rows it does
generate have the same keys as a full run's, so turning it off later generates only the
skipped prefixes.

"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from synthdata_assets import credit
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.learning import CHECKPOINT_SCHEMA, _checkpoint_row, _generator
from synthdata_assets.steps import default_rule, prefix, split_steps
from synthdata_assets.verify import grade_many
from training.checkpoint import load_checkpoint, save_checkpoint
from training.dpo import PreferenceExample, train_dpo
from training.generation import SamplingParams
from training.prompts import format_prompt

Log = Callable[[str], None]

ROLLOUT_SCHEMA = {
    "sample_id": pl.String,
    "problem_id": pl.String,
    "step_idx": pl.Int64,
    "rollout_idx": pl.Int64,
    "completion": pl.String,
    "final_answer": pl.String,
    "is_correct": pl.Boolean,
    "num_tokens": pl.Int64,
    "finish_reason": pl.String,
    "rollout_key": pl.String,
    "checkpoint": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_new_tokens": pl.Int64,
    "rollout_seed": pl.Int64,
}


def step_rule(config: ExperimentConfig) -> str:
    """The configured step rule, or the task's default."""
    rule = config.credit.step_rule
    return default_rule(config.task.name) if rule == "auto" else rule


def clean_samples(samples: pl.DataFrame) -> pl.DataFrame:
    """Policy samples as the credit stages see them: the trailing newline a sampled solution
    ends with (the model emits EOS after it) dropped, and empty solutions left out (they have
    no step to credit)."""
    return samples.with_columns(pl.col("solution").str.strip_chars_end("\n")).filter(
        pl.col("solution").str.len_chars() > 0
    )


def rolled_out_samples(samples: pl.DataFrame, config: ExperimentConfig) -> pl.DataFrame:
    """The samples that get rollouts: each problem's first negatives by sample id (and the
    positives when configured)."""
    samples = clean_samples(samples).sort("problem_id", "sample_id")
    negatives = (
        samples.filter(~pl.col("is_correct"))
        .group_by("problem_id", maintain_order=True)
        .head(config.credit.max_negatives_per_problem)
        .select(samples.columns)  # group_by puts the key first
    )
    if not config.credit.rollout_positives:
        return negatives
    return pl.concat([negatives, samples.filter(pl.col("is_correct"))]).sort(
        "problem_id", "sample_id"
    )


def sample_steps(samples: pl.DataFrame, rule: str) -> pl.DataFrame:
    """One row per step of each sample: sample_id, problem_id, step_idx (1..L), step_text,
    sample_is_correct."""
    rows = []
    for sid, pid, solution, ok in samples.select(
        "sample_id", "problem_id", "solution", "is_correct"
    ).iter_rows():
        for i, text in enumerate(split_steps(solution, rule), start=1):
            rows.append((sid, pid, i, text, ok))
    return pl.DataFrame(
        rows,
        schema={
            "sample_id": pl.String,
            "problem_id": pl.String,
            "step_idx": pl.Int64,
            "step_text": pl.String,
            "sample_is_correct": pl.Boolean,
        },
        orient="row",
    )


def rollout_key(checkpoint: str, prompt: str, params: SamplingParams) -> str:
    text = "\x1f".join(
        map(
            str,
            (
                checkpoint,
                prompt,
                params.temperature,
                params.top_p,
                params.max_new_tokens,
                params.seed,
            ),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def rollout_backend(config: ExperimentConfig) -> str:
    """The engine of the rollouts: ``credit.rollout_backend``, resolving ``auto``."""
    chosen = config.credit.rollout_backend
    if chosen != "auto":
        return chosen
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vllm"
    return config.sampling.backend


def rollout_params(config: ExperimentConfig, seed: int) -> SamplingParams:
    temperature = config.credit.rollout_temperature
    return SamplingParams(
        n=config.credit.rollouts_per_prefix,
        temperature=config.sampling.temperature if temperature is None else temperature,
        top_p=config.sampling.top_p,
        max_new_tokens=config.sampling.max_new_tokens,
        seed=seed,
    )


def generate_rollouts(
    config: ExperimentConfig,
    *,
    checkpoint_path: str,
    checkpoint_id: str,
    samples: pl.DataFrame,
    problems: pl.DataFrame,
    previous: pl.DataFrame | None,
    seed: int,
    log: Log,
    generator_factory: Callable[[], object] | None = None,
) -> tuple[pl.DataFrame, dict]:
    """``step_rollouts`` of a partition, reusing ``previous`` rows (see the module docstring).

    Returns the table and counts for the asset's metadata: prompts, completions generated
    and reused, new tokens and tokens per second of the generation.
    """
    rule = step_rule(config)
    params = rollout_params(config, seed)
    m = params.n
    chosen = rolled_out_samples(samples, config)
    questions = dict(problems.select("problem_id", "question").iter_rows())
    answers = dict(problems.select("problem_id", "answer").iter_rows())

    # Every (sample, prefix) request.
    requests = []  # (sample_id, problem_id, step_idx, prefix_text, prompt, key)
    for sid, pid, solution in chosen.select("sample_id", "problem_id", "solution").iter_rows():
        steps = split_steps(solution, rule)
        head = format_prompt(questions[pid])
        for i in range(len(steps)):
            text = prefix(steps, i)
            prompt = head + text
            requests.append((sid, pid, i, text, prompt, rollout_key(checkpoint_id, prompt, params)))

    known: dict[tuple[str, int], dict] = {}
    if previous is not None and previous.height:
        for row in previous.filter(pl.col("rollout_idx") < m).iter_rows(named=True):
            known[(row["rollout_key"], row["rollout_idx"])] = row

    generator = None
    stats = {"prompts": 0, "generated": 0, "reused": 0, "new_tokens": 0, "seconds": 0.0}
    outcomes: dict[str, list[dict]] = {}  # rollout_key -> M result rows

    def fetch(batch: Sequence[tuple]) -> None:
        nonlocal generator
        todo: dict[str, tuple[str, str, str]] = {}
        for _sid, pid, _i, text, prompt, key in batch:
            if key in outcomes or key in todo:
                continue
            rows = [known.get((key, j)) for j in range(m)]
            if all(r is not None for r in rows):
                outcomes[key] = rows
                stats["reused"] += m
            else:
                todo[key] = (prompt, text, pid)
        if not todo:
            return
        if generator is None:
            generator = (
                generator_factory()
                if generator_factory
                else _generator(config, checkpoint_path, log)
            )
        keys = list(todo)
        start = time.perf_counter()
        completions = generator.generate([todo[k][0] for k in keys], params)
        stats["seconds"] += time.perf_counter() - start
        texts, golds = [], []
        for k, outs in zip(keys, completions, strict=True):
            _prompt, text, pid = todo[k]
            for c in outs:
                texts.append(text + c.text)
                golds.append(answers[pid])
        grades = iter(grade_many(texts, golds, config.answer_format))
        for k, outs in zip(keys, completions, strict=True):
            rows = []
            for j, c in enumerate(outs):
                g = next(grades)
                rows.append(
                    {
                        "rollout_key": k,
                        "rollout_idx": j,
                        "completion": c.text,
                        "final_answer": g.extracted,
                        "is_correct": g.is_correct,
                        "num_tokens": c.num_tokens,
                        "finish_reason": c.finish_reason,
                    }
                )
                stats["new_tokens"] += c.num_tokens
            outcomes[k] = rows
        stats["generated"] += len(keys) * m
        stats["prompts"] += len(keys)

    if config.credit.early_stop:
        requests = _roll_out_until_pits(requests, chosen, outcomes, fetch, stats)
    else:
        fetch(requests)

    rows = []
    for sid, pid, i, _text, _prompt, key in requests:
        for row in outcomes[key]:
            rows.append(
                {
                    "sample_id": sid,
                    "problem_id": pid,
                    "step_idx": i,
                    "rollout_idx": row["rollout_idx"],
                    "completion": row["completion"],
                    "final_answer": row["final_answer"],
                    "is_correct": row["is_correct"],
                    "num_tokens": row["num_tokens"],
                    "finish_reason": row["finish_reason"],
                    "rollout_key": key,
                    "checkpoint": checkpoint_id,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "max_new_tokens": params.max_new_tokens,
                    "rollout_seed": params.seed,
                }
            )
    table = pl.DataFrame(rows, schema=ROLLOUT_SCHEMA)
    stats["samples"] = chosen.height
    stats["tokens_per_second"] = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    stats.setdefault("skipped_prefixes", 0)
    log(
        f"step rollouts: {chosen.height} samples, {len(requests)} prefixes, "
        f"{stats['generated']} completions generated ({stats['prompts']} distinct prompts x {m}), "
        f"{stats['reused']} reused"
        + (
            f", {stats['skipped_prefixes']} prefixes after first pits skipped"
            if config.credit.early_stop
            else ""
        )
    )
    return table, stats


def _roll_out_until_pits(
    requests: list[tuple],
    chosen: pl.DataFrame,
    outcomes: dict[str, list[dict]],
    fetch: Callable[[Sequence[tuple]], None],
    stats: dict,
) -> list[tuple]:
    """``credit.early_stop``: roll out prefix 0 of every sample, then prefix 1, ..., each
    round one batched call across the samples still going; a negative stops after the first
    prefix ``i >= 1`` whose M rollouts all fail. That prefix is its first pit under
    ``first_zero`` whatever the rollout policy (pi_sft and best-of-K both give Q = 0 exactly
    when no rollout succeeds), so the later prefixes cannot change the pit; positives have no
    pit and are rolled out in full. Returns the requests that were rolled out, in order."""
    negative = dict(chosen.select("sample_id", ~pl.col("is_correct")).iter_rows())
    by_sample: dict[str, list[tuple]] = {}
    for request in requests:
        by_sample.setdefault(request[0], []).append(request)
    going = list(by_sample)
    done: set[tuple[str, int]] = set()
    step = 0
    while going:
        batch = [by_sample[sid][step] for sid in going]
        fetch(batch)
        done.update((sid, step) for sid in going)
        still = []
        for sid, request in zip(going, batch, strict=True):
            pit = (
                step >= 1
                and negative[sid]
                and not any(r["is_correct"] for r in outcomes[request[5]])
            )
            if not pit and step + 1 < len(by_sample[sid]):
                still.append(sid)
        going = still
        step += 1
    stats["skipped_prefixes"] = len(requests) - len(done)
    return [r for r in requests if (r[0], r[2]) in done]


def advantages(
    config: ExperimentConfig, samples: pl.DataFrame, rollouts: pl.DataFrame
) -> pl.DataFrame:
    """``step_advantages`` of a partition from its rollouts (no generation)."""
    rolled = clean_samples(samples).filter(
        pl.col("sample_id").is_in(rollouts["sample_id"].unique().implode())
    )
    steps = sample_steps(rolled, step_rule(config))
    terminal = steps.group_by("sample_id").agg(
        n_steps=pl.col("step_idx").max(), is_correct=pl.col("sample_is_correct").first()
    )
    q = credit.q_values(
        rollouts.select("sample_id", "step_idx", "rollout_idx", "is_correct"),
        terminal.select("sample_id", "n_steps", "is_correct"),
        policy=config.credit.rollout_policy,
        k=config.credit.k,
        stopped_at_pit=config.credit.early_stop,
    )
    return credit.step_advantages(
        q,
        steps.select("sample_id", "problem_id", "step_idx", "step_text", "sample_is_correct"),
        pit_rule=config.credit.pit_rule,
        spurious_threshold=config.credit.spurious_threshold,
    )


def pairs(
    config: ExperimentConfig,
    *,
    problems: pl.DataFrame,
    samples: pl.DataFrame,
    adv: pl.DataFrame,
    rollouts: pl.DataFrame,
    teacher: pl.DataFrame,
    seed: int,
) -> pl.DataFrame:
    """Every kind of preference pair of a partition (the trainers pick theirs by ``kind``)."""
    return credit.preference_pairs(
        problems,
        clean_samples(samples),
        adv,
        rollouts,
        teacher,
        kinds=credit.PAIR_KINDS,
        seed=seed,
        prompt_fn=format_prompt,
        step_rule=step_rule(config),
    )


def pair_weights(config: ExperimentConfig, chosen: pl.DataFrame, adv: pl.DataFrame) -> list[float]:
    """The advantage-weighted variant: exp(-A_pit / beta) per pair, normalised to mean 1."""
    pit_adv = adv.filter(pl.col("is_first_pit")).select("sample_id", pit_advantage="advantage")
    joined = chosen.join(pit_adv, on="sample_id", how="left").with_columns(
        pl.col("pit_advantage").fill_null(0.0)
    )
    raw = [math.exp(-a / config.training.dpo_beta) for a in joined["pit_advantage"]]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


def train_preference_model(
    config: ExperimentConfig,
    method: str,
    sft_path: str,
    pair_table: pl.DataFrame,
    folder: Path,
    seed: int,
    log: Log,
    weights: Sequence[float] | None = None,
) -> pl.DataFrame:
    """DPO from pi_sft (also the frozen reference) on ``pair_table``: one checkpoint row."""
    model, tokenizer = load_checkpoint(sft_path)
    if pair_table.height == 0:
        log(f"{method}: no preference pairs; the model stays pi_sft")
        row = _checkpoint_row(method, sft_path, sft_path, None, model)
        return pl.DataFrame([row], schema=CHECKPOINT_SCHEMA)
    examples = [
        PreferenceExample(
            prompt=r["prompt"],
            chosen=r["chosen"],
            rejected=r["rejected"],
            chosen_has_eos=r["chosen_has_eos"],
            rejected_has_eos=r["rejected_has_eos"],
        )
        for r in pair_table.iter_rows(named=True)
    ]
    t = config.training
    stats = train_dpo(
        model,
        tokenizer,
        examples,
        beta=t.dpo_beta,
        learning_rate=t.dpo_learning_rate,
        epochs=t.dpo_epochs,
        batch_size=t.batch_size,
        config=t,
        seed=seed,
        max_seq_len=config.model.max_seq_len,
        log=log,
        weights=weights,
    )
    save_checkpoint(model, tokenizer, folder, {"method": method, "init": sft_path, "seed": seed})
    row = _checkpoint_row(method, folder, sft_path, stats, model)
    row["reward_accuracy"] = stats.reward_accuracy
    return pl.DataFrame([row], schema={**CHECKPOINT_SCHEMA, "reward_accuracy": pl.Float64})
