"""The preference-trained models: per-step DPO and plain DPO, both from pi_sft, on the same
negatives and the same number of pairs and updates, and per-step DPO's control without its
negatives; each reports its KL to pi_sft on held-out test problems."""

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

    def train(
        context, method, sft_model, problems, pairs, twins, weights=None, settings=training
    ) -> dg.Output:
        train_dpo = functools.partial(
            preference.train_preference_model,
            settings,
            method,
            sft_model["path"][0],
            pairs,
            max_seq_len=config.model.max_seq_len,
            twins=twins,
            weights=weights,
            held_out=preference.held_out_texts(problems),
        )
        output = trained(context, warehouse, method, train_dpo, config.execution)
        # How far the model moved from pi_sft, beside its training figures.
        moved = preference.movement_metadata(output.value.row(0, named=True))
        return dg.Output(output.value, metadata={**output.metadata, **moved})

    def of_kind(pairs: pl.DataFrame, kind: str) -> pl.DataFrame:
        return pairs.filter(pl.col("kind") == kind)

    def per_step_inputs(preference_pairs: pl.DataFrame, step_advantages: pl.DataFrame):
        """Per-step DPO's pairs, their twins and their weights (None where not weighted)."""
        kind = credit.per_step_pair_kind
        pairs = of_kind(preference_pairs, kind)
        # outcome pairs are per_step pairs' twins; other kinds have none
        twins = of_kind(preference_pairs, "outcome") if kind == "per_step" else None
        weights = None
        if credit.advantage_weighted and pairs.height:
            weights = preference.pair_weights(pairs, step_advantages)
        return pairs, twins, weights

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def per_step_dpo_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        problems: pl.DataFrame,
        preference_pairs: pl.DataFrame,
        step_advantages: pl.DataFrame,
    ):
        """Per-step DPO from pi_sft: chosen a correct solution, rejected a negative cut after
        its first pit (or the configured pair kind)."""
        pairs, twins, weights = per_step_inputs(preference_pairs, step_advantages)
        return train(context, "per_step_dpo", sft_model, problems, pairs, twins, weights)

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def nll_control_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        problems: pl.DataFrame,
        preference_pairs: pl.DataFrame,
        step_advantages: pl.DataFrame,
    ):
        """Per-step DPO's control without negatives: its pairs, weights and schedule from
        pi_sft, each rejected side set to its chosen side, so only the chosen side's NLL
        trains. Per-step DPO minus this model is what the negatives add."""
        pairs, twins, weights = per_step_inputs(preference_pairs, step_advantages)
        pairs = preference.without_negatives(pairs)
        settings = preference.control_training(training)
        return train(context, "nll_control", sft_model, problems, pairs, twins, weights, settings)

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def dpo_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        problems: pl.DataFrame,
        preference_pairs: pl.DataFrame,
    ):
        """Plain DPO from pi_sft: whole correct vs. whole incorrect responses, on per-step
        DPO's negatives."""
        outcome, twins = (of_kind(preference_pairs, k) for k in ("outcome", "per_step"))
        return train(context, "dpo", sft_model, problems, outcome, twins)

    return [per_step_dpo_model, nll_control_model, dpo_model]
