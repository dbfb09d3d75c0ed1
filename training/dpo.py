"""Direct preference optimisation (Rafailov et al. 2023): plain DPO, per-step DPO, weighted DPO.

A pair is a :class:`PreferenceExample`: one prompt, a preferred (``chosen``) and a dispreferred
(``rejected``) completion. The loss of a pair is ::

    -logsigmoid(beta * ((log pi(chosen) - log ref(chosen))
                        - (log pi(rejected) - log ref(rejected))))

where ``log pi(y)`` is the sum of the policy's token log-probabilities of the completion given
the prompt, and ``ref`` is the frozen starting policy (pi_sft).

Why not TRL's ``DPOTrainer``: TRL is not a dependency here, it pulls in ``datasets``, and its
``tokenize_row`` appends EOS to every chosen and rejected completion, while a per-step DPO
negative (a solution cut right after its first wrong step) must get none. This module gives
exact control over which responses end with EOS, and reuses the SFT trainer's tokens,
batching, schedule and accelerate loop.

Tokens and masks
----------------
Each sequence is encoded exactly as :func:`training.sft.encode_example` does:
``tokenizer(prompt)`` (with its special tokens, i.e. ``<bos>``) followed by
``tokenizer(completion, add_special_tokens=False)``, so token boundaries match SFT and
sampling. EOS is appended **only** when the response's ``*_has_eos`` flag is set. Log-probs
are summed over exactly those completion tokens (plus that EOS); never over the prompt or
padding. A truncated negative therefore says "these steps are worse than the chosen ones",
not "stopping here is bad". A pair whose chosen or rejected sequence is longer than
``max_seq_len`` is dropped (counted in :class:`DPOStats`); if all are, :func:`train_dpo`
raises ``ValueError``. A response with no token to score (empty text and no EOS) is an error.

Reference log-probs
-------------------
Computed **once**, before any update: ``reference_model`` if given, else ``model`` itself
(so no second copy of the model stays in memory), in eval mode, without gradients, batched by
length, under the same bf16 autocast setting as training (so at the first update the policy
and the reference agree and the loss is ``log 2``). They are stored per pair. With several
processes each scores a share of the pairs and the shares are summed across processes.

Weights
-------
``weights`` (default all 1.0) scale each pair's loss; an update's loss is
``sum(w_i * loss_i) / sum(w_i)`` over its whole batch (over all micro-batches and processes),
which is plain DPO's mean when the weights are equal. This is the advantage-weighted variant's
hook. Pairs of weight 0 are removed before batching (counted in ``DPOStats.zero_weight``), so
training with them is bit-identical to training without them. Weights must be finite and >= 0.

Batches, schedule, devices
--------------------------
As in :mod:`training.sft`: ``batch_size`` pairs per update over all processes and
accumulation steps, ``micro_batch_size`` pairs per forward pass (a forward pass holds
``2 x micro`` sequences: the chosen ones, then the rejected ones), seeded length-grouped
batches from :func:`training.sft._micro_batches` (keyed on the longer sequence of each pair),
AdamW with ``config.weight_decay`` on matrices, linear warmup over ``config.warmup_ratio`` then
cosine decay, gradient clipping at 1.0, bf16 autocast when ``config.bf16``, ``accelerate`` for
devices and several processes. ``max_steps`` overrides ``epochs``. The model is trained in
place and left in eval mode.

Statistics
----------
``reward_accuracy`` is the share of pairs whose implicit reward
``beta * (log pi - log ref)`` is higher for the chosen response, and ``mean_margin`` the mean
of ``reward(chosen) - reward(rejected)``, both over the last epoch's updates (the last
``ceil(pairs / batch_size)`` updates), measured at the forward pass of each update, i.e. just
before its optimizer step, and summed over processes. ``losses`` holds each update's weighted
loss over its whole batch, all processes included (one scalar all-reduce per update).
Checked under ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2`` with uneven pair weights:
it matches one process accumulating the same micro-batches (equal losses and reward
statistics, weights equal up to float summation order).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.config import TrainingConfig
from training.sft import (
    ADAM_BETAS,
    IGNORE_INDEX,
    MAX_GRAD_NORM,
    EncodedExample,
    TrainStats,
    _lr_factor,
    _micro_batches,
    _param_groups,
    _run_summary,
    collate_examples,
)

# Progress lines per run, about.
_LOG_LINES = 20


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair; a per-step DPO ``rejected`` is cut, with ``rejected_has_eos=False``."""

    prompt: str
    chosen: str
    rejected: str
    chosen_has_eos: bool = True
    rejected_has_eos: bool = True


@dataclass
class DPOStats(TrainStats):
    """:class:`training.sft.TrainStats` plus the preference statistics of the last epoch."""

    reward_accuracy: float = math.nan
    mean_margin: float = math.nan
    zero_weight: int = 0
    reference_seconds: float = 0.0


@dataclass(frozen=True)
class _Pair:
    chosen: EncodedExample
    rejected: EncodedExample
    weight: float

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass(frozen=True)
class _Slot:
    """One pair's place in one update; ``scale`` turns its weighted loss into the update's."""

    pair: int
    scale: float


def encode_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    completion: str,
    *,
    has_eos: bool,
    max_seq_len: int | None = None,
) -> EncodedExample | None:
    """Ids and labels of ``prompt + completion`` (+ EOS iff ``has_eos``); ``None`` if too long.

    With ``has_eos=True`` this is exactly :func:`training.sft.encode_example`.
    """
    if has_eos and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could never stop")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if has_eos:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    if not completion_ids:
        raise ValueError(
            f"the completion {completion!r} has no token to score (empty and without EOS)"
        )
    if max_seq_len is not None and len(prompt_ids) + len(completion_ids) > max_seq_len:
        return None
    return EncodedExample(
        input_ids=[*prompt_ids, *completion_ids],
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    )


def sequence_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    has_eos: Sequence[bool] | bool = True,
    *,
    batch_size: int = 8,
    bf16: bool = False,
) -> list[float]:
    """Summed log-probability of each completion (+ EOS iff ``has_eos``) given its prompt.

    Runs on the model's device, in eval mode, without gradients; the model's mode is restored.
    Nothing is truncated.
    """
    if isinstance(has_eos, bool):
        has_eos = [has_eos] * len(prompts)
    if not len(prompts) == len(completions) == len(has_eos):
        raise ValueError("prompts, completions and has_eos must have the same length")
    encoded = [
        encode_response(tokenizer, p, c, has_eos=e)
        for p, c, e in zip(prompts, completions, has_eos, strict=True)
    ]
    pad_id = _pad_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        sums = _score(model, encoded, pad_id, batch_size=batch_size, device=device, bf16=bf16)
    finally:
        model.train(was_training)
    return sums.tolist()


def train_dpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[PreferenceExample],
    *,
    beta: float,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    config: TrainingConfig,
    seed: int,
    max_seq_len: int,
    log: Callable[[str], None] | None = None,
    reference_model: PreTrainedModel | None = None,
    micro_batch_size: int | None = None,
    max_steps: int | None = None,
    weights: Sequence[float] | None = None,
) -> DPOStats:
    """Train ``model`` in place with DPO on ``examples``; see the module docstring.

    ``config`` supplies ``weight_decay``, ``warmup_ratio`` and ``bf16``; the step size, number
    of epochs and batch size are arguments so that callers can pass the DPO-specific ones.
    """
    if beta <= 0 or learning_rate <= 0:
        raise ValueError(f"beta and learning_rate must be > 0, got {beta} and {learning_rate}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if not examples:
        raise ValueError("train_dpo needs at least one preference pair")
    if weights is None:
        weights = [1.0] * len(examples)
    if len(weights) != len(examples):
        raise ValueError(f"{len(weights)} weights for {len(examples)} pairs")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError("pair weights must be finite and >= 0")

    zero_weight = sum(w == 0 for w in weights)
    pairs: list[_Pair] = []
    dropped = 0
    for example, weight in zip(examples, weights, strict=True):
        if weight == 0:
            continue
        chosen, rejected = (
            encode_response(tokenizer, example.prompt, text, has_eos=eos, max_seq_len=max_seq_len)
            for text, eos in (
                (example.chosen, example.chosen_has_eos),
                (example.rejected, example.rejected_has_eos),
            )
        )
        if chosen is None or rejected is None:
            dropped += 1
        else:
            pairs.append(_Pair(chosen, rejected, float(weight)))
    if not pairs:
        if zero_weight == len(examples):
            raise ValueError("every preference pair has weight 0; nothing to train on")
        raise ValueError(
            f"all {len(examples) - zero_weight} pairs with a non-zero weight are longer than "
            f"max_seq_len={max_seq_len} tokens; raise model.max_seq_len"
        )
    if max_steps == 0:
        return DPOStats(
            steps=0,
            epochs=0.0,
            final_loss=math.nan,
            mean_loss_last_10pct=math.nan,
            tokens=0,
            tokens_per_second=0.0,
            seconds=0.0,
            examples=len(pairs),
            dropped=dropped,
            zero_weight=zero_weight,
        )
    pad_id = _pad_id(tokenizer)

    accelerator = Accelerator()
    processes = accelerator.num_processes

    def emit(message: str) -> None:
        if log is not None and accelerator.is_main_process:
            log(message)

    per_process = math.ceil(batch_size / processes)
    micro = min(micro_batch_size or per_process, per_process)
    accumulation = math.ceil(per_process / micro)
    chunks_per_batch = accumulation * processes
    if chunks_per_batch > batch_size:
        raise ValueError(
            f"the DPO batch size ({batch_size}) is smaller than processes x accumulation "
            f"steps ({processes} x {accumulation}); raise it or micro_batch_size"
        )
    accelerator.gradient_accumulation_steps = accumulation

    # The reference, once, before any update.
    reference_start = time.perf_counter()
    reference = _reference_logprobs(
        reference_model if reference_model is not None else model,
        pairs,
        pad_id,
        accelerator=accelerator,
        batch_size=micro,
        bf16=config.bf16,
        restore_device=reference_model is not None,
    )
    reference_seconds = time.perf_counter() - reference_start
    reference_tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
    emit(
        f"reference log-probs of {len(pairs)} pairs in {reference_seconds:.1f}s "
        f"({reference_tokens / max(reference_seconds, 1e-9):,.0f} tokens/s)"
    )

    updates_per_epoch = math.ceil(len(pairs) / batch_size)
    total_updates = max_steps if max_steps is not None else epochs * updates_per_epoch
    micro_batches = _micro_batches(
        [pair.length for pair in pairs],
        batch_size=batch_size,
        chunks_per_batch=chunks_per_batch,
        total_updates=total_updates,
        seed=seed,
    )
    # Normalise each update by its total weight, over all of its micro-batches: accelerate
    # divides each micro-batch loss by the accumulation steps and DDP averages over processes,
    # so a micro-batch contributes chunks_per_batch * sum(w * loss) / sum_update(w).
    slots: list[_Slot] = []
    batches: list[list[int]] = []
    for update in range(total_updates):
        chunk = micro_batches[update * chunks_per_batch : (update + 1) * chunks_per_batch]
        total_weight = sum(pairs[i].weight for mb in chunk for i in mb)
        for mb in chunk:
            batches.append(list(range(len(slots), len(slots) + len(mb))))
            slots += [_Slot(i, chunks_per_batch / total_weight) for i in mb]

    def collate(batch: Sequence[_Slot]) -> dict[str, torch.Tensor]:
        chosen = [pairs[slot.pair].chosen for slot in batch]
        rejected = [pairs[slot.pair].rejected for slot in batch]
        collated = collate_examples([*chosen, *rejected], pad_id)
        index = torch.tensor([slot.pair for slot in batch])
        collated["reference"] = reference[index]
        collated["weight"] = torch.tensor([pairs[slot.pair].weight for slot in batch])
        collated["scale"] = torch.tensor([slot.scale for slot in batch])
        return collated

    loader = DataLoader(
        slots,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_sampler=batches,
        collate_fn=collate,
    )
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=learning_rate, betas=ADAM_BETAS
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
        f"DPO (beta {beta}) on {len(pairs)} pairs ({dropped} dropped as longer than "
        f"{max_seq_len} tokens, {zero_weight} of weight 0): {total_updates} updates of "
        f"{batch_size} ({processes} process(es) x {accumulation} x <= {micro}), "
        f"device {accelerator.device}, bf16 autocast {config.bf16}"
    )

    losses: list[float] = []
    # Per update, this process's [pairs, chosen reward higher, sum of margins].
    update_counts: list[torch.Tensor] = []
    counts = torch.zeros(3, dtype=torch.float64)
    tokens = 0
    step_losses: list[float] = []
    log_every = max(1, total_updates // _LOG_LINES)
    last_log_time, last_log_tokens = time.perf_counter(), 0
    start = last_log_time
    for batch in loader:
        with accelerator.accumulate(prepared):
            sums = _logprob_sums(
                prepared, batch, device_type=accelerator.device.type, bf16=config.bf16
            )
            chosen, rejected = sums.chunk(2)
            ref = batch["reference"]
            reward_chosen = beta * (chosen - ref[:, 0])
            reward_rejected = beta * (rejected - ref[:, 1])
            pair_losses = -F.logsigmoid(reward_chosen - reward_rejected)
            loss = (pair_losses * batch["weight"]).sum() * batch["scale"][0]
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(prepared.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        margin = (reward_chosen - reward_rejected).detach().double().cpu()
        counts += torch.tensor([len(margin), float((margin > 0).sum()), float(margin.sum())])
        step_losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        if not accelerator.sync_gradients:
            continue
        # Micro-batch losses are pre-scaled so that this is the update's loss with one process,
        # and this process's share times the processes with several (so their mean is exact).
        update_loss = sum(step_losses) / accumulation
        if processes > 1:
            update_loss = accelerator.reduce(
                torch.tensor(update_loss, device=accelerator.device), "mean"
            ).item()
        losses.append(update_loss)
        update_counts.append(counts)
        step_losses, counts = [], torch.zeros(3, dtype=torch.float64)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(
                f"the DPO loss became {losses[-1]} at update {len(losses)}; "
                "lower training.dpo_learning_rate"
            )
        if len(losses) % log_every == 0 or len(losses) == total_updates:
            now = time.perf_counter()
            recent = losses[-log_every:]
            seen = torch.stack(update_counts[-log_every:]).sum(0)
            emit(
                f"update {len(losses)}/{total_updates} loss {sum(recent) / len(recent):.4f} "
                f"reward accuracy {seen[1] / seen[0]:.3f} margin {seen[2] / seen[0]:.3f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} "
                f"{(tokens - last_log_tokens) / max(now - last_log_time, 1e-9):,.0f} tokens/s"
            )
            last_log_time, last_log_tokens = now, tokens
    seconds = time.perf_counter() - start

    last_epoch = torch.stack(update_counts[-updates_per_epoch:]).sum(0)
    if processes > 1:
        last_epoch = accelerator.reduce(last_epoch.to(accelerator.device), "sum").cpu()
    accelerator.unwrap_model(prepared).eval()
    accelerator.free_memory()
    return DPOStats(
        **_run_summary(losses, updates_per_epoch, tokens, seconds),
        examples=len(pairs),
        dropped=dropped,
        reward_accuracy=float(last_epoch[1] / last_epoch[0]),
        mean_margin=float(last_epoch[2] / last_epoch[0]),
        zero_weight=zero_weight,
        reference_seconds=reference_seconds,
    )


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # Many base-model tokenizers have no pad token; padding is masked anyway.
    pad_id = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad_id is None else pad_id


def _logprob_sums(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, device_type: str, bf16: bool
) -> torch.Tensor:
    """Per row, the sum of log p(label) over positions whose label is not ``-100``."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets.ne(IGNORE_INDEX)
    picked = torch.gather(logits, -1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return torch.where(mask, token_logps, 0.0).sum(-1)


@torch.no_grad()
def _score(
    model: torch.nn.Module,
    encoded: Sequence[EncodedExample],
    pad_id: int,
    *,
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> torch.Tensor:
    """Log-prob sums of ``encoded`` (float32, on the CPU), in batches sorted by length."""
    out = torch.zeros(len(encoded), dtype=torch.float32)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate_examples([encoded[i] for i in rows], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out[rows] = _logprob_sums(model, batch, device_type=device.type, bf16=bf16).cpu()
    return out


def _reference_logprobs(
    reference: torch.nn.Module,
    pairs: Sequence[_Pair],
    pad_id: int,
    *,
    accelerator: Accelerator,
    batch_size: int,
    bf16: bool,
    restore_device: bool,
) -> torch.Tensor:
    """``(pairs, 2)`` reference log-prob sums (chosen, rejected); each process scores a share."""
    was_training = reference.training
    original_device = next(reference.parameters()).device
    reference.to(accelerator.device).eval()
    rank, processes = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(pairs), processes))
    sequences = [pairs[i].chosen for i in mine] + [pairs[i].rejected for i in mine]
    try:
        # batch_size pairs per forward pass, i.e. as many sequences as a training micro-batch.
        scores = _score(
            reference,
            sequences,
            pad_id,
            batch_size=2 * batch_size,
            device=accelerator.device,
            bf16=bf16,
        )
    finally:
        reference.train(was_training)
    result = torch.zeros(len(pairs), 2, dtype=torch.float32)
    result[mine, 0] = scores[: len(mine)]
    result[mine, 1] = scores[len(mine) :]
    if processes > 1:  # every pair is scored by one process; the others add zeros
        result = accelerator.reduce(result.to(accelerator.device), "sum").cpu()
    if restore_device and original_device != accelerator.device:
        reference.to(original_device)  # a separate reference goes back where it came from
    return result
