"""The teacher's graded step-by-step solutions for a partition's problems (D_syn).

:func:`teacher_solutions` writes the ``teacher_solutions`` table (:data:`SOLUTION_SCHEMA`)
for a subset of problems with the teacher named by ``teacher.kind``:

- ``oracle`` (the generated tasks, embedded and star_graph): the task's exact solver, with
  the knobs ``teacher.slip_rate`` (one wrong step, so a wrong answer; star_graph: a wrong
  arm) and ``teacher.spurious_rate`` (a correct but unneeded step). Solution ``j`` of a
  problem comes from a random stream seeded by ``(seed, problem, j)``, so a problem gets the
  same solutions in every data size and nested subsets get nested solution sets.
- ``reference`` (GSM8K, MATH): the data set's own worked solution.
- ``endpoint``: a model served behind an OpenAI-compatible API (``vllm serve``, or any
  hosted completions API), prompted exactly as the learner is
  (:func:`training.prompts.format_prompt`). Requests go through
  :class:`training.generation.openai_engine.OpenAIGenerator`: at most ``teacher.concurrency``
  in flight, retried on connection errors, timeouts, 429 and 5xx. Sample ``j`` of a problem
  is seeded from ``(seed, prompt)`` and ``j`` alone, and with a cache (an append-only JSONL
  file per server, model and seed, each completion written as it arrives) a crash and a
  rerun, or a larger nested data size sharing the file, request only the completions not
  yet written.

Every solution is graded by the verifier against the problem's gold answer; solution ``j``
of problem ``p`` has the id ``{p}/teacher/{seed}/{j}`` whichever teacher wrote it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import polars as pl

from synthdata_assets.config import TeacherConfig
from synthdata_assets.tasks import embedded, star_graph
from synthdata_assets.verify import grade_many
from training.generation import SamplingParams
from training.generation.openai_engine import OpenAIGenerator
from training.prompts import format_prompt

SOLUTION_SCHEMA = {
    "problem_id": pl.String,
    "solution_id": pl.String,
    "solution": pl.String,
    "final_answer": pl.String,
    "is_correct": pl.Boolean,
    "answer": pl.String,
    "n_lines": pl.Int64,
    "teacher": pl.String,
}
# Where a completions model would go on to write the next problem in our prompt format.
DEFAULT_STOP: tuple[str, ...] = ("\nQuestion:",)

Log = Callable[[str], None]


def teacher_solutions(
    teacher: TeacherConfig,
    subset: pl.DataFrame,
    seed: int,
    *,
    answer_format: str,
    cache_root: Path | None = None,
    log: Log = print,
) -> pl.DataFrame:
    """The graded solutions of ``teacher`` for ``subset`` (problem_id, question, answer, and
    spec for the oracle or reference_solution for the reference teacher)."""
    if teacher.kind == "endpoint":
        cache = None
        if cache_root is not None:
            # One cache per server, model and seed, shared by every data size: subsets are
            # nested, so a larger size requests only its new problems.
            digest = hashlib.sha256(f"{teacher.base_url}\x1f{teacher.model}".encode())
            cache = cache_root / digest.hexdigest()[:12] / f"seed={seed}.jsonl"
        return endpoint_teacher_solutions(
            subset,
            base_url=str(teacher.base_url),
            model=teacher.model,
            n=teacher.solutions_per_problem,
            temperature=teacher.temperature,
            max_new_tokens=teacher.max_new_tokens,
            seed=seed,
            answer_format=answer_format,
            cache_path=cache,
            concurrency=teacher.concurrency,
            log=log,
        )
    if teacher.kind == "oracle":
        written = list(_oracle_solutions(teacher, subset, seed))
    else:
        written = list(_reference_solutions(subset))
    gold = dict(zip(subset["problem_id"], subset["answer"], strict=True))
    return _graded(
        [(pid, gold[pid], j, text) for pid, j, text in written],
        seed=seed,
        answer_format=answer_format,
        teacher=teacher.kind,
    )


def _oracle_solutions(
    teacher: TeacherConfig, subset: pl.DataFrame, seed: int
) -> Iterable[tuple[str, int, str]]:
    for row in subset.iter_rows(named=True):
        pid, spec = row["problem_id"], row["spec"]
        star = star_graph.StarProblem.from_spec(pid, spec) if star_graph.is_spec(spec) else None
        problem = None if star else embedded.EmbeddedProblem.from_spec(pid, spec)
        for j in range(teacher.solutions_per_problem):
            rng = random.Random(f"teacher/{seed}/{pid}/{j}")
            if star is not None:
                text = star_graph.oracle_solution(star, rng=rng, slip_rate=teacher.slip_rate)
            else:
                text = embedded.oracle_solution(
                    problem,
                    rng=rng,
                    spurious_rate=teacher.spurious_rate,
                    slip_rate=teacher.slip_rate,
                )
            yield pid, j, text


def _reference_solutions(subset: pl.DataFrame) -> Iterable[tuple[str, int, str]]:
    for row in subset.iter_rows(named=True):
        yield row["problem_id"], 0, row["reference_solution"]


def _graded(
    written: Sequence[tuple[str, str, int, str]], *, seed: int, answer_format: str, teacher: str
) -> pl.DataFrame:
    """The table of ``(problem_id, gold answer, index, solution text)`` rows, graded."""
    grades = grade_many([text for *_, text in written], [g for _, g, *_ in written], answer_format)
    rows = [
        {
            "problem_id": pid,
            "solution_id": f"{pid}/teacher/{seed}/{j}",
            "solution": text,
            "final_answer": grade.extracted,
            "is_correct": grade.is_correct,
            "answer": gold,
            "n_lines": len(text.splitlines()),
            "teacher": teacher,
        }
        for (pid, gold, j, text), grade in zip(written, grades, strict=True)
    ]
    return pl.DataFrame(rows, schema=SOLUTION_SCHEMA)


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
    log: Log,
    stop: Sequence[str] = DEFAULT_STOP,
    timeout_s: float = 300.0,
) -> pl.DataFrame:
    """``n`` graded solutions per row of ``problems`` (``problem_id``, ``question``,
    ``answer``) from the model served at ``base_url`` (``model``: default, the first one
    the server lists)."""
    generator = OpenAIGenerator(
        base_url,
        model=model,
        max_concurrency=concurrency,
        timeout_s=timeout_s,
        cache_path=cache_path,
        log=log,
    )
    params = SamplingParams(
        n=n, temperature=temperature, max_new_tokens=max_new_tokens, stop=tuple(stop), seed=seed
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
    table = _graded(
        [(pid, gold, j, c.text) for pid, gold, j, c in written],
        seed=seed,
        answer_format=answer_format,
        teacher="endpoint",
    )
    if table.height:
        truncated = sum(c.finish_reason == "length" for *_, c in written)
        log(
            f"endpoint teacher: {table.height} solutions, pass rate "
            f"{table['is_correct'].mean():.3f}, {truncated} cut at max_new_tokens"
        )
    return table
