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
            *evaluations.build(config),
            *curves.build(
                warehouse,
                chance=config.chance_rate,
                first_step_baseline=config.first_step_baseline,
            ),
        ],
        jobs=plan["jobs"],
        schedules=plan["schedules"],
        resources=study_resources(config, warehouse),
        # Every step of a run in one process: a process per step would import torch,
        # transformers and the model again (seconds each, more than most demo steps take).
        # Runs still queue on the `accelerator` pool, so parallel runs never share the device.
        executor=dg.in_process_executor,
    )
