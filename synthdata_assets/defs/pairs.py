"""Preference pairs of every kind, for the preference-trained models to pick from."""

import dagster as dg
import polars as pl

from synthdata_assets import pairs
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.rollouts import GROUP
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.steps import resolve_rule


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=GROUP, kinds={"polars"}, partitions_def=study_partitions(config))
    def preference_pairs(
        context: dg.AssetExecutionContext,
        problems: pl.DataFrame,
        teacher_solutions: pl.DataFrame,
        policy_samples: pl.DataFrame,
        step_advantages: pl.DataFrame,
        step_rollouts: pl.DataFrame,
    ):
        """Pairs of every kind: per_step, outcome, edit_distance, shared_prefix."""
        _, seed = current_partition(context)
        table = pairs.partition_pairs(
            problems,
            policy_samples,
            step_advantages,
            step_rollouts,
            teacher_solutions,
            seed=seed,
            step_rule=resolve_rule(config.credit.step_rule, config.task.name),
        )
        metadata = {f"pairs_{k}": n for k, n in table.group_by("kind").len().iter_rows()}
        metadata["pairs"] = table.height
        return dg.Output(table, metadata=metadata)

    return [preference_pairs]
