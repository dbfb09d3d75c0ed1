"""The preference-trained models (assets ``per_step_dpo_model`` and ``dpo_model``): DPO from
pi_sft, which is also the frozen reference, on the partition's preference pairs of one kind.

Per-step DPO trains on ``credit.per_step_pair_kind`` pairs (``per_step`` by default: a
correct solution against a negative cut right after its first pit); plain DPO on
``outcome`` pairs (whole against whole). With ``credit.advantage_weighted``, each per-step
pair is weighted by :func:`pair_weights`.

Same pairs, same updates
------------------------
``outcome`` pairs are made for exactly the negatives that have a ``per_step`` pair, with the
same chosen side (:mod:`synthdata_assets.pairs`). Each method also drops the negatives whose
pair of the OTHER method (``twins``) is longer than ``model.max_seq_len`` tokens, not only
its own, so both train on the same number of pairs and, with the same ``dpo_epochs`` and
``batch_size`` (advantage weights are never 0, so they remove no pair), take the same number
of updates: the comparison is about how the rejected side is built, nothing else. This holds
for ``credit.per_step_pair_kind: per_step``; the other kinds have no twins.

How far a model moved from pi_sft
---------------------------------
Its checkpoint row (:data:`PREFERENCE_SCHEMA`) holds, besides the training figures:

- ``reward_accuracy``: share of pairs whose implicit reward is higher for the chosen side,
  over the last epoch's updates (:mod:`training.dpo`);
- ``chosen_logp_change`` and ``rejected_logp_change``: after training, the mean over the
  trained pairs of ``log pi - log pi_sft`` of the chosen and of the rejected response (summed
  over its completion tokens);
- ``kl_to_sft_per_token_on_chosen``: :func:`training.dpo.token_kl`, the mean per-token
  ``KL(pi || pi_sft)`` of the next-token distributions over the completion tokens of up to
  ``KL_TEXTS`` distinct chosen sides of the trained pairs (prompt + chosen, teacher forced,
  spread evenly over the pairs' order). These are the correct solutions DPO pushed up, in
  the partition's training prompts: not held-out prompts, and the same texts for both methods
  (they share their chosen sides), so the two figures compare;
- ``pairs_too_long``: pairs left out because theirs or their twin's sequence was longer than
  ``model.max_seq_len``.

A method with no pair keeps pi_sft: its row has 0 examples and null figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from synthdata_assets.models import CHECKPOINT_SCHEMA, saved_row, untrained_row
from training.checkpoint import load_checkpoint
from training.config import TrainingConfig
from training.dpo import PreferenceExample, encode_response, token_kl, train_dpo
from training.progress import Progress, no_progress

# The weight of a pit that loses no value, before the weights are normalised to mean 1, so
# that a pit losing all of it counts at most 1 / MIN_PIT_WEIGHT times as much.
MIN_PIT_WEIGHT = 0.1
# The chosen sides that the KL to pi_sft is measured on (a few forward passes).
KL_TEXTS = 64

PREFERENCE_SCHEMA = {
    **CHECKPOINT_SCHEMA,
    "reward_accuracy": pl.Float64,
    "chosen_logp_change": pl.Float64,
    "rejected_logp_change": pl.Float64,
    "kl_to_sft_per_token_on_chosen": pl.Float64,
    "pairs_too_long": pl.Int64,
}


def pair_weights(
    pairs: pl.DataFrame, adv: pl.DataFrame, floor: float = MIN_PIT_WEIGHT
) -> list[float]:
    """The advantage-weighted variant: each pair's weight is the value lost at its negative's
    first pit, ``-A_pit`` (``A_pit``: the advantage of the pit step in ``step_advantages``,
    a difference of two Q-values in [0, 1]), clipped to ``[floor, 1]`` and normalised to
    mean 1. A pit that loses all of the value counts most; one that loses none (Q was
    already 0 before it), or a negative without a pit, gets ``floor``. Weights are finite
    and within a ratio of ``1 / floor`` of each other.
    """
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    at_pit = adv.filter(pl.col("is_first_pit")).select("sample_id", "advantage")
    advantage = dict(at_pit.iter_rows())
    raw = [min(1.0, max(floor, -(advantage.get(sid) or 0.0))) for sid in pairs["sample_id"]]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


def train_preference_model(
    training: TrainingConfig,
    method: str,
    sft_path: str,
    pairs: pl.DataFrame,
    folder: Path,
    *,
    seed: int,
    max_seq_len: int,
    log: Callable[[str], None],
    twins: pl.DataFrame | None = None,
    weights: Sequence[float] | None = None,
    progress: Progress = no_progress,
) -> pl.DataFrame:
    """DPO from pi_sft (also the frozen reference) on ``pairs``: one checkpoint row
    (:data:`PREFERENCE_SCHEMA`). ``twins``: the other method's pairs of the same negatives
    (see "Same pairs, same updates"); ``weights``: one per row of ``pairs``."""
    model, tokenizer = load_checkpoint(sft_path)
    keep = _fitting(pairs, twins, tokenizer, max_seq_len)
    too_long = keep.count(False)
    if too_long:
        log(f"{method}: {too_long} pairs left out, theirs or their twin longer than {max_seq_len}")
    pairs = pairs.filter(pl.Series(keep, dtype=pl.Boolean))
    if weights is not None:
        weights = [w for w, k in zip(weights, keep, strict=True) if k]
    if pairs.height == 0:
        log(f"{method}: no preference pairs; the model stays pi_sft")
        row = untrained_row(method, sft_path, model).row(0, named=True)
        return pl.DataFrame([{**row, "pairs_too_long": too_long}], schema=PREFERENCE_SCHEMA)
    examples = [
        PreferenceExample(
            prompt=r["prompt"],
            chosen=r["chosen"],
            rejected=r["rejected"],
            chosen_has_eos=r["chosen_has_eos"],
            rejected_has_eos=r["rejected_has_eos"],
        )
        for r in pairs.iter_rows(named=True)
    ]
    stats = train_dpo(
        model,
        tokenizer,
        examples,
        beta=training.dpo_beta,
        learning_rate=training.dpo_learning_rate,
        epochs=training.dpo_epochs,
        batch_size=training.batch_size,
        config=training,
        seed=seed,
        max_seq_len=max_seq_len,
        log=log,
        weights=weights,
        progress=progress,
    )
    kl = _kl_to_sft_on_chosen(model, tokenizer, sft_path, pairs, log=log)
    row = saved_row(
        model, tokenizer, folder, method=method, init_path=sft_path, seed=seed, stats=stats
    )
    row |= {
        "reward_accuracy": stats.reward_accuracy,
        "chosen_logp_change": stats.chosen_logp_change,
        "rejected_logp_change": stats.rejected_logp_change,
        "kl_to_sft_per_token_on_chosen": kl,
        "pairs_too_long": too_long + stats.dropped,
    }
    return pl.DataFrame([row], schema=PREFERENCE_SCHEMA)


def _fitting(
    pairs: pl.DataFrame, twins: pl.DataFrame | None, tokenizer, max_seq_len: int
) -> list[bool]:
    """Per row of ``pairs``: whether it fits in ``max_seq_len`` tokens (both sides, as
    :func:`train_dpo` encodes them) and so does every pair of its negative in ``twins``."""

    def fits(r: dict) -> bool:
        return all(
            encode_response(
                tokenizer,
                r["prompt"],
                r[side],
                has_eos=r[f"{side}_has_eos"],
                max_seq_len=max_seq_len,
            )
            is not None
            for side in ("chosen", "rejected")
        )

    twin_too_long = set()
    if twins is not None:
        twin_too_long = {r["sample_id"] for r in twins.iter_rows(named=True) if not fits(r)}
    return [r["sample_id"] not in twin_too_long and fits(r) for r in pairs.iter_rows(named=True)]


def _kl_to_sft_on_chosen(
    model, tokenizer, sft_path: str, pairs: pl.DataFrame, *, log: Callable[[str], None]
) -> float:
    """``kl_to_sft_per_token_on_chosen`` (see the module docstring): the trained ``model``
    against pi_sft, loaded again from ``sft_path`` beside it, on up to ``KL_TEXTS`` distinct
    chosen sides of ``pairs``."""
    texts = pairs.unique(["prompt", "chosen"], maintain_order=True)
    texts = texts.gather_every(max(1, math.ceil(texts.height / KL_TEXTS))).head(KL_TEXTS)
    parameter = next(model.parameters())
    reference, _ = load_checkpoint(sft_path, device=parameter.device, dtype=parameter.dtype)
    kl, tokens = token_kl(
        model,
        reference,
        tokenizer,
        texts["prompt"].to_list(),
        texts["chosen"].to_list(),
        texts["chosen_has_eos"].to_list(),
    )
    log(f"KL(policy || pi_sft) {kl:.3g} per token over {tokens} tokens of {texts.height} chosen")
    return kl
