"""Completion log-probabilities without the whole vocabulary's float32 logits.

A causal LM's output head turns every position's hidden state into one logit per vocabulary
entry, and the trainers need them in float32. For Qwen2.5's 152k entries a micro-batch of
8 x 1024 positions is 1.25 G logits: 5 GB in float32, as much again for the log-softmax, and
both kept for the backward pass. With ``training.logprob_chunk: N`` the trainers instead run
the model's decoder once and the head on **scored positions only** (the completion tokens,
not the prompt or the padding), ``N`` at a time, each chunk under activation checkpointing,
so the backward pass recomputes a chunk's logits instead of keeping them: at most
``N x vocabulary`` float32 logits exist at once. The SFT loss, DPO's log-probability sums
and the KL to the reference all go through it; the values are those of the model's own full
logits, up to float rounding (``tests/test_training.py``).

Why hand-written: transformers' ``logits_to_keep`` keeps the last positions of every row,
not a chosen set per row; Liger's fused linear cross-entropy is a Triton (GPU-only) kernel
and not a dependency here.

The decoder's output is caught with a forward hook while the model runs its own ``forward``
(with ``logits_to_keep=1``, so its logits are one position per row), because DDP, FSDP and
accelerate hook that ``forward``: calling the decoder directly would bypass them. The head is
then applied outside ``forward``, here and again when the backward pass recomputes a chunk.
Under FSDP that needs the head's whole weight at those times, not this rank's shard:
:mod:`training.fsdp` keeps the head in the root unit, which stays gathered from its forward
pass to the end of the backward pass, where its gradient is reduce-scattered. A head found
sharded (another layout) is an error here rather than a wrong product.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def completion_logprobs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    chunk: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """``[rows, length - 1]`` float32: ``log p(label at t + 1)`` where that label is scored
    (not ``-100``), 0 elsewhere; differentiable. ``autocast`` is the forward pass's context."""
    hidden, head = _decoder_states(model, batch, autocast)
    targets = batch["labels"][:, 1:]
    rows, columns = targets.ne(IGNORE_INDEX).nonzero(as_tuple=True)
    states, picked = hidden[:, :-1][rows, columns], targets[rows, columns]
    out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    if len(picked):
        out = out.index_put((rows, columns), _head_logprobs(head, states, picked, chunk, autocast))
    return out


def scored_logprobs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    chunk: int | None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """``[scored]`` float32, differentiable: ``log p(scored_targets[i])`` under the next-token
    distribution of the hidden state at ``(scored_rows[i], scored_sources[i])``, for batches
    that name the position predicting each scored token themselves (a DPO pair packed into one
    row, :mod:`training.dpo`); ``position_ids`` and a 4D ``attention_mask``, where the batch
    has them, go to the model. The output head runs on those states only; with ``chunk``,
    ``chunk`` at a time under activation checkpointing, as :func:`completion_logprobs`."""
    hidden, head = _decoder_states(model, batch, autocast)
    states = hidden[batch["scored_rows"], batch["scored_sources"]]
    return _head_logprobs(head, states, batch["scored_targets"], chunk, autocast)


def _head_logprobs(
    head: torch.nn.Module,
    states: torch.Tensor,
    targets: torch.Tensor,
    chunk: int | None,
    autocast: Callable,
) -> torch.Tensor:
    """``log p(target)`` of each state's next-token distribution: at once without ``chunk``,
    else ``chunk`` states at a time, each chunk's logits recomputed in the backward pass."""
    if not chunk:
        return _chunk_logprobs(head, states, targets, autocast)
    pieces = [
        checkpoint(
            _chunk_logprobs,
            head,
            states[start : start + chunk],
            targets[start : start + chunk],
            autocast,
            use_reentrant=False,
        )
        for start in range(0, len(targets), chunk)
    ]
    return torch.cat(pieces)


@torch.no_grad()
def completion_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    chunk: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, int]:
    """The sum of ``KL(policy || reference)`` of the next-token distributions over the scored
    positions of ``batch``, and their number, ``chunk`` positions at a time."""
    (p_hidden, p_head), (q_hidden, q_head) = (
        _decoder_states(model, batch, autocast) for model in (policy, reference)
    )
    rows, columns = batch["labels"][:, 1:].ne(IGNORE_INDEX).nonzero(as_tuple=True)
    p_states, q_states = p_hidden[:, :-1][rows, columns], q_hidden[:, :-1][rows, columns]
    total = 0.0
    for start in range(0, len(rows), chunk):
        with autocast():
            p_logits = p_head(p_states[start : start + chunk])
            q_logits = q_head(q_states[start : start + chunk])
        log_p = torch.log_softmax(p_logits.float(), dim=-1)
        log_q = torch.log_softmax(q_logits.float(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum(-1).double().sum())
    return total, len(rows)


def _chunk_logprobs(
    head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor, autocast: Callable
) -> torch.Tensor:
    with autocast():
        logits = head(states)
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _decoder_states(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: Callable
) -> tuple[torch.Tensor, torch.nn.Module]:
    """The decoder's last hidden states for ``batch`` (the final norm applied), from a run of
    ``model``'s own forward, and the model's output head."""
    inner = getattr(model, "module", model)  # DDP keeps the model as .module
    caught: list[torch.Tensor] = []

    def catch(_module, _inputs, output) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = inner.get_decoder().register_forward_hook(catch)
    try:
        with autocast():
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch.get("position_ids"),
                use_cache=False,
                logits_to_keep=1,
            )
    finally:
        handle.remove()
    head = inner.get_output_embeddings()
    if isinstance(head.weight, DTensor):
        raise RuntimeError(
            "the output head's weight is sharded outside forward; shard the model with "
            "training.fsdp.shard, which keeps the head gathered until the backward pass ends"
        )
    return caught[-1], head
