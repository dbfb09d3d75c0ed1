"""Dagster definitions, built from one experiment configuration and one warehouse: one module
per stage area, in the order data flows through the study."""

from __future__ import annotations

import dagster as dg

from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs import (
    advantages,
    curves,
    evaluations,
    models,
    pairs,
    preference,
    problems,
    rollouts,
    samples,
    study,
    teacher,
)
from synthdata_assets.defs.resources import study_resources
from warehouse import Warehouse


def build_definitions(config: ExperimentConfig, warehouse: Warehouse) -> dg.Definitions:
    plan = study.build(config)
    return dg.Definitions(
        assets=[
            *problems.build(config),
            *teacher.build(config, warehouse),
            *models.build(config, warehouse),
            *samples.build(config),
            *rollouts.build(config, warehouse),
            *advantages.build(config),
            *pairs.build(config),
            *preference.build(config, warehouse),
            *evaluations.build(config, warehouse),
            *curves.build(
                warehouse,
                chance=config.chance_rate,
                first_step_baseline=config.first_step_baseline,
                method_notes=curves.method_notes(config.training.rft_init),
            ),
        ],
        jobs=plan["jobs"],
        schedules=plan["schedules"],
        resources=study_resources(config, warehouse),
        executor=executor(config),
    )


def executor(config: ExperimentConfig) -> dg.ExecutorDefinition:
    """With ``execution.broker``, Dagster's Celery executor: each step goes to the
    ``synthdata worker`` processes listening on the broker (:mod:`synthdata_assets.workers`),
    wherever the run was launched from. Otherwise every step of a run in one process by
    default: a process per step imports torch, transformers and the model again (seconds
    each, more than most demo steps take). With
    ``execution.process_per_stage``, Dagster's multiprocess executor runs each step in its own
    process, one at a time, so the memory a stage held (a model being trained, a vLLM engine's
    share of the GPU) is the operating system's again before the next starts. Runs still
    queue on the `accelerator` pool, so parallel runs never share the device."""
    if config.execution.broker:
        from dagster_celery import celery_executor

        from synthdata_assets.workers import executor_config

        return celery_executor.configured(executor_config(config.execution.broker))
    if config.execution.process_per_stage:
        return dg.multiprocess_executor.configured({"max_concurrent": 1})
    return dg.in_process_executor
