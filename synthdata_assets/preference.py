"""The preference-trained models (assets ``per_step_dpo_model`` and ``dpo_model``): DPO from
pi_sft, which is also the frozen reference, on the partition's preference pairs of one kind.

Per-step DPO trains on ``credit.per_step_pair_kind`` pairs (``per_step`` by default: a
correct solution against a negative cut right after its first pit); plain DPO on
``outcome`` pairs (whole against whole). With ``credit.advantage_weighted``, each per-step
pair is weighted by :func:`pair_weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from synthdata_assets.models import CHECKPOINT_SCHEMA, saved_row, untrained_row
from training.checkpoint import load_checkpoint
from training.config import TrainingConfig
from training.dpo import PreferenceExample, train_dpo
from training.progress import Progress, no_progress

# The weight of a pit that loses no value, before the weights are normalised to mean 1, so
# that a pit losing all of it counts at most 1 / MIN_PIT_WEIGHT times as much.
MIN_PIT_WEIGHT = 0.1


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
    weights: Sequence[float] | None = None,
    progress: Progress = no_progress,
) -> pl.DataFrame:
    """DPO from pi_sft (also the frozen reference) on ``pairs``: one checkpoint row."""
    model, tokenizer = load_checkpoint(sft_path)
    if pairs.height == 0:
        log(f"{method}: no preference pairs; the model stays pi_sft")
        return untrained_row(method, sft_path, model)
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
    row = saved_row(
        model, tokenizer, folder, method=method, init_path=sft_path, seed=seed, stats=stats
    )
    row["reward_accuracy"] = stats.reward_accuracy
    return pl.DataFrame([row], schema={**CHECKPOINT_SCHEMA, "reward_accuracy": pl.Float64})
