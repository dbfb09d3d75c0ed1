"""Pure pieces of the model stages: example selection for SFT and RFT, pass@k."""

import math

import polars as pl
import pytest

from synthdata_assets.evaluations import pass_at_k, summarize_evaluations
from synthdata_assets.models import rft_examples, sft_examples


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
