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

The table of a partition (``TABLE_SCHEMA``)
-------------------------------------------
:func:`from_rollouts` builds the ``step_advantages`` table: the columns above under
``credit.rollout_policy``, then two groups of columns that check them.

- Both rollout policies (``POLICY_SCHEMA``): ``is_first_pit_<policy>`` and
  ``is_spurious_<policy>`` for ``pi_sft`` and ``best_of_k``. Both Qs are functions of the same
  counts (``c`` of ``M`` rollouts), so one set of rollouts gives the pits and flags of both at
  no cost; ``is_first_pit``/``is_spurious`` equal the configured policy's. Under
  ``first_zero`` the pits coincide (``c / M == 0`` exactly when the best-of-K estimate is 0);
  under ``largest_drop`` and for the spurious flag they can differ. The ``best_of_k`` columns
  are null when some prefix has fewer than K rollouts (``pi_sft`` with ``M < K``).
- Ground truth (``TRUTH_SCHEMA``, :func:`ground_truth`): where the task knows each step's
  correctness (a generated task's ``spec``; see
  :func:`synthdata_assets.tasks.step_labels`), ``true_label`` of every step ``>= 1``
  and ``is_true_first_wrong`` (the sample's first ``wrong``/``wrong_answer`` step). Both are
  null for a task without a spec, for the ``lines``-less step rules (labels are per line), and
  ``true_label`` is null at step 0.

:func:`credit_vs_truth` compares the Monte Carlo pits and flags with the ground truth, per
policy; ``warehouse/sql/credit_vs_truth.sql`` computes the same figures in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from synthdata_assets import tasks
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
POLICY_SCHEMA = pl.Schema(
    {
        f"{flag}_{policy}": pl.Boolean
        for flag in ("is_first_pit", "is_spurious")
        for policy in ROLLOUT_POLICIES
    }
)
TRUTH_SCHEMA = pl.Schema({"true_label": pl.String, "is_true_first_wrong": pl.Boolean})
TABLE_SCHEMA = pl.Schema({**STEP_ADVANTAGE_SCHEMA, **POLICY_SCHEMA, **TRUTH_SCHEMA})


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
    credit: CreditConfig,
    step_rule: str,
    samples: pl.DataFrame,
    rollouts: pl.DataFrame,
    problems: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """``step_advantages`` of a partition (``TABLE_SCHEMA``): the rolled-out samples split into
    steps with ``step_rule``, Q-values under ``credit.rollout_policy``, pits under
    ``credit.pit_rule``, the pits and spurious flags under every rollout policy, and the ground
    truth of each step from ``problems`` (its ``spec`` column; none without ``problems``)."""
    rolled = clean_samples(samples).filter(
        pl.col("sample_id").is_in(rollouts["sample_id"].unique().implode())
    )
    steps = sample_steps(rolled, step_rule).select(
        "sample_id", "problem_id", "step_idx", "step_text", "sample_is_correct"
    )
    terminal = steps.group_by("sample_id").agg(
        n_steps=pl.col("step_idx").max(), is_correct=pl.col("sample_is_correct").first()
    )
    outcomes = rollouts.select("sample_id", "step_idx", "rollout_idx", "is_correct")
    by_policy = {}
    for policy in ROLLOUT_POLICIES:
        if policy == "best_of_k" and not _has_k_rollouts(outcomes, credit.k):
            continue  # the estimate needs K rollouts per prefix; its columns stay null
        q = q_values(
            outcomes,
            terminal.select("sample_id", "n_steps", "is_correct"),
            policy=policy,
            k=credit.k,
            stopped_at_pit=credit.early_stop,
        )
        by_policy[policy] = step_advantages(
            q, steps, pit_rule=credit.pit_rule, spurious_threshold=credit.spurious_threshold
        )
    table = by_policy[credit.rollout_policy]
    keys = ["sample_id", "step_idx"]
    for policy in ROLLOUT_POLICIES:
        flags = [f"is_first_pit_{policy}", f"is_spurious_{policy}"]
        if policy in by_policy:
            renamed = by_policy[policy].select(
                *keys, *(pl.col(f.removesuffix(f"_{policy}")).alias(f) for f in flags)
            )
            table = table.join(renamed, on=keys, how="left")
        else:
            table = table.with_columns(pl.lit(None, dtype=pl.Boolean).alias(f) for f in flags)
    truth = ground_truth(rolled, problems, step_rule)
    return (
        table.join(truth, on=keys, how="left")
        .with_columns(
            pl.when(pl.col("sample_id").is_in(truth["sample_id"].implode()))
            .then(pl.col("is_true_first_wrong").fill_null(False))
            .alias("is_true_first_wrong")
        )
        .select(TABLE_SCHEMA.names())
        .cast(dict(TABLE_SCHEMA))
        .sort(keys)
    )


def _has_k_rollouts(outcomes: pl.DataFrame, k: int) -> bool:
    """Whether every rolled-out prefix has at least ``k`` rollouts."""
    counts = outcomes.group_by("sample_id", "step_idx").len()
    return counts.height == 0 or counts["len"].min() >= k


def ground_truth(
    samples: pl.DataFrame, problems: pl.DataFrame | None, step_rule: str
) -> pl.DataFrame:
    """sample_id, step_idx (1..L), true_label, is_true_first_wrong of every step of the
    ``samples`` (sample_id, problem_id, solution as the steps were split from) whose problem
    has a ``spec``; no rows without ``problems``, a ``spec`` column, or the ``lines`` rule
    (the labels are per line). A sample whose problem is missing from ``problems`` raises."""
    schema = {"sample_id": pl.String, "step_idx": pl.Int64, **TRUTH_SCHEMA}
    if problems is None or "spec" not in problems.columns or step_rule != "lines":
        return pl.DataFrame(schema=schema)
    specs = problems.select("problem_id", "spec").unique("problem_id")
    joined = samples.join(specs, on="problem_id", how="left")
    if samples.height and not joined["problem_id"].is_in(specs["problem_id"].implode()).all():
        absent = joined.filter(~pl.col("problem_id").is_in(specs["problem_id"].implode()))
        raise ValueError(
            f"problems lacks problem {first_row(absent)['problem_id']!r} of sample "
            f"{first_row(absent)['sample_id']!r} ({absent.height} such samples)"
        )
    rows = []
    for sid, spec, solution in (
        joined.filter(pl.col("spec").is_not_null())
        .select("sample_id", "spec", "solution")
        .iter_rows()
    ):
        first_wrong = tasks.first_wrong_step(spec, solution)
        for i, label in enumerate(tasks.step_labels(spec, solution), start=1):
            rows.append((sid, i, label, i == first_wrong))
    return pl.DataFrame(rows, schema=schema, orient="row")


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


# --------------------------------------------------------------------------------------------
# credit assignment against ground truth

CREDIT_VS_TRUTH_SCHEMA = pl.Schema(
    {
        "rollout_policy": pl.String,
        "ground_truth": pl.Boolean,
        "negatives": pl.Int64,
        "negatives_with_pit": pl.Int64,
        "share_pit_exact": pl.Float64,
        "share_pit_within_one": pl.Float64,
        "share_pit_early": pl.Float64,
        "share_pit_late": pl.Float64,
        "share_no_true_wrong": pl.Float64,
        "positive_steps": pl.Int64,
        "true_spurious": pl.Int64,
        "flagged_spurious": pl.Int64,
        "spurious_precision": pl.Float64,
        "spurious_recall": pl.Float64,
    }
)
NO_GROUND_TRUTH = "no ground truth"
_TRUTH_INPUTS = ("sample_id", "step_idx", "sample_is_correct", *TRUTH_SCHEMA)
# The figures that compare with the ground truth: null where a group has none.
_NEEDS_TRUTH = (
    "share_pit_exact",
    "share_pit_within_one",
    "share_pit_early",
    "share_pit_late",
    "share_no_true_wrong",
    "true_spurious",
    "spurious_precision",
    "spurious_recall",
)


def credit_vs_truth(table: pl.DataFrame, by: Sequence[str] = ()) -> pl.DataFrame:
    """How the Monte Carlo pits and spurious flags of a ``step_advantages`` table
    (``TABLE_SCHEMA``) agree with the ground truth: one row per group of ``by`` (e.g.
    ``("data_size", "seed")``) and rollout policy whose flags are known, sorted
    (``by`` columns, then ``CREDIT_VS_TRUTH_SCHEMA``).

    Pits, over the negatives with a pit and ground truth, where ``t`` is the true first wrong
    step: ``share_pit_exact`` (pit == t), ``share_pit_within_one`` (t - 1 <= pit <= t: a pit
    often lands on the choice just before the first wrong value), ``share_pit_early``
    (pit < t - 1), ``share_pit_late`` (pit > t) and ``share_no_true_wrong`` (every step true,
    e.g. cut off before its answer). exact + early + late + no_true_wrong == 1, and
    within_one - exact is the share one step early. Spurious flag, over the steps >= 1 of
    rolled-out positives (``credit.rollout_positives``): ``spurious_precision`` (flagged steps
    that are truly spurious) and ``spurious_recall`` (truly spurious steps flagged); null where
    nothing is flagged or nothing is spurious. Without ground truth (``ground_truth`` false)
    every figure that needs it is null.
    """
    require(table, [*by, *_TRUTH_INPUTS, *POLICY_SCHEMA], "table")
    keys = [*by, "rollout_policy"]
    long = pl.concat(
        [
            table.filter(pl.col(f"is_first_pit_{p}").is_not_null()).select(
                *by,
                pl.lit(p).alias("rollout_policy"),
                "sample_id",
                "step_idx",
                "sample_is_correct",
                "true_label",
                "is_true_first_wrong",
                pl.col(f"is_first_pit_{p}").alias("is_pit"),
                pl.col(f"is_spurious_{p}").alias("is_flagged"),
            )
            for p in ROLLOUT_POLICIES
        ]
    ).filter(pl.col("step_idx") >= 1)
    groups = long.group_by(keys).agg(pl.col("true_label").is_not_null().any().alias("ground_truth"))
    out = groups.join(_pit_agreement(long, keys), on=keys, how="left").join(
        _spurious_agreement(long, keys), on=keys, how="left"
    )
    counts = ["negatives", "negatives_with_pit", "positive_steps", "true_spurious"]
    out = out.with_columns(pl.col(*counts, "flagged_spurious").fill_null(0)).with_columns(
        pl.when(pl.col("ground_truth")).then(pl.col(c)).alias(c) for c in _NEEDS_TRUTH
    )
    schema = {**{c: table.schema[c] for c in by}, **CREDIT_VS_TRUTH_SCHEMA}
    return out.select(list(schema)).cast(schema).sort(keys)


def _pit_agreement(long: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per group: negatives, negatives_with_pit and the shares of :func:`credit_vs_truth`."""
    per_sample = (
        long.filter(~pl.col("sample_is_correct"))
        .group_by(*keys, "sample_id")
        .agg(
            pl.col("step_idx").filter(pl.col("is_pit")).min().alias("pit"),
            pl.col("step_idx").filter(pl.col("is_true_first_wrong")).min().alias("wrong"),
            pl.col("true_label").is_not_null().any().alias("labelled"),
        )
    )
    pit, wrong = pl.col("pit"), pl.col("wrong")
    judged = pit.is_not_null() & pl.col("labelled")
    n = judged.sum()

    def share(condition: pl.Expr) -> pl.Expr:
        return pl.when(n > 0).then((judged & condition).sum() / n)

    return per_sample.group_by(keys).agg(
        pl.len().alias("negatives"),
        pit.is_not_null().sum().alias("negatives_with_pit"),
        share(pit == wrong).alias("share_pit_exact"),
        share((pit >= wrong - 1) & (pit <= wrong)).alias("share_pit_within_one"),
        share(pit < wrong - 1).alias("share_pit_early"),
        share(pit > wrong).alias("share_pit_late"),
        share(wrong.is_null()).alias("share_no_true_wrong"),
    )


def _spurious_agreement(long: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per group: positive_steps, true_spurious, flagged_spurious, precision and recall."""
    flagged, spurious = pl.col("is_flagged"), pl.col("true_label") == "spurious"
    both = (flagged & spurious).sum()
    return (
        long.filter(pl.col("sample_is_correct"))
        .group_by(keys)
        .agg(
            pl.len().alias("positive_steps"),
            spurious.sum().alias("true_spurious"),
            flagged.sum().alias("flagged_spurious"),
            pl.when(flagged.sum() > 0).then(both / flagged.sum()).alias("spurious_precision"),
            pl.when(spurious.sum() > 0).then(both / spurious.sum()).alias("spurious_recall"),
        )
    )


def truth_metadata(table: pl.DataFrame) -> dict[str, float | int | str | None]:
    """:func:`credit_vs_truth` of one partition's table as flat metadata: ``credit_vs_truth``
    says whether there is ground truth, then ``<policy>/<figure>`` for each policy."""
    rows = credit_vs_truth(table).to_dicts()
    if not any(row["ground_truth"] for row in rows):
        return {"credit_vs_truth": NO_GROUND_TRUTH}
    out: dict[str, float | int | str | None] = {"credit_vs_truth": "per-step labels of the task"}
    for row in rows:
        policy = row.pop("rollout_policy")
        row.pop("ground_truth")
        out.update({f"{policy}/{name}": value for name, value in row.items()})
    return out
