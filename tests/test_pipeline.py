"""The first assets, materialized through Dagster on the tiny preset."""

import json
import os
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from synthdata_assets import datasets
from synthdata_assets.cli import main
from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.partitions import partition_key
from synthdata_assets.orchestrate import materialize
from warehouse import Warehouse

CONTRACT = {
    "problems": ["problem_id", "split", "question", "answer", "source"],
    "teacher_solutions": [
        "problem_id",
        "solution_id",
        "solution",
        "final_answer",
        "is_correct",
        "data_size",
        "seed",
        "run_id",
    ],
}


def _run(
    defs: dg.Definitions, names: list[str], key=None, instance=None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(defs.assets or []),
        selection=names,
        partition_key=str(key) if key is not None else None,
        resources=defs.resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
    )


@pytest.fixture
def tiny_defs(warehouse: Warehouse) -> dg.Definitions:
    return build_definitions(load_config("tiny"), warehouse)


def test_problems_and_teacher_solutions(tiny_defs: dg.Definitions, warehouse: Warehouse) -> None:
    config = load_config("tiny")
    result = _run(tiny_defs, ["problems"])
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {"ids_unique", "answers_parse", "splits_disjoint"}
    assert all(c.passed for c in checks)
    problems = pl.read_parquet(warehouse.tables / "problems.parquet")
    assert set(CONTRACT["problems"]) <= set(problems.columns)
    assert problems.filter(pl.col("split") == "test").height == config.task.n_test

    tables = {}
    for size in config.data_sizes:
        result = _run(tiny_defs, ["teacher_solutions"], partition_key(size, 0))
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
        (mat,) = result.asset_materializations_for_node("teacher_solutions")
        assert 0.5 < mat.metadata["pass_rate"].value <= 1.0
        path = warehouse.tables / "teacher_solutions" / f"data_size={size}" / "seed=0.parquet"
        tables[size] = pl.read_parquet(path)
        assert set(CONTRACT["teacher_solutions"]) <= set(tables[size].columns)
        assert tables[size]["problem_id"].n_unique() == size
    small, large = (tables[s] for s in config.data_sizes)
    # Nested subsets, and the same problem gets the same solution in every size.
    joined = small.join(large, on="solution_id", suffix="_large")
    assert joined.height == small.height
    assert (joined["solution"] == joined["solution_large"]).all()
    # The teacher's slips are graded wrong, and only them: the rate tracks the knob.
    assert not small["is_correct"].all()


def test_subsets_are_nested_and_seeded() -> None:
    config = load_config("tiny")
    pool = datasets.problem_pool(config)
    a32 = datasets.training_subset(pool, 32, seed=0)["problem_id"].to_list()
    a64 = datasets.training_subset(pool, 64, seed=0)["problem_id"].to_list()
    b32 = datasets.training_subset(pool, 32, seed=1)["problem_id"].to_list()
    assert a64[:32] == a32
    assert a32 != b32
    assert set(a64) <= set(pool.filter(pl.col("split") == "train")["problem_id"])
    with pytest.raises(ValueError, match="exceeds"):
        datasets.training_subset(pool, 10_000, seed=0)


def test_teacher_pass_rate_follows_slip_rate() -> None:
    config = load_config("tiny", overrides={"teacher": {"slip_rate": 0.5, "spurious_rate": 0.5}})
    pool = datasets.problem_pool(config)
    subset = datasets.training_subset(pool, 64, seed=0)
    table = datasets.teacher_solutions(config, subset, seed=0)
    assert 0.3 < table["is_correct"].mean() < 0.7
    clean = load_config("tiny", overrides={"teacher": {"slip_rate": 0.0, "spurious_rate": 0.5}})
    assert datasets.teacher_solutions(clean, subset, seed=0)["is_correct"].all()


@pytest.mark.slow
def test_cli_materialize_records_runs_in_the_instance(warehouse: Warehouse, capsys) -> None:
    """The path the README takes: `dagster asset materialize` into the warehouse's instance."""
    os.environ["SYNTHDATA_PRESET"] = "tiny"
    try:
        materialize("problems", warehouse, echo=False)
        materialize("teacher_solutions", warehouse, partition="32|0", echo=False)
    finally:
        del os.environ["SYNTHDATA_PRESET"]
    with dg.DagsterInstance.from_config(str(warehouse.dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.is_success for r in runs)
        assert {r.tags.get("dagster/partition") for r in runs} == {None, "32|0"}
    assert main(["sql", "--format", "json", "@teacher_pass_rate"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["data_size"] == 32 and rows[0]["solutions"] == 32
    assert 0.5 < rows[0]["pass_rate"] <= 1.0


def test_invalid_config_stops_the_code_location(tmp_path, warehouse: Warehouse) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  backend: tgi\n")
    env = {**os.environ, "SYNTHDATA_CONFIG": str(bad)}
    proc = subprocess.run(
        [sys.executable, "-c", "import synthdata_assets.definitions"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "sampling.backend" in proc.stderr and "'transformers' or 'vllm'" in proc.stderr


def test_sql_cli_refuses_writes_with_exit_code_2(warehouse: Warehouse, capsys) -> None:
    assert main(["sql", "DELETE FROM problems"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "DELETE" in err


METHODS = {"base", "sft", "rft", "per_step_dpo", "dpo"}


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


@pytest.mark.slow
def test_tiny_preset_end_to_end(warehouse: Warehouse) -> None:
    """Every asset on the tiny preset: one data size first, then a second one added to the
    configuration, which the backfill schedule asks for alone; then the scaling curves."""
    with dg.instance_for_test() as instance:
        _end_to_end(warehouse, instance)


def _end_to_end(warehouse: Warehouse, instance: dg.DagsterInstance) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synthdata_assets.defs.study import PARTITIONED_ASSETS
    from warehouse.query import run_query

    tiny_defs = build_definitions(load_config("tiny", overrides={"data_sizes": [32]}), warehouse)
    assert _run(tiny_defs, ["problems", "base_model"], instance=instance).success
    base = pl.read_parquet(warehouse.tables / "base_model.parquet")
    assert 0.0 <= base["drill_accuracy"][0] <= 1.0  # phase 1's result, shown in the UI too
    key = partition_key(32, 0)
    result = _run(tiny_defs, list(PARTITIONED_ASSETS), key, instance=instance)
    assert result.success
    part = ("data_size=32", "seed=0.parquet")
    evals = pl.read_parquet(warehouse.tables.joinpath("evaluations", *part))
    assert set(evals["method"]) == METHODS
    assert {"method", "data_size", "seed", "problem_id", "completion", "is_correct"} <= set(
        evals.columns
    )
    config = load_config("tiny")
    n_test = config.task.n_test
    assert evals.group_by("method").len()["len"].to_list() == [n_test] * len(METHODS)
    samples = pl.read_parquet(warehouse.tables.joinpath("policy_samples", *part))
    assert samples.height == 32 * config.sampling.samples_per_problem

    # Credit assignment: every negative's prefixes rolled out M times, Q and pits per step.
    rollouts = pl.read_parquet(warehouse.tables.joinpath("step_rollouts", *part))
    assert {"sample_id", "step_idx", "rollout_idx", "completion", "is_correct"} <= set(
        rollouts.columns
    )
    assert rollouts.group_by("sample_id", "step_idx").len()["len"].unique().to_list() == [
        config.credit.rollouts_per_prefix
    ]
    first = _metadata(result, "step_rollouts")
    assert first["completions_generated"] > 0 and first["completions_reused"] == 0
    adv = pl.read_parquet(warehouse.tables.joinpath("step_advantages", *part))
    assert {
        "sample_id",
        "step_idx",
        "step_text",
        "q_value",
        "advantage",
        "n_rollouts",
        "is_first_pit",
    } <= set(adv.columns)
    negatives = adv.filter(~pl.col("sample_is_correct"))["sample_id"].n_unique()
    assert adv.filter(pl.col("is_first_pit")).height == negatives > 0  # first_zero: every one
    pairs = pl.read_parquet(warehouse.tables.joinpath("preference_pairs", *part))
    assert {"per_step", "outcome"} <= set(pairs["kind"])
    per_step = pairs.filter(pl.col("kind") == "per_step")
    assert not per_step["rejected_has_eos"].any() and per_step["chosen_has_eos"].all()

    # The README's named step-table queries.
    shares = run_query("@first_pit_share", warehouse)
    assert sum(row[shares.columns.index("share")] for row in shares.rows) == pytest.approx(1.0)
    by_step = run_query("@advantage_by_step", warehouse)
    cols = by_step.columns
    assert {r[cols.index("step_idx")] for r in by_step.rows} >= {0, 1}
    assert all(
        r[cols.index("mean_advantage")] is None
        for r in by_step.rows
        if r[cols.index("step_idx")] == 0
    )
    spurious = run_query("@spurious_steps", warehouse)  # tiny rolls out positives too
    positive_steps = adv.filter(pl.col("sample_is_correct") & (pl.col("step_idx") >= 1)).height
    assert sum(r[spurious.columns.index("positive_steps")] for r in spurious.rows) == (
        positive_steps
    )
    accuracy = run_query("@method_accuracy", warehouse)
    assert {r[0] for r in accuracy.rows} == METHODS

    # Every trained model is a row of the checkpoints view and an ordinary HF folder.
    rows = run_query("SELECT method, path FROM checkpoints ORDER BY method", warehouse).rows
    assert {m for m, _ in rows} == METHODS
    sft_path = dict(rows)["sft"]
    model = AutoModelForCausalLM.from_pretrained(sft_path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(sft_path, local_files_only=True)
    assert model.config.model_type == "llama" and tokenizer.is_fast

    # Another pit rule: the rollouts are all reused, nothing is generated.
    other = build_definitions(
        load_config("tiny", overrides={"credit": {"pit_rule": "largest_drop"}}), warehouse
    )
    again = _run(other, ["step_rollouts", "step_advantages"], key)
    assert again.success
    second = _metadata(again, "step_rollouts")
    assert second["completions_generated"] == 0
    assert second["completions_reused"] == first["completions_generated"]
    assert _metadata(again, "step_advantages")["completions_generated"] == 0
    assert pl.read_parquet(warehouse.tables.joinpath("step_rollouts", *part)).height == (
        rollouts.height
    )

    # A data size added to the configuration: the schedule requests only the new partition.
    both = build_definitions(load_config("tiny"), warehouse)
    schedule = both.resolve_schedule_def("study_backfill_schedule")
    requests = list(
        schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, repository_def=both.get_repository_def())
        ).run_requests
    )
    assert [r.partition_key for r in requests] == [str(partition_key(64, 0))]
    assert _run(both, list(PARTITIONED_ASSETS), partition_key(64, 0), instance=instance).success
    curves = _run(both, ["scaling_curves"], instance=instance)
    assert curves.success
    table = pl.read_parquet(warehouse.tables / "scaling_curves.parquet")
    assert {"method", "data_size", "seed", "accuracy", "test_error", "n_test"} <= set(table.columns)
    assert set(table["method"]) == METHODS and set(table["data_size"]) == {32, 64}
    assert (warehouse.reports / "scaling_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (warehouse.reports / "scaling_report.md").read_text()
    assert all(method in report for method in METHODS)
    assert "plot" in _metadata(curves, "scaling_curves")


def test_run_reuses_partitions_only_under_the_same_settings() -> None:
    from synthdata_assets.cli import _study_fingerprint

    tiny = load_config("tiny")
    more_sizes = load_config("tiny", overrides={"data_sizes": [16, 32, 64], "seeds": [0, 1]})
    assert _study_fingerprint(tiny) == _study_fingerprint(more_sizes)
    assert _study_fingerprint(tiny) != _study_fingerprint(load_config("demo"))
    other_rule = load_config("tiny", overrides={"credit": {"pit_rule": "largest_drop"}})
    assert _study_fingerprint(tiny) != _study_fingerprint(other_rule)
