"""The study's invariants as asset checks: each plain check on good and broken tables, every
check of the tiny study run and passed, and a failing blocking check stops what reads it."""

from __future__ import annotations

import math

import dagster as dg
import polars as pl
import pytest

from synthdata_assets import checks
from synthdata_assets import problems as pool_lib
from synthdata_assets.advantages import step_advantages
from synthdata_assets.config import TeacherConfig, load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.problems import check_result
from synthdata_assets.defs.study import partition_key
from synthdata_assets.pairs import preference_pairs
from synthdata_assets.study import PARTITION_STAGES, REFERENCE_STAGES, SETUP_STAGES
from synthdata_assets.teacher import teacher_solutions
from training.prompts import format_prompt
from warehouse import Warehouse

# --------------------------------------------------------------------------------------------
# Q-values and first pits (step_advantages)


def advantages_of(samples: dict[str, tuple[bool, list[float]]], rule: str = "first_zero"):
    """The step_advantages rows of {sample_id: (is_correct, [q_0, ..., q_L])}."""
    q_rows, step_rows = [], []
    for sid, (ok, qs) in samples.items():
        for i, q in enumerate(qs):
            q_rows.append((sid, i, q, 5))
            if i:
                step_rows.append((sid, "P", i, f"step {i}\n", ok))
    q = pl.DataFrame(
        q_rows, schema=["sample_id", "step_idx", "q_value", "n_rollouts"], orient="row"
    )
    steps = pl.DataFrame(
        step_rows,
        schema=["sample_id", "problem_id", "step_idx", "step_text", "sample_is_correct"],
        orient="row",
    )
    return step_advantages(q, steps, pit_rule=rule)


GOOD = {"neg": (False, [0.6, 0.2, 0.0, 0.0]), "pos": (True, [0.6, 0.8, 1.0])}


def set_cell(table: pl.DataFrame, sid: str, step: int, column: str, value) -> pl.DataFrame:
    at = (pl.col("sample_id") == sid) & (pl.col("step_idx") == step)
    return table.with_columns(
        pl.when(at).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )


def test_q_values_in_the_unit_interval_pass() -> None:
    verdict = checks.q_values_in_unit_interval(advantages_of(GOOD), early_stop=False)
    assert verdict.passed
    assert verdict.metadata["steps"] == 7 and verdict.metadata["first"] is None
    assert (verdict.metadata["min_q"], verdict.metadata["max_q"]) == (0.0, 1.0)


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_a_q_value_outside_the_unit_interval_fails(bad: float) -> None:
    table = set_cell(advantages_of(GOOD), "pos", 1, "q_value", bad)
    verdict = checks.q_values_in_unit_interval(table, early_stop=False)
    assert not verdict.passed
    assert verdict.metadata["outside_unit_interval"] == 1 and verdict.metadata["first"] == "pos/1"


def test_a_null_q_value_passes_only_after_an_early_stopped_pit() -> None:
    after_pit = set_cell(advantages_of(GOOD), "neg", 3, "q_value", None)
    assert checks.q_values_in_unit_interval(after_pit, early_stop=True).passed
    verdict = checks.q_values_in_unit_interval(after_pit, early_stop=False)
    assert not verdict.passed and verdict.metadata["first"] == "neg/3"
    before_pit = set_cell(advantages_of(GOOD), "neg", 1, "q_value", None)
    verdict = checks.q_values_in_unit_interval(before_pit, early_stop=True)
    assert not verdict.passed and verdict.metadata["null_q_values_not_skipped"] == 1


def test_one_first_pit_per_negative_passes() -> None:
    verdict = checks.first_pit_per_negative(advantages_of(GOOD), "first_zero")
    assert verdict.passed
    assert verdict.metadata["negatives"] == 1 and verdict.metadata["first"] is None


def test_a_negative_with_two_first_pits_fails() -> None:
    table = set_cell(advantages_of(GOOD), "neg", 3, "is_first_pit", True)
    for rule in ("first_zero", "largest_drop"):
        verdict = checks.first_pit_per_negative(table, rule)
        assert not verdict.passed
        assert verdict.metadata["negatives_with_several_pits"] == 1
        assert verdict.metadata["first"] == "neg"


def test_a_negative_without_a_pit_fails_only_under_first_zero() -> None:
    table = set_cell(advantages_of(GOOD), "neg", 2, "is_first_pit", False)
    verdict = checks.first_pit_per_negative(table, "first_zero")
    assert not verdict.passed and verdict.metadata["negatives_without_pit"] == 1
    assert checks.first_pit_per_negative(table, "largest_drop").passed
    # A negative whose Q never drops has no largest drop, hence no pit.
    flat = advantages_of({"neg": (False, [0.0, 0.0])}, rule="largest_drop")
    assert checks.first_pit_per_negative(flat, "largest_drop").passed


def test_a_positive_with_a_pit_fails() -> None:
    table = set_cell(advantages_of(GOOD), "pos", 1, "is_first_pit", True)
    verdict = checks.first_pit_per_negative(table, "first_zero")
    assert not verdict.passed
    assert verdict.metadata["positives_with_pit"] == 1 and verdict.metadata["first"] == "pos"


# --------------------------------------------------------------------------------------------
# per-step pairs (preference_pairs)

NEGATIVE = "A = 1 + 1 = 3.\nB = 3 + 1 = 4.\nThe answer is 4.\n"
POSITIVE = "A = 1 + 1 = 2.\nB = 2 + 1 = 3.\nThe answer is 3.\n"


@pytest.fixture
def pair_tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    """A partition's pairs of every kind, made by the pair builder, and their samples."""
    problems = pl.DataFrame({"problem_id": ["P"], "question": ["Q?"]})
    samples = pl.DataFrame(
        [("P", "neg", NEGATIVE, False), ("P", "pos", POSITIVE, True)],
        schema=["problem_id", "sample_id", "solution", "is_correct"],
        orient="row",
    )
    adv = pl.DataFrame(
        {"sample_id": ["neg"] * 4, "step_idx": [0, 1, 2, 3], "is_first_pit": [0, 1, 0, 0]}
    ).with_columns(pl.col("is_first_pit").cast(pl.Boolean))
    pairs = preference_pairs(
        problems,
        samples,
        adv,
        pl.DataFrame(),
        pl.DataFrame(),
        kinds=["per_step", "outcome"],
        seed=0,
        prompt_fn=format_prompt,
    )
    return pairs, samples


def test_per_step_rejected_prefixes_pass(pair_tables) -> None:
    pairs, samples = pair_tables
    assert pairs.filter(pl.col("kind") == "per_step")["rejected"].to_list() == ["A = 1 + 1 = 3."]
    verdict = checks.per_step_rejected_is_prefix(pairs, samples)
    assert verdict.passed
    assert verdict.metadata["per_step_pairs"] == 1 and verdict.metadata["first"] is None


@pytest.mark.parametrize(
    ("column", "value", "counted"),
    [
        ("rejected", "A = 1 + 1 = 2.", "not_a_prefix"),
        ("rejected", "", "not_a_prefix"),
        ("rejected_has_eos", True, "rejected_with_eos"),
        ("sample_id", "pos", "not_a_negative_sample"),
        ("sample_id", "gone", "not_a_negative_sample"),
    ],
)
def test_a_per_step_pair_that_is_not_a_cut_of_its_negative_fails(
    pair_tables, column: str, value, counted: str
) -> None:
    pairs, samples = pair_tables
    per_step = pl.col("kind") == "per_step"
    broken = pairs.with_columns(
        pl.when(per_step).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )
    verdict = checks.per_step_rejected_is_prefix(broken, samples)
    assert not verdict.passed and verdict.metadata[counted] >= 1
    assert verdict.metadata["first"] == broken.filter(per_step)["pair_id"][0]


# --------------------------------------------------------------------------------------------
# evaluations

METHODS = ["base", "sft", "rft"]
TEST_IDS = ["t1", "t2"]


def evaluations_of(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["method", "problem_id"], orient="row").with_columns(
        is_correct=pl.lit(True)
    )


FULL = [(m, p) for m in METHODS for p in TEST_IDS]


def test_evaluations_of_every_method_and_test_problem_pass() -> None:
    verdict = checks.evaluations_cover(evaluations_of(FULL), TEST_IDS, METHODS)
    assert verdict.passed and verdict.metadata["rows"] == 6
    assert verdict.metadata["first"] is None


@pytest.mark.parametrize(
    ("rows", "counted", "first"),
    [
        ([r for r in FULL if r != ("sft", "t2")], "missing", "sft/t2"),
        ([*FULL, ("rft", "t1")], "duplicated", "rft/t1"),
        ([*FULL, ("dpo", "t1")], "unexpected", "dpo/t1"),
        ([*FULL, ("base", "train-problem")], "unexpected", "base/train-problem"),
    ],
)
def test_evaluations_with_a_hole_or_an_extra_row_fail(rows, counted: str, first: str) -> None:
    verdict = checks.evaluations_cover(evaluations_of(rows), TEST_IDS, METHODS)
    assert not verdict.passed
    assert verdict.metadata[counted] == 1 and verdict.metadata["first"] == first


# --------------------------------------------------------------------------------------------
# the teacher's pass rate


def grades(correct: int, wrong: int) -> pl.Series:
    return pl.Series("is_correct", [True] * correct + [False] * wrong)


def test_binomial_bounds_hold_the_tails_they_promise() -> None:
    n, p, alpha = 40, 0.7, 1e-3
    lo, hi = checks.binomial_bounds(n, p, alpha)

    def tail(ks) -> float:
        return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in ks)

    assert tail(range(lo)) <= alpha < tail(range(lo + 1))
    assert tail(range(hi + 1, n + 1)) <= alpha < tail(range(hi, n + 1))
    assert checks.binomial_bounds(10, 1.0, alpha) == (10, 10)
    assert checks.binomial_bounds(10, 0.0, alpha) == (0, 0)


def test_the_oracle_pass_rate_within_its_slip_rate_bounds_passes() -> None:
    oracle = TeacherConfig(slip_rate=0.15)
    verdict = checks.teacher_pass_rate_in_bounds(grades(85, 15), oracle)
    assert verdict.passed
    assert verdict.metadata["expected_pass_rate"] == pytest.approx(0.85)
    assert verdict.metadata["lower_bound"] < 0.85 < verdict.metadata["upper_bound"] < 1.0


@pytest.mark.parametrize(
    ("slip_rate", "correct", "wrong"),
    [
        (0.15, 40, 60),  # correct solutions graded wrong
        (0.15, 100, 0),  # slips graded correct
        (0.0, 99, 1),  # a slip-free oracle is always right
        (0.15, 0, 0),  # no solutions, no rate
    ],
)
def test_an_oracle_pass_rate_out_of_bounds_fails(slip_rate: float, correct: int, wrong: int):
    verdict = checks.teacher_pass_rate_in_bounds(
        grades(correct, wrong), TeacherConfig(slip_rate=slip_rate)
    )
    assert not verdict.passed


def test_other_teachers_imply_no_pass_rate() -> None:
    reference = TeacherConfig(kind="reference")
    verdict = checks.teacher_pass_rate_in_bounds(grades(1, 99), reference)
    assert verdict.passed and verdict.metadata["expected_pass_rate"] is None
    assert not checks.teacher_pass_rate_in_bounds(grades(0, 0), reference).passed


@pytest.mark.parametrize("preset", ["tiny", "didactic"])
@pytest.mark.parametrize("slip_rate", [0.0, 0.15, 0.5])
def test_the_oracle_teacher_passes_its_own_bounds(preset: str, slip_rate: float) -> None:
    config = load_config(preset, overrides={"teacher": {"slip_rate": slip_rate}})
    subset = pool_lib.training_subset(pool_lib.problem_pool(config.task), 64, seed=0)
    table = teacher_solutions(config.teacher, subset, 0, answer_format=config.answer_format)
    assert checks.teacher_pass_rate_in_bounds(table["is_correct"], config.teacher).passed


# --------------------------------------------------------------------------------------------
# through Dagster


def test_a_failing_blocking_check_stops_the_asset_downstream() -> None:
    @dg.asset(
        check_specs=[dg.AssetCheckSpec("q_values_in_unit_interval", asset="q_table", blocking=True)]
    )
    def q_table():
        table = set_cell(advantages_of(GOOD), "pos", 1, "q_value", 1.5)
        yield dg.Output(table)
        yield check_result(
            "q_values_in_unit_interval", checks.q_values_in_unit_interval(table, early_stop=False)
        )

    @dg.asset
    def reads_q(q_table: pl.DataFrame) -> int:
        return q_table.height

    result = dg.materialize(
        [q_table, reads_q],
        resources={"io_manager": dg.InMemoryIOManager()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["first"].value == "pos/1"
    assert result.asset_materializations_for_node("q_table")  # written, then judged
    assert not result.asset_materializations_for_node("reads_q")


@pytest.mark.parametrize("q_value", [0.5, 1.5])
def test_a_table_that_failed_its_blocking_check_is_not_reused(
    q_value: float, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``synthdata run`` decides what to reuse from ``recorded_stages``: a table written and
    then failed by its check must count as not materialized, so the next run recomputes it."""
    from synthdata_assets.orchestrate import recorded_stages

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    @dg.asset(
        name="step_advantages",
        check_specs=[
            dg.AssetCheckSpec("q_values_in_unit_interval", asset="step_advantages", blocking=True)
        ],
    )
    def step_advantages():
        table = set_cell(advantages_of(GOOD), "pos", 1, "q_value", q_value)
        yield dg.Output(table)
        yield check_result(
            "q_values_in_unit_interval", checks.q_values_in_unit_interval(table, early_stop=False)
        )

    with dg.DagsterInstance.get() as instance:
        dg.materialize(
            [step_advantages],
            resources={"io_manager": dg.InMemoryIOManager()},
            instance=instance,
            raise_on_error=False,
        )
    assert ("step_advantages" in recorded_stages(("step_advantages",))) == (q_value <= 1)


@pytest.mark.slow
def test_every_check_of_the_tiny_study_runs_and_passes(warehouse: Warehouse) -> None:
    config = load_config("tiny", overrides={"data_sizes": [32], "sft_reference_sizes": [64]})
    defs = build_definitions(config, warehouse)
    evaluations = []
    with dg.instance_for_test() as instance:
        for names, key in (
            (SETUP_STAGES, None),
            (PARTITION_STAGES, partition_key(32, 0)),
            (REFERENCE_STAGES, partition_key(64, 0)),
        ):
            result = dg.materialize(
                list(defs.assets or []),
                selection=list(names),
                partition_key=str(key) if key is not None else None,
                resources=defs.resources,
                instance=instance,
            )
            assert result.success
            evaluations += result.get_asset_check_evaluations()
    declared = {key for assets in defs.assets or [] for key in assets.check_keys}
    assert {(e.asset_key, e.check_name) for e in evaluations} == {
        (key.asset_key, key.name) for key in declared
    }
    assert [e.check_name for e in evaluations if not e.passed] == []
    names = {e.check_name for e in evaluations}
    assert {
        "q_values_in_unit_interval",
        "first_pit_per_negative",
        "per_step_rejected_is_prefix",
        "covers_every_method_and_test_problem",
        "pass_rate_in_bounds",
        "covers_every_test_problem",
    } <= names
