"""The study as a whole: its stages in the order data flows through them, its partitions,
and the settings fingerprint that says whether a materialized partition is still valid.

A study is a sweep of ``data_size x seed`` partitions. Every partition runs the same
stages (:data:`PARTITION_STAGES`), after the unpartitioned :data:`SETUP_STAGES` and before
the :data:`REPORT_STAGES`, which read every partition.
"""

from __future__ import annotations

import json

from synthdata_assets.config import ExperimentConfig

SETUP_STAGES: tuple[str, ...] = ("problems", "base_model")
PARTITION_STAGES: tuple[str, ...] = (
    "teacher_solutions",
    "sft_model",
    "policy_samples",
    "rft_model",
    "step_rollouts",
    "step_advantages",
    "preference_pairs",
    "per_step_dpo_model",
    "dpo_model",
    "evaluations",
)
REPORT_STAGES: tuple[str, ...] = ("scaling_curves",)
# The partition dimensions, as the tables' columns and the Hive folders name them.
DATA_SIZE, SEED = "data_size", "seed"


def partition_key(data_size: int, seed: int) -> str:
    """The ``data_size|seed`` key Dagster shows and ``--partition`` takes."""
    return f"{data_size}|{seed}"


def partition_keys(config: ExperimentConfig) -> list[str]:
    """Every partition key of the sweep, smallest data size first."""
    return [partition_key(size, seed) for size, seed in config.partition_keys]


def fingerprint(config: ExperimentConfig) -> str:
    """Everything that decides what a partition holds, except which partitions exist."""
    fields = config.model_dump(mode="json", exclude={"preset", "data_sizes", "seeds"})
    return json.dumps(fields, sort_keys=True)
