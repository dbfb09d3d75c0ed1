"""Preference pairs of every kind, for the preference-trained models to pick from, with a
check that every per-step pair's rejected side is its negative cut at the pit."""

import dagster as dg
import polars as pl

from synthdata_assets import pairs
from synthdata_assets.checks import per_step_rejected_is_prefix
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.problems import check_result
from synthdata_assets.defs.rollouts import GROUP
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.steps import resolve_rule


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    # Blocking: both preference-trained models train on these pairs.
    @dg.asset(
        group_name=GROUP,
        kinds={"polars"},
        partitions_def=study_partitions(config),
        check_specs=[
            dg.AssetCheckSpec(
                "per_step_rejected_is_prefix",
                asset="preference_pairs",
                blocking=True,
                description="A per_step pair's rejected side is a non-empty prefix of its "
                "negative sample's solution, without EOS.",
            ),
        ],
    )
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
        yield dg.Output(table, metadata=metadata)
        yield check_result(
            "per_step_rejected_is_prefix", per_step_rejected_is_prefix(table, policy_samples)
        )

    return [preference_pairs]
