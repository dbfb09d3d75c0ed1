"""The teacher's solutions (D_syn) of each partition, with checks on their coverage and
pass rate."""

from collections.abc import Callable

import dagster as dg
import polars as pl

from synthdata_assets import teacher as teacher_lib
from synthdata_assets.checks import teacher_pass_rate_in_bounds
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.problems import GROUP, check_result, markdown_sample
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.problems import training_subset
from warehouse import Warehouse


def partition_solutions(
    config: ExperimentConfig,
    warehouse: Warehouse,
    problems: pl.DataFrame,
    data_size: int,
    seed: int,
    log: Callable[[str], None],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The partition's problems (the first ``data_size`` in ``seed``'s order) and the
    teacher's graded solutions to them."""
    subset = training_subset(problems, data_size, seed)
    table = teacher_lib.teacher_solutions(
        config.teacher,
        subset,
        seed,
        answer_format=config.answer_format,
        cache_root=warehouse.cache / "teacher",
        log=log,
    )
    return subset, table


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name=GROUP,
        kinds={"polars", "parquet"},
        partitions_def=study_partitions(config),
        check_specs=[
            dg.AssetCheckSpec("solution_ids_unique", asset="teacher_solutions", blocking=True),
            dg.AssetCheckSpec("covers_subset", asset="teacher_solutions", blocking=True),
            dg.AssetCheckSpec("has_positives", asset="teacher_solutions", blocking=True),
            dg.AssetCheckSpec(
                "pass_rate_in_bounds",
                asset="teacher_solutions",
                blocking=True,
                description="The oracle's pass rate is where teacher.slip_rate puts it "
                "(Binomial(n, 1 - slip_rate)); other teachers imply no rate.",
            ),
        ],
    )
    def teacher_solutions(context: dg.AssetExecutionContext, problems: pl.DataFrame):
        """The teacher's graded step-by-step solutions for this partition's problems."""
        data_size, seed = current_partition(context)
        subset, table = partition_solutions(
            config, warehouse, problems, data_size, seed, context.log.info
        )
        pass_rate = float(table["is_correct"].mean() or 0.0)
        context.log.info(f"{table.height} solutions, pass rate {pass_rate:.3f}")
        yield dg.Output(
            table,
            metadata={
                "problems": subset.height,
                "solutions": table.height,
                "pass_rate": pass_rate,
                "positives": int(table["is_correct"].sum()),
                "mean_lines": float(table["n_lines"].mean() or 0.0),
                "example": markdown_sample(table["solution"][0]),
            },
        )
        duplicates = table.height - table["solution_id"].n_unique()
        yield dg.AssetCheckResult(
            check_name="solution_ids_unique",
            passed=duplicates == 0,
            metadata={"duplicates": duplicates},
        )
        missing = set(subset["problem_id"]) - set(table["problem_id"])
        yield dg.AssetCheckResult(
            check_name="covers_subset", passed=not missing, metadata={"missing": len(missing)}
        )
        yield dg.AssetCheckResult(
            check_name="has_positives",
            passed=bool(table["is_correct"].any()),
            description="SFT trains on verified teacher positives; there must be some.",
            metadata={"pass_rate": pass_rate},
        )
        yield check_result(
            "pass_rate_in_bounds", teacher_pass_rate_in_bounds(table["is_correct"], config.teacher)
        )

    return [teacher_solutions]
