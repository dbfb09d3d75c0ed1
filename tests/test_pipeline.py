"""The first assets, materialized through Dagster on the tiny preset."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from synthdata_assets import problems as pool_lib
from synthdata_assets import study as study_module
from synthdata_assets import teacher
from synthdata_assets.cli import main
from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.study import partition_key
from synthdata_assets.orchestrate import materialize
from synthdata_assets.study import (
    PARTITION_STAGES,
    STAGE_INPUTS,
    Materialized,
    accepted_fingerprints,
    shipped_base_digest,
    stage_fingerprints,
    stale_stages,
    upstream,
)
from warehouse import Warehouse

REPO = Path(__file__).resolve().parents[1]

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
    problems = pl.read_parquet(warehouse.table_file("problems"))
    assert set(CONTRACT["problems"]) <= set(problems.columns)
    assert problems.filter(pl.col("split") == "test").height == config.task.n_test

    tables = {}
    for size in config.data_sizes:
        result = _run(tiny_defs, ["teacher_solutions"], partition_key(size, 0))
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
        (mat,) = result.asset_materializations_for_node("teacher_solutions")
        assert 0.5 < mat.metadata["pass_rate"].value <= 1.0
        path = warehouse.partition_file("teacher_solutions", size, 0)
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
    pool = pool_lib.problem_pool(config.task)
    a32 = pool_lib.training_subset(pool, 32, seed=0)["problem_id"].to_list()
    a64 = pool_lib.training_subset(pool, 64, seed=0)["problem_id"].to_list()
    b32 = pool_lib.training_subset(pool, 32, seed=1)["problem_id"].to_list()
    assert a64[:32] == a32
    assert a32 != b32
    assert set(a64) <= set(pool.filter(pl.col("split") == "train")["problem_id"])
    with pytest.raises(ValueError, match="exceeds"):
        pool_lib.training_subset(pool, 10_000, seed=0)


def test_teacher_pass_rate_follows_slip_rate() -> None:
    config = load_config("tiny", overrides={"teacher": {"slip_rate": 0.5, "spurious_rate": 0.5}})
    pool = pool_lib.problem_pool(config.task)
    subset = pool_lib.training_subset(pool, 64, seed=0)
    table = teacher.teacher_solutions(config.teacher, subset, 0, answer_format="embedded")
    assert 0.3 < table["is_correct"].mean() < 0.7
    clean = load_config("tiny", overrides={"teacher": {"slip_rate": 0.0, "spurious_rate": 0.5}})
    assert teacher.teacher_solutions(clean.teacher, subset, 0, answer_format="embedded")[
        "is_correct"
    ].all()


@pytest.mark.slow
def test_cli_materialize_records_runs_in_the_instance(
    warehouse: Warehouse, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path the README takes: `dagster asset materialize` into the warehouse's instance."""
    monkeypatch.setenv("SYNTHDATA_PRESET", "tiny")
    materialize("problems", warehouse, echo=False)
    materialize("teacher_solutions", warehouse, partition="32|0", echo=False)
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


def test_a_setting_changes_the_fingerprints_of_the_stages_that_read_it() -> None:
    tiny = stage_fingerprints(load_config("tiny"))
    more = stage_fingerprints(load_config("tiny", overrides={"data_sizes": [16, 32, 64]}))
    assert tiny == more
    slips = stage_fingerprints(load_config("tiny", overrides={"teacher": {"slip_rate": 0.3}}))
    changed = {stage for stage in tiny if tiny[stage] != slips[stage]}
    # The stages that run the teacher (sft_reference runs it on its own sizes) and those after.
    teachers = {"teacher_solutions", "sft_reference"}
    assert changed == teachers | {stage for stage in STAGE_INPUTS if teachers & upstream(stage)}
    assert "base_model" not in changed and "problems" not in changed
    rule = stage_fingerprints(
        load_config("tiny", overrides={"credit": {"pit_rule": "largest_drop"}})
    )
    assert "policy_samples" not in {s for s in tiny if tiny[s] != rule[s]}
    assert tiny["step_advantages"] != rule["step_advantages"]


def test_a_new_shipped_base_changes_the_fingerprints_of_what_it_made(tmp_path, monkeypatch):
    demo = load_config("demo")
    assert shipped_base_digest(demo) is not None
    assert shipped_base_digest(load_config("tiny")) is None  # pretrained in the run
    before = stage_fingerprints(demo)
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    monkeypatch.setattr(study_module, "SHIPPED_BASE", tmp_path)
    after = stage_fingerprints(demo)
    changed = {stage for stage in before if before[stage] != after[stage]}
    assert "base_model" in changed and "sft_model" in changed
    assert "problems" not in changed


def test_a_field_only_some_stages_read_leaves_the_others_fingerprints_alone() -> None:
    tiny = stage_fingerprints(load_config("tiny"))

    def changed(overrides: dict) -> set[str]:
        other = stage_fingerprints(load_config("tiny", overrides=overrides))
        return {stage for stage in tiny if tiny[stage] != other[stage]}

    def downstream_of(stages: set[str]) -> set[str]:
        return stages | {stage for stage in STAGE_INPUTS if stages & upstream(stage)}

    dpo = {"per_step_dpo_model", "nll_control_model", "dpo_model"}
    for field, value in (("dpo_beta", 0.5), ("dpo_learning_rate", 1e-3), ("dpo_epochs", 5)):
        assert changed({"training": {field: value}}) == downstream_of(dpo)
    assert changed({"training": {"rft_init": "sft"}}) == downstream_of({"rft_model"})
    pair_kind = changed({"credit": {"per_step_pair_kind": "shared_prefix"}})
    assert pair_kind == downstream_of({"per_step_dpo_model", "nll_control_model"})
    assert changed({"credit": {"pit_rule": "largest_drop"}}) == downstream_of({"step_advantages"})
    assert changed({"sampling": {"eval_samples": 8}}) == downstream_of(
        {"base_evaluation", "evaluations", "sft_reference"}
    )
    # a field every stage that reads its section uses still changes them all
    assert changed({"training": {"learning_rate": 1e-4}}) >= {"base_model", "sft_model"}


def test_every_narrowed_field_names_a_setting_and_is_read_only_where_listed() -> None:
    # FIELD_READERS is read off the code: a module that starts reading one of its fields
    # elsewhere (as an attribute of its section) must be listed there too, or a change to the
    # field would reuse a stage it changes. The modules of each field's stages (a module
    # holds more than one stage: defs/models.py is SFT's too, so this check cannot see a
    # read of rft_init moving into SFT's function):
    modules = {
        "dpo_": {"preference.py", "defs/preference.py"},
        "rft_": {"defs/models.py"},
        # scaling_curves' report notes RFT's start: its module, and defs/__init__.py, which
        # passes the field to it
        "rft_init": {"defs/models.py", "defs/curves.py", "defs/__init__.py"},
        "per_step_pair_kind": {"preference.py", "defs/preference.py"},
        "advantage_weighted": {"preference.py", "defs/preference.py"},
        "pit_rule": {"advantages.py", "defs/advantages.py"},
        "spurious_threshold": {"advantages.py", "defs/advantages.py"},
        "eval_samples": {"evaluations.py", "defs/evaluations.py"},
    }
    sources = {
        path.relative_to(REPO / "synthdata_assets").as_posix(): path.read_text()
        for path in (REPO / "synthdata_assets").rglob("*.py")
    }
    sources |= {
        f"training/{path.relative_to(REPO / 'training').as_posix()}": path.read_text()
        for path in (REPO / "training").rglob("*.py")
    }
    defining = {"config.py", "study.py", "training/config.py"}
    for section, field in study_module.FIELD_READERS:
        assert field in type(getattr(load_config("tiny"), section)).model_fields
        allowed = modules.get(field) or modules[field[:4]]
        named = {
            path
            for path, text in sources.items()
            if re.search(rf"\.{field}\b", text) and path not in defining
        }
        assert named <= allowed, (field, named - allowed)


def test_stale_stages_are_recomputed_with_everything_downstream() -> None:
    current = {k: frozenset({v}) for k, v in stage_fingerprints(load_config("tiny")).items()}
    done = {stage: Materialized(min(current[stage]), i) for i, stage in enumerate(STAGE_INPUTS)}
    assert stale_stages(PARTITION_STAGES, done, current) == []
    other = {**done, "policy_samples": Materialized("old settings", done["policy_samples"].order)}
    assert stale_stages(PARTITION_STAGES, other, current) == [
        s for s in PARTITION_STAGES if s == "policy_samples" or "policy_samples" in upstream(s)
    ]
    # An interrupted rerun: sft_model is newer than what was made from it.
    newer = {**done, "sft_model": Materialized(min(current["sft_model"]), 1000)}
    assert stale_stages(PARTITION_STAGES, newer, current)[0] == "policy_samples"
    missing = {k: v for k, v in done.items() if k != "evaluations"}
    assert stale_stages(PARTITION_STAGES, missing, current) == ["evaluations"]
    retrained_base = {**done, "base_model": Materialized(min(current["base_model"]), 1000)}
    assert stale_stages(PARTITION_STAGES, retrained_base, current)[0] == "sft_model"
    # Why, as a run prints it: the causes, not the stages that only read a stale one.
    why = study_module.stale_reasons(PARTITION_STAGES, other, current)
    assert list(why) == stale_stages(PARTITION_STAGES, other, current)
    assert why["policy_samples"] == "made under other settings"
    assert why["rft_model"] == "reads policy_samples"
    said = study_module.explain_stale(why)
    assert said.startswith("policy_samples, rft_model, step_rollouts")
    assert said.endswith(" (made under other settings: policy_samples)")
    older = study_module.stale_reasons(PARTITION_STAGES, newer, current)
    assert older["policy_samples"] == "older than sft_model"
    assert study_module.explain_stale(
        study_module.stale_reasons(PARTITION_STAGES, missing, current)
    ) == ("evaluations (never made: evaluations)")


def test_stages_recorded_under_the_whole_sections_fingerprints_stay_current() -> None:
    # Warehouses made before FIELD_READERS recorded the digests of whole sections.
    config = load_config("tiny")
    whole = stage_fingerprints(config, by_field=False)
    assert whole["sft_model"] != stage_fingerprints(config)["sft_model"]
    accepted = accepted_fingerprints(config)
    done = {stage: Materialized(whole[stage], i) for i, stage in enumerate(STAGE_INPUTS)}
    assert stale_stages(PARTITION_STAGES, done, accepted) == []
    # A DPO setting changes the whole training section's digest of SFT, which is then stale;
    # the next run records SFT's narrow digest, which the DPO setting leaves alone.
    beta = accepted_fingerprints(load_config("tiny", overrides={"training": {"dpo_beta": 0.5}}))
    assert stale_stages(PARTITION_STAGES, done, beta)[0] == "sft_model"
    made = stage_fingerprints(config)
    narrow = {stage: Materialized(made[stage], i) for i, stage in enumerate(STAGE_INPUTS)}
    assert stale_stages(PARTITION_STAGES, narrow, beta)[0] == "per_step_dpo_model"


def test_sql_views_hold_the_configured_partitions_only(warehouse: Warehouse, capsys) -> None:
    from warehouse.parquet import write_parquet_atomic
    from warehouse.query import run_query

    for size in (32, 64):
        frame = pl.DataFrame({"x": [size], "data_size": [size], "seed": [0]})
        write_parquet_atomic(frame, warehouse.partition_file("evaluations", size, 0))
    kept = run_query("SELECT x FROM evaluations", warehouse, [(64, 0)])
    assert kept.rows == [(64,)]
    every = run_query("SELECT x FROM evaluations_all ORDER BY x", warehouse, [(64, 0)])
    assert every.rows == [(32,), (64,)]
    assert run_query("SELECT count(*) FROM evaluations", warehouse).rows == [(2,)]


def test_sql_cli_says_which_partitions_on_disk_its_views_leave_out(
    warehouse: Warehouse, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warehouse.parquet import write_parquet_atomic

    monkeypatch.setenv("SYNTHDATA_PRESET", "tiny")  # sizes 32 and 64, seed 0
    frame = pl.DataFrame({"x": [1], "data_size": [64], "seed": [0]})
    write_parquet_atomic(frame, warehouse.partition_file("evaluations", 64, 0))
    assert main(["sql", "--format", "json", "SELECT count(*) AS n FROM evaluations"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"n": 1}] and captured.err == ""
    for size, seed in ((500, 1), (500, 2), (64, 3)):
        frame = pl.DataFrame({"x": [1], "data_size": [size], "seed": [seed]})
        write_parquet_atomic(frame, warehouse.partition_file("evaluations", size, seed))
    assert main(["sql", "--format", "json", "SELECT count(*) AS n FROM evaluations"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"n": 1}]  # stdout stays the rows alone
    assert "preset tiny" in captured.err and "3 more on disk" in captured.err
    assert "64|3, 500|1, 500|2" in captured.err and "_all" in captured.err


def test_sql_downloads_no_extension(warehouse: Warehouse, capsys) -> None:
    assert main(["sql", "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')"]) == 2
    assert "httpfs" in capsys.readouterr().err


def test_the_tiny_presets_fingerprints_are_those_its_warehouses_were_made_under() -> None:
    # Pinned: a new setting that enters the fingerprints at its default recomputes every
    # warehouse made before it. List it in study.ADDED_SETTINGS with the value that keeps the
    # old behaviour; change these only for a change that does alter what a stage makes.
    # Those of whole sections, recorded before FIELD_READERS, are accepted still.
    accepted = accepted_fingerprints(load_config("tiny"))
    assert "e4882e9668a1c42b" in accepted["problems"]
    assert "0e0cb83185269fb6" in accepted["sft_model"]
    assert "3a38db837169df86" in accepted["evaluations"]
    fingerprints = stage_fingerprints(load_config("tiny"))  # what a run records since
    assert (fingerprints["problems"], fingerprints["sft_model"], fingerprints["evaluations"]) == (
        "e4882e9668a1c42b",
        "4abd7958476171a6",
        "3a38db837169df86",
    )
    # The didactic preset's, made before task.star_graph.goal_arms and the hint existed: up to
    # the policy samples; its rollouts, and all after them, since rollouts were graded with the
    # prefix's steps (study.STAGE_REVISIONS).
    didactic = accepted_fingerprints(load_config("didactic"))
    assert "e983f4a8a5bf33db" in didactic["policy_samples"]
    assert "e983f4a8a5bf33db" in didactic["rft_model"]
    assert "9b6aa31ccdfaac06" not in didactic["step_rollouts"] | didactic["evaluations"]
    hinted = load_config("didactic", overrides={"task": {"star_graph": {"hint_rate": 0.5}}})
    assert (
        stage_fingerprints(hinted)["problems"]
        != stage_fingerprints(load_config("didactic"))["problems"]
    )
    merged = load_config(
        "didactic", overrides={"task": {"star_graph": {"degree": 3, "goal_arms": 2}}}
    )
    wider = load_config("didactic", overrides={"task": {"star_graph": {"degree": 3}}})
    assert stage_fingerprints(merged)["problems"] != stage_fingerprints(wider)["problems"]


def test_settings_added_later_leave_the_fingerprints_of_older_warehouses_alone() -> None:
    demo = stage_fingerprints(load_config("demo"))
    # The added settings at the values that reproduce the behaviour from before them (the demo
    # sets dpo_sft_weight itself, so the tiny preset, which does not, checks that one).
    assert stage_fingerprints(
        load_config("tiny", overrides={"training": {"dpo_sft_weight": 0.0}})
    ) == stage_fingerprints(load_config("tiny"))
    for field, before in (("micro_batch_size", None), ("gradient_checkpointing", False)):
        same = load_config("demo", overrides={"training": {field: before}})
        assert stage_fingerprints(same) == demo
    micro = stage_fingerprints(load_config("demo", overrides={"training": {"micro_batch_size": 8}}))
    assert micro["sft_model"] != demo["sft_model"] and micro["problems"] == demo["problems"]
    rpo = stage_fingerprints(load_config("demo", overrides={"training": {"dpo_sft_weight": 0.5}}))
    assert rpo["per_step_dpo_model"] != demo["per_step_dpo_model"]
    assert rpo["problems"] == demo["problems"]
    wider = stage_fingerprints(
        load_config("demo", overrides={"task": {"star_graph": {"degree": 3}}})
    )
    assert wider["problems"] != demo["problems"]
    stop = stage_fingerprints(load_config("demo", overrides={"sampling": {"stop": ["\nQ"]}}))
    assert (
        stop["policy_samples"] != demo["policy_samples"] and stop["sft_model"] == demo["sft_model"]
    )
    assert stage_fingerprints(load_config("demo", overrides={"sampling": {"stop": []}})) == demo
    for path in study_module.ADDED_SETTINGS:  # each names a real setting
        holder: object = load_config("demo")
        for key in path:
            assert key in type(holder).model_fields, path
            holder = getattr(holder, key)
    # a nested one (task.embedded.dead_end_names) leaves them only at its old value
    reserved = stage_fingerprints(
        load_config("embedded", overrides={"task": {"embedded": {"dead_end_names": 6}}})
    )
    assert reserved["problems"] != stage_fingerprints(load_config("embedded"))["problems"]


def test_run_materializes_the_sft_reference_partitions_after_the_studys(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from synthdata_assets import cli, orchestrate

    config = load_config("tiny", overrides={"data_sizes": [32], "sft_reference_sizes": [64]})
    calls = []

    def launched(selection, _warehouse, partition=None, **_options):
        calls.append((selection, partition))
        return orchestrate.RunRecord(selection, partition, 1.0, Path("run.log"))

    monkeypatch.setattr(orchestrate, "materialize", launched)
    every_stage = (lambda stages, key=None: list(stages), lambda stages, key=None: [])
    records = cli._partitions(config, every_stage, warehouse, {}, 1, None)
    assert calls == [(",".join(PARTITION_STAGES), "32|0"), ("sft_reference", "64|0")]
    labels = [cli._run_label(r, {"64|0"}) for r in records]
    assert labels == ["partition 32|0", "sft reference 64|0"]


def test_parallel_runs_start_with_the_largest_partition_and_report_in_the_studys_order(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from synthdata_assets import cli, orchestrate

    config = load_config("tiny", overrides={"data_sizes": [16, 32], "sft_reference_sizes": [64]})
    given = {}

    def launched(jobs, _warehouse, *, parallel, env=None, **_options):
        given.update(keys=[key for _, key in jobs], parallel=parallel, env=env)
        return [orchestrate.RunRecord(s, k, 1.0, Path("run.log")) for s, k in reversed(jobs)]

    monkeypatch.setattr(orchestrate, "materialize_parallel", launched)
    every_stage = (lambda stages, key=None: list(stages), lambda stages, key=None: [])
    records = cli._partitions(config, every_stage, warehouse, {}, 2, None, threads=1)
    assert given == {
        "keys": ["64|0", "32|0", "16|0"],
        "parallel": 2,
        "env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    }
    assert [r.partition for r in records] == ["16|0", "32|0", "64|0"]


def test_the_launcher_imports_no_torch() -> None:
    """``synthdata run`` stays alive beside every run it launches and holds no model: its
    checks and clean-up must not pull torch and transformers (0.3 GB) into it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from synthdata_assets import cli, orchestrate, preflight, study, workers\n"
        "from synthdata_assets.config import load_config\n"
        "from training.folders import remove_partial_checkpoints\n"
        "from warehouse import instance, lock\n"
        "config = load_config('demo')\n"
        "preflight.check_data(config)\n"
        "preflight.check_devices(config)\n"
        "study.stage_fingerprints(config)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
