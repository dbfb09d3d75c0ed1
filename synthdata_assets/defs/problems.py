"""The problem pool asset, with checks that its ids, answers and splits are sound."""

import dagster as dg
import polars as pl

from synthdata_assets import problems as pool_lib
from synthdata_assets.checks import Verdict
from synthdata_assets.config import ExperimentConfig

GROUP = "data"


def markdown_sample(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md("```\n" + text + "\n```")


def check_result(name: str, verdict: Verdict) -> dg.AssetCheckResult:
    """The result of the asset check ``name`` from the plain check's verdict
    (:mod:`synthdata_assets.checks`)."""
    return dg.AssetCheckResult(check_name=name, passed=verdict.passed, metadata=verdict.metadata)


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name=GROUP,
        kinds={"polars", "parquet"},
        check_specs=[
            dg.AssetCheckSpec("ids_unique", asset="problems", blocking=True),
            dg.AssetCheckSpec("answers_parse", asset="problems", blocking=True),
            dg.AssetCheckSpec("splits_disjoint", asset="problems", blocking=True),
        ],
    )
    def problems(context: dg.AssetExecutionContext):
        """The problem pool: training problems to draw subsets from, and the test split."""
        pool = pool_lib.problem_pool(config.task, config.largest_size)
        train = pool.filter(pl.col("split") == "train")
        test = pool.filter(pl.col("split") == "test")
        context.log.info(f"{train.height} training and {test.height} test problems")
        yield dg.Output(
            pool,
            metadata={
                "train_problems": train.height,
                "test_problems": test.height,
                "mean_steps_train": float(train["n_steps"].mean() or 0.0),
                "source": config.task.name,
                "example": markdown_sample(f"{pool['question'][0]}\n\nanswer: {pool['answer'][0]}"),
            },
        )
        duplicates = pool.height - pool["problem_id"].n_unique()
        yield dg.AssetCheckResult(
            check_name="ids_unique", passed=duplicates == 0, metadata={"duplicates": duplicates}
        )
        unreadable = pool_lib.gold_answers_parse(pool, config.answer_format)
        yield dg.AssetCheckResult(
            check_name="answers_parse",
            passed=not unreadable,
            metadata={"unreadable": len(unreadable), "first": ", ".join(unreadable[:5])},
        )
        shared = set(train["question"]) & set(test["question"])
        yield dg.AssetCheckResult(
            check_name="splits_disjoint",
            passed=not shared and train.height > 0 and test.height > 0,
            metadata={"questions_in_both": len(shared)},
        )

    return [problems]
