"""The tiny preset materialized once through Dagster, then checked stage by stage.

The study fixture materializes, in one warehouse and instance: the setup assets; every
partitioned asset of one data size (32); the rollouts and advantages again under another pit
rule (which must reuse every rollout); SFT alone at 64 problems (``sft_reference_sizes``)
and the curves of the study of 32 with it; a second data size (64) added to the
configuration, which the backfill schedule asks for alone; and the scaling curves. Tables
and query results are read as each step leaves them, so that each test below checks one
stage.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pytest

from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.study import partition_key
from synthdata_assets.evaluations import EVAL_SCHEMA
from synthdata_assets.study import PARTITION_STAGES, SETUP_STAGES
from warehouse import Warehouse
from warehouse.query import run_query

pytestmark = pytest.mark.slow

METHODS = {"base", "sft", "rft", "per_step_dpo", "nll_control", "dpo"}
QUERIES = (
    "@first_pit_share",
    "@advantage_by_step",
    "@spurious_steps",
    "@method_accuracy",
    "@cue_following",
    "@negatives_vs_control",
)


def _run(defs: dg.Definitions, names, instance, key=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(defs.assets or []),
        selection=list(names),
        partition_key=str(key) if key is not None else None,
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("study") / "home"
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        patch.setenv("SYNTHDATA_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home / "dagster"))
        warehouse = Warehouse(home).ensure()
        s = SimpleNamespace(warehouse=warehouse, config=load_config("tiny"))
        first = build_definitions(load_config("tiny", overrides={"data_sizes": [32]}), warehouse)
        s.setup = _run(first, SETUP_STAGES, instance)
        s.first = _run(first, PARTITION_STAGES, instance, partition_key(32, 0))
        s.tables = {
            name: pl.read_parquet(path)
            for name in PARTITION_STAGES
            if (path := warehouse.partition_file(name, 32, 0)).exists()
        }
        s.queries = {q: run_query(q, warehouse) for q in QUERIES}
        s.checkpoints = dict(
            run_query("SELECT method, path FROM checkpoints ORDER BY method", warehouse).rows
        )
        other_rule = load_config("tiny", overrides={"credit": {"pit_rule": "largest_drop"}})
        s.again = _run(
            build_definitions(other_rule, warehouse),
            ["step_rollouts", "step_advantages"],
            instance,
            partition_key(32, 0),
        )
        s.rollouts_again = pl.read_parquet(warehouse.partition_file("step_rollouts", 32, 0))
        # SFT alone at 64 problems past a study of 32 (sft_reference_sizes), before the
        # study's own 64|0 partition trains sft_model there.
        reference = build_definitions(
            load_config("tiny", overrides={"data_sizes": [32], "sft_reference_sizes": [64]}),
            warehouse,
        )
        s.reference = _run(reference, ["sft_reference"], instance, partition_key(64, 0))
        s.reference_curves = _run(reference, ["scaling_curves"], instance)
        s.curves_with_reference = pl.read_parquet(warehouse.table_file("scaling_curves"))
        both = build_definitions(s.config, warehouse)
        schedule = both.resolve_schedule_def("study_backfill_schedule")
        context = dg.build_schedule_context(
            instance=instance, repository_def=both.get_repository_def()
        )
        s.requested = [r.partition_key for r in schedule.evaluate_tick(context).run_requests]
        s.second = _run(both, PARTITION_STAGES, instance, partition_key(64, 0))
        s.second_logs = [e.user_message for e in instance.all_logs(s.second.run_id)]
        s.curves = _run(both, ["scaling_curves"], instance)
        s.first_steps = _run(both, ["first_step_curves"], instance)
        yield s


def test_setup_and_first_partition_succeed(study) -> None:
    assert study.setup.success and study.first.success


def test_base_model_records_its_drill_accuracy(study) -> None:
    base = pl.read_parquet(study.warehouse.table_file("base_model"))
    assert 0.0 <= base["drill_accuracy"][0] <= 1.0


def test_policy_samples_cover_every_problem(study) -> None:
    samples = study.tables["policy_samples"]
    assert samples.height == 32 * study.config.sampling.samples_per_problem


def test_every_rolled_out_prefix_has_m_rollouts(study) -> None:
    rollouts = study.tables["step_rollouts"]
    assert {"sample_id", "step_idx", "rollout_idx", "completion", "is_correct"} <= set(
        rollouts.columns
    )
    per_prefix = rollouts.group_by("sample_id", "step_idx").len()["len"].unique().to_list()
    assert per_prefix == [study.config.credit.rollouts_per_prefix]
    first = _metadata(study.first, "step_rollouts")
    assert first["completions_generated"] > 0 and first["completions_reused"] == 0


def test_every_negative_has_one_first_pit(study) -> None:
    adv = study.tables["step_advantages"]
    assert {"sample_id", "step_idx", "step_text", "q_value", "advantage", "n_rollouts"} <= set(
        adv.columns
    )
    negatives = adv.filter(~pl.col("sample_is_correct"))["sample_id"].n_unique()
    assert adv.filter(pl.col("is_first_pit")).height == negatives > 0  # first_zero


def test_per_step_pairs_cut_the_negative_without_eos(study) -> None:
    pairs = study.tables["preference_pairs"]
    assert {"per_step", "outcome"} <= set(pairs["kind"])
    per_step = pairs.filter(pl.col("kind") == "per_step")
    assert not per_step["rejected_has_eos"].any() and per_step["chosen_has_eos"].all()


def test_evaluations_cover_every_method_and_test_problem(study) -> None:
    evals = study.tables["evaluations"]
    assert set(evals["method"]) == METHODS
    assert {"method", "data_size", "seed", "problem_id", "completion", "is_correct"} <= set(
        evals.columns
    )
    n_test = study.config.task.n_test
    assert evals.group_by("method").len()["len"].to_list() == [n_test] * len(METHODS)


def test_the_base_is_evaluated_once_per_study(study) -> None:
    answers = list(EVAL_SCHEMA)  # without the runs' provenance columns
    once = pl.read_parquet(study.warehouse.table_file("base_evaluation")).select(answers)
    assert once.height == study.config.task.n_test
    for size in (32, 64):
        evals = pl.read_parquet(study.warehouse.partition_file("evaluations", size, 0))
        base = evals.filter(pl.col("method") == "base").select(answers)
        assert base.sort("problem_id").equals(once.sort("problem_id"))
    # The second partition's evaluations evaluated its five trained models, not the base.
    evaluated = [m.split(":")[0] for m in study.second_logs if ": accuracy " in m]
    assert sorted(evaluated) == ["dpo", "nll_control", "per_step_dpo", "rft", "sft"]


def test_named_step_queries(study) -> None:
    shares = study.queries["@first_pit_share"]
    assert sum(row[shares.columns.index("share")] for row in shares.rows) == pytest.approx(1.0)
    by_step = study.queries["@advantage_by_step"]
    cols = by_step.columns
    assert {r[cols.index("step_idx")] for r in by_step.rows} >= {0, 1}
    assert all(
        r[cols.index("mean_advantage")] is None
        for r in by_step.rows
        if r[cols.index("step_idx")] == 0
    )
    spurious = study.queries["@spurious_steps"]  # tiny rolls out positives too
    adv = study.tables["step_advantages"]
    positive_steps = adv.filter(pl.col("sample_is_correct") & (pl.col("step_idx") >= 1)).height
    assert sum(r[spurious.columns.index("positive_steps")] for r in spurious.rows) == (
        positive_steps
    )
    assert {r[0] for r in study.queries["@method_accuracy"].rows} == METHODS
    # The chain task's test split states some dead ends first; each method's greedy answers
    # are counted against them.
    evaluations = study.tables["evaluations"]
    assert evaluations["cue_points"].null_count() == 0
    cue = study.queries["@cue_following"]
    points = evaluations.group_by("method").agg(pl.col("cue_points").sum())
    expected = {m: n for m, n in points.iter_rows() if n}
    got = {
        r[cue.columns.index("method")]: r[cue.columns.index("misleading_choices")] for r in cue.rows
    }
    assert got == expected and expected
    # per-step DPO against its control, every test problem paired
    control = study.queries["@negatives_vs_control"]
    cols = control.columns
    assert [r[cols.index("data_size")] for r in control.rows] == [32]  # the first partition
    assert {r[cols.index("pairs")] for r in control.rows} == {study.config.task.n_test}


def test_every_model_is_a_hugging_face_folder(study) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert set(study.checkpoints) == METHODS
    sft = study.checkpoints["sft"]
    model = AutoModelForCausalLM.from_pretrained(sft, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(sft, local_files_only=True)
    assert model.config.model_type == "llama" and tokenizer.is_fast


def test_another_pit_rule_reuses_every_rollout(study) -> None:
    assert study.again.success
    second = _metadata(study.again, "step_rollouts")
    assert second["completions_generated"] == 0
    first = _metadata(study.first, "step_rollouts")
    assert second["completions_reused"] == first["completions_generated"]
    assert _metadata(study.again, "step_advantages")["completions_generated"] == 0
    assert study.rollouts_again.height == study.tables["step_rollouts"].height


def test_the_schedule_requests_only_the_new_partition(study) -> None:
    assert study.requested == [str(partition_key(64, 0))]
    assert study.second.success


def test_scaling_curves_cover_every_partition(study) -> None:
    assert study.curves.success
    table = pl.read_parquet(study.warehouse.table_file("scaling_curves"))
    assert {"method", "data_size", "seed", "accuracy", "test_error", "n_test"} <= set(table.columns)
    assert set(table["method"]) == METHODS and set(table["data_size"]) == {32, 64}
    reports = study.warehouse.reports
    assert (reports / "scaling_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert all(method in (reports / "scaling_report.md").read_text() for method in METHODS)
    assert "plot" in _metadata(study.curves, "scaling_curves")


def test_sft_reference_is_sft_trained_as_the_study_trains_it(study) -> None:
    from safetensors.torch import load_file

    assert study.reference.success and study.second.success
    warehouse = study.warehouse
    reference = pl.read_parquet(warehouse.partition_file("sft_reference", 64, 0))
    assert set(reference["method"]) == {"sft"} and reference.height == study.config.task.n_test
    # The same weights and the same answers as the study's sft_model at 64|0.
    ours, theirs = (
        load_file(warehouse.checkpoint_folder(name, 64, 0) / "model.safetensors")
        for name in ("sft_reference", "sft")
    )
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    study_sft = pl.read_parquet(warehouse.partition_file("evaluations", 64, 0)).filter(
        pl.col("method") == "sft"
    )
    columns = ["problem_id", "completion", "is_correct"]
    assert (
        reference.select(columns)
        .sort("problem_id")
        .equals(study_sft.select(columns).sort("problem_id"))
    )
    # The curves of the study of 32 problems read SFT at 64 from it.
    assert study.reference_curves.success
    curves = study.curves_with_reference
    assert set(curves.filter(pl.col("data_size") == 64)["method"]) == {"sft"}
    assert set(curves.filter(pl.col("data_size") == 32)["method"]) == METHODS
    assert _metadata(study.reference_curves, "scaling_curves")["sft_reference_partitions"] == 1


def test_first_step_curves_cover_every_partition_and_every_pit(study) -> None:
    assert study.first_steps.success
    table = pl.read_parquet(study.warehouse.table_file("first_step_curves"))
    assert set(table["method"]) == METHODS and set(table["data_size"]) == {32, 64}
    # The embedded task's spec gives every greedy answer a first-step verdict.
    assert table["first_step_accuracy"].null_count() == 0
    assert (table["n_test"] == study.config.task.n_test).all()
    report = (study.warehouse.reports / "first_step_report.md").read_text()
    pits = run_query(
        "SELECT count(*) FROM step_advantages WHERE is_first_pit AND NOT sample_is_correct",
        study.warehouse,
    ).rows[0][0]
    rows = [line.split("|") for line in report.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    assert pits > 0 and sum(int(row[2]) for row in rows) == pits
    metadata = _metadata(study.first_steps, "first_step_curves")
    assert "plot" in metadata and "sft_first_step_32" in metadata
    assert (study.warehouse.reports / "first_steps.png").read_bytes()[:4] == b"\x89PNG"


def test_a_study_of_one_size_reports_undefined_multipliers(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SYNTHDATA_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    warehouse = Warehouse(home).ensure()
    defs = build_definitions(load_config("tiny", overrides={"data_sizes": [32]}), warehouse)
    with dg.instance_for_test() as instance:
        assert _run(
            defs, [*SETUP_STAGES, *PARTITION_STAGES], instance, partition_key(32, 0)
        ).success
        assert _run(defs, ["scaling_curves"], instance).success
    report = (warehouse.reports / "scaling_report.md").read_text()
    assert "undefined" in report and "size" in report
