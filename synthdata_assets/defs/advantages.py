"""Q-values, advantages and first pits of every step: a pure function of the rollouts."""

import dagster as dg
import polars as pl

from synthdata_assets import advantages
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.rollouts import GROUP
from synthdata_assets.defs.study import study_partitions
from synthdata_assets.steps import resolve_rule


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=GROUP, kinds={"polars"}, partitions_def=study_partitions(config))
    def step_advantages(
        policy_samples: pl.DataFrame, step_rollouts: pl.DataFrame, problems: pl.DataFrame
    ):
        """Q-value, advantage and first pit of every step of every rolled-out sample."""
        table = advantages.from_rollouts(
            config.credit,
            resolve_rule(config.credit.step_rule, config.task.name),
            policy_samples,
            step_rollouts,
            problems,
        )
        metadata = advantages.summary(table)
        metadata.update(advantages.truth_metadata(table))
        metadata.update(
            rollout_policy=config.credit.rollout_policy,
            pit_rule=config.credit.pit_rule,
            # Estimation reads step_rollouts; it never generates.
            completions_generated=0,
            rollouts_used=step_rollouts.height,
        )
        return dg.Output(table, metadata=metadata)

    return [step_advantages]
