"""Per-step credit assignment: Q-values of step prefixes, step advantages and first pits.

Pure functions over polars DataFrames (no Dagster, no models), so that every formula of the
study can be tested on hand-made numbers; :mod:`synthdata_assets.rollouts` runs the models
around them, and :func:`from_rollouts` builds the ``step_advantages`` table of a partition
from its samples and rollouts. Preference pairs built from the pits live in
:mod:`synthdata_assets.pairs`.

Q-values (``q_values``)
-----------------------
A sample with ``L`` steps (:func:`synthdata_assets.steps.split_steps`) has prefixes
``0..L``: prefix 0 is the problem alone, prefix ``i`` ends with step ``i``. Prefixes
``0..L-1`` are rolled out ``M`` times each (table ``step_rollouts``); the full prefix ``L``
IS the finished sample, so it is never rolled out and its value is exact: 1.0 if the sample
is correct, else 0.0 (``terminal``, ``n_rollouts`` 0). Q of prefix ``i`` with ``c`` of ``M``
rollouts correct, under the rollout policy (``ROLLOUT_POLICIES``):

- ``pi_sft``: ``c / M``, the success rate of the sampling policy itself.
- ``best_of_k`` (the paper's default, K = 5): the chance that the best of K samples from
  pi_sft succeeds, ``1 - (1 - p)^K``, estimated without bias from ``c`` of ``M >= K``
  rollouts as ``1 - C(M - c, K) / C(M, K)`` (the pass@k estimator). With ``M == K`` that is
  "did any of the K succeed" (1.0 or 0.0); with ``M < K`` it cannot be estimated and we raise
  rather than guess.

Missing data is an error, never a silent zero: a prefix ``0..L-1`` without rollouts, a
rollout of a prefix outside ``0..L-1``, a rollout of a sample without a terminal row, or
duplicate rollout ids all raise ``ValueError`` naming the sample and step. The one exception
is early stop (``stopped_at_pit``): the prefixes after the first one ``i >= 1`` whose
rollouts all failed were never rolled out, and their Q is null (unknown), not 0. A sample must
have at least one step (an empty solution has no prefixes to credit: drop it upstream).

Advantages and pits (``step_advantages``)
------------------------------------------
``advantage_i = q_i - q_{i-1}`` for ``i >= 1`` (null at step 0). The first pit of a NEGATIVE
sample is the step after which the answer is no longer reachable (``PIT_RULES``):

- ``first_zero``: the first step ``i >= 1`` with ``q_i == 0``. With exact terminal values a
  negative always has one (``q_L == 0``), so a pit at ``L`` means "the final step went wrong".
- ``largest_drop``: the first step with the most negative advantage, only if it is ``< 0``.

At most one pit per sample; positives never have one. ``is_spurious`` marks steps of
POSITIVE samples whose advantage is below ``spurious_threshold`` (correct traces that passed
through a step that made success less likely). ``first_pits`` lists the pits by sample.

Rows come out sorted by sample_id and step_idx, and empty inputs give empty frames with the
module's schemas (``Q_SCHEMA``, ``STEP_ADVANTAGE_SCHEMA``).
"""

from __future__ import annotations

import polars as pl

from synthdata_assets.config import CreditConfig
from synthdata_assets.frames import first_row, no_duplicates, require, typed
from synthdata_assets.steps import clean_samples, sample_steps

ROLLOUT_POLICIES: tuple[str, ...] = ("pi_sft", "best_of_k")
PIT_RULES: tuple[str, ...] = ("first_zero", "largest_drop")

Q_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "step_idx": pl.Int64,
        "n_rollouts": pl.Int64,
        "n_correct": pl.Int64,
        "success_rate": pl.Float64,
        "q_value": pl.Float64,
        "is_terminal": pl.Boolean,
    }
)

STEP_ADVANTAGE_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "problem_id": pl.String,
        "step_idx": pl.Int64,
        "step_text": pl.String,
        "q_value": pl.Float64,
        "advantage": pl.Float64,
        "n_rollouts": pl.Int64,
        "is_first_pit": pl.Boolean,
        "is_spurious": pl.Boolean,
        "sample_is_correct": pl.Boolean,
    }
)


# --------------------------------------------------------------------------------------------
# Q-values


def q_values(
    rollouts: pl.DataFrame,
    terminal: pl.DataFrame,
    *,
    policy: str = "best_of_k",
    k: int = 5,
    stopped_at_pit: bool = False,
) -> pl.DataFrame:
    """Q of every prefix ``0..L`` of every sample (``Q_SCHEMA``), sorted by sample and step.

    ``rollouts``: sample_id, step_idx (0..L-1), rollout_idx, is_correct.
    ``terminal``: sample_id, n_steps (L), is_correct (the finished sample's grade).
    ``stopped_at_pit``: rollouts were stopped at the first pit (``credit.early_stop``), so the
    prefixes after the first prefix ``i >= 1`` whose rollouts all failed may be missing; their
    Q is null (unknown, not 0), with ``n_rollouts`` 0. Any other missing prefix still raises.
    """
    if policy not in ROLLOUT_POLICIES:
        raise ValueError(f"unknown rollout policy {policy!r}; allowed: {ROLLOUT_POLICIES}")
    if policy == "best_of_k" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"best_of_k needs an integer k >= 1, got {k!r}")
    r, t = _checked_q_inputs(rollouts, terminal)
    grid = _prefix_grid(t, _rollout_counts(r, t), stopped_at_pit)
    q = pl.col("success_rate") if policy == "pi_sft" else _best_of_k(grid, k)
    rolled = grid.with_columns(
        pl.when(~pl.col("skipped")).then(q).cast(pl.Float64).alias("q_value"),
        pl.lit(False).alias("is_terminal"),
    )
    value = pl.col("is_correct").cast(pl.Float64)
    finals = t.select(
        "sample_id",
        pl.col("n_steps").alias("step_idx"),
        pl.lit(0, dtype=pl.Int64).alias("n_rollouts"),
        pl.lit(0, dtype=pl.Int64).alias("n_correct"),
        value.alias("success_rate"),
        value.alias("q_value"),
        pl.lit(True).alias("is_terminal"),
    )
    return (
        pl.concat([rolled.select(Q_SCHEMA.names()), finals.select(Q_SCHEMA.names())])
        .cast(dict(Q_SCHEMA))
        .sort("sample_id", "step_idx")
    )


def _checked_q_inputs(
    rollouts: pl.DataFrame, terminal: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The typed rollouts and terminal tables, without duplicates or empty samples."""
    r = typed(
        rollouts,
        {
            "sample_id": pl.String,
            "step_idx": pl.Int64,
            "rollout_idx": pl.Int64,
            "is_correct": pl.Boolean,
        },
        "rollouts",
    )
    t = typed(
        terminal,
        {"sample_id": pl.String, "n_steps": pl.Int64, "is_correct": pl.Boolean},
        "terminal",
    )
    no_duplicates(r, ["sample_id", "step_idx", "rollout_idx"], "rollouts")
    no_duplicates(t, ["sample_id"], "terminal")
    empty = t.filter(pl.col("n_steps") < 1)
    if empty.height:
        raise ValueError(
            f"terminal: sample {first_row(empty)['sample_id']!r} has n_steps="
            f"{first_row(empty)['n_steps']} ({empty.height} such); a sample needs at least "
            "one step: drop empty solutions before rolling out"
        )
    return r, t


def _rollout_counts(r: pl.DataFrame, t: pl.DataFrame) -> pl.DataFrame:
    """n_rollouts and n_correct per (sample_id, step_idx), each a prefix of a known sample."""
    counts = r.group_by("sample_id", "step_idx").agg(
        pl.len().cast(pl.Int64).alias("n_rollouts"),
        pl.col("is_correct").sum().cast(pl.Int64).alias("n_correct"),
    )
    unknown = counts.join(t, on="sample_id", how="anti")
    if unknown.height:
        raise ValueError(
            f"rollouts of sample {first_row(unknown)['sample_id']!r} have no terminal row "
            f"({unknown['sample_id'].n_unique()} such samples)"
        )
    out_of_range = counts.join(t.select("sample_id", "n_steps"), on="sample_id").filter(
        (pl.col("step_idx") < 0) | (pl.col("step_idx") >= pl.col("n_steps"))
    )
    if out_of_range.height:
        row = first_row(out_of_range.sort("sample_id", "step_idx"))
        raise ValueError(
            f"rollouts of {_at_prefix(row)}: only prefixes 0..{row['n_steps'] - 1} are rolled "
            f"out (prefix {row['n_steps']} is the finished sample, valued exactly from terminal)"
        )
    return counts


def _at_prefix(row: dict) -> str:
    return f"sample {row['sample_id']!r} at step_idx {row['step_idx']}"


def _prefix_grid(t: pl.DataFrame, counts: pl.DataFrame, stopped_at_pit: bool) -> pl.DataFrame:
    """One row per prefix ``0..L-1`` with its counts, success_rate and ``skipped`` (early stop).

    Raises for a prefix without rollouts unless early stop skipped it.
    """
    grid = (
        t.select("sample_id", pl.int_ranges(0, pl.col("n_steps"), dtype=pl.Int64).alias("step_idx"))
        .explode("step_idx")
        .join(counts, on=["sample_id", "step_idx"], how="left")
    )
    if stopped_at_pit:
        zero = (pl.col("step_idx") >= 1) & (pl.col("n_correct") == 0)
        pit = pl.when(zero).then(pl.col("step_idx")).min().over("sample_id")
        grid = grid.with_columns(
            (pl.col("n_rollouts").is_null() & (pl.col("step_idx") > pit))
            .fill_null(False)
            .alias("skipped")
        )
    else:
        grid = grid.with_columns(pl.lit(False).alias("skipped"))
    missing = grid.filter(pl.col("n_rollouts").is_null() & ~pl.col("skipped"))
    if missing.height:
        row = first_row(missing.sort("sample_id", "step_idx"))
        raise ValueError(
            f"no rollouts for {_at_prefix(row)} ({missing.height} prefixes missing in all); "
            "every prefix 0..L-1 must be rolled out (a missing prefix is never read as Q = 0)"
            + ("" if not stopped_at_pit else ", up to the first one whose rollouts all fail")
        )
    grid = grid.with_columns(pl.col("n_rollouts").fill_null(0), pl.col("n_correct").fill_null(0))
    return grid.with_columns(
        pl.when(~pl.col("skipped"))
        .then(pl.col("n_correct") / pl.col("n_rollouts"))
        .cast(pl.Float64)
        .alias("success_rate")
    )


def _best_of_k(grid: pl.DataFrame, k: int) -> pl.Expr:
    """The best-of-K Q of each prefix of ``grid``; raises where a prefix has under K rollouts."""
    short = grid.filter((pl.col("n_rollouts") < k) & ~pl.col("skipped"))
    if short.height:
        row = first_row(short.sort("sample_id", "step_idx"))
        where = f"sample {row['sample_id']!r} step {row['step_idx']}"
        raise ValueError(
            f"best_of_k with k={k} needs at least {k} rollouts per prefix; {where} has "
            f"{row['n_rollouts']} ({short.height} such prefixes). Roll out more, lower k, or "
            "use pi_sft."
        )
    # The unbiased estimator of 1 - (1 - p)^K from c successes in M >= K rollouts (the
    # pass@k estimator): 1 - C(M - c, K) / C(M, K). It is "did any of the K succeed"
    # when M == K; the plug-in 1 - (1 - c/M)^K would be biased low for M > K.
    failing = pl.lit(1.0, dtype=pl.Float64)
    for j in range(k):
        failing = failing * (
            (pl.col("n_rollouts") - pl.col("n_correct") - j).clip(lower_bound=0)
            / (pl.col("n_rollouts") - j)
        )
    return 1.0 - failing


# --------------------------------------------------------------------------------------------
# advantages and pits


def step_advantages(
    q: pl.DataFrame,
    steps: pl.DataFrame,
    *,
    pit_rule: str = "first_zero",
    spurious_threshold: float = -0.2,
) -> pl.DataFrame:
    """One row per step ``0..L`` of every sample (``STEP_ADVANTAGE_SCHEMA``).

    ``q``: sample_id, step_idx (0..L), q_value, n_rollouts (as from :func:`q_values`).
    ``steps``: sample_id, problem_id, step_idx (1..L), step_text, sample_is_correct.
    """
    if pit_rule not in PIT_RULES:
        raise ValueError(f"unknown pit rule {pit_rule!r}; allowed: {PIT_RULES}")
    qq, ss = _checked_advantage_inputs(q, steps)
    info = _sample_info(ss)
    _check_q_covers_steps(qq, info)
    df = (
        qq.join(info.select("sample_id", "problem_id", "sample_is_correct"), on="sample_id")
        .join(
            ss.select("sample_id", "step_idx", "step_text"),
            on=["sample_id", "step_idx"],
            how="left",
        )
        .with_columns(pl.col("step_text").fill_null(""))
        .sort("sample_id", "step_idx")
    )
    df = df.with_columns(
        (pl.col("q_value") - pl.col("q_value").shift(1).over("sample_id")).alias("advantage")
    )
    negative = ~pl.col("sample_is_correct")
    if pit_rule == "first_zero":
        candidate = negative & (pl.col("step_idx") >= 1) & (pl.col("q_value") == 0.0)
    else:
        worst = pl.col("advantage").min().over("sample_id")
        candidate = negative & (worst < 0) & (pl.col("advantage") == worst)
    candidate = candidate.fill_null(False)
    first = candidate & (candidate.cast(pl.Int64).cum_sum().over("sample_id") == 1)
    spurious = (pl.col("sample_is_correct") & (pl.col("advantage") < spurious_threshold)).fill_null(
        False
    )
    df = df.with_columns(first.alias("is_first_pit"), spurious.alias("is_spurious"))
    return df.select(STEP_ADVANTAGE_SCHEMA.names()).cast(dict(STEP_ADVANTAGE_SCHEMA))


def _checked_advantage_inputs(
    q: pl.DataFrame, steps: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The typed q and steps tables; a null Q only where early stop left no rollouts."""
    qq = typed(
        q,
        {
            "sample_id": pl.String,
            "step_idx": pl.Int64,
            "q_value": pl.Float64,
            "n_rollouts": pl.Int64,
        },
        "q",
        nullable=["q_value"],
    )
    unknown = qq.filter(pl.col("q_value").is_null() & (pl.col("n_rollouts") > 0))
    if unknown.height:
        row = first_row(unknown)
        raise ValueError(
            f"q: sample {row['sample_id']!r} step {row['step_idx']} has a null q_value from "
            f"{row['n_rollouts']} rollouts; only prefixes skipped by early stop (no rollouts) "
            "may have an unknown Q"
        )
    ss = typed(
        steps,
        {
            "sample_id": pl.String,
            "problem_id": pl.String,
            "step_idx": pl.Int64,
            "step_text": pl.String,
            "sample_is_correct": pl.Boolean,
        },
        "steps",
    )
    no_duplicates(qq, ["sample_id", "step_idx"], "q")
    no_duplicates(ss, ["sample_id", "step_idx"], "steps")
    return qq, ss


def _sample_info(ss: pl.DataFrame) -> pl.DataFrame:
    """Per sample of ``steps``: its problem_id, grade and step count ``n`` (steps 1..n)."""
    info = ss.group_by("sample_id").agg(
        pl.col("problem_id").n_unique().alias("n_problem"),
        pl.col("sample_is_correct").n_unique().alias("n_grade"),
        pl.col("problem_id").first(),
        pl.col("sample_is_correct").first(),
        pl.col("step_idx").min().alias("lo"),
        pl.col("step_idx").max().alias("hi"),
        pl.len().alias("n"),
    )
    bad = info.filter((pl.col("n_problem") > 1) | (pl.col("n_grade") > 1))
    if bad.height:
        raise ValueError(
            f"steps: sample {first_row(bad)['sample_id']!r} has more than one problem_id or "
            "sample_is_correct across its steps"
        )
    bad = info.filter((pl.col("lo") != 1) | (pl.col("hi") != pl.col("n")))
    if bad.height:
        row = first_row(bad.sort("sample_id"))
        raise ValueError(
            f"steps: sample {row['sample_id']!r} has step_idx {row['lo']}..{row['hi']} over "
            f"{row['n']} rows; steps must be numbered 1..L without gaps"
        )
    return info


def _check_q_covers_steps(qq: pl.DataFrame, info: pl.DataFrame) -> None:
    """Raise unless every sample has q exactly at prefixes 0..n, and no other sample has q."""
    qinfo = qq.group_by("sample_id").agg(
        pl.col("step_idx").min().alias("qlo"),
        pl.col("step_idx").max().alias("qhi"),
        pl.len().alias("qn"),
    )
    joined = info.join(qinfo, on="sample_id", how="full", coalesce=True)
    no_q = joined.filter(pl.col("qn").is_null())
    if no_q.height:
        raise ValueError(
            f"sample {first_row(no_q)['sample_id']!r} has steps but no q-values "
            f"({no_q.height} such samples)"
        )
    no_steps = joined.filter(pl.col("n").is_null())
    if no_steps.height:
        raise ValueError(
            f"sample {first_row(no_steps)['sample_id']!r} has q-values but no steps "
            f"({no_steps.height} such samples)"
        )
    bad = joined.filter(
        (pl.col("qlo") != 0) | (pl.col("qhi") != pl.col("n")) | (pl.col("qn") != pl.col("n") + 1)
    )
    if bad.height:
        row = first_row(bad.sort("sample_id"))
        raise ValueError(
            f"sample {row['sample_id']!r}: q has step_idx {row['qlo']}..{row['qhi']} over "
            f"{row['qn']} rows, but the sample has {row['n']} steps; q needs exactly 0..{row['n']}"
        )


def first_pits(adv: pl.DataFrame) -> pl.DataFrame:
    """sample_id -> pit_step_idx, for the samples that have a first pit."""
    require(adv, ["sample_id", "step_idx", "is_first_pit"], "adv")
    return (
        adv.filter(pl.col("is_first_pit").fill_null(False))
        .select(
            pl.col("sample_id").cast(pl.String),
            pl.col("step_idx").cast(pl.Int64).alias("pit_step_idx"),
        )
        .sort("sample_id")
    )


def from_rollouts(
    credit: CreditConfig, step_rule: str, samples: pl.DataFrame, rollouts: pl.DataFrame
) -> pl.DataFrame:
    """``step_advantages`` of a partition: the rolled-out samples split into steps with
    ``step_rule``, Q-values under ``credit.rollout_policy``, pits under ``credit.pit_rule``."""
    rolled = clean_samples(samples).filter(
        pl.col("sample_id").is_in(rollouts["sample_id"].unique().implode())
    )
    steps = sample_steps(rolled, step_rule)
    terminal = steps.group_by("sample_id").agg(
        n_steps=pl.col("step_idx").max(), is_correct=pl.col("sample_is_correct").first()
    )
    q = q_values(
        rollouts.select("sample_id", "step_idx", "rollout_idx", "is_correct"),
        terminal.select("sample_id", "n_steps", "is_correct"),
        policy=credit.rollout_policy,
        k=credit.k,
        stopped_at_pit=credit.early_stop,
    )
    return step_advantages(
        q,
        steps.select("sample_id", "problem_id", "step_idx", "step_text", "sample_is_correct"),
        pit_rule=credit.pit_rule,
        spurious_threshold=credit.spurious_threshold,
    )


def summary(table: pl.DataFrame) -> dict[str, float | int | None]:
    """How a ``step_advantages`` table looks at a glance: samples, steps, pits and where they
    fall, the mean problem value, spurious steps."""
    steps = table.filter(pl.col("step_idx") >= 1)
    negatives = steps.filter(~pl.col("sample_is_correct"))
    pits = negatives.filter(pl.col("is_first_pit"))
    n_neg = negatives["sample_id"].n_unique()
    at_step_1 = pits.filter(pl.col("step_idx") == 1).height
    return {
        "samples": table["sample_id"].n_unique(),
        "steps": steps.height,
        "negatives_with_pit": pits.height,
        "share_pit_at_step_1": at_step_1 / n_neg if n_neg else None,
        "mean_pit_step": float(pits["step_idx"].mean()) if pits.height else None,
        "mean_problem_value": float(table.filter(pl.col("step_idx") == 0)["q_value"].mean())
        if table.height
        else None,
        "spurious_steps": int(steps["is_spurious"].sum()),
    }
