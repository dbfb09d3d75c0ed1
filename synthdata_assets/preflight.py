"""Checks that run before any Dagster process starts, so that a bad warehouse path or data
file is reported in a line or two (the file, the line, the fix) within a second, not after
Dagster's start-up inside a stack trace."""

from __future__ import annotations

import os
import uuid

from synthdata_assets.config import ExperimentConfig
from synthdata_assets.problems import problem_pool
from synthdata_assets.tasks.realdata import DataFormatError
from warehouse import Warehouse
from warehouse.layout import HOME_ENV


class PreflightError(ValueError):
    """Something the user must fix before a run can start; the message says what and how."""


def usable_warehouse() -> Warehouse:
    """The warehouse of ``SYNTHDATA_HOME``, created and made active, or a
    :class:`PreflightError` saying why it cannot be used."""
    root = os.environ.get(HOME_ENV) or "(default .synthdata)"
    try:
        warehouse = Warehouse.from_env().activate()
        probe = warehouse.root / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(
            f"cannot use {HOME_ENV}={root} as the warehouse: {exc.strerror or exc} "
            f"({exc.filename or root}); set {HOME_ENV} to a folder you can write"
        ) from None
    return warehouse


def check_data(config: ExperimentConfig) -> None:
    """Real data sets: their files exist, parse, and hold the largest data size."""
    if config.task.generated:
        return
    try:
        problem_pool(config.task, config.largest_size)
    except DataFormatError as exc:
        raise PreflightError(f"{exc}; fix that line or point the task at another file") from None
    except OSError as exc:
        field = "task.train_path" if exc.filename == config.task.train_path else "task.test_path"
        raise PreflightError(
            f"{field}: cannot read {exc.filename!r} ({exc.strerror}); relative paths are read "
            f"from {os.getcwd()}"
        ) from None
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def check_devices(config: ExperimentConfig, gpus: int | None = None) -> None:
    """On a GPU machine, the multi-GPU settings ask for no more GPUs than it has (``gpus``,
    default: the GPUs torch sees), so that a preset made for 8 GPUs fails here, not at its
    first training or generation stage. Nothing is checked without a GPU (training ranks then
    run over gloo and vLLM replicas on the cores) or with ``execution.broker`` (the stages run
    on the workers' machines)."""
    if config.execution.broker:
        return
    execution = config.execution
    engines = {config.sampling.backend, config.credit.rollout_backend}
    needed = execution.data_parallel_size * execution.tensor_parallel_size
    if execution.train_processes <= 1 and ("vllm" not in engines or needed <= 1):
        # One GPU or none suffices: nothing to check, and no torch to import into the
        # launcher, which stays alive beside every run.
        return
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return
    if execution.train_processes > gpus:
        raise PreflightError(
            f"execution.train_processes {execution.train_processes} asks for a GPU per "
            f"training rank, and {gpus} are visible; set it to at most {gpus}"
        )
    if "vllm" in engines and needed > gpus:
        raise PreflightError(
            f"execution.data_parallel_size {execution.data_parallel_size} x "
            f"execution.tensor_parallel_size {execution.tensor_parallel_size} needs {needed} "
            f"GPUs, and {gpus} are visible; lower data_parallel_size"
        )
