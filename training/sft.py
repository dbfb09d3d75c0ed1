"""The supervised trainer: pretraining, SFT and RFT all go through :func:`train_sft`.

Examples are ``(prompt, completion)`` text pairs (build them with
:func:`training.prompts.format_example`), or ``(prompt, completion, False)`` for a completion
that stops mid-text and must not teach EOS (the pretraining drills). The loss is the mean
cross-entropy over completion tokens only; prompt tokens and padding carry the label
``-100``. Pretraining passes an empty prompt, so the loss covers the whole text. With
``config.logprob_chunk`` the loss is computed from the output head on completion positions
only, in chunks (:mod:`training.logprobs`): the same value, up to float rounding, with far
fewer float32 logits in memory.

An example is its prompt's tokens, its completion's and EOS (:func:`encode_example`; the token
rules are in :mod:`training.trainer`). An example longer than ``max_seq_len`` is **dropped**,
not truncated: a cut solution would teach a model to stop mid-solution (or never see the
answer line), and the dropped count is logged and returned in :class:`TrainStats`. If no
example fits, :func:`train_sft` raises ``ValueError``.

Batches, schedule, optimiser, devices and precision are those of :mod:`training.trainer`:
``config.batch_size`` examples per update, ``micro_batch_size`` per forward pass, seeded
length-grouped batches, AdamW with ``config.weight_decay`` on matrices, linear warmup over
``config.warmup_ratio`` then cosine decay, gradient clipping at 1.0, bf16 autocast as
``config.bf16`` and the hardware decide (:mod:`training.precision`), ``accelerate`` for devices
and several processes. ``max_steps``, when given, overrides ``config.epochs``: training runs
exactly that many updates (pretraining uses this).

An update's loss is the per-token mean over the whole batch, however it is split into
micro-batches: with several, each micro-batch's summed token loss is divided by the update's
token count (transformers' ``num_items_in_batch``), so accumulation gives the gradient of
one pass over the whole batch rather than a mean of per-micro-batch means.
``TrainStats.losses`` records it per update, as seen by the main process. ``log`` gets one
line when training starts and one when it ends; ``progress`` (a
:class:`training.progress.Progress`) is called after every update with the updates done, the
total, and the figures ``loss``, ``lr`` (for the next update) and ``tokens_per_s`` (since the
start).

``validate``, when given (a function of the model returning a score, higher better: SFT's and
RFT's ``training.select_epoch: validation``), scores the model after every epoch, in eval
mode, and the run ends with the weights of the best-scoring epoch (the earliest of ties)
rather than the last; ``TrainStats.validation`` holds the score of every epoch and
``chosen_epoch`` the one kept. With ``config.validation_patience`` training stops once that
many epochs in a row have scored no better than the best (early stopping; the learning-rate
schedule stays that of ``config.epochs``). Only the trainable parameters are kept per epoch
(the best so far, on the CPU); one training process only, as a score made on one rank would
have to be shared with the others.

The model is trained in place and left in eval mode on the accelerator's device; over FSDP
ranks (:mod:`training.fsdp`) that holds on rank 0, which saves, while the other ranks' models
stay sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training import trainer
from training.config import TrainingConfig
from training.logprobs import completion_logprobs
from training.progress import Progress
from training.trainer import IGNORE_INDEX, EncodedExample, TrainStats, collate_examples

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "TrainStats",
    "collate_examples",
    "encode_example",
    "train_sft",
]


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, *, max_seq_len: int
) -> EncodedExample | None:
    """Token ids and labels of one example, or ``None`` if it exceeds ``max_seq_len``."""
    return trainer.encode_response(
        tokenizer, prompt, completion, has_eos=True, max_seq_len=max_seq_len
    )


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
    progress: Progress | None = None,
    validate: Callable[[torch.nn.Module], float] | None = None,
) -> TrainStats:
    """Fine-tune ``model`` in place on ``(prompt, completion)`` pairs; see the module docstring."""
    trainer.check_budget(max_steps, micro_batch_size)
    if not examples:
        raise ValueError("train_sft needs at least one example")
    if max_steps == 0:
        return TrainStats(**trainer.run_summary([], 1, 0, 0.0), examples=len(examples))
    kept = _encode_all(tokenizer, examples, max_seq_len)
    dropped = len(examples) - len(kept)
    run = trainer.TrainingRun(
        "training", len(kept), config, max_steps, micro_batch_size, log=log, progress=progress
    )
    if validate is not None and run.plan.processes > 1:
        raise ValueError("choosing the epoch by a validation score needs one training process")
    pad_id = trainer.pad_token_id(tokenizer)
    order = trainer.micro_batches([len(e.input_ids) for e in kept], run.plan, seed=seed)
    if run.plan.chunks_per_batch == 1:
        # One forward pass per update: the model's own per-token mean is the update's loss.
        run.prepare(model, kept, order, lambda batch: collate_examples(batch, pad_id))
    else:
        slots, batches = _token_slots(kept, order, run.plan.chunks_per_batch)
        run.prepare(model, slots, batches, lambda batch: _collate_slots(batch, kept, pad_id))
    run.emit(
        f"training on {len(kept)} examples ({dropped} dropped as longer than {max_seq_len} "
        f"tokens): {run.plan}, {run.where}, {run.precision}"
    )

    def loss_function(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        denominator = batch.pop("tokens_per_share", None)
        if config.logprob_chunk:
            logps = completion_logprobs(
                model, batch, chunk=config.logprob_chunk, autocast=run.autocast
            )
            if denominator is None:  # the micro-batch's per-token mean, as transformers takes it
                denominator = batch["labels"][:, 1:].ne(IGNORE_INDEX).sum().unsqueeze(0)
            return -logps.sum() / denominator[0], None
        with run.autocast():
            if denominator is None:
                return model(**batch).loss, None
            # transformers sums the token losses and divides by num_items_in_batch.
            return model(**batch, num_items_in_batch=denominator[0]).loss, None

    best = _BestEpoch(run, validate) if validate is not None else None
    for micro in run.updates(loss_function):
        run.record(run.update_loss([loss for loss, _ in micro]))
        if best is not None and len(run.losses) % run.plan.updates_per_epoch == 0:
            best.score_epoch(len(run.losses) // run.plan.updates_per_epoch)
            if best.stale(config.validation_patience):
                run.emit(
                    f"stopped after epoch {len(best.scores)}: {len(best.scores) - best.best_epoch}"
                    " epochs without a better validation score (validation_patience)"
                )
                break
    summary = run.finish()
    if best is None:
        stats = TrainStats(**summary, examples=len(kept), dropped=dropped)
    else:
        stats = TrainStats(
            **summary,
            examples=len(kept),
            dropped=dropped,
            validation=best.scores,
            chosen_epoch=best.restore(),
        )
    run.consolidate()
    return stats


class _BestEpoch:
    """The epoch-end scores of a run and the trainable weights of its best epoch so far
    (written here: transformers' Trainer keeps the best checkpoint on disk and needs its own
    training loop; a copy of the parameters in memory is all this one needs)."""

    def __init__(self, run: trainer.TrainingRun, validate: Callable[[torch.nn.Module], float]):
        self.run, self.validate = run, validate
        self.scores: list[float] = []
        self.best_epoch = 0
        self.kept: dict[str, torch.Tensor] = {}

    def _model(self) -> torch.nn.Module:
        return self.run.accelerator.unwrap_model(self.run.model)

    def score_epoch(self, epoch: int) -> None:
        model = self._model()
        score = float(self.validate(model))
        model.train()
        better = self.best_epoch == 0 or score > self.scores[self.best_epoch - 1]
        self.scores.append(score)
        if better:
            self.best_epoch = epoch
            self.kept = {
                name: p.detach().to("cpu", copy=True)
                for name, p in model.named_parameters()
                if p.requires_grad
            }
        self.run.emit(
            f"epoch {epoch}: validation score {score:.4f}"
            + (" (best so far)" if better else f" (best: epoch {self.best_epoch})")
        )

    def stale(self, patience: int | None) -> bool:
        """Whether the last ``patience`` epochs all scored no better than the best."""
        return patience is not None and len(self.scores) - self.best_epoch >= patience

    def restore(self) -> int | None:
        """Load the best epoch's weights into the model (a run shorter than an epoch scored
        nothing and keeps its last weights); the epoch kept."""
        if self.best_epoch == 0:
            return None
        if self.best_epoch * self.run.plan.updates_per_epoch != len(self.run.losses):
            with torch.no_grad():
                for name, p in self._model().named_parameters():
                    if name in self.kept:
                        p.copy_(self.kept[name].to(p.device))
            self.run.emit(
                f"kept epoch {self.best_epoch} of {len(self.scores)} "
                f"(validation score {self.scores[self.best_epoch - 1]:.4f})"
            )
        return self.best_epoch


def scored_tokens(example: EncodedExample) -> int:
    """The tokens an example's loss averages over: labelled positions after the first (the
    causal LM loss predicts token t from the tokens before it)."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def _token_slots(
    kept: Sequence[EncodedExample], order: Sequence[list[int]], chunks_per_batch: int
) -> tuple[list[tuple[int, float]], list[list[int]]]:
    """Micro-batches as slots ``(example, share)``: ``share`` is the update's scored tokens over
    ``chunks_per_batch``. accelerate divides each micro-batch loss by the accumulation steps and
    DDP averages over processes, so dividing each micro-batch's token-loss sum by ``share``
    accumulates the per-token mean of the whole update, as one forward pass would compute it.
    """
    slots: list[tuple[int, float]] = []
    batches: list[list[int]] = []
    for start in range(0, len(order), chunks_per_batch):
        chunk = order[start : start + chunks_per_batch]
        tokens = sum(scored_tokens(kept[i]) for micro in chunk for i in micro)
        for micro in chunk:
            batches.append(list(range(len(slots), len(slots) + len(micro))))
            slots += [(i, tokens / chunks_per_batch) for i in micro]
    return slots, batches


def _collate_slots(
    batch: Sequence[tuple[int, float]], kept: Sequence[EncodedExample], pad_id: int
) -> dict[str, torch.Tensor]:
    collated = collate_examples([kept[i] for i, _ in batch], pad_id)
    collated["tokens_per_share"] = torch.tensor([share for _, share in batch])
    return collated


def _encode_all(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[tuple[str, str]], max_seq_len: int
) -> list[EncodedExample]:
    """The examples that fit in ``max_seq_len`` tokens, encoded; raises if none does."""
    encoded = trainer.encode_responses(
        tokenizer,
        [(e[0], e[1], e[2] if len(e) > 2 else True) for e in examples],
        max_seq_len=max_seq_len,
    )
    kept = [example for example in encoded if example is not None]
    if not kept:
        raise ValueError(
            f"all {len(encoded)} examples are longer than max_seq_len={max_seq_len} tokens; "
            "raise model.max_seq_len"
        )
    return kept
