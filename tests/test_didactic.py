"""A tiny path-star study materialized through Dagster: every stage runs on the star_graph
task, its ground truth reaches the credit tables, and ``first_step_curves`` reports the first
step against 1/degree."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.study import partition_key
from synthdata_assets.study import PARTITION_STAGES, REPORT_STAGES, SETUP_STAGES
from warehouse import Warehouse

pytestmark = pytest.mark.slow

OVERRIDES = {
    "data_sizes": [48],
    "task": {
        "name": "star_graph",
        "n_train_pool": 48,
        "n_test": 24,
        "star_graph": {"degree": 2, "path_length": 3, "n_nodes": 20},
    },
    "teacher": {"spurious_rate": 0.0, "slip_rate": 0.2},
    "model": {"max_seq_len": 96},
    "sampling": {"max_new_tokens": 12},
    "training": {"rft_init": "sft"},
}


@pytest.fixture(scope="module")
def star_study(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("star") / "home"
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        patch.setenv("SYNTHDATA_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home / "dagster"))
        warehouse = Warehouse(home).ensure()
        config = load_config("tiny", overrides=OVERRIDES)
        defs = build_definitions(config, warehouse)
        results = [
            dg.materialize(
                list(defs.assets or []),
                selection=list(names),
                partition_key=key,
                resources=defs.resources,
                instance=instance,
                raise_on_error=False,
            )
            for names, key in (
                (SETUP_STAGES, None),
                (PARTITION_STAGES, str(partition_key(48, 0))),
                (REPORT_STAGES, None),
            )
        ]
        yield warehouse, config, results


def test_every_stage_succeeds(star_study) -> None:
    _, _, results = star_study
    assert all(r.success for r in results)


def test_the_base_is_pretrained_on_walks_and_the_teacher_slips(star_study) -> None:
    warehouse, config, _ = star_study
    base = pl.read_parquet(warehouse.table_file("base_model"))
    assert base["train_steps"].to_list() == [config.model.pretrain_steps]
    assert 0.0 <= base["drill_accuracy"][0] <= 1.0  # held-out walks followed to the goal
    teacher = pl.read_parquet(warehouse.partition_file("teacher_solutions", 48, 0))
    assert 0 < teacher["is_correct"].mean() < 1
    problems = pl.read_parquet(warehouse.table_file("problems"))
    assert (problems["source"] == "star_graph").all()


def test_ground_truth_reaches_the_step_advantages(star_study) -> None:
    warehouse, _, _ = star_study
    adv = pl.read_parquet(warehouse.partition_file("step_advantages", 48, 0))
    steps = adv.filter(pl.col("step_idx") >= 1)
    assert steps.height and steps["true_label"].null_count() == 0
    assert set(steps["true_label"]) <= {"needed", "answer", "wrong"}
    # Every negative whose lines were all on the path stopped short: no true wrong step then.
    negatives = steps.filter(~pl.col("sample_is_correct"))
    per_sample = negatives.group_by("sample_id").agg(pl.col("is_true_first_wrong").sum())
    assert per_sample["is_true_first_wrong"].max() <= 1


def test_first_step_curves_report_the_first_step_against_one_over_degree(star_study) -> None:
    warehouse, _, _ = star_study
    table = pl.read_parquet(warehouse.table_file("first_step_curves"))
    assert set(table["method"]) == {"base", "sft", "rft", "per_step_dpo", "nll_control", "dpo"}
    assert table["first_step_accuracy"].null_count() == 0
    # A whole path right has its first node right.
    assert (table["first_step_accuracy"] >= table["accuracy"]).all()
    report = (warehouse.reports / "first_step_report.md").read_text()
    assert "1/degree 50.0%" in report and "SFT's first step against 1/degree" in report
    assert (warehouse.reports / "first_steps.png").read_bytes()[:4] == b"\x89PNG"


def test_the_scaling_report_says_that_rft_starts_from_pi_sft(star_study) -> None:
    warehouse, _, _ = star_study
    report = (warehouse.reports / "scaling_report.md").read_text()
    assert "- rft: trained from pi_sft (`training.rft_init: sft`)" in report
