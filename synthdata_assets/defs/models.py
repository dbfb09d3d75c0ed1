"""The trained models: the base learner, pi_sft and RFT.

Every step that runs a model joins the ``accelerator`` concurrency pool (limit 1 in the
warehouse's Dagster instance), so parallel runs never fight over one GPU or the CPU cores.
A trained model is a Hugging Face folder under ``checkpoints/`` plus one row in its asset's
table; the ``checkpoints`` SQL view unions those rows.
"""

import functools
from collections.abc import Callable

import dagster as dg
import polars as pl

from synthdata_assets import models, ranks
from synthdata_assets.config import ExecutionConfig, ExperimentConfig
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.problems import validation_split
from synthdata_assets.terminal import progress_logger
from warehouse import Warehouse

GROUP = "models"
POOL = "accelerator"


def checkpoint_metadata(row: pl.DataFrame) -> dict:
    """What the UI shows of a trained model: its folder and training figures."""
    r = row.row(0, named=True)
    return {
        "path": dg.MetadataValue.path(r["path"]),
        "train_loss": r["train_loss"],
        "tokens_per_second": r["tokens_per_second"],
        "train_examples": r["train_examples"],
        "parameters": r["parameters"],
        **({"reward_accuracy": r["reward_accuracy"]} if "reward_accuracy" in r else {}),
        **({"drill_accuracy": r["drill_accuracy"]} if r.get("drill_accuracy") is not None else {}),
        **(
            {
                "chosen_epoch": r["chosen_epoch"],
                "validation_accuracy": r["validation_accuracy"],
                "validation_curve": dg.MetadataValue.json(list(r["validation_curve"])),
            }
            if r.get("chosen_epoch") is not None
            else {}
        ),
    }


def trained(
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    method: str,
    train: Callable[..., pl.DataFrame],
    execution: ExecutionConfig,
    folder: str | None = None,
) -> dg.Output:
    """A partition's training stage: seeded by the partition, written to the checkpoint
    folder ``folder`` (default: the method's), its progress on the terminal; ``train``
    returns the checkpoint row. ``execution.train_processes`` > 1: over that many
    data-parallel ranks, sharing the model as ``execution.train_sharding`` says
    (:mod:`synthdata_assets.ranks`)."""
    data_size, seed = current_partition(context)
    models.seeded(seed)
    row = ranks.call(
        train,
        processes=execution.train_processes,
        sharding=execution.train_sharding,
        folder=warehouse.checkpoint_folder(folder or method, data_size, seed),
        seed=seed,
        log=context.log.info,
        progress=progress_logger(context.log.info, "updates"),
    )
    return dg.Output(row, metadata=checkpoint_metadata(row))


def fine_tuned(
    context: dg.AssetExecutionContext,
    config: ExperimentConfig,
    warehouse: Warehouse,
    method: str,
    init: pl.DataFrame,
    examples: list[tuple[str, str]],
    problems: pl.DataFrame,
    folder: str | None = None,
) -> dg.Output:
    """SFT or RFT of the partition from the checkpoint row ``init`` on ``examples``, its
    epoch chosen on held-out problems under ``training.select_epoch: validation``."""
    training = config.training
    validation = None
    if training.select_epoch == "validation":
        validation = validation_split(config.task, training.validation_problems, problems)
    fine_tune = functools.partial(
        models.fine_tune,
        training,
        method,
        init["path"][0],
        examples,
        max_seq_len=config.model.max_seq_len,
        validation=validation,
        scoring=config,
    )
    return trained(context, warehouse, method, fine_tune, config.execution, folder)


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    partitions = study_partitions(config)
    training = config.training

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL)
    def base_model(context: dg.AssetExecutionContext, problems: pl.DataFrame):
        """The base learner: the shipped embedded base, a named model, or a tiny Llama
        pretrained here on the task's world."""
        del problems  # an upstream for lineage: the base is chosen for the problems' task
        row = models.build_base_model(
            config.model,
            training,
            config.task,
            warehouse.checkpoint_folder("base"),
            meta={"method": "base", "preset": config.preset},
            log=context.log.info,
            progress=progress_logger(context.log.info, "updates"),
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
        examples = models.sft_examples(teacher_solutions, problems)
        return fine_tuned(context, config, warehouse, "sft", base_model, examples, problems)

    @dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=POOL, partitions_def=partitions)
    def rft_model(
        context: dg.AssetExecutionContext,
        base_model: pl.DataFrame,
        sft_model: pl.DataFrame,
        policy_samples: pl.DataFrame,
        problems: pl.DataFrame,
    ):
        """Rejection fine-tuning on pi_sft's verified, deduplicated positives."""
        init = base_model if training.rft_init == "base" else sft_model
        examples = models.rft_examples(policy_samples, problems, training.rft_max_per_problem)
        return fine_tuned(context, config, warehouse, "rft", init, examples, problems)

    return [base_model, sft_model, rft_model]
