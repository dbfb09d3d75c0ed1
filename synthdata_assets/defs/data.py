"""Data assets: the problem pool and the teacher's solutions (D_syn)."""

import hashlib

import dagster as dg
import polars as pl

from synthdata_assets import datasets, teachers
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.partitions import current_partition, study_partitions
from warehouse import Warehouse

GROUP = "data"


def _markdown_sample(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md("```\n" + text + "\n```")


def build(config: ExperimentConfig, warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    partitions = study_partitions(config)
    fmt = config.answer_format

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
        pool = datasets.problem_pool(config)
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
                "example": _markdown_sample(
                    f"{pool['question'][0]}\n\nanswer: {pool['answer'][0]}"
                ),
            },
        )
        duplicates = pool.height - pool["problem_id"].n_unique()
        yield dg.AssetCheckResult(
            check_name="ids_unique", passed=duplicates == 0, metadata={"duplicates": duplicates}
        )
        unreadable = datasets.gold_answers_parse(pool, fmt)
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

    def _endpoint_solutions(subset: pl.DataFrame, seed: int, log) -> pl.DataFrame:
        # One cache per server, model and seed, shared by every data size: subsets are nested,
        # so a larger size requests only its new problems, and a crashed run resumes.
        t = config.teacher
        digest = hashlib.sha256(f"{t.base_url}\x1f{t.model}".encode()).hexdigest()[:12]
        return teachers.endpoint_teacher_solutions(
            subset,
            base_url=str(t.base_url),
            model=t.model,
            n=t.solutions_per_problem,
            temperature=t.temperature,
            max_new_tokens=t.max_new_tokens,
            seed=seed,
            answer_format=config.answer_format,
            cache_path=warehouse.root / "cache" / "teacher" / digest / f"seed={seed}.jsonl",
            concurrency=t.concurrency,
            log=log,
        )

    @dg.asset(
        group_name=GROUP,
        kinds={"polars", "parquet"},
        partitions_def=partitions,
        check_specs=[
            dg.AssetCheckSpec("solution_ids_unique", asset="teacher_solutions", blocking=True),
            dg.AssetCheckSpec("covers_subset", asset="teacher_solutions", blocking=True),
            dg.AssetCheckSpec("has_positives", asset="teacher_solutions", blocking=True),
        ],
    )
    def teacher_solutions(context: dg.AssetExecutionContext, problems: pl.DataFrame):
        """The teacher's graded step-by-step solutions for this partition's problems."""
        data_size, seed = current_partition(context)
        subset = datasets.training_subset(problems, data_size, seed)
        if config.teacher.kind == "endpoint":
            table = _endpoint_solutions(subset, seed, context.log.info)
        else:
            table = datasets.teacher_solutions(config, subset, seed)
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
                "example": _markdown_sample(table["solution"][0]),
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

    return [problems, teacher_solutions]
