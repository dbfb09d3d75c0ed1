"""Launch materializations through the Dagster instance of the warehouse.

Every run goes through ``dagster asset materialize`` against the code location in
``workspace.yaml``, so the runs, their logs and the materialized partitions show in
``dagster dev -w workspace.yaml`` afterwards, exactly as if they had been launched there.
Dagster's own event log is long; it goes to a file per run under ``reports/logs`` (the one
before it of the same selection and partition to ``reports/logs/previous``). The
terminal gets the stages' own ``INFO`` messages: their progress as one bar per stage, their
other lines as they are (:class:`synthdata_assets.terminal.StageDisplay`), a line when a step
waits for a concurrency pool, one line per finished run, and the log's tail when a run fails.

Runs and their launcher
-----------------------
A run is a child process in its own process group, which inherits the warehouse lock
(:class:`warehouse.lock.WarehouseLock`) when the caller holds it. When the launcher is
interrupted (Ctrl-C, ``SIGTERM``: :class:`Interrupted`), it sends the run ``SIGINT``, waits
:data:`STOP_GRACE_S` seconds (or until Ctrl-C is pressed again), then kills its process group,
and records the run as cancelled; when the launcher dies without a chance to do so
(``kill -9``), the kernel kills the run (``PR_SET_PDEATHSIG``). The id of every run launched
is appended to ``dagster/synthdata_runs.jsonl``; :func:`recover_dead_runs` marks those of
them that never finished as failed and frees the concurrency slots they held, which is safe
whenever the caller holds the warehouse lock, since every run launched under it is then gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from synthdata_assets.terminal import StageDisplay
from warehouse import Warehouse
from warehouse.lock import LOCK_FD_ENV

CODE_MODULE = "synthdata_assets.definitions"
RUNS_FILE = "synthdata_runs.jsonl"
STOP_GRACE_S = 5.0
# "<time> - dagster - <LEVEL> - <job> - <run id> - ...": a line of a run's event log.
_RUN_ID = re.compile(r" - dagster - [A-Z]+ - [^ ]+ - (?P<run>[0-9a-f-]{36}) - ")
# "<time> - dagster - INFO - <job> - <run id> - <step> - <message>": a stage's own log line.
_INFO = re.compile(r" - dagster - INFO - [^ ]+ - [0-9a-f-]{36} - (?P<step>[\w.]+) - (?P<msg>.*)$")
_BLOCKED = re.compile(r"blocked by (the )?(concurrency )?limit for pool (?P<pool>\S+)", re.I)
_PR_SET_PDEATHSIG = 1


class RunFailed(RuntimeError):
    """A Dagster run ended in failure; the message holds the tail of its log."""


class Interrupted(KeyboardInterrupt):
    """The launcher was asked to stop (Ctrl-C or ``SIGTERM``)."""


@dataclass(frozen=True)
class RunRecord:
    selection: str
    partition: str | None
    seconds: float
    log: Path


def _log_name(selection: str, partition: str | None) -> str:
    part = f"__{partition.replace('|', '_')}" if partition else ""
    return f"{selection.replace(',', '+')}{part}.log"


def stop_on_sigterm() -> None:
    """Make ``SIGTERM`` stop this process the way Ctrl-C does (:class:`Interrupted`)."""

    def interrupt(signum, _frame):
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)


def _python_handles_ctrl_c() -> None:
    """Give ``SIGINT`` back to Python's handler (KeyboardInterrupt). polars installs a C-level
    handler of its own when it is imported, which leaves Ctrl-C waiting until a blocking wait
    on a child ends: for ``dagster dev``, never."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In a child, before it runs (``preexec_fn``): ``signum`` when its parent dies (Linux).
    ``SIGKILL`` for Dagster runs: Dagster defers ``SIGINT``/``SIGTERM`` while its own code runs
    (a step waiting for a pool slot waits on), and what a run writes is atomic anyway."""
    # Ctrl-C may be held in the parent while it forks (_ctrl_c_held); the child takes it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        pass  # not Linux: the launcher's own handlers are all there is


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[Callable[[], None]]:
    """Hold Ctrl-C (block ``SIGINT`` in this thread) until the ``release()`` it yields is
    called, or the block ends. A Ctrl-C that lands while Python forks a child is raised inside
    the interpreter's at-fork hooks (logging's lock release), which print it as an ignored
    exception and lose it. Held, it arrives at ``release()``, which the caller places where it
    is ready to stop the child it started. Children unblock it (:func:`die_with_parent`)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    try:
        yield release
    finally:
        release()


def materialize(
    selection: str,
    warehouse: Warehouse,
    partition: str | None = None,
    *,
    echo: bool = True,
    label: str | None = None,
    lock_fd: int | None = None,
    started: dict | None = None,
    env: dict[str, str] | None = None,
    prefix: str | None = None,
) -> RunRecord:
    """Materialize ``selection`` (asset names, comma-separated) in one Dagster run; the run
    inherits ``lock_fd``, the warehouse lock, when given, and ``env`` on top of this process's
    environment. ``started``: filled with the run's process and run id as they become known,
    so that another thread can stop it (:func:`materialize_parallel`). ``echo``: a line as the
    run starts and ends, and its stages' progress; ``prefix``: its stages' lines, without
    progress bars, each starting with ``prefix`` (runs that share the terminal)."""
    warehouse.activate()
    logs = warehouse.reports / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / _log_name(selection, partition)
    if log.exists():
        # The last log of the same run stays readable (a killed run's log says why it died).
        (logs / "previous").mkdir(exist_ok=True)
        log.replace(logs / "previous" / log.name)
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", CODE_MODULE]
    cmd += ["--select", selection]
    if partition:
        cmd += ["--partition", partition]
    if label is None:
        label = selection + (f" [{partition}]" if partition else "")
    elif partition:
        label = f"[{label}]"
    if echo:
        print(f"  … {label}", flush=True)
    start = time.perf_counter()
    if threading.current_thread() is threading.main_thread():
        _python_handles_ctrl_c()
    with (
        _ctrl_c_held() as release_ctrl_c,
        open(log, "w+") as handle,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=os.environ | (env or {}) | ({} if lock_fd is None else {LOCK_FD_ENV: str(lock_fd)}),
            text=True,
            errors="replace",
            start_new_session=True,
            pass_fds=() if lock_fd is None else (lock_fd,),
            preexec_fn=die_with_parent,
        ) as proc,
    ):
        followed: dict = {} if started is None else started
        followed["proc"] = proc
        try:
            release_ctrl_c()
            _follow(proc, handle, warehouse, followed, echo=echo, prefix=prefix)
        except KeyboardInterrupt:
            _stop(proc, warehouse, followed.get("run_id"))
            if echo:
                print(f"  ✗ {label} stopped after {time.perf_counter() - start:.1f}s", flush=True)
            raise
        if proc.returncode != 0:
            # This run's own lines, from its own file: a launcher of the same selection and
            # partition started since then has moved it to previous/ and writes its own.
            handle.flush()
            handle.seek(0)
            tail = "\n".join(handle.read().splitlines()[-40:])
            if not log.exists() or not os.path.samestat(os.fstat(handle.fileno()), log.stat()):
                log = logs / "previous" / log.name
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        if echo:
            print(f"  ✗ {label} failed after {seconds:.1f}s (log: {log})", flush=True)
        raise RunFailed(f"run of {label} failed; last lines of {log}:\n{tail}")
    if echo:
        print(f"  ✓ {label}  {seconds:.1f}s", flush=True)
    return RunRecord(selection=selection, partition=partition, seconds=seconds, log=log)


def materialize_parallel(
    jobs: list[tuple[str, str]],
    warehouse: Warehouse,
    *,
    parallel: int,
    lock_fd: int | None = None,
    healthy: Callable[[], str | None] | None = None,
    env: dict[str, str] | None = None,
) -> list[RunRecord]:
    """Materialize each ``(selection, partition)`` in its own run, up to ``parallel`` runs at
    once, in the order given; ``env`` is added to each run's environment. Their steps go
    wherever the executor sends them: Celery workers, whose logs hold the stages' messages, or
    the run's own process, whose stage lines are shown prefixed with the partition. One line
    per run as it starts and ends. When a run fails, the runs already going finish and no new
    one starts; when this process is interrupted, or ``healthy`` returns why the runs cannot
    go on (every worker is gone), every run going is stopped as :func:`materialize` stops
    one."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    _python_handles_ctrl_c()
    started: dict[str, dict] = {key: {} for _, key in jobs}

    def one(selection: str, key: str) -> RunRecord:
        print(f"  … [{key}]", flush=True)
        record = materialize(
            selection,
            warehouse,
            key,
            echo=False,
            lock_fd=lock_fd,
            started=started[key],
            env=env,
            prefix=f"[{key}] ",
        )
        print(f"  ✓ [{key}]  {record.seconds:.1f}s", flush=True)
        return record

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="run")
    futures = [pool.submit(one, selection, key) for selection, key in jobs]

    def stop_all() -> None:
        for future in futures:
            future.cancel()
        for run in started.values():
            if (proc := run.get("proc")) is not None and proc.poll() is None:
                _stop(proc, warehouse, run.get("run_id"))
        pool.shutdown(wait=True)

    try:
        while True:
            done, pending = wait(futures, timeout=2.0, return_when=FIRST_EXCEPTION)
            if not pending:
                break
            if any(f.exception() for f in done if not f.cancelled()):
                # A run failed: the ones going finish, no other starts.
                for future in pending:
                    future.cancel()
                wait(pending)
                break
            if healthy is not None and (problem := healthy()):
                stop_all()
                raise RunFailed(problem)
    except KeyboardInterrupt:
        stop_all()
        raise
    pool.shutdown(wait=True)
    failed = [f.exception() for f in futures if not f.cancelled() and f.exception()]
    if failed:
        raise failed[0]
    return [future.result() for future in futures]


def _follow(
    proc: subprocess.Popen,
    handle,
    warehouse: Warehouse,
    followed: dict,
    *,
    echo: bool,
    prefix: str | None = None,
) -> None:
    """Copy the run's output to its log file, record its run id (also in ``followed``), and
    show its stages (``prefix``: as lines that start with it, see :func:`materialize`)."""
    assert proc.stdout is not None
    display = StageDisplay(sys.stdout, prefix=prefix or "")
    show = echo or prefix is not None
    blocked: set[str] = set()
    try:
        for line in proc.stdout:
            handle.write(line)
            handle.flush()
            if "run_id" not in followed and (found := _RUN_ID.search(line)):
                followed["run_id"] = found["run"]
                _record_run(warehouse, found["run"], proc.pid)
            if not show:
                continue
            if (wait := _BLOCKED.search(line)) and wait["pool"] not in blocked:
                blocked.add(wait["pool"])
                waiting = f"{prefix or ''}waiting for a slot of pool {wait['pool']} ..."
                print(f"      {waiting}", flush=True)
            if match := _INFO.search(line.rstrip("\n")):
                display.message(match["step"], match["msg"])
    finally:
        display.close()
    proc.wait()


def _stop(proc: subprocess.Popen, warehouse: Warehouse, run_id: str | None) -> None:
    """Stop an interrupted run, recorded as cancelling and then cancelled (as the UI cancels
    a run): SIGINT, then its whole process group after the grace time."""
    if run_id is not None:
        _set_cancelled(warehouse, run_id, finished=False)
    _stop_group(proc)
    if run_id is not None:
        _set_cancelled(warehouse, run_id, finished=True)


def serve(cmd: list[str], *, cwd: Path) -> int:
    """Run a long-lived Dagster process (``dagster dev``) in its own process group until it
    ends or this process is interrupted; then stop the whole group as :func:`materialize`
    stops a run (``dagster dev`` ignores ``SIGTERM``, and its webserver, daemon and code
    servers outlive a lone signal to their parent)."""
    _python_handles_ctrl_c()
    with (
        _ctrl_c_held() as release_ctrl_c,
        subprocess.Popen(cmd, cwd=cwd, start_new_session=True, preexec_fn=die_with_parent) as proc,
    ):
        try:
            release_ctrl_c()
            return proc.wait()
        except KeyboardInterrupt:
            _stop_group(proc)
            raise


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGINT to the process group, then SIGKILL after :data:`STOP_GRACE_S` seconds, or at
    once when Ctrl-C is pressed again while it waits."""
    for sig, grace in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
        # The leader is gone; anything left in its group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def open_instance() -> None:
    """Open the active warehouse's Dagster instance once: creates or migrates its storage."""
    import dagster as dg

    with dg.DagsterInstance.get():
        pass


def claim_instance(warehouse: Warehouse) -> None:
    """Record this warehouse as the owner of the active instance's database, or raise
    :class:`InstanceOwnedElsewhere` when another warehouse owns it. SQLite instances live in
    the warehouse's own folder and need no claim."""
    from warehouse.instance import OWNER_KEY, POSTGRES_URL_ENV, InstanceOwnedElsewhere

    if not os.environ.get(POSTGRES_URL_ENV):
        return
    import dagster as dg

    root = str(warehouse.root)
    with dg.DagsterInstance.get() as instance:
        owner = instance.run_storage.get_cursor_values({OWNER_KEY}).get(OWNER_KEY)
        if owner is None:
            instance.run_storage.set_cursor_values({OWNER_KEY: root})
        elif owner != root:
            raise InstanceOwnedElsewhere(
                f"the Postgres database of {POSTGRES_URL_ENV} holds the Dagster instance of "
                f"the warehouse {owner}, not of {root}: give each warehouse its own database "
                f"(or point SYNTHDATA_HOME at {owner})"
            )


def _runs_file(warehouse: Warehouse) -> Path:
    return warehouse.dagster_home / RUNS_FILE


def _record_run(warehouse: Warehouse, run_id: str, pid: int) -> None:
    with open(_runs_file(warehouse), "a") as f:
        f.write(json.dumps({"run_id": run_id, "pid": pid, "started": time.time()}) + "\n")


def launched_runs(warehouse: Warehouse) -> list[str]:
    """Ids of every run ``synthdata`` launched into this warehouse's instance."""
    path = _runs_file(warehouse)
    if not path.exists():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["run_id"])
        except (ValueError, KeyError):
            continue  # a line cut short by a kill
    return ids


def _unfinished(instance, run_ids: list[str]):
    import dagster as dg

    if not run_ids:
        return []
    statuses = [
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    return instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids, statuses=statuses))


def recover_dead_runs(warehouse: Warehouse) -> list[str]:
    """Mark the runs ``synthdata`` launched that never finished as failed, and free the
    concurrency slots they hold. Call it only while holding the warehouse lock (see the
    module docstring). Returns their ids."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        dead = _unfinished(instance, launched_runs(warehouse))
        for run in dead:
            instance.report_run_failed(
                run, message="its process is gone (killed, or the machine restarted)"
            )
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        return [run.run_id for run in dead]


def _set_cancelled(warehouse: Warehouse, run_id: str, *, finished: bool) -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status == dg.DagsterRunStatus.SUCCESS:
            return
        if not finished:
            instance.report_run_canceling(run, message="the launcher was interrupted")
            return
        # The run reports its own interruption as a failure; the user cancelled it.
        instance.report_run_canceled(run, message="the launcher was interrupted")
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def recorded_stages(stages: tuple[str, ...], partition: str | None = None) -> dict:
    """``stage -> study.Materialized`` of the latest materialization of each of ``stages``
    (of ``partition``, or unpartitioned) in the active warehouse's instance; stages never
    materialized are left out, and so are stages whose step failed after writing (a blocking
    asset check that failed on the table: it is recomputed, not trusted)."""
    import dagster as dg

    from synthdata_assets.study import FINGERPRINT_KEY, Materialized

    found = {}
    failed_steps: dict[str, set[str]] = {}
    with dg.DagsterInstance.get() as instance:
        for stage in stages:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(stage),
                    asset_partitions=[partition] if partition else None,
                ),
                limit=1,
            ).records
            if not records:
                continue
            run_id = records[0].run_id
            if run_id not in failed_steps:
                failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
                failed_steps[run_id] = {e.step_key for e in failures if e.step_key}
            if stage in failed_steps[run_id]:
                continue
            event = records[0].asset_materialization
            value = event.metadata.get(FINGERPRINT_KEY) if event else None
            fingerprint = getattr(value, "value", None)
            found[stage] = Materialized(fingerprint, records[0].storage_id)
    return found
