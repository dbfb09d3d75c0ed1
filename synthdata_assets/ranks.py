"""Training stages over several processes of one machine: data-parallel ranks (DDP or FSDP).

With ``execution.train_processes: N`` (N > 1), SFT, RFT, plain and per-step DPO each run as N
processes started by ``torch.distributed.run`` (torchrun), one per GPU. Each rank loads the
starting model, trains on its share of every batch under accelerate, and rank 0 saves the full
model and returns the stage's checkpoint row. The global batch, the schedule and the examples
are those of one process (:class:`training.trainer.BatchPlan`), so the updates are the same up
to the order of float sums. On a machine without GPUs the ranks share its cores over gloo:
that is how the tests check it (``tests/test_ranks.py``).

:func:`call`'s ``sharding`` (``execution.train_sharding``) says how the ranks share the model.
``ddp`` (the default): every rank keeps all of the weights, gradients and AdamW states, and the
gradients are averaged before each update. ``fsdp``: each rank keeps ``1/N`` of each (PyTorch
FSDP2, :mod:`training.fsdp`), so a model whose float32 training states do not fit one GPU (a
7B model's take 112 GB) can be fully fine-tuned over several; rank 0 gathers the trained
weights and saves the same plain Hugging Face folder. The ranks learn the choice from the
``SYNTHDATA_TRAIN_SHARDING`` variable that :func:`call` sets for them
(:data:`training.trainer.SHARDING_ENV`).

Why torchrun and not ``accelerate launch``: accelerate's launcher starts several processes only
on GPUs (or under MPI), while torchrun starts them on GPUs and CPUs alike, and accelerate's
``Accelerator`` reads torchrun's environment (NCCL on GPUs, gloo on CPUs).

The stage's function and arguments go to the ranks in a pickle beside the checkpoint folder;
rank 0 prints the log and the progress lines (which the stage passes on, so its progress bar
works as in one process) and pickles the result back. The ranks die with the stage: a
``SIGTERM``, Ctrl-C or an error in the stage stops them, and so does the stage's own death
(Linux's parent-death signal).
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthdata_assets.models import seeded
from synthdata_assets.orchestrate import die_with_parent
from synthdata_assets.terminal import PROGRESS_MARK, parse_progress, progress_logger
from training.progress import Progress, no_progress
from training.trainer import SHARDING_ENV, Sharding, is_main_rank

Log = Callable[[str], None]


def call(
    train: Callable[..., Any],
    *,
    processes: int,
    folder: Path,
    seed: int,
    log: Log,
    progress: Progress,
    sharding: Sharding = "ddp",
) -> Any:
    """``train(folder=, seed=, log=, progress=)`` in this process, or over ``processes``
    ranks sharing the model as ``sharding`` says (see the module docstring); its result
    (rank 0's)."""
    if processes <= 1:
        return train(folder=folder, seed=seed, log=log, progress=progress)
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec, result = (folder.parent / f".{folder.name}.ranks-{part}.pkl" for part in ("in", "out"))
    result.unlink(missing_ok=True)
    spec.write_bytes(pickle.dumps({"train": train, "folder": folder, "seed": seed}))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={processes}", "-m", __name__, str(spec), str(result),
    ]  # fmt: skip
    log(f"training over {processes} ranks ({sharding}): {' '.join(command[1:])}")
    ranks = subprocess.Popen(
        command,
        env={**os.environ, SHARDING_ENV: sharding},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # SIGTERM: torchrun passes it on to the ranks.
        preexec_fn=functools.partial(die_with_parent, signal.SIGTERM),
    )
    try:
        assert ranks.stdout is not None
        for line in ranks.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_MARK):
                done, total, figures = _progress_figures(line)
                progress(done, total, **figures)
            elif line:
                log(line)
        code = ranks.wait()
    finally:
        if ranks.poll() is None:  # the stage is stopping: so do the ranks
            ranks.send_signal(signal.SIGTERM)
            ranks.wait()
        spec.unlink(missing_ok=True)
    if code != 0 or not result.exists():
        raise RuntimeError(
            f"training over {processes} ranks failed (torchrun exit {code}); the ranks' output "
            "is in the stage's log above"
        )
    try:
        return pickle.loads(result.read_bytes())
    finally:
        result.unlink(missing_ok=True)


def _progress_figures(line: str) -> tuple[int, int, dict[str, float]]:
    """``done``, ``total`` and the figures of a ``progress:`` line (as
    :func:`synthdata_assets.terminal.progress_logger` writes it)."""
    parsed = parse_progress(line)
    if parsed is None:
        return 0, 0, {}
    done, total, _unit, rest = parsed
    figures = {}
    for item in rest.split():
        name, _, value = item.partition("=")
        try:
            figures[name] = float(value.replace(",", ""))
        except ValueError:
            continue
    return done, total, figures


def main(spec: str, result: str) -> None:
    """One rank: run the stage's training; rank 0 writes the result."""
    loaded = pickle.loads(Path(spec).read_bytes())
    main_rank = is_main_rank()
    seeded(loaded["seed"])
    out = loaded["train"](
        folder=loaded["folder"],
        seed=loaded["seed"],
        log=(lambda message: print(message, flush=True)) if main_rank else (lambda _m: None),
        progress=progress_logger(lambda m: print(m, flush=True), "updates")
        if main_rank
        else no_progress,
    )
    if main_rank:
        target = Path(result)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(pickle.dumps(out))
        os.replace(partial, target)


if __name__ == "__main__":
    main(*sys.argv[1:])
