"""Pure pieces of the model stages: example selection for SFT and RFT, pass@k."""

import math
import random

import polars as pl
import pytest

from synthdata_assets.evaluations import (
    evaluate_model,
    pass_at_k,
    pass_k_values,
    summarize_evaluations,
    with_cue_columns,
)
from synthdata_assets.models import rft_examples, sft_examples
from synthdata_assets.tasks import embedded
from training.config import SamplingConfig
from training.generation.interface import Completion


def test_pass_at_k_matches_the_definition() -> None:
    # With c correct of n, pass@k is the chance that k draws without replacement hit one.
    n, c = 10, 3
    for k in (1, 2, 5, 8):
        misses = math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(1 - misses)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="at least 5"):
        pass_at_k(4, 1, 5)


PROBLEMS = pl.DataFrame({"problem_id": ["a", "b"], "question": ["Qa", "Qb"]})


def test_sft_examples_keep_verified_positives_only() -> None:
    teacher = pl.DataFrame(
        {
            "problem_id": ["a", "a", "b"],
            "solution": ["s1", "bad", "s3"],
            "is_correct": [True, False, True],
        }
    )
    assert sft_examples(teacher, PROBLEMS) == [("Qa", "s1"), ("Qb", "s3")]


def test_rft_examples_deduplicate_and_cap_per_problem() -> None:
    samples = pl.DataFrame(
        {
            "problem_id": ["a"] * 5 + ["b"] * 2,
            "solution": ["x", "x", "y", "z", "w", "bad", "v"],
            "is_correct": [True, True, True, True, False, False, True],
        }
    )
    examples = rft_examples(samples, PROBLEMS, max_per_problem=2)
    assert examples == [("Qa", "x"), ("Qa", "y"), ("Qb", "v")]


def test_summary_reports_accuracy_and_pass_at_k() -> None:
    table = pl.DataFrame(
        {
            "method": ["sft", "sft", "rft", "rft"],
            "is_correct": [True, False, True, True],
            "n_samples": [4, 4, 4, 4],
            "n_correct_samples": [2, 0, 4, 1],
        }
    )
    summary = {r["method"]: r for r in summarize_evaluations(table, [1, 4]).iter_rows(named=True)}
    assert summary["sft"]["accuracy"] == 0.5
    assert summary["sft"]["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["sft"]["pass@4"] == pytest.approx(0.5)
    assert summary["rft"]["pass@4"] == 1.0


def test_cue_columns_count_the_misleading_choices_an_answer_followed() -> None:
    params = embedded.EmbeddedParams(graph="chain", n_distractors=2, cue_rate=0.0)
    problem = next(
        p
        for p in embedded.generate_problems(params, 50, seed=5, split="train")
        if embedded.misleading_cues(p.spec)
    )
    (_, first), *_ = embedded.misleading_cues(problem.spec)
    right = embedded.oracle_solution(problem, rng=random.Random(0))
    wrong = f"After Ann, {first} has 1 + 1 = 2.\n" + right
    test = pl.DataFrame({"problem_id": [problem.problem_id], "spec": [problem.spec]})
    table = pl.DataFrame(
        {
            "method": ["sft", "rft"],
            "problem_id": [problem.problem_id] * 2,
            "completion": [right, wrong],
            "is_correct": [True, False],
            "n_samples": [1, 1],
            "n_correct_samples": [1, 0],
        }
    )
    table = with_cue_columns(table, test)
    points = len(embedded.misleading_cues(problem.spec))
    assert table["cue_points"].to_list() == [points, points]
    assert table["cue_followed"].to_list() == [0, 1]
    summary = {r["method"]: r for r in summarize_evaluations(table, [1]).iter_rows(named=True)}
    assert summary["sft"]["follows_cue"] == 0 and summary["rft"]["follows_cue"] == 1 / points
    # A task without specs (real data) has no such columns' values, and no summary figure.
    specless = with_cue_columns(table.drop("cue_points", "cue_followed"), test.drop("spec"))
    assert specless["cue_points"].null_count() == 2
    assert "follows_cue" not in summarize_evaluations(specless, [1]).columns


class _Answers:
    """A generator that answers every prompt with "#### 4", and counts its calls by n."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, prompts, params, progress=None):
        self.calls.append(params.n)
        return [[Completion("2 + 2 = 4\n#### 4", 8, "stop")] * params.n for _ in prompts]


@pytest.mark.parametrize("eval_samples", [0, 3])
def test_an_evaluation_draws_pass_at_k_samples_only_where_asked(eval_samples: int) -> None:
    test = pl.DataFrame({"problem_id": ["a", "b"], "question": ["Qa", "Qb"], "answer": ["4", "5"]})
    generator = _Answers()
    table = evaluate_model(
        generator,
        "sft",
        test,
        SamplingConfig(eval_samples=eval_samples),
        seed=0,
        answer_format="gsm8k",
        log=lambda _line: None,
    )
    assert table["is_correct"].to_list() == [True, False]
    k_values = pass_k_values(eval_samples)
    summary = summarize_evaluations(table, k_values).row(0, named=True)
    assert summary["accuracy"] == 0.5
    if eval_samples:  # the greedy pass, then the samples
        assert generator.calls == [1, 3] and k_values == [1, 3]
        assert table["n_samples"].to_list() == [3, 3]
        assert table["n_correct_samples"].to_list() == [3, 0]
        assert summary["pass@3"] == 0.5
    else:  # the greedy pass alone, and no pass@k figure
        assert generator.calls == [1] and k_values == []
        assert table["n_samples"].null_count() == table["n_correct_samples"].null_count() == 2
        assert not any(column.startswith("pass@") for column in summary)
