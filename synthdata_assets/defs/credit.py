"""Credit-assignment assets: step rollouts, step advantages, preference pairs, and the two
preference-trained models (per-step DPO and plain DPO).

``step_rollouts`` is the only one that generates; ``step_advantages`` and
``preference_pairs`` are pure functions of tables, so re-estimating Q-values with another
rollout policy, K or pit rule costs no generation at all, and re-materializing
``step_rollouts`` itself generates only the completions its previous file lacks (see
:mod:`synthdata_assets.rollouts`).
"""

import dagster as dg
import polars as pl

from synthdata_assets import learning, rollouts
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.models import POOL, checkpoint_metadata
from synthdata_assets.defs.partitions import current_partition, study_partitions
from warehouse import Warehouse

GROUP = "credit"


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    partitions = study_partitions(config)

    def folder(method: str, data_size: int, seed: int):
        return warehouse.checkpoints / method / f"data_size={data_size}" / f"seed={seed}"

    def previous_rollouts(data_size: int, seed: int) -> pl.DataFrame | None:
        path = (
            warehouse.tables / "step_rollouts" / f"data_size={data_size}" / f"seed={seed}.parquet"
        )
        return pl.read_parquet(path) if path.exists() else None

    @dg.asset(group_name=GROUP, kinds={"pytorch", "polars"}, pool=POOL, partitions_def=partitions)
    def step_rollouts(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        policy_samples: pl.DataFrame,
        problems: pl.DataFrame,
    ):
        """M graded completions of pi_sft from every step prefix of the rolled-out samples."""
        data_size, seed = current_partition(context)
        table, stats = rollouts.generate_rollouts(
            config,
            checkpoint_path=sft_model["path"][0],
            checkpoint_id=f"{sft_model['path'][0]}@{sft_model['run_id'][0]}",
            samples=policy_samples,
            problems=problems,
            previous=previous_rollouts(data_size, seed),
            seed=seed,
            log=context.log.info,
        )
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

    @dg.asset(group_name=GROUP, kinds={"polars"}, partitions_def=partitions)
    def step_advantages(policy_samples: pl.DataFrame, step_rollouts: pl.DataFrame):
        """Q-value, advantage and first pit of every step of every rolled-out sample."""
        table = rollouts.advantages(config, policy_samples, step_rollouts)
        steps = table.filter(pl.col("step_idx") >= 1)
        negatives = steps.filter(~pl.col("sample_is_correct"))
        pits = negatives.filter(pl.col("is_first_pit"))
        n_neg = negatives["sample_id"].n_unique()
        return dg.Output(
            table,
            metadata={
                "samples": table["sample_id"].n_unique(),
                "steps": steps.height,
                "negatives_with_pit": pits.height,
                "share_pit_at_step_1": pits.filter(pl.col("step_idx") == 1).height / n_neg
                if n_neg
                else None,
                "mean_pit_step": float(pits["step_idx"].mean()) if pits.height else None,
                "mean_problem_value": float(table.filter(pl.col("step_idx") == 0)["q_value"].mean())
                if table.height
                else None,
                "spurious_steps": int(steps["is_spurious"].sum()),
                "rollout_policy": config.credit.rollout_policy,
                "pit_rule": config.credit.pit_rule,
                # Estimation reads step_rollouts; it never generates.
                "completions_generated": 0,
                "rollouts_used": step_rollouts.height,
            },
        )

    @dg.asset(group_name=GROUP, kinds={"polars"}, partitions_def=partitions)
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
        table = rollouts.pairs(
            config,
            problems=problems,
            samples=policy_samples,
            adv=step_advantages,
            rollouts=step_rollouts,
            teacher=teacher_solutions,
            seed=seed,
        )
        counts = table.group_by("kind").len()
        metadata = {f"pairs_{k}": n for k, n in counts.iter_rows()}
        metadata["pairs"] = table.height
        return dg.Output(table, metadata=metadata)

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def per_step_dpo_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        preference_pairs: pl.DataFrame,
        step_advantages: pl.DataFrame,
    ):
        """Per-step DPO from pi_sft: chosen a correct solution, rejected a negative cut after
        its first pit (or the configured pair kind)."""
        data_size, seed = current_partition(context)
        learning.seeded(seed)
        chosen = preference_pairs.filter(pl.col("kind") == config.credit.per_step_pair_kind)
        weights = None
        if config.credit.advantage_weighted and chosen.height:
            weights = rollouts.pair_weights(config, chosen, step_advantages)
        row = rollouts.train_preference_model(
            config,
            "per_step_dpo",
            sft_model["path"][0],
            chosen,
            folder("per_step_dpo", data_size, seed),
            seed,
            context.log.info,
            weights=weights,
        )
        return dg.Output(row, metadata=checkpoint_metadata(row))

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def dpo_model(
        context: dg.AssetExecutionContext,
        sft_model: pl.DataFrame,
        preference_pairs: pl.DataFrame,
    ):
        """Plain DPO from pi_sft on whole correct vs. whole incorrect responses."""
        data_size, seed = current_partition(context)
        learning.seeded(seed)
        row = rollouts.train_preference_model(
            config,
            "dpo",
            sft_model["path"][0],
            preference_pairs.filter(pl.col("kind") == "outcome"),
            folder("dpo", data_size, seed),
            seed,
            context.log.info,
        )
        return dg.Output(row, metadata=checkpoint_metadata(row))

    return [step_rollouts, step_advantages, preference_pairs, per_step_dpo_model, dpo_model]
