"""Dagster IO manager: polars DataFrames as one Parquet file per asset partition.

Built on Dagster's ``UPathIOManager`` (the ``dagster-polars`` package does not load with
polars 2.x), so paths may be local or any fsspec URL. On top of the base class it:

- writes atomically (see :mod:`warehouse.parquet`);
- lays multi-dimensional partitions out Hive-style, ``data_size=500/seed=0.parquet``,
  so a glob over a table's folder reads every partition and paths say what they hold;
- stamps lineage on every row: ``run_id`` always, ``data_size`` and ``seed`` on
  partitioned assets, so any row can be traced to the run that wrote it;
- reports the row count and column schema to the Dagster UI, and the settings fingerprint
  of the asset (``fingerprints``, by asset name) under ``fingerprint_key``, so that a later
  run can tell whether the stored partition was made under its settings.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from upath import UPath

from warehouse.layout import Warehouse, WarehouseMissing, hive_path
from warehouse.lock import (
    LOCK_FD_ENV,
    WORKER_ENV,
    WarehouseBusy,
    WarehouseLock,
    claim_partition,
)
from warehouse.parquet import read_parquet, write_parquet_atomic

PARTITION_COLUMNS = ("data_size", "seed")


def partition_values(context: dg.OutputContext | dg.InputContext) -> dict[str, int]:
    """``{'data_size': 500, 'seed': 0}`` for a data_size x seed partition, else ``{}``."""
    if not context.has_asset_partitions:
        return {}
    key = context.asset_partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        return {}
    return {dim: int(value) for dim, value in key.keys_by_dimension.items()}


def stamp_lineage(frame: pl.DataFrame, run_id: str, partition: dict[str, int]) -> pl.DataFrame:
    """Add (or overwrite) ``run_id`` and the partition columns, placed last."""
    stamps = {"run_id": pl.lit(run_id, dtype=pl.String)}
    stamps.update({name: pl.lit(value, dtype=pl.Int64) for name, value in partition.items()})
    return frame.drop([c for c in stamps if c in frame.columns]).with_columns(**stamps)


class PolarsParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def __init__(
        self, base_path: UPath, fingerprints: dict[str, str], fingerprint_key: str
    ) -> None:
        super().__init__(base_path=base_path)
        self.fingerprints, self.fingerprint_key = fingerprints, fingerprint_key

    def get_path_for_partition(
        self, context: dg.InputContext | dg.OutputContext, path: UPath, partition: str
    ) -> UPath:
        partitions_def = context.asset_partitions_def
        if isinstance(partitions_def, dg.MultiPartitionsDefinition):
            # The base class joins dimension values in sorted dimension-name order.
            names = sorted(partitions_def.partition_dimension_names)
            values = partition.split("/")
            partition = hive_path(dict(zip(names, values, strict=True)))
        return self.make_safe_partition_path(path, partition)

    def dump_to_path(self, context: dg.OutputContext, obj: pl.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{self.__class__.__name__} stores polars DataFrames; asset "
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}"
            )
        frame = stamp_lineage(obj, context.run_id, partition_values(context))
        write_parquet_atomic(frame, path)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.DataFrame:
        return read_parquet(path)

    def get_metadata(self, context: dg.OutputContext, obj: pl.DataFrame) -> dict[str, Any]:
        # The schema as stored, lineage columns included (stamping shares column buffers).
        stored = stamp_lineage(obj, context.run_id, partition_values(context))
        columns = [
            dg.TableColumn(name=name, type=str(dtype)) for name, dtype in stored.schema.items()
        ]
        metadata = {
            "dagster/row_count": dg.MetadataValue.int(obj.height),
            "dagster/column_schema": dg.TableSchema(columns=columns),
        }
        fingerprint = self.fingerprints.get(context.asset_key.to_user_string())
        if fingerprint is not None:
            metadata[self.fingerprint_key] = dg.MetadataValue.text(fingerprint)
        return metadata


def _finished(instance: dg.DagsterInstance):
    def is_finished(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is None or run.is_finished

    return is_finished


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Binds :class:`PolarsParquetIOManager` to a warehouse's ``tables`` folder and the
    study's settings fingerprints. With ``lock_root``, the warehouse's root, a run's steps
    execute only where the warehouse is (:meth:`Warehouse.require`), for the run that claims
    the partition they write (:func:`warehouse.lock.claim_partition`); and unless the
    ``synthdata run`` that launched the run holds the warehouse's lock for it, or the step
    runs on a ``synthdata worker``, the warehouse's lock too: so runs launched from the UI or
    by the daemon obey the one-writer rule, and fail at once, naming the holder, while
    another run writes the warehouse."""

    base_path: str
    fingerprints: dict[str, str] = {}
    fingerprint_key: str = "settings"
    lock_root: str = ""

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext):
        if not self.lock_root:
            with super().yield_for_execution(context) as manager:
                yield manager
            return
        root = Path(self.lock_root)
        run = context.run
        lock = None
        try:
            Warehouse(root).require()
            if not (os.environ.get(LOCK_FD_ENV) or os.environ.get(WORKER_ENV)):
                lock = WarehouseLock(root).acquire()
            if run is not None and context.instance is not None:
                claim_partition(
                    root, run.tags.get("dagster/partition"), run.run_id, _finished(context.instance)
                )
        except (WarehouseBusy, WarehouseMissing) as exc:
            if lock is not None:
                lock.release()
            raise dg.Failure(description=str(exc)) from None
        try:
            with super().yield_for_execution(context) as manager:
                yield manager
        finally:
            if lock is not None:
                lock.release()

    def create_io_manager(self, context: dg.InitResourceContext) -> PolarsParquetIOManager:
        return PolarsParquetIOManager(
            UPath(self.base_path), dict(self.fingerprints), self.fingerprint_key
        )
