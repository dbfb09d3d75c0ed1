"""Bad input gets a message of a line or two that names the file, the line or the field and
the fix, exit code 2, and no traceback; before any Dagster process starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from synthdata_assets.config import ConfigError, load_config
from synthdata_assets.verify import grade
from warehouse import Warehouse

SYNTHDATA = Path(sys.executable).with_name("synthdata")


def _synthdata(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [str(SYNTHDATA), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _short_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_an_unusable_warehouse_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = _synthdata(
        "run", env={"SYNTHDATA_HOME": str(blocker / "home"), "SYNTHDATA_PRESET": "tiny"}
    )
    _short_error(proc, "SYNTHDATA_HOME", str(blocker / "home"), "a folder you can write")


def _gsm8k_env(tmp_path: Path, train: Path, test: Path) -> dict[str, str]:
    config = tmp_path / "real.yaml"
    config.write_text(
        "preset: tiny\ndata_sizes: [2]\nseeds: [0]\n"
        f"task: {{name: gsm8k, train_path: {train}, test_path: {test}, n_test: 2}}\n"
        "teacher: {kind: reference}\n"
    )
    return {"SYNTHDATA_CONFIG": str(config), "SYNTHDATA_HOME": str(tmp_path / "home")}


GOOD_ROW = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ("{not json", "train.jsonl:2"),
        (json.dumps({"question": "What is 1 + 1?"}), "train.jsonl:2"),
    ],
)
def test_a_bad_data_line_is_named_before_dagster_starts(
    tmp_path: Path, bad_line: str, needle: str
) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text(json.dumps(GOOD_ROW) + "\n" + bad_line + "\n" + json.dumps(GOOD_ROW) + "\n")
    test.write_text((json.dumps(GOOD_ROW) + "\n") * 2)
    proc = _synthdata("run", env=_gsm8k_env(tmp_path, train, test))
    _short_error(proc, needle)
    assert not (tmp_path / "home" / "dagster" / "storage").exists()  # Dagster never ran


def test_a_missing_data_file_names_its_field(tmp_path: Path) -> None:
    test = tmp_path / "test.jsonl"
    test.write_text((json.dumps(GOOD_ROW) + "\n") * 2)
    proc = _synthdata("run", env=_gsm8k_env(tmp_path, tmp_path / "missing.jsonl", test))
    _short_error(proc, "task.train_path", "missing.jsonl")


def test_grade_into_a_missing_folder_and_an_empty_file(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"completion": "#### 5", "answer": "5"}) + "\n")
    _short_error(_synthdata("grade", str(rows), "-o", str(tmp_path / "no" / "out.jsonl")), "no")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _short_error(_synthdata("grade", str(empty)), "no rows")


def test_a_bad_preset_in_the_yaml_file_is_blamed_on_the_file(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("preset: tinny\n")
    with pytest.raises(ConfigError, match="study.yaml: field preset: preset 'tinny'") as err:
        load_config(config_path=config)
    assert "SYNTHDATA_PRESET" not in str(err.value).replace(f"SYNTHDATA_CONFIG={config}", "")


def test_booleans_are_not_data_sizes() -> None:
    with pytest.raises(ConfigError, match="data_sizes"):
        load_config("tiny", overrides={"data_sizes": [True, 64]})


def test_scientific_notation_grades_against_itself() -> None:
    assert grade("#### 1e308", "1e308", "gsm8k").is_correct
    assert grade("#### 100000", "1e5", "gsm8k").is_correct
    assert not grade("#### 2e5", "1e5", "gsm8k").is_correct
    assert grade("#### 1e99999999", "1", "gsm8k").is_correct is False  # no huge integer


@pytest.mark.slow
def test_ctrl_c_stops_a_run_without_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "SYNTHDATA_HOME": str(home), "SYNTHDATA_PRESET": "tiny"}
    proc = subprocess.Popen(
        [str(SYNTHDATA), "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list((home / "reports" / "logs").glob("*.log")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # A Ctrl-C that lands while Dagster's own code captures interrupts (opening the instance)
    # can be swallowed; press it again, as an impatient user would (noted on issue 14). The
    # later presses land in the stop's grace time, the clean-up and the interpreter's exit,
    # and none of them may print a traceback.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        pytest.fail("synthdata run went on for 60 s of Ctrl-C")
    assert proc.returncode == 130 and "Traceback" not in err and "Ctrl-C" in err, err


@pytest.mark.slow
def test_a_step_waiting_for_the_pool_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"SYNTHDATA_HOME": str(home), "SYNTHDATA_PRESET": "tiny"}
    # Another process (not a synthdata run: the UI, say) holds the accelerator slot.
    Warehouse(home).ensure()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.event_log_storage.initialize_concurrency_limit_to_default("accelerator")
        instance.event_log_storage.claim_concurrency_slot("accelerator", "other-run", "a-step")
    with pytest.raises(subprocess.TimeoutExpired) as waited:
        _synthdata("run", env=env, timeout=45)
    assert "waiting for a slot of pool accelerator" in (waited.value.stdout or b"").decode()
    # The launcher was killed (SIGKILL, by the timeout): its waiting run must not outlive it.
    deadline = time.monotonic() + 10
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(home) == []


def _processes_of(home: Path) -> list[int]:
    """Processes whose environment names ``home`` as SYNTHDATA_HOME."""
    found = []
    needle = f"SYNTHDATA_HOME={home}".encode() + b"\0"
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes() + b"\0":
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_multi_gpu_settings_beyond_the_machine_are_named() -> None:
    from synthdata_assets.preflight import PreflightError, check_devices

    paper = load_config("paper")  # one node of 8 GPUs
    check_devices(paper, gpus=8)
    check_devices(paper, gpus=0)  # no GPU: ranks over gloo, vLLM replicas on the cores
    with pytest.raises(PreflightError, match="execution.train_processes 8 .* at most 4"):
        check_devices(paper, gpus=4)
    one_rank = load_config("paper", overrides={"execution": {"train_processes": 4}})
    with pytest.raises(PreflightError, match="execution.data_parallel_size 8 x"):
        check_devices(one_rank, gpus=4)
    on_workers = load_config("paper", overrides={"execution": {"broker": "redis://h:6379/0"}})
    check_devices(on_workers, gpus=1)  # the stages run on the workers' machines
