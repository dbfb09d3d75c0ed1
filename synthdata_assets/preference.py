"""The preference-trained models (assets ``per_step_dpo_model``, ``nll_control_model`` and
``dpo_model``): DPO from pi_sft, which is also the frozen reference, on the partition's
preference pairs of one kind.

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
  trained pairs (at most ``training.dpo.MOVEMENT_PAIRS`` of them, spread evenly) of
  ``log pi - log pi_sft`` of the chosen and of the rejected response (summed over its
  completion tokens);
- ``kl_to_sft_per_token``: :func:`training.dpo.token_kl`, the mean per-token
  ``KL(pi || pi_sft)`` of the next-token distributions over the completion tokens of
  held-out texts (teacher forced), and ``kl_measured_on``, what those texts are
  (:func:`kl_texts`):

  - ``"test problems (n=...)"``: the first ``KL_TEXTS`` test-split problems (never a
    training problem) that have a reference solution and fit in ``model.max_seq_len``, each
    its prompt followed by that solution (:func:`held_out_texts`: a generated task's
    exact solution rebuilt from the spec, a real data set's own worked solution). The same
    texts for every method and partition of a study, so the figures compare. The asset
    metadata shows it as ``kl_to_sft_per_token_on_test``;
  - ``"chosen sides (n=...)"``, only where no test problem has a reference text: up to
    ``KL_TEXTS`` distinct chosen sides of the trained pairs, spread evenly over their order
    (the texts DPO pushed up, in training prompts). Shown as
    ``kl_to_sft_per_token_on_chosen``;

- ``pairs_too_long``: pairs left out because theirs or their twin's sequence was longer than
  ``model.max_seq_len``.

A method with no pair keeps pi_sft: its row has 0 examples and null figures.

The control without negatives
-----------------------------
``nll_control`` is per-step DPO's stage with its negatives taken out
(:func:`without_negatives`): the same pairs, twins, weights, schedule, learning rate and
updates from pi_sft, with each rejected side set to its chosen side, so that the DPO term is
``log 2`` with no gradient and only the chosen side's NLL trains (weight
``training.dpo_sft_weight``, or 1 where that is 0: :func:`control_training`); each sequence is
scored once for both sides (:mod:`training.dpo`), so the control costs half a DPO stage.
Per-step DPO minus this control is what the negatives add over imitating the chosen sides,
pi_sft's own correct solutions. On the laptop study's base the control was ahead
(docs/laptop-study.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from synthdata_assets import tasks
from synthdata_assets.models import CHECKPOINT_SCHEMA, saved_row, untrained_row
from training.checkpoint import load_checkpoint
from training.config import TrainingConfig
from training.dpo import (
    PreferenceExample,
    encode_response,
    encode_responses,
    token_kl,
    train_dpo,
)
from training.lora import load_trainable, merged
from training.progress import Progress, no_progress
from training.prompts import format_example
from training.trainer import is_main_rank

# The weight of a pit that loses no value, before the weights are normalised to mean 1, so
# that a pit losing all of it counts at most 1 / MIN_PIT_WEIGHT times as much.
MIN_PIT_WEIGHT = 0.1
# The held-out texts (or chosen sides) that the KL to pi_sft is measured on: a few forward
# passes.
KL_TEXTS = 64
# What the KL was measured on (``kl_measured_on`` starts with one of them), and the metadata
# key the asset shows it under for each.
TEST_TEXTS, CHOSEN_TEXTS = "test problems", "chosen sides"
KL_METADATA_KEY = {
    TEST_TEXTS: "kl_to_sft_per_token_on_test",
    CHOSEN_TEXTS: "kl_to_sft_per_token_on_chosen",
}
HELD_OUT_SCHEMA = {"problem_id": pl.String, "prompt": pl.String, "completion": pl.String}
# The texts the KL is measured on, as :func:`training.dpo.token_kl` takes them.
KL_TEXT_SCHEMA = {"prompt": pl.String, "completion": pl.String, "has_eos": pl.Boolean}

PREFERENCE_SCHEMA = {
    **CHECKPOINT_SCHEMA,
    "reward_accuracy": pl.Float64,
    "chosen_logp_change": pl.Float64,
    "rejected_logp_change": pl.Float64,
    "kl_to_sft_per_token": pl.Float64,
    "kl_measured_on": pl.String,
    "pairs_too_long": pl.Int64,
}


def without_negatives(pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` with every rejected side replaced by its chosen side: the ``nll_control``
    method's pairs (see "The control without negatives")."""
    return pairs.with_columns(rejected=pl.col("chosen"), rejected_has_eos=pl.col("chosen_has_eos"))


def control_training(training: TrainingConfig) -> TrainingConfig:
    """The ``nll_control`` method's training settings: per-step DPO's, with the chosen side's
    NLL weighted by ``dpo_sft_weight``, or by 1 where that is 0 (plain DPO has no NLL term,
    and without one the control would not train)."""
    return training.model_copy(update={"dpo_sft_weight": training.dpo_sft_weight or 1.0})


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
    held_out: pl.DataFrame | None = None,
    progress: Progress = no_progress,
) -> pl.DataFrame | None:
    """DPO from pi_sft (also the frozen reference) on ``pairs``: one checkpoint row
    (:data:`PREFERENCE_SCHEMA`; None on a training rank other than 0). ``twins``: the other
    method's pairs of the same negatives (see "Same pairs, same updates"); ``weights``: one
    per row of ``pairs``; ``held_out``: :func:`held_out_texts`, where the KL to pi_sft is
    measured (without, on chosen sides)."""
    model, tokenizer, stored = load_trainable(sft_path, training, lambda m: log(f"{method}: {m}"))
    keep = _fitting(pairs, twins, tokenizer, max_seq_len)
    too_long = keep.count(False)
    if too_long:
        log(f"{method}: {too_long} pairs left out, theirs or their twin longer than {max_seq_len}")
    pairs = pairs.filter(pl.Series(keep, dtype=pl.Boolean))
    if weights is not None:
        weights = [w for w, k in zip(weights, keep, strict=True) if k]
    if pairs.height == 0:
        log(f"{method}: no preference pairs; the model stays pi_sft")
        row = untrained_row(method, sft_path, merged(model)).row(0, named=True)
        return pl.DataFrame([{**row, "pairs_too_long": too_long}], schema=PREFERENCE_SCHEMA)
    stats = train_dpo(
        model,
        tokenizer,
        _examples(pairs),
        beta=training.dpo_beta,
        learning_rate=training.dpo_learning_rate,
        epochs=training.dpo_epochs,
        sft_weight=training.dpo_sft_weight,
        batch_size=training.dpo_batch_size or training.batch_size,
        config=training,
        seed=seed,
        max_seq_len=max_seq_len,
        log=log,
        weights=weights,
        progress=progress,
    )
    if not is_main_rank():  # one of several training ranks: rank 0 saves (synthdata_assets.ranks)
        return None
    model = merged(model)
    texts, measured_on = kl_texts(pairs, held_out, tokenizer, max_seq_len)
    kl = kl_to_sft(model, tokenizer, sft_path, texts, chunk=training.logprob_chunk)
    log(f"KL(policy || pi_sft) {kl:.3g} per token on {measured_on}")
    row = saved_row(
        model,
        tokenizer,
        folder,
        method=method,
        init_path=sft_path,
        seed=seed,
        stats=stats,
        dtype=stored,
    )
    row |= {
        "reward_accuracy": stats.reward_accuracy,
        "chosen_logp_change": stats.chosen_logp_change,
        "rejected_logp_change": stats.rejected_logp_change,
        "kl_to_sft_per_token": kl,
        "kl_measured_on": measured_on,
        "pairs_too_long": too_long + stats.dropped,
    }
    return pl.DataFrame([row], schema=PREFERENCE_SCHEMA)


def _examples(pairs: pl.DataFrame) -> list[PreferenceExample]:
    return [
        PreferenceExample(
            prompt=r["prompt"],
            chosen=r["chosen"],
            rejected=r["rejected"],
            chosen_has_eos=r["chosen_has_eos"],
            rejected_has_eos=r["rejected_has_eos"],
        )
        for r in pairs.iter_rows(named=True)
    ]


def _fitting(
    pairs: pl.DataFrame, twins: pl.DataFrame | None, tokenizer, max_seq_len: int
) -> list[bool]:
    """Per row of ``pairs``: whether it fits in ``max_seq_len`` tokens (both sides, as
    :func:`train_dpo` encodes them) and so does every pair of its negative in ``twins``."""

    def fitting(rows: pl.DataFrame) -> list[bool]:
        sides = encode_responses(
            tokenizer,
            [
                (r["prompt"], r[side], r[f"{side}_has_eos"])
                for r in rows.iter_rows(named=True)
                for side in ("chosen", "rejected")
            ],
            max_seq_len=max_seq_len,
        )
        chosen, rejected = sides[::2], sides[1::2]
        return [c is not None and r is not None for c, r in zip(chosen, rejected, strict=True)]

    twin_too_long = set()
    if twins is not None:
        twin_too_long = {
            sample_id
            for sample_id, fits in zip(twins["sample_id"], fitting(twins), strict=True)
            if not fits
        }
    return [
        sample_id not in twin_too_long and fits
        for sample_id, fits in zip(pairs["sample_id"], fitting(pairs), strict=True)
    ]


def held_out_texts(problems: pl.DataFrame) -> pl.DataFrame:
    """Every test-split problem of the ``problems`` table that has a reference solution, in
    the table's order, as ``problem_id``, ``prompt`` and ``completion``
    (:data:`HELD_OUT_SCHEMA`, :func:`training.prompts.format_example`). The reference
    solution is a generated task's exact solution, rebuilt from the ``spec``, else the
    ``reference_solution`` column (a real data set's worked solution); rows with neither are
    left out."""
    rows = []
    for r in problems.filter(pl.col("split") == "test").iter_rows(named=True):
        if r.get("spec") is not None:
            solution = tasks.true_solution(r["problem_id"], r["spec"])
        else:
            solution = r.get("reference_solution")
        if solution:
            prompt, completion = format_example(r["question"], solution)
            rows.append({"problem_id": r["problem_id"], "prompt": prompt, "completion": completion})
    return pl.DataFrame(rows, schema=HELD_OUT_SCHEMA)


def kl_texts(
    pairs: pl.DataFrame, held_out: pl.DataFrame | None, tokenizer, max_seq_len: int
) -> tuple[pl.DataFrame, str]:
    """The texts the KL to pi_sft is measured on (:data:`KL_TEXT_SCHEMA`) and what they are
    (``kl_measured_on``): the first ``KL_TEXTS`` of ``held_out`` that fit in ``max_seq_len``
    tokens, each ending with EOS as SFT trains it; where none does, up to ``KL_TEXTS``
    distinct chosen sides of ``pairs``, spread evenly over their order."""
    candidates = [] if held_out is None else held_out.select("prompt", "completion").rows()
    fitting = []
    for prompt, completion in candidates:
        if len(fitting) == KL_TEXTS:
            break
        encoded = encode_response(
            tokenizer, prompt, completion, has_eos=True, max_seq_len=max_seq_len
        )
        if encoded is not None:
            fitting.append({"prompt": prompt, "completion": completion, "has_eos": True})
    if fitting:
        return pl.DataFrame(fitting, schema=KL_TEXT_SCHEMA), f"{TEST_TEXTS} (n={len(fitting)})"
    chosen = pairs.unique(["prompt", "chosen"], maintain_order=True)
    chosen = chosen.gather_every(max(1, math.ceil(chosen.height / KL_TEXTS))).head(KL_TEXTS)
    texts = chosen.select("prompt", completion="chosen", has_eos="chosen_has_eos")
    return texts, f"{CHOSEN_TEXTS} (n={texts.height})"


def kl_to_sft(
    model, tokenizer, sft_path: str, texts: pl.DataFrame, *, chunk: int | None = None
) -> float:
    """``kl_to_sft_per_token`` (see the module docstring): ``model`` against pi_sft, loaded
    again from ``sft_path`` beside it, on ``texts`` (:func:`kl_texts`); ``chunk``: see
    ``training.logprob_chunk``."""
    parameter = next(model.parameters())
    reference, _ = load_checkpoint(sft_path, device=parameter.device, dtype=parameter.dtype)
    kl, _tokens = token_kl(
        model,
        reference,
        tokenizer,
        texts["prompt"].to_list(),
        texts["completion"].to_list(),
        texts["has_eos"].to_list(),
        chunk=chunk,
    )
    return kl


def movement_metadata(row: dict) -> dict:
    """What the asset shows of how far a checkpoint row's model moved from pi_sft; the KL
    under the key that names its texts (:data:`KL_METADATA_KEY`)."""
    measured_on = row["kl_measured_on"] or TEST_TEXTS
    kl_key = KL_METADATA_KEY[CHOSEN_TEXTS if measured_on.startswith(CHOSEN_TEXTS) else TEST_TEXTS]
    return {
        "chosen_logp_change": row["chosen_logp_change"],
        "rejected_logp_change": row["rejected_logp_change"],
        kl_key: row["kl_to_sft_per_token"],
        "kl_measured_on": row["kl_measured_on"],
        "pairs_too_long": row["pairs_too_long"],
    }
