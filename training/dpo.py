"""Direct preference optimisation (Rafailov et al. 2023): plain DPO, per-step DPO, weighted DPO.

A pair is a :class:`PreferenceExample`: one prompt, a preferred (``chosen``) and a dispreferred
(``rejected``) completion. The loss of a pair is ::

    -logsigmoid(beta * ((log pi(chosen) - log ref(chosen))
                        - (log pi(rejected) - log ref(rejected))))

where ``log pi(y)`` is the sum of the policy's token log-probabilities of the completion given
the prompt, and ``ref`` is the frozen starting policy (pi_sft). With ``sft_weight`` alpha > 0
each pair's loss also has ``alpha`` times the chosen side's mean per-token negative
log-likelihood (RPO, Pang et al. 2024; TRL's ``rpo_alpha``): DPO alone can lower the chosen
side's likelihood along with the rejected one's, and this term holds it up.

Why not TRL's ``DPOTrainer``: TRL is not a dependency here, it pulls in ``datasets``, and its
``tokenize_row`` appends EOS to every chosen and rejected completion, while a per-step DPO
negative (a solution cut right after its first wrong step) must get none. This module gives
exact control over which responses end with EOS, and shares the SFT trainer's tokens,
batching, schedule and accelerate loop (:mod:`training.trainer`).

Tokens and masks
----------------
Each sequence is encoded by :func:`encode_response` (:mod:`training.trainer`), as SFT
encodes an example: ``tokenizer(prompt)`` (with its special tokens, i.e. ``<bos>``) followed by
``tokenizer(completion, add_special_tokens=False)``, so token boundaries match SFT and
sampling. EOS is appended **only** when the response's ``*_has_eos`` flag is set. Log-probs
are summed over exactly those completion tokens (plus that EOS); never over the prompt or
padding. A truncated negative therefore says "these steps are worse than the chosen ones",
not "stopping here is bad". A pair whose chosen or rejected sequence is longer than
``max_seq_len`` is dropped (counted in :class:`DPOStats`); if all are, :func:`train_dpo`
raises ``ValueError``. A response with no token to score (empty text and no EOS) is an error.
With ``config.logprob_chunk`` the sums come from the output head on those tokens only, in
chunks (:mod:`training.logprobs`), the same up to float rounding.

Reference log-probs
-------------------
Computed **once**, before any update: ``reference_model`` if given, else ``model`` itself
(so no second copy of the model stays in memory), in eval mode, without gradients, batched by
length, under the same bf16 autocast setting as training (so at the first update the policy
and the reference agree and the loss is ``log 2``). They are stored per pair. With several
processes each scores a share of the pairs and the shares are summed across processes; under
FSDP (``execution.train_sharding``) ``model`` is sharded first and the processes score their
shares together, since each forward pass gathers the parameters from all of them.

Weights
-------
``weights`` (default all 1.0) scale each pair's loss; an update's loss is
``sum(w_i * loss_i) / sum(w_i)`` over its whole batch (over all micro-batches and processes),
which is plain DPO's mean when the weights are equal. This is the advantage-weighted variant's
hook. Pairs of weight 0 are removed before batching (counted in ``DPOStats.zero_weight``), so
training with them is bit-identical to training without them. Weights must be finite and >= 0.

Batches, schedule, devices
--------------------------
As in :mod:`training.trainer`: ``batch_size`` pairs per update over all processes and
accumulation steps, ``micro_batch_size`` (else ``config.micro_batch_size``) pairs per forward
pass (one packed row each, see "Shared prefixes"; else ``2 x micro`` sequences, the chosen ones,
then the rejected ones),
seeded length-grouped batches from :func:`training.trainer.micro_batches` (keyed on the
longer sequence of each pair), AdamW with ``config.weight_decay`` on matrices, linear warmup over
``config.warmup_ratio`` then cosine decay, gradient clipping at 1.0, bf16 autocast as
``config.bf16`` and the hardware decide (:mod:`training.precision`), ``accelerate`` for devices
and several processes (DDP or FSDP, :mod:`training.fsdp`). ``max_steps`` overrides ``epochs``.
The model is trained in place and left in eval mode (under FSDP: on rank 0, which saves).

Statistics and progress
-----------------------
``reward_accuracy`` is the share of pairs whose implicit reward
``beta * (log pi - log ref)`` is higher for the chosen response, and ``mean_margin`` the mean
of ``reward(chosen) - reward(rejected)``, both over the last epoch's updates (the last
``ceil(pairs / batch_size)`` updates), measured at the forward pass of each update, i.e. just
before its optimizer step, and summed over processes. ``losses`` holds each update's weighted
loss over its whole batch, all processes included (one scalar all-reduce per update).

``chosen_logp_change`` and ``rejected_logp_change`` say how far training moved the policy
from the reference on its own pairs: after the last update, one more scoring pass gives each
pair's ``log pi - log ref`` of the chosen and of the rejected response (summed over the
completion tokens, as in the loss), averaged (unweighted) over at most
:data:`MOVEMENT_PAIRS` of the trained pairs, spread evenly over their order (all of them where
there are no more; ``movement_pairs`` says how many). DPO can raise the margin by lowering
both; these two say which side moved. A mean over 512 pairs tells that as well as one over
4000, and the passes over all of them took a tenth of a preference stage.

Pairs whose rejected side is their chosen side
----------------------------------------------
Where every pair's rejected sequence equals its chosen one (the ``nll_control`` method of the
preference stage), the DPO term is ``log 2`` with no gradient: ``(log pi(y) - log ref(y))``
appears on both sides and cancels. Each sequence is then scored once, not twice, in the
reference pass, in training and after it, and the one score serves as both sides, so the
margins are exactly 0 (``x - x``, whatever the reference) and only the NLL term trains. This
halves that method's forward and backward passes; the objective is the same, and its figures
differ from scoring both copies only by float rounding (the two copies' gradients cancelled
up to rounding). Training reads no reference here, so the reference pass scores only the pairs
the movement is measured on (see "Statistics and progress").

Shared prefixes
---------------
A pair's two sequences begin with the same tokens: at least the prompt (a third of the
tokens of the demo's pairs), and for a per-step negative often its first steps. Each pair
therefore goes to the model as **one row**: those shared tokens once, then the rest of the
chosen sequence, then the rest of the rejected one, with position ids that continue from the
shared part and a 4D attention mask under which each position sees the shared part and the
positions before it in its own segment. Every token then has exactly the context and the
positions it has in its own sequence, so the log-probs are those of two rows up to float
rounding, with fewer tokens (the demo's per-step pairs: 142 instead of 215 a pair). The
scored tokens name the position whose hidden state predicts them (the rejected side's first
own token is predicted by the last shared one); the output head runs on those states only.
This needs an attention that takes a 4D mask: PyTorch's SDPA (a boolean mask) or the eager
implementation (an additive one). With another (FlashAttention), or a reference model whose
attention differs from the policy's, pairs go as two rows, as before. The batches are the
same either way (grouped by the longer sequence of each pair). This is the prefix sharing of
Wang et al. 2024 ("Accelerating Direct Preference Optimization with Prefix Sharing"); hand-written
because transformers' own packing (``DataCollatorWithFlattening``) puts separate sequences
side by side, not two continuations of one prefix, and TRL's DPO trainer does not share
prefixes (its issue 3549 is open).

``log`` gets a line for the reference pass, one when training starts, one when it ends and
one for the scoring pass after it;
``progress`` (a :class:`training.progress.Progress`) is called after every update with the
updates done, the total, and the figures ``loss``, ``lr`` (for the next update),
``tokens_per_s`` (since the start) and ``reward_accuracy`` (of that update's pairs on the main
process).

Distance from the reference
---------------------------
:func:`token_kl` is the mean per-token ``KL(policy || reference)`` of the next-token
distributions over the completion tokens of given texts (prompt + completion, teacher
forced): at each completion position the exact KL over the vocabulary, then the mean over
every such position of every text. It costs one forward pass of each model per batch; the
texts fix the contexts, so it measures how the two models differ where those texts go, not
on the policy's own samples. Give it texts that training never saw (the preference stage
passes held-out test prompts, each followed by its reference solution) to see how far an
update spread beyond its own pairs.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training import trainer
from training.config import TrainingConfig
from training.logprobs import completion_kl, completion_logprobs, scored_logprobs
from training.progress import Progress
from training.trainer import (
    IGNORE_INDEX,
    EncodedExample,
    TrainStats,
    collate_examples,
    encode_response,
    encode_responses,
)

# The most pairs the policy's movement from the reference is measured on (see "Statistics").
MOVEMENT_PAIRS = 512

__all__ = [
    "DPOStats",
    "PreferenceExample",
    "encode_response",
    "encode_responses",
    "sequence_logprobs",
    "token_kl",
    "train_dpo",
]

_Item = TypeVar("_Item")  # what :func:`_score` scores: a sequence or a packed pair


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
    """:class:`training.trainer.TrainStats` plus the preference statistics of the last epoch."""

    reward_accuracy: float = math.nan
    mean_margin: float = math.nan
    chosen_logp_change: float = math.nan
    rejected_logp_change: float = math.nan
    movement_pairs: int = 0  # the pairs the two changes are averaged over
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

    @functools.cached_property
    def packed(self) -> _Packed:
        """The pair as one row (see "Shared prefixes")."""
        chosen, rejected = self.chosen.input_ids, self.rejected.input_ids
        shared = 0
        for a, b in zip(chosen, rejected, strict=False):
            if a != b:
                break
            shared += 1
        tail = len(rejected) - shared
        scored: list[tuple[int, int, int]] = []  # (source position, target token, side)
        for side, encoded in enumerate((self.chosen, self.rejected)):
            for position in range(1, len(encoded.input_ids)):
                if encoded.labels[position] == IGNORE_INDEX:
                    continue
                source = position - 1
                if side == 1 and source >= shared:  # in the rejected tail, placed after chosen
                    source += len(chosen) - shared
                scored.append((source, encoded.labels[position], side))
        sources, targets, sides = (list(column) for column in zip(*scored, strict=True))
        return _Packed(
            input_ids=[*chosen, *rejected[shared:]],
            position_ids=[*range(len(chosen)), *range(shared, shared + tail)],
            segments=[0] * shared + [1] * (len(chosen) - shared) + [2] * tail,
            sources=sources,
            targets=targets,
            sides=sides,
        )


@dataclass(frozen=True)
class _Packed:
    """A pair as one row: the tokens both sequences begin with once (segment 0), then the rest
    of the chosen sequence (1), then the rest of the rejected one (2), its positions continuing
    from the shared part; each scored token's target, the row position whose hidden state
    predicts it, and its side (0 chosen, 1 rejected)."""

    input_ids: list[int]
    position_ids: list[int]
    segments: list[int]
    sources: list[int]
    targets: list[int]
    sides: list[int]


@dataclass(frozen=True)
class _Slot:
    """One pair's place in one update; ``scale`` turns its weighted loss into the update's."""

    pair: int
    scale: float


@dataclass(frozen=True)
class _Layout:
    """How pairs go to the model: with ``mirrored``, each pair's chosen sequence alone, its
    score serving both sides; else with ``masks`` (:func:`_custom_masks`), each pair as one
    packed row (see "Shared prefixes"); else its chosen and its rejected sequence as two rows."""

    mirrored: bool = False
    masks: str | None = None

    def tokens(self, pair: _Pair) -> int:
        """The tokens ``pair`` puts through the model."""
        if self.mirrored:
            return len(pair.chosen.input_ids)
        if self.masks:
            return len(pair.packed.input_ids)
        return len(pair.chosen.input_ids) + len(pair.rejected.input_ids)

    def collate(self, pairs: Sequence[_Pair], pad_id: int) -> dict[str, torch.Tensor]:
        """A micro-batch of ``pairs``, with ``chosen_tokens``: each chosen side's scored tokens."""
        if self.masks:
            return _collate_packed([pair.packed for pair in pairs], pad_id, self.masks)
        chosen = [pair.chosen for pair in pairs]
        rejected = [] if self.mirrored else [pair.rejected for pair in pairs]
        collated = collate_examples([*chosen, *rejected], pad_id)
        collated["chosen_tokens"] = collated["labels"][: len(chosen), 1:].ne(IGNORE_INDEX).sum(-1)
        return collated

    def sides(
        self,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        *,
        device_type: str,
        bf16: bool,
        chunk: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each pair's summed log-probs of its chosen and of its rejected response."""
        if self.masks:
            autocast = _autocast(device_type, bf16)
            logps = scored_logprobs(model, batch, chunk=chunk, autocast=autocast)
            sums = torch.zeros(len(batch["chosen_tokens"]), 2, device=logps.device)
            sums = sums.index_put(
                (batch["scored_rows"], batch["scored_sides"]), logps, accumulate=True
            )
            return sums[:, 0], sums[:, 1]
        sums = _logprob_sums(model, batch, device_type=device_type, bf16=bf16, chunk=chunk)
        return (sums, sums) if self.mirrored else sums.chunk(2)


# The attention mask a packed pair's row needs, by the model's attention implementation.
_MASKS = {"sdpa": "bool", "eager": "additive"}
_PADDING = 3  # the segment of padding positions (0 shared, 1 chosen, 2 rejected)


def _custom_masks(*models: torch.nn.Module | None) -> str | None:
    """The mask kind packed pairs need where every given model takes a 4D attention mask:
    boolean (True: attend) for PyTorch's SDPA, additive float for the eager implementation.
    None for the others (FlashAttention takes no 4D mask), whose pairs then go as two rows."""
    kinds = {
        _MASKS.get(getattr(getattr(model, "config", None), "_attn_implementation", None))
        for model in models
        if model is not None
    }
    return kinds.pop() if len(kinds) == 1 else None


def _collate_packed(rows: Sequence[_Packed], pad_id: int, masks: str) -> dict[str, torch.Tensor]:
    """Right-padded packed rows with their 4D attention mask: a position sees the positions at
    or before it in the shared part and in its own segment; padding sees padding and the
    shared part, so that no row of the mask is empty."""
    width = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), _PADDING, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        position_ids[i, :n] = torch.tensor(row.position_ids)
        segments[i, :n] = torch.tensor(row.segments)
    index = torch.arange(width)
    causal = index[None, :] <= index[:, None]  # [query, key]
    visible = (segments[:, None, :] == segments[:, :, None]) | (segments[:, None, :] == 0)
    allowed = (causal & visible).unsqueeze(1)
    mask = allowed
    if masks == "additive":
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    scored_rows = torch.repeat_interleave(
        torch.arange(len(rows)), torch.tensor([len(row.sources) for row in rows])
    )
    sides = torch.tensor([side for row in rows for side in row.sides])
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "scored_rows": scored_rows,
        "scored_sources": torch.tensor([s for row in rows for s in row.sources]),
        "scored_targets": torch.tensor([t for row in rows for t in row.targets]),
        "scored_sides": sides,
        "chosen_tokens": torch.bincount(scored_rows[sides == 0], minlength=len(rows)),
        "tokens": torch.tensor(sum(len(row.input_ids) for row in rows)),
    }


def _encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    has_eos: Sequence[bool] | bool,
) -> list[EncodedExample]:
    """Each ``prompt + completion`` (+ EOS where ``has_eos``), untruncated."""
    if isinstance(has_eos, bool):
        has_eos = [has_eos] * len(prompts)
    if not len(prompts) == len(completions) == len(has_eos):
        raise ValueError("prompts, completions and has_eos must have the same length")
    return encode_responses(tokenizer, list(zip(prompts, completions, has_eos, strict=True)))


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
    encoded = _encode_texts(tokenizer, prompts, completions, has_eos)
    pad_id = trainer.pad_token_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        sums = _score_sequences(
            model, encoded, pad_id, batch_size=batch_size, device=device, bf16=bf16
        )
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
    progress: Progress | None = None,
    sft_weight: float = 0.0,
) -> DPOStats:
    """Train ``model`` in place with DPO on ``examples``; see the module docstring
    (``sft_weight``: the RPO term's alpha, 0 for plain DPO).

    ``config`` supplies ``weight_decay``, ``warmup_ratio`` and ``bf16``; the step size, number
    of epochs and batch size are arguments so that callers can pass the DPO-specific ones.
    """
    if beta <= 0 or learning_rate <= 0:
        raise ValueError(f"beta and learning_rate must be > 0, got {beta} and {learning_rate}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if sft_weight < 0:
        raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
    trainer.check_budget(max_steps, micro_batch_size)
    pairs, counts = _encode_pairs(tokenizer, examples, weights, max_seq_len)
    mirrored = _mirrored(pairs)
    masks = None if mirrored else _custom_masks(model, reference_model)
    if max_steps == 0:
        return DPOStats(**trainer.run_summary([], 1, 0, 0.0), **counts)
    # The DPO step size, epochs and batch size in place of the supervised ones.
    dpo_config = config.model_copy(
        update={"learning_rate": learning_rate, "epochs": epochs, "batch_size": batch_size}
    )
    run = trainer.TrainingRun(
        "DPO", len(pairs), dpo_config, max_steps, micro_batch_size, log=log, progress=progress
    )
    pad_id = trainer.pad_token_id(tokenizer)
    scorer = reference_model if reference_model is not None else run.place(model)
    layout = _Layout(mirrored=mirrored, masks=masks)
    reference, reference_seconds = _reference_pass(
        scorer, pairs, pad_id, run=run, separate=reference_model is not None, layout=layout
    )
    slots, batches = _weighted_slots(pairs, run, seed)
    collate = functools.partial(
        _collate, pairs=pairs, reference=reference, pad_id=pad_id, layout=layout
    )
    run.prepare(model, slots, batches, collate)
    rpo = f", chosen NLL x {sft_weight}" if sft_weight else ""
    same = ", every rejected side its chosen side: scored once, DPO term log 2" if mirrored else ""
    same += ", each pair one row, its shared prefix once" if masks else ""
    run.emit(
        f"DPO (beta {beta}{rpo}) on {len(pairs)} pairs ({counts['dropped']} dropped as longer than "
        f"{max_seq_len} tokens, {counts['zero_weight']} of weight 0{same}): {run.plan}, "
        f"{run.where}, {run.precision}"
    )
    last_epoch = _run_updates(run, beta, sft_weight, layout=layout)
    preference = {
        "reward_accuracy": float(last_epoch[1] / last_epoch[0]),
        "mean_margin": float(last_epoch[2] / last_epoch[0]),
    }
    summary = run.finish(**preference)
    moved = _logprob_changes(run.place(model), pairs, reference, pad_id, run=run, layout=layout)
    run.consolidate()
    return DPOStats(**summary, **counts, **preference, **moved, reference_seconds=reference_seconds)


def _reference_pass(
    scorer: torch.nn.Module,
    pairs: Sequence[_Pair],
    pad_id: int,
    *,
    run: trainer.TrainingRun,
    separate: bool,
    layout: _Layout,
) -> tuple[torch.Tensor, float]:
    """The reference log-probs of every pair (:func:`_pair_logprobs`) and the seconds they took,
    logged with their throughput; ``separate``: ``scorer`` is a reference model apart from the
    policy, moved back where it came from afterwards. Mirrored pairs, whose training reads no
    reference, get theirs only where the movement is measured (:func:`movement_sample`), the
    other rows 0."""
    start = time.perf_counter()
    only = movement_sample(len(pairs)) if layout.mirrored else None
    scored = pairs if only is None else [pairs[i] for i in only]
    reference = _pair_logprobs(
        scorer, scored, pad_id, run=run, restore_device=separate, layout=layout
    )
    if only is not None:
        reference = torch.zeros(len(pairs), 2).index_copy(0, torch.tensor(only), reference)
    seconds = time.perf_counter() - start
    tokens = sum(layout.tokens(pair) for pair in scored)
    of = "" if only is None else f" (of {len(pairs)}: those the movement is measured on)"
    run.emit(
        f"reference log-probs of {len(scored)} pairs{of} in {seconds:.1f}s "
        f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)"
    )
    return reference, seconds


def _logprob_changes(
    model: torch.nn.Module,
    pairs: Sequence[_Pair],
    reference: torch.Tensor,
    pad_id: int,
    *,
    run: trainer.TrainingRun,
    layout: _Layout,
) -> dict[str, float]:
    """The trained policy's mean ``log pi - log ref`` of the chosen and of the rejected
    responses over the :func:`movement_sample` of ``pairs`` (``DPOStats.chosen_logp_change``,
    ``rejected_logp_change``, ``movement_pairs``)."""
    start = time.perf_counter()
    measured = movement_sample(len(pairs))
    sample = [pairs[i] for i in measured]
    after = _pair_logprobs(model, sample, pad_id, run=run, restore_device=False, layout=layout)
    chosen, rejected = (after - reference[measured]).double().mean(0).tolist()
    run.emit(
        f"policy log-probs after training, {len(sample)} of {len(pairs)} pairs in "
        f"{time.perf_counter() - start:.1f}s: chosen {chosen:+.3f}, rejected {rejected:+.3f} "
        "(mean log pi - log ref per pair)"
    )
    return {
        "chosen_logp_change": chosen,
        "rejected_logp_change": rejected,
        "movement_pairs": len(sample),
    }


def movement_sample(pairs: int) -> list[int]:
    """The indices of the pairs ``chosen_logp_change`` and ``rejected_logp_change`` average
    over: at most :data:`MOVEMENT_PAIRS`, evenly spread over ``range(pairs)``."""
    return list(range(0, pairs, math.ceil(pairs / MOVEMENT_PAIRS)))


def _encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[PreferenceExample],
    weights: Sequence[float] | None,
    max_seq_len: int,
) -> tuple[list[_Pair], dict[str, int]]:
    """The pairs of non-zero weight that fit in ``max_seq_len``, and the ``DPOStats`` counts
    ``examples``, ``dropped`` and ``zero_weight``; raises if no pair is left."""
    if not examples:
        raise ValueError("train_dpo needs at least one preference pair")
    if weights is None:
        weights = [1.0] * len(examples)
    if len(weights) != len(examples):
        raise ValueError(f"{len(weights)} weights for {len(examples)} pairs")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError("pair weights must be finite and >= 0")
    zero_weight = sum(w == 0 for w in weights)
    weighted = [(e, float(w)) for e, w in zip(examples, weights, strict=True) if w != 0]
    sides = encode_responses(
        tokenizer,
        [
            (example.prompt, text, eos)
            for example, _ in weighted
            for text, eos in (
                (example.chosen, example.chosen_has_eos),
                (example.rejected, example.rejected_has_eos),
            )
        ],
        max_seq_len=max_seq_len,
    )
    pairs = [
        _Pair(chosen, rejected, weight)
        for (_, weight), chosen, rejected in zip(weighted, sides[::2], sides[1::2], strict=True)
        if chosen is not None and rejected is not None
    ]
    if not pairs:
        if zero_weight == len(examples):
            raise ValueError("every preference pair has weight 0; nothing to train on")
        raise ValueError(
            f"all {len(examples) - zero_weight} pairs with a non-zero weight are longer than "
            f"max_seq_len={max_seq_len} tokens; raise model.max_seq_len"
        )
    dropped = len(examples) - zero_weight - len(pairs)
    return pairs, {"examples": len(pairs), "dropped": dropped, "zero_weight": zero_weight}


def _mirrored(pairs: Sequence[_Pair]) -> bool:
    """Whether every pair's rejected sequence is its chosen one (see "Pairs whose rejected
    side is their chosen side")."""
    return all(pair.chosen == pair.rejected for pair in pairs)


def _weighted_slots(
    pairs: Sequence[_Pair], run: trainer.TrainingRun, seed: int
) -> tuple[list[_Slot], list[list[int]]]:
    """Every micro-batch of the run as a list of slots, and the slots' indices per micro-batch.

    Each update is normalised by its total weight, over all of its micro-batches: accelerate
    divides each micro-batch loss by the accumulation steps and DDP averages over processes,
    so a micro-batch contributes ``chunks_per_batch * sum(w * loss) / sum_update(w)``.
    """
    chunks_per_batch = run.plan.chunks_per_batch
    order = trainer.micro_batches([pair.length for pair in pairs], run.plan, seed=seed)
    slots: list[_Slot] = []
    batches: list[list[int]] = []
    for update in range(run.plan.total_updates):
        chunk = order[update * chunks_per_batch : (update + 1) * chunks_per_batch]
        total_weight = sum(pairs[i].weight for mb in chunk for i in mb)
        for mb in chunk:
            batches.append(list(range(len(slots), len(slots) + len(mb))))
            slots += [_Slot(i, chunks_per_batch / total_weight) for i in mb]
    return slots, batches


def _collate(
    batch: Sequence[_Slot],
    *,
    pairs: Sequence[_Pair],
    reference: torch.Tensor,
    pad_id: int,
    layout: _Layout,
) -> dict[str, torch.Tensor]:
    """A micro-batch of pairs as ``layout`` puts them, with each pair's reference, weight,
    scale."""
    collated = layout.collate([pairs[slot.pair] for slot in batch], pad_id)
    index = torch.tensor([slot.pair for slot in batch])
    collated["reference"] = reference[index]
    collated["weight"] = torch.tensor([pairs[slot.pair].weight for slot in batch])
    collated["scale"] = torch.tensor([slot.scale for slot in batch])
    return collated


def _run_updates(
    run: trainer.TrainingRun, beta: float, sft_weight: float = 0.0, *, layout: _Layout
) -> torch.Tensor:
    """Run every update; return ``[pairs, chosen reward higher, sum of margins]`` over the last
    epoch's updates, summed over processes."""
    plan = run.plan

    def loss_function(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        chosen, rejected = layout.sides(
            model,
            batch,
            device_type=run.device.type,
            bf16=run.precision.bf16,
            chunk=run.config.logprob_chunk,
        )
        ref = batch["reference"]
        margins = beta * (chosen - ref[:, 0]) - beta * (rejected - ref[:, 1])
        pair_loss = -F.logsigmoid(margins)
        if sft_weight:
            pair_loss = pair_loss - sft_weight * chosen / batch["chosen_tokens"]
        loss = (pair_loss * batch["weight"]).sum() * batch["scale"][0]
        margin = margins.detach().double().cpu()
        return loss, torch.tensor([len(margin), float((margin > 0).sum()), float(margin.sum())])

    update_counts: list[torch.Tensor] = []
    for micro in run.updates(loss_function):
        counts = torch.zeros(3, dtype=torch.float64)
        for _, tally in micro:
            counts += tally
        update_counts.append(counts)
        # Micro-batch losses are pre-scaled by the update's total weight (_weighted_slots).
        update_loss = run.update_loss([loss for loss, _ in micro])
        run.record(update_loss, reward_accuracy=float(counts[1] / counts[0]))
    last_epoch = torch.stack(update_counts[-plan.updates_per_epoch :]).sum(0)
    if plan.processes > 1:
        last_epoch = run.accelerator.reduce(last_epoch.to(run.device), "sum").cpu()
    return last_epoch


def _logprob_sums(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    device_type: str,
    bf16: bool,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per row, the sum of log p(label) over positions whose label is not ``-100``; with
    ``chunk``, from the output head on those positions only (:mod:`training.logprobs`)."""
    autocast = _autocast(device_type, bf16)
    if chunk:
        return completion_logprobs(model, batch, chunk=chunk, autocast=autocast).sum(-1)
    with autocast():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets.ne(IGNORE_INDEX)
    picked = torch.gather(logits, -1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return torch.where(mask, token_logps, 0.0).sum(-1)


def _autocast(device_type: str, bf16: bool) -> Callable[[], torch.autocast]:
    """The bf16 autocast context every forward pass here runs in (off unless ``bf16``), as a
    factory: :mod:`training.logprobs` enters it once per chunk."""
    return functools.partial(torch.autocast, device_type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def _score(
    items: Sequence[_Item],
    *,
    length: Callable[[_Item], int],
    collate: Callable[[list[_Item]], dict[str, torch.Tensor]],
    sums: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """``sums`` of ``items`` (float32, on the CPU, a row per item): sequences or packed pairs,
    ``batch_size`` to a forward pass, longest ``length`` first."""
    out = torch.zeros(0)
    order = sorted(range(len(items)), key=lambda i: length(items[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([items[i] for i in picked]).items()}
        scores = sums(batch).float().cpu()
        if start == 0:
            out = torch.zeros(len(items), *scores.shape[1:])
        out[picked] = scores
    return out


def _score_sequences(
    model: torch.nn.Module,
    encoded: Sequence[EncodedExample],
    pad_id: int,
    *,
    batch_size: int,
    device: torch.device,
    bf16: bool,
    chunk: int | None = None,
) -> torch.Tensor:
    """Log-prob sums of ``encoded`` (:func:`_logprob_sums`; float32, on the CPU)."""
    return _score(
        encoded,
        length=lambda example: len(example.input_ids),
        collate=lambda examples: collate_examples(examples, pad_id),
        sums=lambda batch: _logprob_sums(
            model, batch, device_type=device.type, bf16=bf16, chunk=chunk
        ),
        batch_size=batch_size,
        device=device,
    )


def _pair_logprobs(
    scorer: torch.nn.Module,
    pairs: Sequence[_Pair],
    pad_id: int,
    *,
    run: trainer.TrainingRun,
    restore_device: bool,
    layout: _Layout,
) -> torch.Tensor:
    """``(pairs, 2)`` log-prob sums (chosen, rejected) under ``scorer``; each process scores
    a share. Used for the reference before any update and for the policy after the last.
    The pairs go as ``layout`` puts them (mirrored: each sequence once for both sides).

    In eval mode, in the run's precision, twice a training micro-batch's sequences (or packed
    pairs) per forward pass; ``restore_device`` moves a separate reference model back where it
    came from.
    """
    accelerator = run.accelerator
    was_training = scorer.training
    original_device = next(scorer.parameters()).device
    if original_device != accelerator.device:
        scorer.to(accelerator.device)
    scorer.eval()
    rank, processes = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(pairs), processes))
    # Every process runs as many forward passes (each is collective under FSDP): a share one
    # pair short is topped up with pair 0, whose extra scores are dropped.
    topped = mine + [0] * (math.ceil(len(pairs) / processes) - len(mine))
    batch_size, device = 2 * run.plan.micro, accelerator.device
    bf16, chunk = run.precision.bf16, run.config.logprob_chunk
    try:
        if layout.masks:
            masks = layout.masks

            def sides(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                both = layout.sides(scorer, batch, device_type=device.type, bf16=bf16, chunk=chunk)
                return torch.stack(both, -1)

            scores = _score(
                [pairs[i].packed for i in topped],
                length=lambda row: len(row.input_ids),
                collate=lambda rows: _collate_packed(rows, pad_id, masks),
                sums=sides,
                batch_size=batch_size,
                device=device,
            )
            chosen, rejected = scores[: len(mine), 0], scores[: len(mine), 1]
        else:
            sequences = [pairs[i].chosen for i in topped]
            if not layout.mirrored:
                sequences += [pairs[i].rejected for i in topped]
            scores = _score_sequences(
                scorer,
                sequences,
                pad_id,
                batch_size=batch_size,
                device=device,
                bf16=bf16,
                chunk=chunk,
            )
            chosen = scores[: len(mine)]
            rejected = chosen if layout.mirrored else scores[len(topped) : len(topped) + len(mine)]
    finally:
        scorer.train(was_training)
    result = torch.zeros(len(pairs), 2, dtype=torch.float32)
    result[mine, 0], result[mine, 1] = chosen, rejected
    if processes > 1:  # every pair is scored by one process; the others add zeros
        result = accelerator.reduce(result.to(accelerator.device), "sum").cpu()
    if restore_device and original_device != accelerator.device:
        scorer.to(original_device)
    return result


@torch.no_grad()
def token_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    has_eos: Sequence[bool] | bool = True,
    *,
    batch_size: int = 8,
    bf16: bool = False,
    chunk: int | None = None,
) -> tuple[float, int]:
    """Mean per-token ``KL(policy || reference)`` over the completion tokens (+ EOS iff
    ``has_eos``) of the texts, and the number of tokens it averages (see "Distance from the
    reference" in the module docstring). ``reference`` must be on the policy's device; both
    run in eval mode, without gradients, and their modes are restored. Nothing is truncated.
    With ``chunk``, the distributions come from the output heads on completion positions only,
    ``chunk`` at a time (:func:`training.logprobs.completion_kl`).
    """
    encoded = _encode_texts(tokenizer, prompts, completions, has_eos)
    pad_id = trainer.pad_token_id(tokenizer)
    device = next(policy.parameters()).device
    modes = policy.training, reference.training
    policy.eval()
    reference.eval()
    total, count = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    try:
        for start in range(0, len(order), batch_size):
            batch = collate_examples(
                [encoded[i] for i in order[start : start + batch_size]], pad_id
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            if chunk:
                kl_sum, tokens = completion_kl(
                    policy, reference, batch, chunk=chunk, autocast=_autocast(device.type, bf16)
                )
                total, count = total + kl_sum, count + tokens
                continue
            log_p, log_q = (
                _next_token_logprobs(model, batch, device_type=device.type, bf16=bf16)
                for model in (policy, reference)
            )
            mask = batch["labels"][:, 1:].ne(IGNORE_INDEX)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
            total += float(kl[mask].double().sum())
            count += int(mask.sum())
    finally:
        policy.train(modes[0])
        reference.train(modes[1])
    return (total / count if count else math.nan), count


def _next_token_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, device_type: str, bf16: bool
) -> torch.Tensor:
    """Float32 log-softmax of ``model``'s next-token logits at every position but the last."""
    with _autocast(device_type, bf16)():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)
