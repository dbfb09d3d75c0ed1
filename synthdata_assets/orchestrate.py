"""Launch materializations through the Dagster instance of the warehouse.

Every run goes through ``dagster asset materialize`` against the code location in
``workspace.yaml``, so the runs, their logs and the materialized partitions show in
``dagster dev -w workspace.yaml`` afterwards, exactly as if they had been launched there.
Dagster's own event log is long; it goes to a file per run under ``reports/logs``. The
terminal gets the stages' own ``INFO`` messages: their progress as one bar per stage, their
other lines as they are (:class:`synthdata_assets.terminal.StageDisplay`), one line per
finished run, and the log's tail when a run fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from synthdata_assets.terminal import StageDisplay
from warehouse import Warehouse

CODE_MODULE = "synthdata_assets.definitions"
# "<time> - dagster - INFO - <job> - <run id> - <step> - <message>": a stage's own log line.
_INFO = re.compile(r" - dagster - INFO - [^ ]+ - [0-9a-f-]{36} - (?P<step>[\w.]+) - (?P<msg>.*)$")


class RunFailed(RuntimeError):
    """A Dagster run ended in failure; the message holds the tail of its log."""


@dataclass(frozen=True)
class RunRecord:
    selection: str
    partition: str | None
    seconds: float
    log: Path


def _log_name(selection: str, partition: str | None) -> str:
    part = f"__{partition.replace('|', '_')}" if partition else ""
    return f"{selection.replace(',', '+')}{part}.log"


def materialize(
    selection: str,
    warehouse: Warehouse,
    partition: str | None = None,
    *,
    echo: bool = True,
    label: str | None = None,
) -> RunRecord:
    """Materialize ``selection`` (asset names, comma-separated) in one Dagster run."""
    warehouse.activate()
    logs = warehouse.reports / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / _log_name(selection, partition)
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
    with (
        open(log, "w") as handle,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            text=True,
            errors="replace",
        ) as proc,
    ):
        assert proc.stdout is not None
        display = StageDisplay(sys.stdout)
        for line in proc.stdout:
            handle.write(line)
            handle.flush()
            match = _INFO.search(line.rstrip("\n"))
            if echo and match:
                display.message(match["step"], match["msg"])
        display.close()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        if echo:
            print(f"  ✗ {label} failed after {seconds:.1f}s (log: {log})", flush=True)
        raise RunFailed(f"run of {label} failed; last lines of {log}:\n{tail}")
    if echo:
        print(f"  ✓ {label}  {seconds:.1f}s", flush=True)
    return RunRecord(selection=selection, partition=partition, seconds=seconds, log=log)


def materialized_partitions(asset: str) -> set[str]:
    """Partition keys of ``asset`` materialized in the active warehouse's Dagster instance."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return set(instance.get_materialized_partitions(dg.AssetKey(asset)))
