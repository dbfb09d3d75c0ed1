"""Teachers beyond the oracle and the data set's references: a model behind an
OpenAI-compatible endpoint (``vllm serve``, or any hosted completions API).

:func:`endpoint_teacher_solutions` writes the ``teacher_solutions`` table (the columns and
types of :data:`synthdata_assets.datasets.SOLUTION_SCHEMA`) for a subset of problems:
``n`` sampled solutions per problem, prompted exactly as the learner is
(:func:`training.prompts.format_prompt`), graded by the verifier against the gold answers.

Requests go through :class:`training.openai_backend.OpenAIGenerator`: at most
``concurrency`` in flight, retried on connection errors, timeouts, 429 and 5xx. Sample ``j``
of a problem is seeded from ``(seed, prompt)`` and ``j`` alone, so a problem gets the same
solutions whichever subset it is in, and with ``cache_path`` (an append-only JSONL file,
each completion written as it arrives) a crash and a rerun, or a larger nested data size
sharing the file, request only the completions not yet written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from synthdata_assets.datasets import SOLUTION_SCHEMA
from synthdata_assets.verify import grade_many
from training.generation import SamplingParams
from training.openai_backend import OpenAIGenerator
from training.prompts import format_prompt

ENDPOINT = "endpoint"
# Where a completions model would go on to write the next problem in our prompt format.
DEFAULT_STOP: tuple[str, ...] = ("\nQuestion:",)


def endpoint_teacher_solutions(
    problems: pl.DataFrame,
    *,
    base_url: str,
    model: str | None,
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    answer_format: str,
    cache_path: Path | None,
    concurrency: int,
    log: Callable[[str], None],
    stop: Sequence[str] = DEFAULT_STOP,
    timeout_s: float = 300.0,
) -> pl.DataFrame:
    """``n`` graded solutions per row of ``problems`` (``problem_id``, ``question``,
    ``answer``) from the model served at ``base_url`` (``model``: default, the first one
    the server lists). Solution ``j`` of problem ``p`` has the id ``{p}/teacher/{seed}/{j}``,
    as the oracle's."""
    generator = OpenAIGenerator(
        base_url,
        model=model,
        max_concurrency=concurrency,
        timeout_s=timeout_s,
        cache_path=cache_path,
        log=log,
    )
    params = SamplingParams(
        n=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        stop=tuple(stop),
        seed=seed,
    )
    ids, golds = problems["problem_id"].to_list(), problems["answer"].to_list()
    log(
        f"endpoint teacher {generator.model} at {generator.base_url}: {len(ids)} problems "
        f"x {n} solutions"
    )
    outputs = generator.generate([format_prompt(q) for q in problems["question"]], params)
    written = [
        (pid, gold, j, completion)
        for pid, gold, completions in zip(ids, golds, outputs, strict=True)
        for j, completion in enumerate(completions)
    ]
    grades = grade_many(
        [c.text for *_, c in written], [gold for _, gold, *_ in written], answer_format
    )
    rows = [
        {
            "problem_id": pid,
            "solution_id": f"{pid}/teacher/{seed}/{j}",
            "solution": completion.text,
            "final_answer": grade.extracted,
            "is_correct": grade.is_correct,
            "answer": gold,
            "n_lines": len(completion.text.splitlines()),
            "teacher": ENDPOINT,
        }
        for (pid, gold, j, completion), grade in zip(written, grades, strict=True)
    ]
    table = pl.DataFrame(rows, schema=SOLUTION_SCHEMA)
    if table.height:
        truncated = sum(c.finish_reason == "length" for *_, c in written)
        log(
            f"endpoint teacher: {table.height} solutions, pass rate "
            f"{table['is_correct'].mean():.3f}, {truncated} cut at max_new_tokens"
        )
    return table
