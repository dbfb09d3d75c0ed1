"""Celery workers: where the steps of every run go when ``execution.broker`` is set.

Dagster's Celery executor (``dagster-celery``) sends each step of a run to the broker's
``dagster`` queue; a ``synthdata worker`` takes one step at a time from it, runs it against
the same code location and instance, and hands the step's events back. Runs of different
partitions therefore go on side by side, one step per worker, however many workers listen
(on this machine or others), and a backfill launched from the UI uses the same workers.

Every worker must see the same things as the run that sent the step: the warehouse at the
same path (a step that does not find it fails, see ``Warehouse.require``), the same
``SYNTHDATA_CONFIG``/``SYNTHDATA_PRESET`` (each stage records the fingerprint of the settings
it ran under, so ``synthdata run`` reports a stage a worker ran under other settings, and
recomputes it next time) and the same instance (``DAGSTER_POSTGRES_URL`` across
machines).

The app is dagster-celery's own (its task names and its ``dagster`` queue) with two settings
of ours: a worker reserves one step at a time (Celery's default of four would let one worker
hoard the steps another idle worker could run), and results go back through the broker.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from synthdata_assets.config import BROKER_ENV

QUEUE = "dagster"


class BrokerUnreachable(RuntimeError):
    """The broker does not answer; the message says how to start one."""


def celery_app(broker: str):
    """dagster-celery's app on ``broker``, with its step task registered."""
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    app = make_app({"broker": broker, "backend": broker})
    app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
    create_task(app)
    return app


def executor_config(broker: str) -> dict:
    """The Celery executor's settings for runs that send their steps to ``broker``."""
    return {"broker": broker, "backend": broker}


def check_broker(broker: str, timeout_s: float = 3.0) -> None:
    """Raise :class:`BrokerUnreachable` unless a Redis broker answers a ping (other brokers
    are left to Celery)."""
    if not broker.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        redis.Redis.from_url(broker, socket_connect_timeout=timeout_s).ping()
    except redis.RedisError as exc:
        raise BrokerUnreachable(
            f"the Celery broker {broker} does not answer ({exc}): start Redis there "
            "(`redis-server`, Debian package redis-server) or set execution.broker to one that runs"
        ) from None


def threads_per_process(count: int, threads: int | None = None) -> int:
    """Torch threads for each of ``count`` processes sharing this machine: ``threads`` when
    given, else this machine's cores over ``count`` (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return threads or max(1, cores // count)


def thread_env(threads: int) -> dict[str, str]:
    """The environment that gives a process ``threads`` torch threads (read as torch starts)."""
    return {var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def run_worker(
    broker: str, *, name: str, threads: int, process_per_step: bool, logfile: Path | None
) -> int:
    """Serve steps from ``broker`` until stopped (Ctrl-C or ``SIGTERM``: Celery finishes
    the step it is running first; a second one stops at once). ``threads``: torch's threads
    for the steps, set before torch is imported. ``process_per_step``: each step in a fresh
    child process, so the memory it held goes back to the system before the next step (what
    ``execution.process_per_stage`` asks of a run); otherwise one process serves every step
    and keeps torch and the code imported between them."""
    from warehouse.lock import WORKER_ENV

    os.environ.update(thread_env(threads))
    os.environ[WORKER_ENV] = name
    os.environ[BROKER_ENV] = broker
    check_broker(broker)
    app = celery_app(broker)
    argv = ["worker", "--queues", QUEUE, "--hostname", name, "--loglevel", "INFO"]
    if process_per_step:
        argv += ["--pool", "prefork", "--concurrency", "1", "--max-tasks-per-child", "1"]
    else:
        argv += ["--pool", "solo"]
    if logfile is not None:
        argv += ["--logfile", str(logfile)]
    app.worker_main(argv)
    return 0


class LocalWorkers:
    """The workers ``synthdata run --workers N`` starts on this machine for the length of
    its run: each its own process group, inheriting the warehouse lock (so a killed launcher
    leaves the warehouse locked until its workers are gone too), with its log under
    ``reports/logs/workers``."""

    def __init__(self, procs: list, logs: list[Path], threads: int) -> None:
        self.procs = procs
        self.logs = logs
        self.threads = threads

    @classmethod
    def start(
        cls,
        count: int,
        *,
        broker: str,
        threads: int | None,
        process_per_step: bool,
        logs: Path,
        lock_fd: int | None,
    ) -> LocalWorkers:
        import subprocess

        from synthdata_assets.orchestrate import die_with_parent
        from warehouse.lock import LOCK_FD_ENV

        threads = threads_per_process(count, threads)
        logs.mkdir(parents=True, exist_ok=True)
        procs, files = [], []
        # A Ctrl-C (or any error) between two starts would lose the workers already started
        # with the object that stops them: stop those before the exception goes on.
        try:
            for i in range(1, count + 1):
                name = f"worker{i}@{os.uname().nodename}"
                log = logs / f"worker{i}.log"
                cmd = [sys.executable, "-m", "synthdata_assets.cli", "worker", "--name", name]
                cmd += ["--threads", str(threads), "--broker", broker, "--logfile", str(log)]
                if process_per_step:
                    cmd.append("--process-per-step")
                env = {} if lock_fd is None else {LOCK_FD_ENV: str(lock_fd)}
                err = open(logs / f"worker{i}.err", "w")  # noqa: SIM115 (the child owns it)
                procs.append(
                    subprocess.Popen(
                        cmd,
                        env=os.environ | env,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        start_new_session=True,
                        pass_fds=() if lock_fd is None else (lock_fd,),
                        preexec_fn=die_with_parent,
                    )
                )
                files.append(log)
        except BaseException:
            cls(procs, files, threads).stop()
            raise
        return cls(procs, files, threads)

    def describe(self) -> str:
        return (
            f"  {len(self.procs)} Celery worker(s) on this machine, {self.threads} torch "
            f"thread(s) each; logs: {self.logs[0].parent}"
        )

    def problem(self) -> str | None:
        """Why the runs cannot go on (every worker has exited), else None."""
        if all(proc.poll() is not None for proc in self.procs):
            err = self.logs[0].with_suffix(".err")
            tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
            return f"every Celery worker has exited; the first one's stderr ({err}):\n{tail}"
        return None

    def stop(self) -> None:
        """SIGTERM to each worker's group (Celery's warm shutdown; the runs are over or stopped
        by now, so no step is going), then SIGKILL to whatever is left after 10 s."""
        import signal
        import subprocess

        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
