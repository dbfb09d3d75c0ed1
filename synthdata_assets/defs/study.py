"""The study's partitions (data_size x seed, read from the configuration), its jobs and the
backfill schedule.

``study_job`` materializes every partitioned asset of one ``data_size x seed`` partition in
one run; a backfill over its partitions is the whole sweep. The schedule
``study_backfill_schedule`` (off by default) launches one run per partition that has never
been materialized, so turning it on after adding a data size computes only the new
partitions.
"""

from __future__ import annotations

import dagster as dg

from synthdata_assets.config import ExperimentConfig
from synthdata_assets.study import (
    DATA_SIZE,
    PARTITION_STAGES,
    REFERENCE_STAGES,
    REPORT_STAGES,
    SEED,
    SETUP_STAGES,
)


def study_partitions(config: ExperimentConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            DATA_SIZE: dg.StaticPartitionsDefinition([str(s) for s in config.data_sizes]),
            SEED: dg.StaticPartitionsDefinition([str(s) for s in config.seeds]),
        }
    )


def reference_partitions(config: ExperimentConfig) -> dg.MultiPartitionsDefinition:
    """The SFT-only sizes past the study's (``sft_reference_sizes``) x seed; no key when
    there are none."""
    return dg.MultiPartitionsDefinition(
        {
            DATA_SIZE: dg.StaticPartitionsDefinition([str(s) for s in config.sft_reference_sizes]),
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


def build(config: ExperimentConfig) -> dict:
    partitions = study_partitions(config)
    study_job = dg.define_asset_job(
        "study_job",
        selection=dg.AssetSelection.assets(*PARTITION_STAGES),
        description="Every stage of one data_size x seed partition; backfill it for the sweep.",
    )
    reference_job = dg.define_asset_job(
        "sft_reference_job",
        selection=dg.AssetSelection.assets(*REFERENCE_STAGES),
        description="SFT alone at one size of sft_reference_sizes x seed; backfill it for "
        "SFT's curve past the study's largest size.",
    )
    curves_job = dg.define_asset_job(
        "curves_job",
        selection=dg.AssetSelection.assets(*SETUP_STAGES, *REPORT_STAGES),
        description="The unpartitioned assets: problem pool, base model, scaling curves.",
    )

    @dg.schedule(
        job=study_job,
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def study_backfill_schedule(context: dg.ScheduleEvaluationContext):
        """Hourly while on: one run per data_size x seed partition not yet materialized."""
        done = context.instance.get_materialized_partitions(dg.AssetKey("evaluations"))
        for key in partitions.get_partition_keys():
            if key not in done:
                yield dg.RunRequest(run_key=f"study-{key}", partition_key=key)

    return {
        "jobs": [study_job, reference_job, curves_job],
        "schedules": [study_backfill_schedule],
    }
