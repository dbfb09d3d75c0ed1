"""The supervised trainer: pretraining, SFT and RFT all go through :func:`train_sft`.

Examples are ``(prompt, completion)`` text pairs (build them with
:func:`training.prompts.format_example`). The loss is the mean cross-entropy over completion
tokens only; prompt tokens and padding carry the label ``-100``. Pretraining passes an empty
prompt, so the loss covers the whole text.

Tokens of an example
--------------------
``tokenizer(prompt)`` (with the tokenizer's own special tokens, i.e. ``<bos>`` where it adds
one) followed by ``tokenizer(completion, add_special_tokens=False)`` and the EOS token. Prompt
and completion are encoded separately, exactly as generation sees them: the sampler encodes
the prompt alone and continues from its last token. An example longer than ``max_seq_len``
is **dropped**, not truncated: a cut solution would teach a model to stop mid-solution (or
never see the answer line), and the dropped count is logged and returned in
:class:`TrainStats`. If no example fits, :func:`train_sft` raises ``ValueError``.

Batches and schedule
--------------------
``config.batch_size`` is the number of examples per optimizer update, over all processes
and accumulation steps together. ``micro_batch_size`` (default: the whole batch) caps the
examples per forward pass; the trainer accumulates gradients over
``ceil(batch_size / (micro_batch_size * processes))`` micro-batches, so a 7B model keeps the
same effective batch as the tiny one. An epoch is a seeded permutation of the examples cut
into ``ceil(n / batch_size)`` full batches (the last one topped up from the start of the same
permutation). To save padding, batches are formed from chunks of 8 batches sorted by length,
and their order is then shuffled; all of it is a function of ``seed`` and the epoch.

An update's loss is the mean over its micro-batches of their per-token means (the usual
accumulation; equal to the per-token mean of the whole batch when it is one micro-batch).
``TrainStats.losses`` records it per update, as seen by the main process.

``max_steps``, when given, overrides ``config.epochs``: training runs exactly that many
updates, reshuffling at each pass over the data (pretraining uses this). Otherwise it runs
``config.epochs`` passes.

Optimiser: AdamW (betas 0.9/0.95, weight decay on matrices only), linear warmup over
``warmup_ratio`` of the updates, cosine decay to zero, gradient-norm clipping at 1.0.

Devices and precision
---------------------
``accelerate.Accelerator`` does device placement, data sharding across processes, gradient
accumulation and synchronisation, backward and clipping, so the same loop runs on a laptop
CPU (``python ...``) and on several GPUs (``accelerate launch ...``, DDP/FSDP/DeepSpeed from
its config). Two CPU processes under ``torchrun`` matched one process accumulating the same
micro-batches (bit-identical weights with one micro-batch per process and update, equal up to
float summation order with several). Progress is logged by the main process only.

bf16 comes from an explicit ``torch.autocast`` around the forward pass on the accelerator's
device type when ``config.bf16`` is set, rather than from the Accelerator's
``mixed_precision`` flag: that flag lives in a process-wide singleton that refuses a second
value in the same process (stages with different settings, tests), and ``prepare`` would
leave the model's ``forward`` patched after training. Weights stay in their own dtype
(float32 for the tiny model). Thread counts are the caller's business
(``torch.set_num_threads``); when another process keeps a core busy, two torch threads
spin-wait on each other and run many times slower than one.

The model is trained in place and left in eval mode on the accelerator's device.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.config import TrainingConfig

IGNORE_INDEX = -100
ADAM_BETAS = (0.9, 0.95)
MAX_GRAD_NORM = 1.0
# Batches sorted by length together; more saves padding, fewer keeps batches more random.
_LENGTH_GROUP = 8
# Progress lines per run, about.
_LOG_LINES = 20


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example and its labels (``-100`` on the prompt)."""

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


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, *, max_seq_len: int
) -> EncodedExample | None:
    """Token ids and labels of one example, or ``None`` if it exceeds ``max_seq_len``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could never stop")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = [*completion_ids, tokenizer.eos_token_id]
    if len(prompt_ids) + len(completion_ids) > max_seq_len:
        return None
    return EncodedExample(
        input_ids=[*prompt_ids, *completion_ids],
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    )


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


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[str, str]],
    *,
    config: TrainingConfig,
    seed: int,
    max_seq_len: int,
    log: Callable[[str], None] | None = None,
    max_steps: int | None = None,
    micro_batch_size: int | None = None,
) -> TrainStats:
    """Fine-tune ``model`` in place on ``(prompt, completion)`` pairs; see the module docstring."""
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if not examples:
        raise ValueError("train_sft needs at least one example")
    if max_steps == 0:
        return TrainStats(0, 0.0, math.nan, math.nan, 0, 0.0, 0.0, examples=len(examples))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # many base-model tokenizers have none; padding is masked anyway
        pad_id = tokenizer.eos_token_id

    encoded = [encode_example(tokenizer, p, c, max_seq_len=max_seq_len) for p, c in examples]
    kept = [example for example in encoded if example is not None]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise ValueError(
            f"all {len(encoded)} examples are longer than max_seq_len={max_seq_len} tokens; "
            "raise model.max_seq_len"
        )

    accelerator = Accelerator()
    processes = accelerator.num_processes

    def emit(message: str) -> None:
        if log is not None and accelerator.is_main_process:
            log(message)

    per_process = math.ceil(config.batch_size / processes)
    micro = min(micro_batch_size or per_process, per_process)
    accumulation = math.ceil(per_process / micro)
    chunks_per_batch = accumulation * processes
    if chunks_per_batch > config.batch_size:
        raise ValueError(
            f"training.batch_size ({config.batch_size}) is smaller than processes x accumulation "
            f"steps ({processes} x {accumulation}); raise it or micro_batch_size"
        )
    accelerator.gradient_accumulation_steps = accumulation

    updates_per_epoch = math.ceil(len(kept) / config.batch_size)
    total_updates = max_steps if max_steps is not None else config.epochs * updates_per_epoch
    micro_batches = _micro_batches(
        [len(example.input_ids) for example in kept],
        batch_size=config.batch_size,
        chunks_per_batch=chunks_per_batch,
        total_updates=total_updates,
        seed=seed,
    )
    loader = DataLoader(
        kept,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_sampler=micro_batches,
        collate_fn=lambda batch: collate_examples(batch, pad_id),
    )
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.learning_rate, betas=ADAM_BETAS
    )
    warmup = math.ceil(config.warmup_ratio * total_updates)
    # accelerate steps a prepared scheduler once per process at each update.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step // processes, warmup, total_updates)
    )
    model.train()
    prepared, optimizer, loader, scheduler = accelerator.prepare(
        model, optimizer, loader, scheduler
    )
    emit(
        f"training on {len(kept)} examples ({dropped} dropped as longer than {max_seq_len} "
        f"tokens): {total_updates} updates of {config.batch_size} "
        f"({processes} process(es) x {accumulation} x <= {micro}), device {accelerator.device}, "
        f"bf16 autocast {config.bf16}"
    )

    losses: list[float] = []
    tokens = 0
    step_losses: list[float] = []
    log_every = max(1, total_updates // _LOG_LINES)
    last_log_time, last_log_tokens = time.perf_counter(), 0
    start = last_log_time
    for batch in loader:
        with accelerator.accumulate(prepared):
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = prepared(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(prepared.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step_losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        if not accelerator.sync_gradients:
            continue
        losses.append(sum(step_losses) / len(step_losses))
        step_losses = []
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(
                f"the training loss became {losses[-1]} at update {len(losses)}; "
                "lower training.learning_rate"
            )
        if len(losses) % log_every == 0 or len(losses) == total_updates:
            now = time.perf_counter()
            recent = losses[-log_every:]
            emit(
                f"update {len(losses)}/{total_updates} loss {sum(recent) / len(recent):.4f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} "
                f"{(tokens - last_log_tokens) / max(now - last_log_time, 1e-9):,.0f} tokens/s"
            )
            last_log_time, last_log_tokens = now, tokens
    seconds = time.perf_counter() - start

    accelerator.unwrap_model(prepared).eval()
    accelerator.free_memory()
    return TrainStats(
        **_run_summary(losses, updates_per_epoch, tokens, seconds),
        examples=len(kept),
        dropped=dropped,
    )


def _run_summary(losses: list[float], updates_per_epoch: int, tokens: int, seconds: float) -> dict:
    """The :class:`TrainStats` fields every trainer (SFT, DPO) derives from its loss curve."""
    tail = losses[-max(1, math.ceil(len(losses) / 10)) :]
    return {
        "steps": len(losses),
        "epochs": len(losses) / updates_per_epoch,
        "final_loss": losses[-1],
        "mean_loss_last_10pct": sum(tail) / len(tail),
        "tokens": tokens,
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "seconds": seconds,
        "losses": losses,
    }


def _micro_batches(
    lengths: Sequence[int],
    *,
    batch_size: int,
    chunks_per_batch: int,
    total_updates: int,
    seed: int,
) -> list[list[int]]:
    """Example indices of every micro-batch of the run, in order (see the module docstring).

    Each update is ``chunks_per_batch`` consecutive micro-batches; accelerate hands them to
    the processes round-robin, so every process accumulates the same number per update.
    """
    n = len(lengths)
    updates_per_epoch = math.ceil(n / batch_size)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_updates:
        rng = random.Random(f"synthdata.sft/{seed}/{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        order = [order[i % n] for i in range(updates_per_epoch * batch_size)]
        epoch_batches = []
        group = _LENGTH_GROUP * batch_size
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=True)
            epoch_batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += epoch_batches
        epoch += 1
    micro: list[list[int]] = []
    for batch in batches[:total_updates]:
        size, extra = divmod(len(batch), chunks_per_batch)
        start = 0
        for chunk in range(chunks_per_batch):
            end = start + size + (chunk < extra)
            micro.append(batch[start:end])
            start = end
    return micro


def _lr_factor(update: int, warmup: int, total: int) -> float:
    if update < warmup:
        return (update + 1) / warmup
    progress = (update - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay only matrices: decaying norm gains and biases pulls them towards zero for no gain.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
