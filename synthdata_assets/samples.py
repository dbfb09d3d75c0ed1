"""Graded samples from a model: the policy's self-generated solutions (asset
``policy_samples``), the source of RFT's positives and of the negatives that credit
assignment works on. Evaluation samples test problems the same way.
"""

from __future__ import annotations

import polars as pl

from synthdata_assets.verify import grade_many
from training.config import SamplingConfig
from training.generation import Generator, SamplingParams
from training.progress import Progress, no_progress
from training.prompts import format_prompt

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


def sampling_params(
    sampling: SamplingConfig, *, n: int, temperature: float, seed: int
) -> SamplingParams:
    """``n`` samples per prompt at ``temperature``, with the section's top-p, token budget and
    stop strings."""
    return SamplingParams(
        n=n,
        temperature=temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        stop=tuple(sampling.stop),
        seed=seed,
    )


def sample_solutions(
    generator: Generator,
    problems: pl.DataFrame,
    params: SamplingParams,
    *,
    id_prefix: str,
    answer_format: str,
    progress: Progress = no_progress,
) -> pl.DataFrame:
    """``params.n`` graded samples per problem (problem_id, question, answer); sample ``j`` of
    problem ``p`` has the id ``{p}/{id_prefix}/{seed}/{j}``."""
    prompts = [format_prompt(q) for q in problems["question"]]
    outputs = generator.generate(prompts, params, progress=progress)
    rows = []
    for pid, gold, completions in zip(
        problems["problem_id"], problems["answer"], outputs, strict=True
    ):
        for j, c in enumerate(completions):
            rows.append(
                {
                    "problem_id": pid,
                    "sample_id": f"{pid}/{id_prefix}/{params.seed}/{j}",
                    "solution": c.text,
                    "answer": gold,
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                }
            )
    grades = grade_many([r["solution"] for r in rows], [r["answer"] for r in rows], answer_format)
    for r, g in zip(rows, grades, strict=True):
        r["final_answer"], r["is_correct"] = g.extracted, g.is_correct
    return pl.DataFrame(rows, schema=SAMPLE_SCHEMA)


def sample_summary(table: pl.DataFrame) -> dict[str, float | int]:
    """Pass rate, share of problems solved at least once, and negatives of a samples table."""
    solved = table.group_by("problem_id").agg(pl.col("is_correct").any())
    return {
        "samples": table.height,
        "pass_rate": float(table["is_correct"].mean()),
        "problems_solved": float(solved["is_correct"].mean()),
        "negatives": int((~table["is_correct"]).sum()),
    }
