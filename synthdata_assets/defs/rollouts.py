"""Step rollouts: the one credit-assignment stage that generates.

Re-materializing ``step_rollouts`` generates only the completions its previous file for the
partition lacks (see :mod:`synthdata_assets.rollouts`), so re-estimating Q-values with
another rollout policy, K or pit rule costs no generation at all.
"""

import dagster as dg
import polars as pl

from synthdata_assets import rollouts
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.models import POOL
from synthdata_assets.defs.resources import GeneratorResource
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.steps import resolve_rule
from synthdata_assets.terminal import progress_logger
from training.memory import return_freed_memory
from warehouse import Warehouse

GROUP = "credit"


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name=GROUP,
        kinds={"pytorch", "polars"},
        pool=POOL,
        partitions_def=study_partitions(config),
    )
    def step_rollouts(
        context: dg.AssetExecutionContext,
        generator: GeneratorResource,
        sft_model: pl.DataFrame,
        policy_samples: pl.DataFrame,
        problems: pl.DataFrame,
    ):
        """M graded completions of pi_sft from every step prefix of the rolled-out samples."""
        data_size, seed = current_partition(context)
        previous = warehouse.partition_file("step_rollouts", data_size, seed)
        chunk = config.execution.rollout_chunk_prompts
        journal = None
        if chunk is not None:
            journal = rollouts.Journal(
                warehouse.journal_folder("step_rollouts", data_size, seed),
                chunk,
                previous_written=previous.stat().st_mtime if previous.exists() else None,
            )
        checkpoint = sft_model["path"][0]
        with generator.for_rollouts(checkpoint, context.log.info) as engine:
            table, stats = rollouts.generate_rollouts(
                engine,
                config.credit,
                rollouts.rollout_params(config.credit, config.sampling, seed),
                step_rule=resolve_rule(config.credit.step_rule, config.task.name),
                answer_format=config.answer_format,
                # The run that wrote pi_sft: retraining it invalidates every rollout.
                checkpoint_id=f"{checkpoint}@{sft_model['run_id'][0]}",
                samples=policy_samples,
                problems=problems,
                previous=pl.read_parquet(previous) if previous.exists() else None,
                log=context.log.info,
                progress=progress_logger(context.log.info, "prompts"),
                journal=journal,
            )
        return_freed_memory()  # the engine's caches, before DPO trains (training/memory.py)
        return dg.Output(
            table,
            metadata={
                "samples_rolled_out": stats["samples"],
                "completions_generated": stats["generated"],
                "completions_reused": stats["reused"],
                "distinct_prompts_generated": stats["prompts"],
                "prefixes_skipped_after_pits": stats["skipped_prefixes"],
                "new_tokens": stats["new_tokens"],
                "tokens_per_second": round(stats["tokens_per_second"], 1),
                "rollout_success_rate": float(table["is_correct"].mean()) if table.height else None,
            },
        )

    return [step_rollouts]
