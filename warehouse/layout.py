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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "SYNTHDATA_HOME"
DEFAULT_HOME = ".synthdata"

# Written to the instance folder once: the UI and the CLI read the same instance; a
# machine with no internet should not try to send telemetry; and the steps that run a
# model share one "accelerator" pool so that only one at a time holds the GPU (or cores).
_DAGSTER_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


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
        """Create the folders and the Dagster instance settings if they are missing."""
        for folder in (self.tables, self.checkpoints, self.reports, self.dagster_home):
            folder.mkdir(parents=True, exist_ok=True)
        settings = self.dagster_home / "dagster.yaml"
        if not settings.exists():
            settings.write_text(_DAGSTER_YAML)
        return self

    def activate(self) -> Warehouse:
        """Point this process (and the Dagster processes it starts) at this warehouse."""
        self.ensure()
        os.environ[HOME_ENV] = str(self.root)
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        return self
