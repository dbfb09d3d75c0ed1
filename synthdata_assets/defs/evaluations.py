"""Every model of the partition on the test split, with a check that each answered every
test problem; and SFT alone at the sizes past the study's (``sft_reference``).

The base model is the same in every partition, so ``base_evaluation`` evaluates it once per
study (its samples for pass@k drawn with :data:`BASE_SEED`), and each partition's
``evaluations`` copies those rows beside its five trained models' answers: the table of a
partition stays whole for SQL and the reports."""

import functools

import dagster as dg
import polars as pl

from synthdata_assets import evaluations as eval_lib
from synthdata_assets import models
from synthdata_assets.checks import evaluations_cover
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.models import GROUP, POOL, checkpoint_metadata, fine_tuned
from synthdata_assets.defs.problems import check_result
from synthdata_assets.defs.resources import GeneratorResource
from synthdata_assets.defs.study import current_partition, reference_partitions, study_partitions
from synthdata_assets.defs.teacher import partition_solutions
from synthdata_assets.terminal import progress_logger
from warehouse import Warehouse

# The sampling seed of the base's pass@k samples (its greedy answers need none).
BASE_SEED = 0


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    evaluate = functools.partial(_evaluate, config)

    @dg.asset(group_name=GROUP, kinds={"pytorch", "polars"}, pool=POOL)
    def base_evaluation(
        context: dg.AssetExecutionContext,
        generator: GeneratorResource,
        problems: pl.DataFrame,
        base_model: pl.DataFrame,
    ):
        """The base model's answers to the test split, once for the whole study."""
        test = problems.filter(pl.col("split") == "test")
        table = evaluate(context, generator, "base", base_model, test, BASE_SEED)
        return dg.Output(table, metadata={"accuracy_base": float(table["is_correct"].mean())})

    @dg.asset(
        group_name=GROUP,
        kinds={"pytorch", "polars"},
        pool=POOL,
        partitions_def=study_partitions(config),
        check_specs=[
            # Blocking, though no stage of the partition's run reads evaluations: a failed
            # blocking check fails the run, and a failed run is what stops `synthdata run`
            # before it draws the curves from a partial test split (a non-blocking failure
            # would show only in the UI's Checks tab).
            dg.AssetCheckSpec(
                "covers_every_method_and_test_problem",
                asset="evaluations",
                blocking=True,
                description="One answer of every model to every test problem, and no other.",
            ),
        ],
    )
    def evaluations(
        context: dg.AssetExecutionContext,
        generator: GeneratorResource,
        problems: pl.DataFrame,
        base_evaluation: pl.DataFrame,
        sft_model: pl.DataFrame,
        rft_model: pl.DataFrame,
        per_step_dpo_model: pl.DataFrame,
        nll_control_model: pl.DataFrame,
        dpo_model: pl.DataFrame,
    ):
        """Every model's answers to the test split: greedy accuracy and pass@k (the base's
        rows from ``base_evaluation``)."""
        _, seed = current_partition(context)
        test = problems.filter(pl.col("split") == "test")
        trained = {
            "sft": sft_model,
            "rft": rft_model,
            "per_step_dpo": per_step_dpo_model,
            "nll_control": nll_control_model,
            "dpo": dpo_model,
        }
        tables = [base_evaluation.select(list(eval_lib.EVAL_SCHEMA))]
        for method, model in trained.items():
            tables.append(evaluate(context, generator, method, model, test, seed))
        table = pl.concat(tables)
        k_values = eval_lib.pass_k_values(config.sampling.eval_samples)
        summary = eval_lib.summarize_evaluations(table, k_values)
        metadata = {}
        for r in summary.iter_rows(named=True):
            metadata[f"accuracy_{r['method']}"] = r["accuracy"]
            if r.get("follows_cue") is not None:
                metadata[f"follows_cue_{r['method']}"] = r["follows_cue"]
        metadata["summary"] = dg.MetadataValue.md(eval_lib.markdown_table(summary))
        yield dg.Output(table, metadata=metadata)
        yield check_result(
            "covers_every_method_and_test_problem",
            evaluations_cover(table, test["problem_id"].to_list(), ["base", *trained]),
        )

    return [base_evaluation, evaluations, _reference(config, warehouse)]


def _evaluate(
    config: ExperimentConfig,
    context: dg.AssetExecutionContext,
    generator: GeneratorResource,
    method: str,
    model: pl.DataFrame,
    test: pl.DataFrame,
    seed: int,
) -> pl.DataFrame:
    """``method``'s answers to ``test``, from its checkpoint row ``model``."""
    with generator.over(model["path"][0], context.log.info) as engine:
        return eval_lib.evaluate_model(
            engine,
            method,
            test,
            config.sampling,
            seed=seed,
            answer_format=config.answer_format,
            log=context.log.info,
            progress=progress_logger(context.log.info, "prompts"),
        )


# SFT alone past the study's largest data size (sft_reference_sizes). A data multiplier reads
# a method's accuracy off SFT's measured curve and never extrapolates it (curves.py): a method
# that beats SFT at the study's largest size gets only a lower bound there. The paper measures
# SFT on up to 8x more data; sft_reference does the same, each (size, seed) a partition: the
# teacher's solutions to the partition's problems (drawn from the pool as the study's subsets
# are, so every size holds the smaller ones), pi_sft trained from the base exactly as sft_model
# trains it, and its answers to the test split, as evaluations rows of method sft that
# scaling_curves adds to the study's.

# The checkpoint folder of the reference models, apart from the study's sft_model folders.
REFERENCE_FOLDER = "sft_reference"


def _reference(config: ExperimentConfig, warehouse: Warehouse) -> dg.AssetsDefinition:
    @dg.asset(
        group_name=GROUP,
        kinds={"pytorch", "polars"},
        pool=POOL,
        partitions_def=reference_partitions(config),
        check_specs=[
            dg.AssetCheckSpec(
                "covers_every_test_problem",
                asset="sft_reference",
                blocking=True,
                description="One answer of the reference SFT model to every test problem.",
            )
        ],
    )
    def sft_reference(
        context: dg.AssetExecutionContext,
        generator: GeneratorResource,
        problems: pl.DataFrame,
        base_model: pl.DataFrame,
    ):
        """pi_sft at a size past the study's (sft_reference_sizes): teacher solutions, SFT
        as sft_model does it, and its answers to the test split, as evaluations rows."""
        data_size, seed = current_partition(context)
        _, solutions = partition_solutions(
            config, warehouse, problems, data_size, seed, context.log.info
        )
        examples = models.sft_examples(solutions, problems)
        model = fine_tuned(
            context,
            config,
            warehouse,
            "sft",
            base_model,
            examples,
            problems,
            folder=REFERENCE_FOLDER,
        ).value
        test = problems.filter(pl.col("split") == "test")
        table = _evaluate(config, context, generator, "sft", model, test, seed)
        yield dg.Output(
            table,
            metadata={
                "accuracy_sft": float(table["is_correct"].mean() or 0.0),
                "teacher_pass_rate": float(solutions["is_correct"].mean() or 0.0),
                "sft_examples": len(examples),
                **checkpoint_metadata(model),
            },
        )
        yield check_result(
            "covers_every_test_problem",
            evaluations_cover(table, test["problem_id"].to_list(), ["sft"]),
        )

    return sft_reference
