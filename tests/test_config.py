from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synthdata_assets.config import (
    PRESETS,
    ConfigError,
    config_from_dict,
    load_config,
    preset_dict,
)

# The recorded sweeps' configurations (docs/experiments), each rerun from its YAML alone.
EXPERIMENTS = sorted((Path(__file__).parents[1] / "docs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_valid(name: str) -> None:
    config = load_config(name)
    assert config.preset == name
    assert config.data_sizes == tuple(sorted(config.data_sizes))


def test_every_recorded_experiment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field renamed or removed since a sweep was recorded fails here, not in a reader's
    rerun of it."""
    monkeypatch.delenv("SYNTHDATA_PRESET", raising=False)
    assert len(EXPERIMENTS) >= 20
    for path in EXPERIMENTS:
        named = yaml.safe_load(path.read_text()).get("preset", "demo")
        assert load_config(config_path=path).preset == named, path.name


def test_preset_from_environment_defaults_to_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNTHDATA_PRESET", raising=False)
    monkeypatch.delenv("SYNTHDATA_CONFIG", raising=False)
    assert load_config().preset == "demo"
    monkeypatch.setenv("SYNTHDATA_PRESET", "tiny")
    assert load_config().preset == "tiny"


def test_unknown_preset_names_the_allowed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHDATA_PRESET", "huge")
    with pytest.raises(ConfigError) as err:
        load_config()
    message = str(err.value)
    assert "SYNTHDATA_PRESET" in message and "'huge'" in message
    assert "tiny, demo, embedded, didactic, small, paper" in message


def test_yaml_overrides_any_field_at_any_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    override = tmp_path / "exp.yaml"
    override.write_text("data_sizes: [16, 8]\ntask:\n  n_test: 7\n  embedded:\n    modulus: 31\n")
    monkeypatch.setenv("SYNTHDATA_CONFIG", str(override))
    config = load_config("tiny")
    assert config.data_sizes == (8, 16)
    assert config.task.n_test == 7
    assert config.task.embedded.modulus == 31
    # Untouched siblings keep the preset's values.
    assert config.task.n_train_pool == preset_dict("tiny")["task"]["n_train_pool"]


def test_yaml_may_choose_the_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "exp.yaml"
    override.write_text("preset: tiny\nseeds: [3, 1]\n")
    monkeypatch.setenv("SYNTHDATA_CONFIG", str(override))
    monkeypatch.delenv("SYNTHDATA_PRESET", raising=False)
    config = load_config()
    assert config.preset == "tiny" and config.seeds == (1, 3)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "task:\n  name: mnist\n",
            ["task.name", "'embedded', 'star_graph', 'gsm8k' or 'math'", "'mnist'"],
        ),
        ("sampling:\n  backend: tgi\n", ["sampling.backend", "'transformers' or 'vllm'"]),
        ("task:\n  n_tset: 3\n", ["task.n_tset", "unknown field", "n_test"]),
        ("training:\n  learning_rate: -1\n", ["training.learning_rate", "greater than 0"]),
        ("data_sizes: [10, 10]\n", ["data_sizes", "distinct"]),
        ("data_sizes: [100000]\n", ["n_train_pool"]),
        ("teacher:\n  kind: reference\n", ["reference", "oracle"]),
        ("task:\n  embedded:\n    min_steps: 5\n    max_steps: 2\n", ["max_steps", "min_steps"]),
        ("task:\n  name: gsm8k\nteacher:\n  kind: reference\n", ["task.train_path"]),
        ("task:\n  embedded:\n    dead_end_names: 1\n", ["dead_end_names", "n_distractors"]),
        ("execution:\n  parallel_runs: 0\n", ["execution.parallel_runs", "greater than or equal"]),
    ],
)
def test_invalid_values_name_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, expected: list[str]
) -> None:
    override = tmp_path / "bad.yaml"
    override.write_text(yaml_text)
    monkeypatch.setenv("SYNTHDATA_CONFIG", str(override))
    with pytest.raises(ConfigError) as err:
        load_config("tiny")
    message = str(err.value)
    assert str(override) in message
    for fragment in expected:
        assert fragment in message, message


def test_missing_or_malformed_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("tiny", config_path=tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("tiny", config_path=bad)
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("tiny", config_path=bad)


def test_sft_reference_sizes_lie_past_the_study_and_inside_the_pool() -> None:
    demo = preset_dict("demo")
    config = config_from_dict(
        demo | {"sft_reference_sizes": [8000, 4000], "task": {"n_train_pool": 8000}}
    )
    assert config.sft_reference_sizes == (4000, 8000) and config.largest_size == 8000
    assert config.reference_keys == [(4000, 0), (8000, 0)]
    assert config_from_dict(demo).reference_keys == []
    with pytest.raises(ConfigError, match=r"sft_reference_sizes \[1000\] are not above"):
        config_from_dict(demo | {"sft_reference_sizes": [1000, 2000]})
    with pytest.raises(ConfigError, match=r"sft_reference_sizes \(4000\) exceeds task.n_train"):
        config_from_dict(demo | {"sft_reference_sizes": [4000]})
    with pytest.raises(ConfigError, match="sft_reference_sizes"):
        config_from_dict(demo | {"sft_reference_sizes": [4000, 4000]})


def test_choosing_the_epoch_by_validation_needs_a_generated_task_and_one_process() -> None:
    chosen = {"training": {"select_epoch": "validation"}}
    assert config_from_dict(preset_dict("demo") | chosen).training.select_epoch == "validation"
    with pytest.raises(ConfigError, match="training.select_epoch 'validation' needs a generated"):
        config_from_dict(preset_dict("small") | chosen)
    with pytest.raises(ConfigError, match="set execution.train_processes to 1"):
        config_from_dict(preset_dict("demo") | chosen | {"execution": {"train_processes": 2}})
    with pytest.raises(ConfigError, match="training.select_epoch"):
        config_from_dict(preset_dict("demo") | {"training": {"select_epoch": "best"}})
    with pytest.raises(ConfigError, match="training.validation_patience"):
        config_from_dict(preset_dict("demo") | {"training": {"validation_patience": 2}})
