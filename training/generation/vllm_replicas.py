"""Data parallelism for the vLLM engine: :class:`VLLMReplicas`, ``replicas`` engines over one
checkpoint, each in a process of its own on devices of its own, the prompts of every call
shared out between them.

vLLM's own data parallelism (``data_parallel_size``) runs behind ``vllm serve``; offline it
needs the caller to start one process per rank (vLLM's ``data_parallel_offline.py`` example),
and for a dense model those ranks are independent engines. This module is that caller: it
starts the processes, gives each its devices (``CUDA_VISIBLE_DEVICES``: ``tensor_parallel_size``
GPUs per replica, in order), sends each a contiguous share of the prompts and puts the
completions back in prompt order.

Requests are seeded per prompt (:mod:`training.generation.vllm_engine`), so a prompt's samples
do not depend on which replica ran it: the replicas give one engine's samples. Without
request seeds (``request_seeds=False``) replica ``r`` draws from the stream ``seed + r``.

A replica's log lines come back through ``log``; an error in a replica is raised here with
its traceback. A replica whose parent dies sees its pipe close and exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from training.generation.interface import Completion, SamplingParams
from training.progress import Progress

# How long close() waits for a replica to stop its engine before it is killed.
CLOSE_TIMEOUT_S = 60.0


class ReplicaError(RuntimeError):
    """A replica failed; the message holds its traceback."""


def device_slices(replicas: int, tensor_parallel_size: int) -> list[str | None]:
    """Each replica's ``CUDA_VISIBLE_DEVICES``: ``tensor_parallel_size`` of this process's
    visible GPUs each, in order; None each where there is no GPU (vLLM on CPUs)."""
    import torch

    if not torch.cuda.is_available():
        return [None] * replicas
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = (
        [d.strip() for d in visible.split(",") if d.strip()]
        if visible
        else [str(i) for i in range(torch.cuda.device_count())]
    )
    needed = replicas * tensor_parallel_size
    if needed > len(devices):
        raise ValueError(
            f"execution.data_parallel_size {replicas} x execution.tensor_parallel_size "
            f"{tensor_parallel_size} needs {needed} GPUs; {len(devices)} are visible"
        )
    per = tensor_parallel_size
    return [",".join(devices[r * per : (r + 1) * per]) for r in range(replicas)]


def shares(n: int, replicas: int) -> list[range]:
    """Contiguous index ranges of ``n`` prompts over ``replicas``, their sizes within one."""
    base, extra = divmod(n, replicas)
    out, start = [], 0
    for r in range(replicas):
        size = base + (r < extra)
        out.append(range(start, start + size))
        start += size
    return out


class VLLMReplicas:
    """``replicas`` :class:`~training.generation.vllm_engine.VLLMGenerator` engines in as many
    processes (see the module docstring). Keywords go to each engine; ``seed`` is replica 0's
    engine seed, ``seed + r`` replica ``r``'s."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        replicas: int,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        batch_size: int | None = None,
        log: Callable[[str], None] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        del batch_size  # vLLM schedules its own batches
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.log = log or (lambda _message: None)
        started = time.perf_counter()
        devices = device_slices(replicas, tensor_parallel_size)
        # Spawned, not forked: a forked child would inherit this process's CUDA and torch state.
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        for rank, visible in enumerate(devices):
            ours, theirs = context.Pipe()
            kwargs = {
                **engine_kwargs,
                "tensor_parallel_size": tensor_parallel_size,
                "seed": seed + rank,
            }
            process = context.Process(
                target=_serve,
                args=(theirs, str(folder), kwargs, visible, rank),
                name=f"vllm-replica-{rank}",
            )
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)
        try:
            for pipe in self._pipes:  # the engines start side by side
                self._reply(pipe)
        except BaseException:
            self.close()
            raise
        self.log(
            f"vLLM: {replicas} replicas started in {time.perf_counter() - started:.1f}s "
            f"({tensor_parallel_size} device(s) each)"
        )

    @property
    def replicas(self) -> int:
        return len(self._pipes)

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        prompts = list(prompts)
        if not self._pipes:
            raise RuntimeError("the replicas are closed")
        start = time.perf_counter()
        parts = [
            (pipe, share)
            for pipe, share in zip(self._pipes, shares(len(prompts), self.replicas), strict=True)
            if share
        ]
        for pipe, share in parts:
            pipe.send(("generate", [prompts[i] for i in share], params))
        results: list[list[Completion]] = []
        failure: ReplicaError | None = None
        for pipe, _share in parts:  # every answer is read, so none is left for the next call
            try:
                results += self._reply(pipe)
            except ReplicaError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        if progress is not None and prompts:
            tokens = sum(c.num_tokens for samples in results for c in samples)
            elapsed = max(time.perf_counter() - start, 1e-9)
            progress(len(prompts), len(prompts), new_tokens_per_s=tokens / elapsed)
        return results

    def close(self) -> None:
        """Stop every replica's engine and process. The generator is unusable afterwards."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):  # a replica that is gone already
                pipe.send(("close",))
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for process in self._processes:
            process.join(max(deadline - time.monotonic(), 0.0))
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self._pipes:
            pipe.close()
        self._pipes, self._processes = [], []

    def _reply(self, pipe: Connection) -> Any:
        """The next answer on ``pipe``, passing the replica's log lines on to ``log``."""
        while True:
            try:
                kind, payload = pipe.recv()
            except EOFError:
                raise ReplicaError("a vLLM replica exited without answering") from None
            if kind == "log":
                self.log(payload)
            elif kind == "error":
                raise ReplicaError(payload)
            else:
                return payload


def _serve(
    pipe: Connection, folder: str, kwargs: dict[str, Any], visible: str | None, rank: int
) -> None:
    """A replica: one engine, answering ``generate`` and ``close`` requests until its parent
    says close or goes away."""
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible

    def log(line: str) -> None:
        pipe.send(("log", f"replica {rank}: {line}"))

    try:
        from training.generation.vllm_engine import VLLMGenerator

        engine = VLLMGenerator(folder, log=log, **kwargs)
    except BaseException:
        pipe.send(("error", f"replica {rank} failed to start:\n{traceback.format_exc()}"))
        return
    pipe.send(("ready", None))
    while True:
        try:
            request = pipe.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if request[0] == "close":
            break
        _, prompts, params = request
        try:
            pipe.send(("done", engine.generate(prompts, params)))
        except BaseException:
            pipe.send(("error", f"replica {rank}:\n{traceback.format_exc()}"))
    engine.close()
