"""Runs that survive kills, interruptions and a second run on the same warehouse.

The end-to-end cases start real ``synthdata run`` processes on the tiny preset and kill or
signal them at a model stage, as a user (or the OOM killer) would.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from processes import children, free_port, group_members

from synthdata_assets.study import PARTITION_STAGES
from warehouse import Warehouse
from warehouse.lock import WarehouseBusy, WarehouseLock, process_running

SYNTHDATA = Path(sys.executable).with_name("synthdata")


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    busy = pytest.raises(WarehouseBusy, match=rf"in use by process {os.getpid()}")
    with WarehouseLock(tmp_path), busy:
        WarehouseLock(tmp_path).acquire()
    WarehouseLock(tmp_path).acquire().release()  # free again once released


@pytest.mark.parametrize("previous", [None, "ended"])
def test_a_process_refused_before_the_holder_wrote_its_record_still_names_it(
    tmp_path: Path, previous: str | None
) -> None:
    """Two runs started together: the refused one can read the record between the winner's
    flock and its write, and find the file empty or still naming the previous holder, which
    has ended. It waits for the record instead of giving up on naming the holder."""
    lock = WarehouseLock(tmp_path)
    if previous:
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        lock.path.write_text(json.dumps({"pid": int(ended.stdout), "command": "old"}) + "\n")
    fd = os.open(lock.path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the winner holds the lock, its record not yet written
    record = {"pid": os.getpid(), "command": "synthdata run", "since": time.time()}
    writer = threading.Timer(0.3, lambda: lock.path.write_text(json.dumps(record) + "\n"))
    writer.start()
    try:
        with pytest.raises(WarehouseBusy, match=f"in use by process {os.getpid()} "):
            WarehouseLock(tmp_path).acquire()
    finally:
        writer.join()
        os.close(fd)


def test_a_child_that_inherited_the_lock_keeps_it(tmp_path: Path) -> None:
    lock = WarehouseLock(tmp_path).acquire()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], pass_fds=(lock.fd,)
    )
    try:
        lock.release()
        with pytest.raises(WarehouseBusy):
            WarehouseLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    WarehouseLock(tmp_path).acquire().release()


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "SYNTHDATA_PRESET": "tiny",
        "OMP_NUM_THREADS": "1",
    }


def _start(home: Path, config: Path | None = None) -> subprocess.Popen:
    env = _env(home) | ({"SYNTHDATA_CONFIG": str(config)} if config else {})
    return subprocess.Popen(
        [str(SYNTHDATA), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_stage(home: Path, stage: str, timeout: float = 180.0) -> None:
    """Until a partition run's log shows ``stage`` at work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (home / "reports" / "logs").glob("*__32_0.log"):
            if f" - {stage} - " in log.read_text(errors="replace"):
                return
        time.sleep(0.2)
    raise AssertionError(f"{stage} did not start within {timeout}s")


def _run_statuses(home: Path) -> list[dg.DagsterRunStatus]:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return [run.status for run in instance.get_runs()]


def _row_counts(home: Path) -> dict[str, int]:
    warehouse = Warehouse(home)
    return {
        f"{stage}/{size}": pl.read_parquet(warehouse.partition_file(stage, size, 0)).height
        for stage in PARTITION_STAGES
        for size in (32, 64)
    }


@pytest.mark.slow
def test_a_second_run_refuses_and_sigterm_stops_the_first(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Long enough a training that the signal lands inside a stage, not after the run.
    config = tmp_path / "long.yaml"
    config.write_text("preset: tiny\ntraining:\n  epochs: 100\n")
    first = _start(home, config)
    try:
        deadline = time.monotonic() + 60
        while (WarehouseLock(home).holder() or {}).get("pid") != first.pid:
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        second = subprocess.run(
            [str(SYNTHDATA), "run"], env=_env(home), capture_output=True, text=True, timeout=120
        )  # the first run's config or another: the warehouse is in use either way
        assert second.returncode == 2
        assert f"in use by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        _wait_for_stage(home, "sft_model")
        launched = children(first.pid)
        assert launched, "the run's materialize process should be running"
        time.sleep(1)
        first.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        _, err = first.communicate(timeout=30)
        while any(process_running(c) for c in launched) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(process_running(c) for c in launched)
        assert first.returncode == 143 and "Traceback" not in err and "resumes" in err
        assert dg.DagsterRunStatus.CANCELED in _run_statuses(home)
    finally:
        first.kill()


@pytest.mark.slow
def test_a_rerun_after_kill_9_at_a_model_stage_completes_like_a_clean_run(
    tmp_path: Path,
) -> None:
    clean = tmp_path / "clean"
    assert _start(clean).wait(timeout=600) == 0
    home = tmp_path / "home"
    # Rollouts in calls of 16 prompts, each written to the partition's journal when done.
    config = tmp_path / "journal.yaml"
    config.write_text("preset: tiny\nexecution: {rollout_chunk_prompts: 16}\n")
    killed = _start(home, config)
    journal = Warehouse(home).journal_folder("step_rollouts", 32, 0)
    deadline = time.monotonic() + 300
    while not list(journal.glob("*.parquet")):
        assert time.monotonic() < deadline and killed.poll() is None, "no rollout call finished"
        time.sleep(0.05)
    # The launcher and its run, with no chance to clean up (as the OOM killer or a reboot).
    for pid in [*children(killed.pid), killed.pid]:
        os.kill(pid, signal.SIGKILL)
    killed.wait()
    finished = pl.concat([pl.read_parquet(p) for p in journal.glob("*.parquet")]).height
    rerun = subprocess.run(
        [str(SYNTHDATA), "run"],
        env=_env(home) | {"SYNTHDATA_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "marked 1 run(s) of a killed launcher as failed" in rerun.stdout
    assert _row_counts(home) == _row_counts(clean)
    # The rerun generated only what the killed stage had not finished.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("step_rollouts"), asset_partitions=["32|0"]
            ),
            limit=1,
        ).records
    metadata = record.asset_materialization.metadata
    assert metadata["completions_reused"].value >= finished > 0
    statuses = _run_statuses(home)
    assert dg.DagsterRunStatus.STARTED not in statuses
    assert dg.DagsterRunStatus.FAILURE in statuses


@pytest.mark.slow
def test_a_changed_setting_and_an_interruption_leave_no_mixed_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthdata_assets.config import load_config
    from synthdata_assets.orchestrate import recorded_stages
    from synthdata_assets.study import SETUP_STAGES, stage_fingerprints

    home = tmp_path / "home"
    assert _start(home).wait(timeout=600) == 0
    changed = tmp_path / "slips.yaml"
    # A long enough SFT for the interruption to land inside it.
    changed.write_text("preset: tiny\nteacher:\n  slip_rate: 0.4\ntraining:\n  epochs: 100\n")
    env = _env(home) | {"SYNTHDATA_CONFIG": str(changed)}
    for log in (home / "reports" / "logs").glob("*.log"):
        log.unlink()
    interrupted = subprocess.Popen([str(SYNTHDATA), "run"], env=env, text=True)
    _wait_for_stage(home, "sft_model")
    time.sleep(2)
    interrupted.send_signal(signal.SIGTERM)
    assert interrupted.wait(timeout=60) == 143
    current = stage_fingerprints(load_config(config_path=changed))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))

    def settings(key: str) -> dict[str, bool]:
        recorded = recorded_stages(PARTITION_STAGES, key) | recorded_stages(SETUP_STAGES)
        return {stage: recorded[stage].fingerprint == current[stage] for stage in recorded}

    # What the interruption left: the new teacher beside the old samples and evaluations.
    left = settings("32|0")
    assert left["teacher_solutions"] and not left["policy_samples"] and not left["evaluations"]
    rerun = subprocess.run(
        [str(SYNTHDATA), "run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The teacher is downstream.
    assert "problems, base_model, base_evaluation: up to date" in rerun.stdout
    assert "~ [32|0]: recomputing sft_model, policy_samples" in rerun.stdout
    for key in ("32|0", "64|0"):
        assert settings(key) == dict.fromkeys((*SETUP_STAGES, *PARTITION_STAGES), True)
    # A setting of the DPO stages alone recomputes them and what reads them, nothing before.
    changed.write_text(changed.read_text() + "  dpo_beta: 0.5\n")
    beta = subprocess.run(
        [str(SYNTHDATA), "run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert beta.returncode == 0, beta.stderr[-3000:]
    dpo_stages = "per_step_dpo_model, nll_control_model, dpo_model, evaluations"
    for key in ("32|0", "64|0"):
        assert f"~ [{key}]: recomputing {dpo_stages}" in beta.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_stops_the_ui_and_all_its_processes(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C too: polars installs a SIGINT handler of its own that held it back."""
    import urllib.request

    port = free_port()
    home = tmp_path / "home"
    ui = subprocess.Popen(
        [str(SYNTHDATA), "ui", "--port", str(port)],
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, "the UI never answered"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                time.sleep(1)
        (dev,) = children(ui.pid)
        assert len(group_members(dev)) > 1  # the webserver, the daemon, code servers
        ui.send_signal(sig)
        _, err = ui.communicate(timeout=30)
        assert ui.returncode == code and "Traceback" not in err
        deadline = time.monotonic() + 10
        while group_members(dev) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(dev) == []
    finally:
        ui.kill()


@pytest.mark.slow
def test_two_runs_started_together_give_one_refusal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runs = [_start(home), _start(home)]
    try:
        deadline = time.monotonic() + 120
        while all(run.poll() is None for run in runs):
            assert time.monotonic() < deadline, "neither run refused"
            time.sleep(0.2)
        (refused,) = [run for run in runs if run.poll() is not None]
        (going,) = [run for run in runs if run is not refused]
        _, err = refused.communicate()
        assert refused.returncode == 2 and f"in use by process {going.pid}" in err
        assert "Traceback" not in err
        assert going.wait(timeout=600) == 0  # and it finishes, alone
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            partitions = [run.tags.get("dagster/partition") for run in instance.get_runs()]
        assert sorted(filter(None, partitions)) == ["32|0", "64|0"]  # nothing computed twice
    finally:
        for run in runs:
            run.kill()


def test_a_run_not_launched_by_the_holder_fails_naming_it(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a backfill from the UI or the daemon meets while a synthdata run writes."""
    from synthdata_assets.config import load_config
    from synthdata_assets.defs import build_definitions

    monkeypatch.delenv("SYNTHDATA_LOCK_FD", raising=False)
    defs = build_definitions(load_config("tiny"), warehouse)

    def materialize_problems() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            list(defs.assets or []),
            selection=["problems"],
            resources=defs.resources,
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )

    with WarehouseLock(warehouse.root):
        refused = materialize_problems()
    assert not refused.success
    failures = [str(e.event_specific_data) for e in refused.all_events if e.is_failure]
    assert any(f"in use by process {os.getpid()}" in text for text in failures)
    assert not warehouse.table_file("problems").exists()
    assert materialize_problems().success  # once the holder is gone


def test_a_failed_run_reports_its_own_log_lines(tmp_path: Path, monkeypatch) -> None:
    """A launcher of the same selection and partition that starts while a run is going moves
    the run's log to previous/ and writes its own: the failed run still reports its own lines,
    and where they are now."""
    from synthdata_assets import orchestrate

    class FailedRun:
        pid, returncode, stdout = 0, 1, None

        def __enter__(self):
            return self

        def __exit__(self, *_exc) -> None:
            pass

    def follow(proc, handle, warehouse, followed, *, echo, prefix=None) -> None:
        handle.write("refused: partition 32|0 is being written by run r1\n")
        log = warehouse.reports / "logs" / "sft_model__32_0.log"
        (log.parent / "previous").mkdir(exist_ok=True)
        log.replace(log.parent / "previous" / log.name)  # the second launcher starts
        log.write_text("sft_model - STEP_SUCCESS\n")

    monkeypatch.setattr(orchestrate.subprocess, "Popen", lambda *a, **k: FailedRun())
    monkeypatch.setattr(orchestrate, "_follow", follow)
    warehouse = Warehouse(tmp_path / "home")
    with pytest.raises(orchestrate.RunFailed) as failed:
        orchestrate.materialize("sft_model", warehouse, "32|0", echo=False)
    message = str(failed.value)
    assert "is being written by run r1" in message and "STEP_SUCCESS" not in message
    assert str(Path("previous") / "sft_model__32_0.log") in message
