"""What the supervised and DPO trainers share: tokens, batches, schedule and the update loop.

:func:`training.sft.train_sft` and :func:`training.dpo.train_dpo` differ in the loss of a
micro-batch; everything around it is here.

Tokens of a sequence
--------------------
``tokenizer(prompt)`` (with the tokenizer's own special tokens, i.e. ``<bos>`` where it adds
one) followed by ``tokenizer(completion, add_special_tokens=False)`` and, where asked, the EOS
token (:func:`encode_response`). Prompt and completion are encoded separately, exactly as
generation sees them: the sampler encodes the prompt alone and continues from its last token.
Labels are the token ids on the completion and ``-100`` (:data:`IGNORE_INDEX`) on the prompt
and on padding (:func:`collate_examples` pads on the right).

Batches and schedule
--------------------
A run trains ``batch_size`` examples per optimizer update, over all processes and
accumulation steps together (:class:`BatchPlan`). ``micro_batch_size`` (the argument, else
``training.micro_batch_size``, else the whole batch) caps the examples per forward pass; the
run accumulates gradients over ``ceil(batch_size / (micro_batch_size * processes))``
micro-batches, so a 7B model keeps the same effective batch as the tiny one. Each trainer
scales its micro-batch losses so that the accumulated gradient is the whole batch's (SFT:
per token of the update, DPO: per pair weight of the update), not a mean of micro-batch
means. An epoch is a seeded permutation of the examples cut
into ``ceil(n / batch_size)`` full batches (the last one topped up from the start of the same
permutation). To save padding, batches are formed from chunks of 8 batches sorted by length,
and their order is then shuffled; all of it is a function of ``seed`` and the epoch
(:func:`micro_batches`). ``max_steps``, when given, overrides the epochs: the run makes
exactly that many updates, reshuffling at each pass over the data.

Optimiser: AdamW (betas 0.9/0.95, weight decay on matrices only, :func:`param_groups`),
linear warmup over ``warmup_ratio`` of the updates, cosine decay to zero (:func:`lr_factor`),
gradient-norm clipping at 1.0.

Devices and precision
---------------------
``accelerate.Accelerator`` does device placement, data sharding across processes, gradient
accumulation and synchronisation, backward and clipping, so the same loop runs on a laptop
CPU (``python ...``) and over ranks started by torchrun (:mod:`synthdata_assets.ranks`), one
per GPU or sharing a machine's CPUs over gloo. The ranks are data-parallel (DDP) unless
``SYNTHDATA_TRAIN_SHARDING=fsdp`` (:data:`SHARDING_ENV`, set for the ranks by
:func:`synthdata_assets.ranks.call` from its ``sharding``, i.e. ``execution.train_sharding``):
then :mod:`training.fsdp` shards the parameters, gradients and AdamW states over them, rank 0
(the saver) keeps the caller's model whole in host memory, and
:meth:`TrainingRun.consolidate` loads the trained weights into it at the end. Logging is by the
main process only.

bf16 comes from an explicit ``torch.autocast`` around the forward pass on the accelerator's
device type, as :func:`training.precision.resolve_bf16` decides from ``training.bf16`` and the
hardware, rather than from the Accelerator's ``mixed_precision`` flag: that flag lives in a
process-wide singleton that refuses a second value in the same process (stages with
different settings, tests), and ``prepare`` would leave the model's ``forward`` patched after
training. Weights stay in their own dtype: callers load models for training in float32
(``training.checkpoint.load_for_training``), so AdamW keeps float32 master weights and states
even for a model stored in bf16, whose weights would otherwise lose small updates to
rounding. ``training.gradient_checkpointing`` recomputes activations in the backward pass
(transformers' own, non-reentrant) and is switched off again when the run ends. Thread
counts are the caller's business (``torch.set_num_threads``); when another process keeps a
core busy, two torch threads spin-wait on each other.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from training import fsdp
from training.config import TrainingConfig
from training.precision import resolve_bf16
from training.progress import Progress

IGNORE_INDEX = -100
ADAM_BETAS = (0.9, 0.95)
MAX_GRAD_NORM = 1.0
# Batches sorted by length together; more saves padding, fewer keeps batches more random.
LENGTH_GROUP = 8
# How the ranks of a run share the model (execution.train_sharding), set by their launcher.
SHARDING_ENV = "SYNTHDATA_TRAIN_SHARDING"
Sharding = Literal["ddp", "fsdp"]

Log = Callable[[str], None]
# A micro-batch's loss (to backpropagate) and a per-micro-batch figure the trainer tallies.
LossFunction = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Any]]


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one sequence and its labels (``-100`` on the prompt)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainStats:
    """What a training run did; ``losses`` holds the mean loss of every update."""

    steps: int
    epochs: float
    final_loss: float
    mean_loss_last_10pct: float
    tokens: int
    tokens_per_second: float
    seconds: float
    examples: int = 0
    dropped: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)  # per epoch (train_sft's validate)
    chosen_epoch: int | None = None  # the epoch whose weights were kept, where one was chosen


def encode_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    completion: str,
    *,
    has_eos: bool,
    max_seq_len: int | None = None,
) -> EncodedExample | None:
    """Ids and labels of ``prompt + completion`` (+ EOS iff ``has_eos``); ``None`` if too long."""
    return encode_responses(tokenizer, [(prompt, completion, has_eos)], max_seq_len=max_seq_len)[0]


def encode_responses(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[str, str, bool]],
    *,
    max_seq_len: int | None = None,
) -> list[EncodedExample | None]:
    """:func:`encode_response` of each ``(prompt, completion, has_eos)``, in order.

    Each distinct prompt and completion is tokenized once, all of them in two batched calls:
    a preference stage encodes thousands of pairs that share prompts and sides, and a call per
    string cost it 16 s of Python per 4000 pairs (the ids are the same either way)."""
    if any(has_eos for _, _, has_eos in items) and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could never stop")
    prompts = list(dict.fromkeys(prompt for prompt, _, _ in items))
    completions = list(dict.fromkeys(completion for _, completion, _ in items))
    prompt_ids = dict(zip(prompts, _token_ids(tokenizer, prompts, special=True), strict=True))
    completion_ids = dict(
        zip(completions, _token_ids(tokenizer, completions, special=False), strict=True)
    )
    encoded: list[EncodedExample | None] = []
    for prompt, completion, has_eos in items:
        head, tail = prompt_ids[prompt], completion_ids[completion]
        if has_eos:
            tail = [*tail, tokenizer.eos_token_id]
        if not tail:
            raise ValueError(
                f"the completion {completion!r} has no token to score (empty and without EOS)"
            )
        if max_seq_len is not None and len(head) + len(tail) > max_seq_len:
            encoded.append(None)
            continue
        encoded.append(
            EncodedExample(input_ids=[*head, *tail], labels=[IGNORE_INDEX] * len(head) + tail)
        )
    return encoded


def _token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, special: bool
) -> list[list[int]]:
    """Each text's ids, in one call (no padding, no truncation)."""
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=special)["input_ids"])


def collate_examples(batch: Sequence[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding)."""
    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token, else EOS: many base-model tokenizers have none, and padding
    is masked anyway."""
    pad_id = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad_id is None else pad_id


def is_main_rank() -> bool:
    """Whether this process saves and reports: rank 0 of ranks started by torchrun
    (``RANK``), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def sharding_from_env() -> Sharding:
    """The ranks' sharding, from :data:`SHARDING_ENV` (``ddp`` when unset)."""
    value = os.environ.get(SHARDING_ENV, "ddp")
    if value not in get_args(Sharding):
        raise ValueError(f"{SHARDING_ENV} must be one of {get_args(Sharding)}, got {value!r}")
    return value  # type: ignore[return-value]  # checked against the Literal above


def check_budget(max_steps: int | None, micro_batch_size: int | None) -> None:
    """Reject a negative ``max_steps`` and a ``micro_batch_size`` below 1."""
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")


@dataclass(frozen=True)
class BatchPlan:
    """How a run's updates split into micro-batches over processes and accumulation steps."""

    batch_size: int  # examples per update, all processes together
    processes: int
    micro: int  # examples per forward pass, at most
    accumulation: int  # micro-batches per process and update
    updates_per_epoch: int
    total_updates: int

    @property
    def chunks_per_batch(self) -> int:
        """Micro-batches per update, all processes together."""
        return self.accumulation * self.processes

    def __str__(self) -> str:
        return (
            f"{self.total_updates} updates of {self.batch_size} ({self.processes} process(es) "
            f"x {self.accumulation} x <= {self.micro})"
        )


def plan_batches(
    what: str,
    examples: int,
    config: TrainingConfig,
    max_steps: int | None = None,
    micro_batch_size: int | None = None,
    processes: int = 1,
) -> BatchPlan:
    """The :class:`BatchPlan` of ``examples`` examples with ``config``'s batch size and epochs;
    ``what`` names the run in errors."""
    batch_size, epochs = config.batch_size, config.epochs
    per_process = math.ceil(batch_size / processes)
    micro = min(micro_batch_size or per_process, per_process)
    accumulation = math.ceil(per_process / micro)
    if accumulation * processes > batch_size:
        raise ValueError(
            f"the {what} batch size ({batch_size}) is smaller than processes x accumulation "
            f"steps ({processes} x {accumulation}); raise it or micro_batch_size"
        )
    updates_per_epoch = math.ceil(examples / batch_size)
    total_updates = max_steps if max_steps is not None else epochs * updates_per_epoch
    return BatchPlan(batch_size, processes, micro, accumulation, updates_per_epoch, total_updates)


def micro_batches(lengths: Sequence[int], plan: BatchPlan, *, seed: int) -> list[list[int]]:
    """Example indices of every micro-batch of the run, in order (see the module docstring).

    Each update is ``plan.chunks_per_batch`` consecutive micro-batches; accelerate hands them
    to the processes round-robin, so every process accumulates the same number per update.
    """
    n, batch_size = len(lengths), plan.batch_size
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < plan.total_updates:
        rng = random.Random(f"synthdata.sft/{seed}/{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        order = [order[i % n] for i in range(plan.updates_per_epoch * batch_size)]
        epoch_batches = []
        group = LENGTH_GROUP * batch_size
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=True)
            epoch_batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += epoch_batches
        epoch += 1
    micro: list[list[int]] = []
    for batch in batches[: plan.total_updates]:
        size, extra = divmod(len(batch), plan.chunks_per_batch)
        start = 0
        for chunk in range(plan.chunks_per_batch):
            end = start + size + (chunk < extra)
            micro.append(batch[start:end])
            start = end
    return micro


def lr_factor(update: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier of ``update`` (from 0): linear warmup, then cosine to 0."""
    if update < warmup:
        return (update + 1) / warmup
    progress = (update - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on matrices, none on vectors."""
    # Decaying norm gains and biases pulls them towards zero for no gain.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def run_summary(losses: list[float], updates_per_epoch: int, tokens: int, seconds: float) -> dict:
    """The :class:`TrainStats` fields every trainer derives from its loss curve (NaN if empty)."""
    tail = losses[-max(1, math.ceil(len(losses) / 10)) :]
    return {
        "steps": len(losses),
        "epochs": len(losses) / updates_per_epoch,
        "final_loss": losses[-1] if losses else math.nan,
        "mean_loss_last_10pct": sum(tail) / len(tail) if losses else math.nan,
        "tokens": tokens,
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "seconds": seconds,
        "losses": losses,
    }


class TrainingRun:
    """One run of a trainer: its accelerator, batch plan, precision, optimiser and loss curve.

    Use: construct, :meth:`prepare` the model and data, iterate :meth:`updates`, call
    :meth:`record` with each update's loss, then :meth:`finish` and :meth:`consolidate`.
    Forward passes outside the updates (DPO's reference and scoring passes) run on
    :meth:`place`'s module: under FSDP every rank must run each of them, as each is collective.
    """

    def __init__(
        self,
        what: str,
        examples: int,
        config: TrainingConfig,
        max_steps: int | None = None,
        micro_batch_size: int | None = None,
        *,
        log: Log | None = None,
        progress: Progress | None = None,
    ) -> None:
        """A run named ``what`` in messages, over ``examples`` examples, with ``config``'s
        batch size, epochs, precision and optimiser settings; several processes share the
        model as :func:`sharding_from_env` says."""
        # Ranks started by torchrun on a machine without GPUs: accelerate makes them one
        # data-parallel group over gloo only when told they run on CPUs.
        cpu_ranks = int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=cpu_ranks)
        if micro_batch_size is None:
            micro_batch_size = config.micro_batch_size
        self.plan = plan_batches(
            what, examples, config, max_steps, micro_batch_size, self.accelerator.num_processes
        )
        self.accelerator.gradient_accumulation_steps = self.plan.accumulation
        self.precision = resolve_bf16(config.bf16, self.accelerator.device)
        # One process has nothing to shard over.
        self.fsdp = sharding_from_env() == "fsdp" and self.accelerator.num_processes > 1
        self.given: torch.nn.Module | None = None  # the caller's model, under FSDP
        self.sharded: torch.nn.Module | None = None
        self.what, self.config = what, config
        self.log, self.progress = log, progress
        self.losses: list[float] = []
        self.tokens = 0
        self.start = time.perf_counter()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def where(self) -> str:
        """The device, for the run's first log line; on a CPU with its torch thread count,
        which sets the speed and the order of float sums."""
        if self.device.type == "cpu":
            return f"device cpu ({torch.get_num_threads()} torch thread(s))"
        return f"device {self.device}"

    def emit(self, message: str) -> None:
        """Log ``message`` from the main process."""
        if self.log is not None and self.accelerator.is_main_process:
            self.log(message)

    def autocast(self) -> torch.autocast:
        """The forward pass's autocast context: bf16 iff the run's precision says so."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.bf16)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that trains (accelerate wraps it for DDP) and runs ``model``'s other
        forward passes: ``model`` itself, or under FSDP its shards on this rank (sharded at the
        first call). Rank 0 shards a copy and keeps ``model`` whole on the CPU for
        :meth:`consolidate`; the other ranks shard ``model`` in place, which is then of no use
        alone."""
        if not self.fsdp:
            return model
        if self.sharded is None:
            self.given = model
            if self.accelerator.is_main_process:
                model = copy.deepcopy(model.cpu())
            self.sharded = fsdp.shard(model, self.device, self.accelerator.num_processes)
            here, total = fsdp.local_share(self.sharded)
            self.emit(
                f"FSDP over {self.accelerator.num_processes} ranks: rank 0 keeps {here:,} of "
                f"{total:,} parameter elements, their gradients and AdamW states"
            )
        elif model is not self.given:
            raise ValueError("a run trains one model; place() was given another")
        return self.sharded

    def prepare(
        self,
        model: torch.nn.Module,
        dataset: Sequence,
        batch_sampler: Sequence[list[int]],
        collate_fn: Callable[[list], dict[str, torch.Tensor]],
    ) -> None:
        """Build the loader, AdamW and the schedule, and hand them to accelerate with the
        model (under FSDP, :meth:`place`'s shards, which accelerate must not wrap in DDP)."""
        model = self.place(model)
        if self.fsdp:
            model = fsdp.resharded(model)
        loader = DataLoader(
            dataset,  # type: ignore[arg-type]  # a list is a map-style dataset
            batch_sampler=batch_sampler,
            collate_fn=collate_fn,
        )
        config = self.config
        optimizer = torch.optim.AdamW(
            param_groups(model, config.weight_decay), lr=config.learning_rate, betas=ADAM_BETAS
        )
        total, processes = self.plan.total_updates, self.plan.processes
        warmup = math.ceil(config.warmup_ratio * total)
        # accelerate steps a prepared scheduler once per process at each update.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step // processes, warmup, total)
        )
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        if self.fsdp:
            self.model = model
            self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
                optimizer, loader, scheduler
            )
            return
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, loader, scheduler
        )

    def updates(self, loss_function: LossFunction) -> Iterator[list[tuple[float, Any]]]:
        """Train on every micro-batch; after each optimizer update, yield the ``(loss, tally)``
        of this process's micro-batches of that update."""
        self.start = time.perf_counter()
        done: list[tuple[float, Any]] = []
        for batch in self.loader:
            with self.accelerator.accumulate(self.model):
                if self.fsdp:
                    # accelerate's accumulate() skips the gradient reduction of the first
                    # micro-batches of an update only for DDP and its own FSDP (through this
                    # switch, Accelerator.no_sync); they accumulate unreduced gradients.
                    self.model.set_requires_gradient_sync(self.accelerator.sync_gradients)
                loss, tally = loss_function(self.model, batch)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            done.append((loss.item(), tally))
            # A batch whose mask is not one flag per token (a DPO pair packed with its 4D mask)
            # counts its tokens itself.
            self.tokens += int(
                batch["tokens"] if "tokens" in batch else batch["attention_mask"].sum()
            )
            if self.accelerator.sync_gradients:
                yield done
                done = []

    def update_loss(self, micro_losses: Sequence[float]) -> float:
        """The loss of a whole update from its micro-batch losses on this process, when each
        was scaled by ``chunks_per_batch`` over the update's total (tokens, pair weights): their
        sum over the accumulation steps, averaged over processes."""
        loss = sum(micro_losses) / self.plan.accumulation
        if self.plan.processes > 1:
            loss = self.accelerator.reduce(torch.tensor(loss, device=self.device), "mean").item()
        return loss

    def record(self, loss: float, **figures: float) -> None:
        """Add an update's loss to the curve, stop on a non-finite one, report progress."""
        self.losses.append(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the {self.what} loss became {loss} at update {len(self.losses)}; lower the "
                f"learning rate ({self.config.learning_rate:g})"
            )
        if self.progress is not None and self.accelerator.is_main_process:
            seconds = time.perf_counter() - self.start
            self.progress(
                len(self.losses),
                self.plan.total_updates,
                loss=loss,
                lr=self.scheduler.get_last_lr()[0],
                tokens_per_s=self.tokens / max(seconds, 1e-9),
                **figures,
            )

    def finish(self, **figures: float) -> dict:
        """Leave the model in eval mode, log the closing line (with ``figures``) and return the
        :class:`TrainStats` fields of the run."""
        summary = run_summary(
            self.losses, self.plan.updates_per_epoch, self.tokens, time.perf_counter() - self.start
        )
        model = self.accelerator.unwrap_model(self.model)
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
        self.accelerator.free_memory()
        shown = {
            "final loss": summary["final_loss"],
            "last 10% loss": summary["mean_loss_last_10pct"],
            **{name.replace("_", " "): value for name, value in figures.items()},
        }
        self.emit(
            f"{self.what} done: {summary['steps']} updates in {summary['seconds']:.1f}s, "
            + ", ".join(f"{name} {value:.4f}" for name, value in shown.items())
            + f", {summary['tokens_per_second']:,.0f} tokens/s"
        )
        return summary

    def consolidate(self) -> None:
        """Under FSDP, load the trained weights into the caller's model on rank 0 (gathered
        from every rank: all must call this) and move it to the run's device, as DDP leaves
        it; nothing otherwise. The run's sharded model and optimizer are released first."""
        if self.sharded is None:
            return
        full = fsdp.full_state_dict(self.sharded)
        del self.model, self.optimizer
        self.sharded = None
        self.accelerator.free_memory()
        if self.accelerator.is_main_process:
            assert self.given is not None  # set with self.sharded
            self.given.load_state_dict(full)
            self.given.to(self.device).eval()
        self.given = None
