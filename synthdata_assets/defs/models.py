"""Model assets: the base model, SFT, policy samples, RFT and evaluation of every model.

Every step that runs a model joins the ``accelerator`` concurrency pool (limit 1 in the
warehouse's Dagster instance), so parallel runs never fight over one GPU or the CPU cores.
A trained model is a Hugging Face folder under ``checkpoints/`` plus one row in its asset's
table; the ``checkpoints`` SQL view unions those rows.
"""

import dagster as dg
import polars as pl

from synthdata_assets import datasets, learning
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.partitions import current_partition, study_partitions
from warehouse import Warehouse

GROUP = "models"
POOL = "accelerator"


def checkpoint_metadata(row: pl.DataFrame) -> dict:
    r = row.row(0, named=True)
    return {
        "path": dg.MetadataValue.path(r["path"]),
        "train_loss": r["train_loss"],
        "tokens_per_second": r["tokens_per_second"],
        "train_examples": r["train_examples"],
        "parameters": r["parameters"],
        **({"reward_accuracy": r["reward_accuracy"]} if "reward_accuracy" in r else {}),
        **({"drill_accuracy": r["drill_accuracy"]} if r.get("drill_accuracy") is not None else {}),
    }


def _markdown_table(frame: pl.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * frame.width]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    partitions = study_partitions(config)

    def folder(method: str, data_size: int, seed: int):
        return warehouse.checkpoints / method / f"data_size={data_size}" / f"seed={seed}"

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL)
    def base_model(context: dg.AssetExecutionContext, problems: pl.DataFrame):
        """The base learner: a tiny Llama pretrained on the task's world, or a named model."""
        row = learning.build_base_model(
            config, problems, warehouse.checkpoints / "base", context.log.info
        )
        return dg.Output(row, metadata=checkpoint_metadata(row))

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def sft_model(
        context: dg.AssetExecutionContext,
        base_model: pl.DataFrame,
        teacher_solutions: pl.DataFrame,
        problems: pl.DataFrame,
    ):
        """pi_sft: the base model fine-tuned on the verified teacher solutions."""
        data_size, seed = current_partition(context)
        learning.seeded(seed)
        row = learning.fine_tune(
            config,
            "sft",
            base_model["path"][0],
            learning.sft_examples(teacher_solutions, problems),
            folder("sft", data_size, seed),
            seed,
            context.log.info,
        )
        return dg.Output(row, metadata=checkpoint_metadata(row))

    @dg.asset(group_name=GROUP, kinds={"pytorch", "polars"}, pool=POOL, partitions_def=partitions)
    def policy_samples(
        context: dg.AssetExecutionContext, sft_model: pl.DataFrame, problems: pl.DataFrame
    ):
        """K graded samples per training problem from pi_sft (the source of negatives)."""
        data_size, seed = current_partition(context)
        subset = datasets.training_subset(problems, data_size, seed)
        table = learning.sample_solutions(
            config,
            sft_model["path"][0],
            subset,
            n=config.sampling.samples_per_problem,
            temperature=config.sampling.temperature,
            seed=seed,
            id_prefix="policy",
            log=context.log.info,
        )
        solved = table.group_by("problem_id").agg(pl.col("is_correct").any())
        return dg.Output(
            table,
            metadata={
                "samples": table.height,
                "pass_rate": float(table["is_correct"].mean()),
                "problems_solved": float(solved["is_correct"].mean()),
                "negatives": int((~table["is_correct"]).sum()),
            },
        )

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def rft_model(
        context: dg.AssetExecutionContext,
        base_model: pl.DataFrame,
        sft_model: pl.DataFrame,
        policy_samples: pl.DataFrame,
        problems: pl.DataFrame,
    ):
        """Rejection fine-tuning on pi_sft's verified, deduplicated positives."""
        data_size, seed = current_partition(context)
        learning.seeded(seed)
        init = base_model if config.training.rft_init == "base" else sft_model
        examples = learning.rft_examples(
            policy_samples, problems, config.training.rft_max_per_problem
        )
        row = learning.fine_tune(
            config,
            "rft",
            init["path"][0],
            examples,
            folder("rft", data_size, seed),
            seed,
            context.log.info,
        )
        return dg.Output(row, metadata=checkpoint_metadata(row))

    @dg.asset(group_name=GROUP, kinds={"pytorch", "polars"}, pool=POOL, partitions_def=partitions)
    def evaluations(
        context: dg.AssetExecutionContext,
        problems: pl.DataFrame,
        base_model: pl.DataFrame,
        sft_model: pl.DataFrame,
        rft_model: pl.DataFrame,
        per_step_dpo_model: pl.DataFrame,
        dpo_model: pl.DataFrame,
    ):
        """Every model's answers to the test split: greedy accuracy and pass@k."""
        _, seed = current_partition(context)
        test = problems.filter(pl.col("split") == "test")
        models = {
            "base": base_model,
            "sft": sft_model,
            "rft": rft_model,
            "per_step_dpo": per_step_dpo_model,
            "dpo": dpo_model,
        }
        table = pl.concat(
            [
                learning.evaluate_model(config, method, m["path"][0], test, seed, context.log.info)
                for method, m in models.items()
            ]
        )
        k_values = sorted({1, config.sampling.eval_samples})
        summary = learning.summarize_evaluations(table, k_values)
        metadata = {f"accuracy_{r['method']}": r["accuracy"] for r in summary.iter_rows(named=True)}
        metadata["summary"] = dg.MetadataValue.md(_markdown_table(summary))
        return dg.Output(table, metadata=metadata)

    return [base_model, sft_model, policy_samples, rft_model, evaluations]
