"""Every resource the assets use: the Parquet IO manager over the warehouse's tables, and
the generator that samples from a checkpoint (policy samples, rollouts, evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

from synthdata_assets import study
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.rollouts import rollout_backend
from training.generation import Completion, Generator, SamplingParams, make_generator
from training.progress import Progress
from warehouse import Warehouse
from warehouse.io_manager import ParquetIOManager


class _OnFirstUse:
    """A generator built at its first ``generate`` call: a stage that finds everything it
    needs already generated (reused rollouts) never loads the model. Used as a context
    manager, it closes the engine it built on leaving (the evaluation stage runs four engines
    in a row, and each must give its memory back before the next one starts)."""

    def __init__(self, build: Callable[[SamplingParams], Generator]) -> None:
        self._build = build
        self._generator: Generator | None = None

    def __enter__(self) -> _OnFirstUse:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self._generator, "close", None)
        if close is not None:
            close()
        self._generator = None

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: Progress | None = None
    ) -> list[list[Completion]]:
        if self._generator is None:
            self._generator = self._build(params)
        return self._generator.generate(prompts, params, progress=progress)


class GeneratorResource(dg.ConfigurableResource):
    """The sampling engine (``sampling.backend``; ``credit.rollout_backend`` for rollouts)
    over a checkpoint folder."""

    backend: str = "transformers"
    rollout_backend: str = "auto"
    batch_size: int = 128
    dtype: str = "float32"
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_model_len: int | None = None
    request_seeds: bool = True

    def over(self, checkpoint: str, log: Callable[[str], None]) -> _OnFirstUse:
        """A generator over the model at ``checkpoint``, loaded at its first use."""
        return self._lazy(self.backend, checkpoint, log)

    def for_rollouts(self, checkpoint: str, log: Callable[[str], None]) -> _OnFirstUse:
        """The rollouts' generator over the model at ``checkpoint``, loaded at its first use."""
        return self._lazy(rollout_backend(self.rollout_backend, self.backend), checkpoint, log)

    def _lazy(self, backend: str, checkpoint: str, log: Callable[[str], None]) -> _OnFirstUse:
        extra: dict[str, Any] = {}
        if backend == "vllm":
            # vLLM's dtype "auto" would run float32 checkpoints in bf16 and change the samples.
            extra["dtype"] = self.dtype
            extra["gpu_memory_utilization"] = self.gpu_memory_utilization
            extra["tensor_parallel_size"] = self.tensor_parallel_size
            extra["data_parallel_size"] = self.data_parallel_size
            extra["max_model_len"] = self.max_model_len
            extra["request_seeds"] = self.request_seeds

        def build(params: SamplingParams) -> Generator:
            if backend == "vllm" and not self.request_seeds:
                # Unseeded requests draw from the engine's stream: seeded by the stage's first
                # call, so that partitions of other seeds draw other samples.
                extra["seed"] = params.seed
            return make_generator(backend, checkpoint, batch_size=self.batch_size, log=log, **extra)

        return _OnFirstUse(build)


def study_resources(config: ExperimentConfig, warehouse: Warehouse) -> dict[str, Any]:
    return {
        "io_manager": ParquetIOManager(
            base_path=str(warehouse.tables),
            fingerprints=study.stage_fingerprints(config),
            fingerprint_key=study.FINGERPRINT_KEY,
            lock_root=str(warehouse.root),
        ),
        "generator": GeneratorResource(
            backend=config.sampling.backend,
            rollout_backend=config.credit.rollout_backend,
            batch_size=config.sampling.batch_size,
            dtype=config.model.dtype,
            gpu_memory_utilization=config.execution.gpu_memory_utilization,
            tensor_parallel_size=config.execution.tensor_parallel_size,
            data_parallel_size=config.execution.data_parallel_size,
            max_model_len=config.execution.max_model_len,
            request_seeds=config.sampling.request_seeds,
        ),
    }
