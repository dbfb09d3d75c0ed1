"""pi_sft's own graded samples of the partition's training problems."""

import dagster as dg
import polars as pl

from synthdata_assets import samples
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.models import GROUP, POOL
from synthdata_assets.defs.resources import GeneratorResource
from synthdata_assets.defs.study import current_partition, study_partitions
from synthdata_assets.problems import training_subset
from synthdata_assets.terminal import progress_logger
from training.memory import return_freed_memory


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    sampling = config.sampling

    @dg.asset(
        group_name=GROUP,
        kinds={"pytorch", "polars"},
        pool=POOL,
        partitions_def=study_partitions(config),
    )
    def policy_samples(
        context: dg.AssetExecutionContext,
        generator: GeneratorResource,
        sft_model: pl.DataFrame,
        problems: pl.DataFrame,
    ):
        """K graded samples per training problem from pi_sft (the source of negatives)."""
        data_size, seed = current_partition(context)
        with generator.over(sft_model["path"][0], context.log.info) as engine:
            table = samples.sample_solutions(
                engine,
                training_subset(problems, data_size, seed),
                samples.sampling_params(
                    sampling,
                    n=sampling.samples_per_problem,
                    temperature=sampling.temperature,
                    seed=seed,
                ),
                id_prefix="policy",
                answer_format=config.answer_format,
                progress=progress_logger(context.log.info, "prompts"),
            )
        return_freed_memory()  # the engine's caches, before RFT trains (training/memory.py)
        return dg.Output(table, metadata=samples.sample_summary(table))

    return [policy_samples]
