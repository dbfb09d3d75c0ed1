"""Dagster definitions, built from one experiment configuration and one warehouse."""

from __future__ import annotations

import dagster as dg

from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs import credit, data, models, study
from synthdata_assets.defs.resources import resources
from warehouse import Warehouse


def build_definitions(config: ExperimentConfig, warehouse: Warehouse) -> dg.Definitions:
    studied = study.build(config, warehouse)
    return dg.Definitions(
        assets=[
            *data.build(config, warehouse),
            *models.build(config, warehouse),
            *credit.build(config, warehouse),
            *studied["assets"],
        ],
        jobs=studied["jobs"],
        schedules=studied["schedules"],
        resources=resources(warehouse),
        # Every step of a run in one process: a process per step would import torch,
        # transformers and the model again (about 7 s each, more than most demo steps take).
        # Runs still queue on the `accelerator` pool, so parallel runs never share the device.
        executor=dg.in_process_executor,
    )
