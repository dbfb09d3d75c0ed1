"""The problem pool and its nested training subsets, as polars tables (asset ``problems``).

- :func:`problem_pool` builds the ``problems`` table: every train problem of the pool and
  the test split, one row each.
- :func:`training_subset` picks the problems of a (data_size, seed) partition: the first
  ``data_size`` of an order fixed by ``seed``. Orders come from hashing ids, so the
  subsets of one seed are nested (size 500 is inside size 1000) and each seed draws its
  own data.
- :func:`gold_answers_parse` checks that the verifier reads every gold answer back.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl

from synthdata_assets.config import EmbeddedTaskConfig, StarGraphTaskConfig, TaskConfig
from synthdata_assets.tasks import embedded, realdata, star_graph
from synthdata_assets.verify import extract_answer

PROBLEM_SCHEMA = {
    "problem_id": pl.String,
    "split": pl.String,
    "question": pl.String,
    "answer": pl.String,
    "source": pl.String,
    "n_steps": pl.Int64,
    "spec": pl.String,
    "reference_solution": pl.String,
    "meta": pl.String,
}


def embedded_params(knobs: EmbeddedTaskConfig) -> embedded.EmbeddedParams:
    """The embedded task generator's parameters from its config section."""
    return embedded.EmbeddedParams(**knobs.model_dump())


def star_graph_params(knobs: StarGraphTaskConfig) -> star_graph.StarGraphParams:
    """The path-star generator's parameters from its config section."""
    return star_graph.StarGraphParams(**knobs.model_dump())


def _problem_row(
    problem: embedded.EmbeddedProblem | star_graph.StarProblem | realdata.RealProblem,
    split: str,
    *,
    source: str,
    n_steps: int,
    spec: str | None = None,
    reference_solution: str | None = None,
    meta: str | None = None,
) -> dict:
    return {
        "problem_id": problem.problem_id,
        "split": split,
        "question": problem.question,
        "answer": problem.answer,
        "source": source,
        "n_steps": n_steps,
        "spec": spec,
        "reference_solution": reference_solution,
        "meta": meta,
    }


def _generator(task: TaskConfig):
    """The task module and generator parameters of a generated task."""
    if task.name == "embedded":
        return embedded, embedded_params(task.embedded)
    return star_graph, star_graph_params(task.star_graph)


def _with_margin(n: int) -> int:
    """Problems to generate so that dropping those that overlap the pool still leaves ``n``."""
    return n + n // 4 + 8


def _generated_rows(task: TaskConfig) -> list[dict]:
    """The pool of a generated task (embedded or star_graph): both task modules generate,
    split and de-duplicate their problems the same way."""
    module, params = _generator(task)
    seed = task.pool_seed
    train = module.generate_problems(params, task.n_train_pool, seed=seed, split="train")
    test = module.generate_problems(params, _with_margin(task.n_test), seed=seed, split="test")
    test = module.exclude_overlap(test, train)[: task.n_test]
    return [
        _problem_row(p, split, source=task.name, n_steps=p.n_steps, spec=p.spec)
        for split, problems in (("train", train), ("test", test))
        for p in problems
    ]


def generated_split(task: TaskConfig, split: str, n: int, *, seed: int) -> pl.DataFrame:
    """Problems ``0..n-1`` of a generated task's ``(seed, split)`` stream, as rows of the
    ``problems`` table: a split beside the pool's, such as the ``validation`` split that
    draws of the pretraining recipe are chosen by (:func:`pretrain.pretrain_draws`)."""
    if not task.generated:
        raise ValueError(f"task {task.name!r} is not generated; it has no {split!r} stream")
    module, params = _generator(task)
    problems = module.generate_problems(params, n, seed=seed, split=split)
    rows = [
        _problem_row(p, split, source=task.name, n_steps=p.n_steps, spec=p.spec) for p in problems
    ]
    return pl.DataFrame(rows, schema=PROBLEM_SCHEMA)


def validation_split(task: TaskConfig, n: int, pool: pl.DataFrame) -> pl.DataFrame:
    """``n`` problems of the study pool's own ``validation`` stream (``task.pool_seed``), none
    of whose questions is in ``pool`` (its train and test splits): the held-out problems that
    ``training.select_epoch: validation`` chooses SFT's and RFT's epoch by, so neither the
    training data nor the test split is what the choice is made on."""
    margin = generated_split(task, "validation", _with_margin(n), seed=task.pool_seed)
    kept = margin.filter(~pl.col("question").is_in(pool["question"].implode()))
    if kept.height < n:
        raise ValueError(
            f"the validation stream holds {kept.height} problems outside the pool, fewer than "
            f"training.validation_problems ({n}); lower it"
        )
    return kept.head(n)


def _real_rows(task: TaskConfig, needed: int) -> list[dict]:
    loader = realdata.load_gsm8k if task.name == "gsm8k" else realdata.load_math
    assert task.train_path is not None and task.test_path is not None  # validated in config
    train = loader(task.train_path, split="train")[: task.n_train_pool]
    test = loader(task.test_path, split="test")[: task.n_test]
    if len(train) < needed:
        raise ValueError(
            f"data_sizes (or sft_reference_sizes) ask for {needed} training problems but "
            f"{task.train_path} holds {len(train)} (after task.n_train_pool="
            f"{task.n_train_pool}); lower them or point task.train_path at a larger set"
        )
    return [
        _problem_row(
            p,
            split,
            source=p.source,
            n_steps=len(p.steps),
            reference_solution=p.solution,
            meta=json.dumps(p.meta, sort_keys=True) if p.meta else None,
        )
        for split, problems in (("train", train), ("test", test))
        for p in problems
    ]


def problem_pool(task: TaskConfig, needed: int = 0) -> pl.DataFrame:
    """The ``problems`` table: the training pool and the test split. Real data sets must
    hold at least ``needed`` training problems (the study's largest data size)."""
    rows = _generated_rows(task) if task.generated else _real_rows(task, needed)
    return pl.DataFrame(rows, schema=PROBLEM_SCHEMA)


def _order_key(seed: int, problem_id: str) -> str:
    return hashlib.sha256(f"subset/{seed}/{problem_id}".encode()).hexdigest()


def training_subset(problems: pl.DataFrame, data_size: int, seed: int) -> pl.DataFrame:
    """The first ``data_size`` training problems in the order fixed by ``seed``."""
    train = problems.filter(pl.col("split") == "train")
    if train.height < data_size:
        raise ValueError(
            f"data_size {data_size} exceeds the {train.height} training problems in the pool"
        )
    keys = [_order_key(seed, pid) for pid in train["problem_id"]]
    return (
        train.with_columns(pl.Series("_order", keys)).sort("_order").head(data_size).drop("_order")
    )


def gold_answers_parse(problems: pl.DataFrame, fmt: str) -> list[str]:
    """Ids of problems whose gold answer the verifier cannot read back (should be none)."""
    bad = []
    for pid, answer in zip(problems["problem_id"], problems["answer"], strict=True):
        if fmt == "embedded":
            probes = [embedded.final_answer_line(answer)]
        elif fmt == "star_graph":  # every true path of the gold answer must read back
            probes = [
                star_graph.solution_text(path.split(","))
                for path in answer.split(star_graph.ALTERNATIVE_SEP)
            ]
        else:
            probes = [f"\\boxed{{{answer}}}"]
        if not answer or any(extract_answer(probe, fmt) is None for probe in probes):
            bad.append(pid)
    return bad
