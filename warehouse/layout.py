"""Where things live under the warehouse root.

::

    $SYNTHDATA_HOME/                       (default: ./.synthdata)
      tables/<table>.parquet               unpartitioned assets (problems, scaling_curves)
      tables/<table>/data_size=N/seed=S.parquet
      checkpoints/<method>/data_size=N/seed=S/   Hugging Face model folders
      reports/                             plots and markdown reports
      dagster/                             the Dagster instance (DAGSTER_HOME)
      cache/teacher/                       the endpoint teacher's completions
      cache/step_rollouts/data_size=N/seed=S/   the rollout journal of a partition
      .synthdata-warehouse                 the marker that says this folder is a warehouse
      .lock, .locks/                       the launcher's lock and the partitions' locks
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from warehouse.instance import use_psycopg2_driver, write_instance_settings

HOME_ENV = "SYNTHDATA_HOME"
DEFAULT_HOME = ".synthdata"

MARKER = ".synthdata-warehouse"


class WarehouseMissing(RuntimeError):
    """A process that is to write a warehouse does not find it (see :meth:`Warehouse.require`)."""


def hive_path(values: dict[str, object], suffix: str = "") -> str:
    """``data_size=500/seed=0`` (plus ``suffix``): partition values as Hive-style folders, in
    the order given, so a glob over a table's folder reads every partition."""
    return "/".join(f"{name}={value}" for name, value in values.items()) + suffix


@dataclass(frozen=True)
class Warehouse:
    """The folders of one warehouse root."""

    root: Path

    @classmethod
    def from_env(cls) -> Warehouse:
        """The root named by ``SYNTHDATA_HOME``, or ``.synthdata`` in the working directory."""
        return cls(Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve())

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def cache(self) -> Path:
        """Caches that outlive runs (the endpoint teacher's completions)."""
        return self.root / "cache"

    def journal_folder(self, table: str, data_size: int, seed: int) -> Path:
        """Where a stage of one partition writes what it has done so far (step rollouts)."""
        return self.cache / table / hive_path({"data_size": data_size, "seed": seed})

    def table_file(self, table: str) -> Path:
        """The Parquet file of an unpartitioned table."""
        return self.tables / f"{table}.parquet"

    def partition_file(self, table: str, data_size: int, seed: int) -> Path:
        """The Parquet file of one ``data_size x seed`` partition of a table."""
        return self.tables / table / hive_path({"data_size": data_size, "seed": seed}, ".parquet")

    def checkpoint_folder(
        self, method: str, data_size: int | None = None, seed: int | None = None
    ) -> Path:
        """The model folder of a method (of one partition, for the partitioned methods)."""
        if data_size is None or seed is None:
            return self.checkpoints / method
        return self.checkpoints / method / hive_path({"data_size": data_size, "seed": seed})

    def ensure(self) -> Warehouse:
        """Create the folders, the marker and the Dagster instance settings if they are
        missing. Only the commands that own a warehouse call this (``synthdata run``, ``ui``,
        ``worker``, tests); importing the code location and running a step never do."""
        for folder in (self.tables, self.checkpoints, self.reports, self.dagster_home):
            folder.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if not marker.exists():
            marker.write_text("This folder is a synthdata warehouse.\n")
        if not (self.dagster_home / "dagster.yaml").exists():
            write_instance_settings(self.dagster_home)
        return self

    def require(self) -> Warehouse:
        """This warehouse as it is, or :class:`WarehouseMissing`: a step run on a worker
        whose filesystem does not hold the warehouse must fail, not write a new one on a
        local disk that nobody else reads."""
        if not (self.root / MARKER).is_file():
            raise WarehouseMissing(
                f"no synthdata warehouse at {self.root} on {os.uname().nodename}: every "
                "process that runs a step (each Celery worker, each Slurm job, each pod) must "
                "see the warehouse at the same path, on a filesystem they all share (NFS, "
                "Lustre, a mounted volume); mount it there or set SYNTHDATA_HOME to where it is"
            )
        return self

    def activate(self) -> Warehouse:
        """Point this process (and the Dagster processes it starts) at this warehouse."""
        self.ensure()
        use_psycopg2_driver()
        os.environ[HOME_ENV] = str(self.root)
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        return self
