"""Where things live under the warehouse root.

::

    $SYNTHDATA_HOME/                       (default: ./.synthdata)
      tables/<table>.parquet               unpartitioned assets (problems, scaling_curves)
      tables/<table>/data_size=N/seed=S.parquet
      checkpoints/<method>/data_size=N/seed=S/   Hugging Face model folders
      reports/                             plots and markdown reports
      dagster/                             the Dagster instance (DAGSTER_HOME)
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
