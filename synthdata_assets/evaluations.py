"""Every model's answers to the test split (asset ``evaluations``): greedy accuracy, and
pass@k from ``sampling.eval_samples`` samples per problem (none drawn where it is 0)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import polars as pl

from synthdata_assets import tasks
from synthdata_assets.samples import sample_solutions, sampling_params
from training.config import SamplingConfig
from training.generation import Generator
from training.progress import Progress, no_progress

EVAL_SCHEMA = {
    "method": pl.String,
    "problem_id": pl.String,
    "completion": pl.String,
    "extracted": pl.String,
    "is_correct": pl.Boolean,
    "n_samples": pl.Int64,
    "n_correct_samples": pl.Int64,
    # The embedded task's choices where the sentence order misleads (a dead end is stated
    # before the step to take), and how many of them the greedy answer followed; null for a
    # task without per-step ground truth.
    "cue_points": pl.Int64,
    "cue_followed": pl.Int64,
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct among ``n`` samples (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_model(
    generator: Generator,
    method: str,
    test: pl.DataFrame,
    sampling: SamplingConfig,
    *,
    seed: int,
    answer_format: str,
    log: Callable[[str], None],
    progress: Progress = no_progress,
) -> pl.DataFrame:
    """Greedy answers of ``method``'s model (behind ``generator``) to the test split, plus
    ``sampling.eval_samples`` samples per problem for pass@k (with 0, none: ``n_samples`` and
    ``n_correct_samples`` are null)."""
    start = time.perf_counter()
    greedy = greedy_solutions(
        generator, test, sampling, seed=seed, answer_format=answer_format, progress=progress
    )
    table = greedy.rename({"solution": "completion", "final_answer": "extracted"})
    if sampling.eval_samples:
        sampled = sample_solutions(
            generator,
            test,
            sampling_params(
                sampling, n=sampling.eval_samples, temperature=sampling.temperature, seed=seed
            ),
            id_prefix="eval",
            answer_format=answer_format,
            progress=progress,
        )
        counts = sampled.group_by("problem_id").agg(
            n_samples=pl.len(), n_correct_samples=pl.col("is_correct").sum().cast(pl.Int64)
        )
        table = table.join(counts, on="problem_id", how="left")
    else:
        table = table.with_columns(
            n_samples=pl.lit(None, pl.Int64), n_correct_samples=pl.lit(None, pl.Int64)
        )
    table = table.with_columns(method=pl.lit(method))
    table = with_cue_columns(table, test).select(list(EVAL_SCHEMA)).cast(EVAL_SCHEMA)
    log(
        f"{method}: accuracy {table['is_correct'].mean():.3f} on {table.height} test problems "
        f"({time.perf_counter() - start:.1f}s)"
    )
    return table


def greedy_solutions(
    generator: Generator,
    test: pl.DataFrame,
    sampling: SamplingConfig,
    *,
    seed: int,
    answer_format: str,
    progress: Progress = no_progress,
) -> pl.DataFrame:
    """One greedy answer per test problem, graded (``sample_solutions``' columns): the answers
    greedy accuracy is read from, wherever a model is scored."""
    return sample_solutions(
        generator,
        test,
        sampling_params(sampling, n=1, temperature=0.0, seed=seed),
        id_prefix="greedy",
        answer_format=answer_format,
        progress=progress,
    )


def with_cue_columns(table: pl.DataFrame, test: pl.DataFrame) -> pl.DataFrame:
    """``cue_points`` and ``cue_followed`` of each answer (see ``EVAL_SCHEMA``), from the
    problem's spec where the task records one."""
    if "spec" not in test.columns:
        return table.with_columns(
            cue_points=pl.lit(None, pl.Int64), cue_followed=pl.lit(None, pl.Int64)
        )
    specs = dict(zip(test["problem_id"], test["spec"], strict=True))
    points, followed = [], []
    for problem_id, completion in zip(table["problem_id"], table["completion"], strict=True):
        spec = specs.get(problem_id)
        n, k = tasks.cue_followed(spec, completion) if spec is not None else (None, None)
        points.append(n)
        followed.append(k)
    return table.with_columns(
        cue_points=pl.Series(points, dtype=pl.Int64),
        cue_followed=pl.Series(followed, dtype=pl.Int64),
    )


def summarize_evaluations(table: pl.DataFrame, k_values: Sequence[int]) -> pl.DataFrame:
    """Accuracy and pass@k per method, and the share of misleading choices its greedy
    answers followed (``follows_cue``) where the test split has any; ``k_values`` empty where
    no samples were drawn (:func:`pass_k_values`)."""
    rows = []
    for method, group in table.group_by("method", maintain_order=True):
        row = {"method": method[0], "accuracy": float(group["is_correct"].mean())}
        points = group["cue_points"].sum() if "cue_points" in group.columns else 0
        if points:
            row["follows_cue"] = group["cue_followed"].sum() / points
        for k in k_values:
            scores = [
                pass_at_k(n, c, k)
                for n, c in zip(group["n_samples"], group["n_correct_samples"], strict=True)
            ]
            row[f"pass@{k}"] = sum(scores) / len(scores)
        rows.append(row)
    return pl.DataFrame(rows)


def pass_k_values(eval_samples: int) -> list[int]:
    """The k of the pass@k figures that ``eval_samples`` samples per problem give: 1 and
    ``eval_samples``, none without samples."""
    return sorted({1, eval_samples}) if eval_samples else []


def markdown_table(frame: pl.DataFrame) -> str:
    """A frame as a markdown table, floats to three decimals."""

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * frame.width]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)
