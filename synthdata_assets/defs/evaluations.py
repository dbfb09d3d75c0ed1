"""Every model of the partition on the test split, with a check that each answered every
test problem."""

import dagster as dg
import polars as pl

from synthdata_assets import evaluations as eval_lib
from synthdata_assets.checks import evaluations_cover
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.models import GROUP, POOL
from synthdata_assets.defs.problems import check_result
from synthdata_assets.defs.resources import GeneratorResource
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.terminal import progress_logger


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
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
        base_model: pl.DataFrame,
        sft_model: pl.DataFrame,
        rft_model: pl.DataFrame,
        per_step_dpo_model: pl.DataFrame,
        dpo_model: pl.DataFrame,
    ):
        """Every model's answers to the test split: greedy accuracy and pass@k."""
        _, seed = current_partition(context)
        test = problems.filter(pl.col("split") == "test")
        trained = {
            "base": base_model,
            "sft": sft_model,
            "rft": rft_model,
            "per_step_dpo": per_step_dpo_model,
            "dpo": dpo_model,
        }
        tables = []
        for method, model in trained.items():
            with generator.over(model["path"][0], context.log.info) as engine:
                tables.append(
                    eval_lib.evaluate_model(
                        engine,
                        method,
                        test,
                        config.sampling,
                        seed=seed,
                        answer_format=config.answer_format,
                        log=context.log.info,
                        progress=progress_logger(context.log.info, "prompts"),
                    )
                )
        table = pl.concat(tables)
        k_values = sorted({1, config.sampling.eval_samples})
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
            evaluations_cover(table, test["problem_id"].to_list(), list(trained)),
        )

    return [evaluations]
