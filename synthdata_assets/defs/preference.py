"""The two preference-trained models: per-step DPO and plain DPO, both from pi_sft."""

import functools

import dagster as dg
import polars as pl

from synthdata_assets import preference
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.models import GROUP, POOL, trained
from synthdata_assets.defs.study import study_partitions
from warehouse import Warehouse


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    partitions = study_partitions(config)
    credit, training = config.credit, config.training

    def train(context, method: str, sft_model, pairs: pl.DataFrame, weights=None) -> dg.Output:
        train_dpo = functools.partial(
            preference.train_preference_model,
            training,
            method,
            sft_model["path"][0],
            pairs,
            max_seq_len=config.model.max_seq_len,
            weights=weights,
        )
        return trained(context, warehouse, method, train_dpo)

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def per_step_dpo_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        preference_pairs: pl.DataFrame,
        step_advantages: pl.DataFrame,
    ):
        """Per-step DPO from pi_sft: chosen a correct solution, rejected a negative cut after
        its first pit (or the configured pair kind)."""
        chosen = preference_pairs.filter(pl.col("kind") == credit.per_step_pair_kind)
        weights = None
        if credit.advantage_weighted and chosen.height:
            weights = preference.pair_weights(chosen, step_advantages)
        return train(context, "per_step_dpo", sft_model, chosen, weights)

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def dpo_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        preference_pairs: pl.DataFrame,
    ):
        """Plain DPO from pi_sft on whole correct vs. whole incorrect responses."""
        outcome = preference_pairs.filter(pl.col("kind") == "outcome")
        return train(context, "dpo", sft_model, outcome)

    return [per_step_dpo_model, dpo_model]
