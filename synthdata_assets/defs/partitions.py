"""The study's partitions: data_size x seed, both read from the configuration.

Adding a data size or a seed is a configuration change; the new keys appear as
unmaterialized partitions and a backfill computes only those.
"""

from __future__ import annotations

import dagster as dg

from synthdata_assets.config import ExperimentConfig

DATA_SIZE = "data_size"
SEED = "seed"


def study_partitions(config: ExperimentConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            DATA_SIZE: dg.StaticPartitionsDefinition([str(s) for s in config.data_sizes]),
            SEED: dg.StaticPartitionsDefinition([str(s) for s in config.seeds]),
        }
    )


def partition_key(data_size: int, seed: int) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DATA_SIZE: str(data_size), SEED: str(seed)})


def current_partition(context: dg.AssetExecutionContext) -> tuple[int, int]:
    """``(data_size, seed)`` of the partition being materialized."""
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), "expected a data_size x seed partition"
    dims = key.keys_by_dimension
    return int(dims[DATA_SIZE]), int(dims[SEED])
