"""Q-values, advantages and first pits of every step: a pure function of the rollouts, with
checks that the Q-values are probabilities and the pits are one per negative."""

import dagster as dg
import polars as pl

from synthdata_assets import advantages, checks
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.problems import check_result
from synthdata_assets.defs.rollouts import GROUP
from synthdata_assets.defs.study import study_partitions
from synthdata_assets.steps import resolve_rule


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    pits = "exactly one first pit" if config.credit.pit_rule == "first_zero" else "at most one"

    # Blocking: pairs and both preference-trained models are built on these Q-values and pits.
    @dg.asset(
        group_name=GROUP,
        kinds={"polars"},
        partitions_def=study_partitions(config),
        check_specs=[
            dg.AssetCheckSpec(
                "q_values_in_unit_interval",
                asset="step_advantages",
                blocking=True,
                description="Every Q-value is in [0, 1]; null only after the pit under early_stop.",
            ),
            dg.AssetCheckSpec(
                "first_pit_per_negative",
                asset="step_advantages",
                blocking=True,
                description=f"Under pit_rule {config.credit.pit_rule}, every negative has "
                f"{pits}; positives have none.",
            ),
        ],
    )
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
        yield dg.Output(table, metadata=metadata)
        yield check_result(
            "q_values_in_unit_interval",
            checks.q_values_in_unit_interval(table, early_stop=config.credit.early_stop),
        )
        yield check_result(
            "first_pit_per_negative",
            checks.first_pit_per_negative(table, config.credit.pit_rule),
        )

    return [step_advantages]
