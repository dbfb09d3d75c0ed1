"""Beyond one process: a Postgres instance, partitions on Celery workers or in parallel runs,
partition claims.

The services are real: a Postgres server (``initdb`` + ``pg_ctl`` in a temporary folder) and a
Redis server, started here and stopped after the module. A missing server program fails the
test, naming the Debian package to install (``.ci/run`` installs both).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from processes import free_port

from warehouse import Warehouse
from warehouse.lock import WarehouseBusy, claim_partition

SYNTHDATA = Path(sys.executable).with_name("synthdata")
# What differs between two runs of one study by design: where the warehouse is (paths and the
# rollout keys and checkpoint ids that name them), which run wrote a row, and timings.
PROVENANCE = {
    "run_id",
    "path",
    "base",
    "checkpoint",
    "rollout_key",
    "tokens_per_second",
    "train_seconds",
}


def _program(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(f"{name} is not installed: `apt-get install {package}` (.ci/run does)")
    return found


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root; as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A Postgres server; yields a function that creates a database and returns its URL."""
    initdb, pg_ctl = _program("initdb", "postgresql"), _program("pg_ctl", "postgresql")
    folder = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:
        # pytest's folders are root's alone; the server's must be the postgres user's.
        folder = Path(tempfile.mkdtemp(prefix="synthdata-postgres-"))
        shutil.chown(folder, "postgres")
    data = folder / "data"
    port = free_port()
    subprocess.run(
        _as_postgres_user([initdb, "-D", str(data), "--auth=trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    # The server's output goes to its log file: a pipe would stay open as long as it runs.
    log = folder / "server.log"
    subprocess.run(
        _as_postgres_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def new_database(name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    server = _program("redis-server", "redis-server")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_POSTGRES_URL",)}
    return env | {
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "SYNTHDATA_PRESET": "tiny",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _synthdata(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    done = subprocess.run(
        [str(SYNTHDATA), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _differences(a: Path, b: Path) -> list[str]:
    """The tables of warehouse ``a`` that differ from ``b``'s, provenance columns aside."""
    files = sorted(p.relative_to(a / "tables") for p in (a / "tables").rglob("*.parquet"))
    other = sorted(p.relative_to(b / "tables") for p in (b / "tables").rglob("*.parquet"))
    assert files == other and files
    differ = []
    for name in files:
        x, y = pl.read_parquet(a / "tables" / name), pl.read_parquet(b / "tables" / name)
        keep = [c for c in x.columns if c not in PROVENANCE]
        if not x.select(keep).equals(y.select(keep)):
            differ.append(str(name))
    return differ


def test_importing_the_code_location_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "not-yet"
    env = _env(home)
    code = "import synthdata_assets.definitions as d; print(len(list(d.defs.assets)))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not home.exists()


def test_a_partition_claimed_by_an_unfinished_run_is_refused_naming_it(tmp_path: Path) -> None:
    finished: set[str] = set()
    claim_partition(tmp_path, "32|0", "run-a", finished.__contains__)
    claim_partition(tmp_path, "32|0", "run-a", finished.__contains__)  # its other steps
    claim_partition(tmp_path, "64|0", "run-b", finished.__contains__)  # another partition
    with pytest.raises(WarehouseBusy, match="partition 32|0 .* written by run run-a"):
        claim_partition(tmp_path, "32|0", "run-b", finished.__contains__)
    finished.add("run-a")
    claim_partition(tmp_path, "32|0", "run-b", finished.__contains__)  # a stale claim passes


def test_a_step_where_the_warehouse_is_not_fails_saying_so(tmp_path: Path) -> None:
    from warehouse.layout import WarehouseMissing

    with pytest.raises(WarehouseMissing, match="same path, on a filesystem they all share"):
        Warehouse(tmp_path / "elsewhere").require()


@pytest.mark.slow
def test_two_workers_on_postgres_give_the_tables_of_a_sequential_run(
    tmp_path: Path, postgres, redis_url: str
) -> None:
    """``synthdata run --workers 2`` on a Postgres instance: both partitions at once, their
    steps on two Celery workers, and every table equal to a one-process SQLite run's (both
    at one torch thread per process: thread counts change floating-point sums)."""
    url = postgres("study")
    parallel, sequential = tmp_path / "parallel", tmp_path / "sequential"
    out = _synthdata(
        _env(parallel, DAGSTER_POSTGRES_URL=url, SYNTHDATA_BROKER=redis_url),
        "run",
        "--workers",
        "2",
    )
    assert "2 partitions, 2 at a time" in out
    _synthdata(_env(sequential), "run")
    assert _differences(parallel, sequential) == []

    settings = (parallel / "dagster" / "dagster.yaml").read_text()
    assert "env: DAGSTER_POSTGRES_URL" in settings and "default_limit: 2" in settings
    assert not list((parallel / "dagster").glob("**/*.db"))  # nothing went to SQLite
    # What synthdata makes of the URL (see warehouse.instance.use_psycopg2_driver).
    os.environ["DAGSTER_POSTGRES_URL"] = url.replace("postgresql://", "postgresql+psycopg2://")
    try:
        with dg.DagsterInstance.from_config(str(parallel / "dagster")) as instance:
            runs = {r.tags.get("dagster/partition"): r for r in instance.get_runs()}
            records = {key: instance.get_run_record_by_id(runs[key].run_id) for key in runs}
            workers = {
                str(event.dagster_event.engine_event_data.metadata["Celery worker"].value)
                for key in ("32|0", "64|0")
                for event in instance.all_logs(runs[key].run_id)
                if event.dagster_event
                and event.dagster_event.is_engine_event
                and "Celery worker" in (event.dagster_event.engine_event_data.metadata or {})
            }
    finally:
        del os.environ["DAGSTER_POSTGRES_URL"]
    a, b = records["32|0"], records["64|0"]
    assert a.start_time < b.end_time and b.start_time < a.end_time  # the partitions overlapped
    assert len({w.split("@")[0] for w in workers}) == 2  # and both workers ran steps

    # Another warehouse may not share that database: its records would stand for files it
    # does not have.
    other = subprocess.run(
        [str(SYNTHDATA), "run"],
        env=_env(tmp_path / "other", DAGSTER_POSTGRES_URL=url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2
    assert f"holds the Dagster instance of the warehouse {parallel}" in other.stderr


@pytest.mark.slow
def test_parallel_runs_without_a_broker_give_the_tables_of_a_sequential_run(
    tmp_path: Path,
) -> None:
    """``execution.parallel_runs: 2`` without a broker: both partitions at once, each its own
    run and process at the torch threads asked for, every table equal to a one-run-at-a-time
    study's, and the runs table's total the wall clock."""
    parallel, sequential = tmp_path / "parallel", tmp_path / "sequential"
    config = tmp_path / "parallel.yaml"
    config.write_text("execution: {parallel_runs: 2}\n")
    out = _synthdata(_env(parallel, SYNTHDATA_CONFIG=str(config)), "run", "--threads", "1")
    assert "2 partitions, 2 at a time, the largest first (1 torch thread(s) each)" in out
    assert "[64|0] sft_model: training on" in out  # stage lines, named by their partition
    assert "\nall (wall clock) " in out
    # One run at a time: --threads holds there too, over the environment's thread count.
    _synthdata(_env(sequential, OMP_NUM_THREADS="2"), "run", "--threads", "1")
    assert _differences(parallel, sequential) == []

    for home, key in itertools.product((parallel, sequential), ("32_0", "64_0")):
        (log,) = (home / "reports" / "logs").glob(f"*__{key}.log")
        assert "device cpu (1 torch thread(s))" in log.read_text()
    with dg.DagsterInstance.from_config(str(parallel / "dagster")) as instance:
        runs = {r.tags.get("dagster/partition"): r for r in instance.get_runs()}
        a, b = (instance.get_run_record_by_id(runs[k].run_id) for k in ("32|0", "64|0"))
    assert a.start_time < b.end_time and b.start_time < a.end_time  # the partitions overlapped


@pytest.mark.slow
def test_two_runs_of_one_partition_at_once_leave_it_as_one_run_would(tmp_path: Path) -> None:
    """Two runs write the same partition at once (as two launchers' workers would): the second
    is refused, naming the first, and the partition's tables are a clean run's."""
    from synthdata_assets.orchestrate import RunFailed, materialize
    from synthdata_assets.study import PARTITION_STAGES, SETUP_STAGES

    clean = tmp_path / "clean"
    _synthdata(_env(clean), "run", "--force")  # (--force also passes its own settings check)
    home = tmp_path / "home"
    env = _env(home, SYNTHDATA_WORKER="test")  # steps take no warehouse lock, as on a worker
    old = dict(os.environ)
    os.environ.update(env)
    try:
        warehouse = Warehouse(home).activate()
        materialize(",".join(SETUP_STAGES), warehouse, echo=False)
        outcomes: list[str] = []

        def one() -> None:
            try:
                materialize(",".join(PARTITION_STAGES), warehouse, "32|0", echo=False)
                outcomes.append("ok")
            except RunFailed as exc:
                outcomes.append(str(exc))

        import threading

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.5)
        for t in threads:
            t.join(timeout=600)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert sorted(o == "ok" for o in outcomes) == [False, True], outcomes
    (refusal,) = [o for o in outcomes if o != "ok"]
    assert "partition 32|0" in refusal and "is being written by run" in refusal
    for stage in PARTITION_STAGES:
        name = Path(stage) / "data_size=32" / "seed=0.parquet"
        x = pl.read_parquet(home / "tables" / name)
        y = pl.read_parquet(clean / "tables" / name)
        keep = [c for c in x.columns if c not in PROVENANCE]
        assert x.select(keep).equals(y.select(keep)), stage


def test_workers_started_before_an_interrupt_are_stopped(tmp_path, monkeypatch) -> None:
    """A Ctrl-C while `synthdata run --workers N` starts its workers stops the ones already
    started, rather than losing them with the object that would stop them."""
    from synthdata_assets.workers import LocalWorkers

    real, started = subprocess.Popen, []

    def popen(cmd, **kwargs):
        if started:
            raise KeyboardInterrupt
        # A stand-in worker that would outlive the test if nothing stopped it.
        started.append(real([sys.executable, "-c", "import time; time.sleep(120)"], **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    with pytest.raises(KeyboardInterrupt):
        LocalWorkers.start(
            2,
            broker="redis://localhost:1",
            threads=1,
            process_per_step=False,
            logs=tmp_path,
            lock_fd=None,
        )
    assert len(started) == 1 and started[0].poll() is not None
