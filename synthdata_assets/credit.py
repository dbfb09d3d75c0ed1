"""Per-step credit assignment: Q-values, advantages, first pits and preference pairs.

Pure functions over polars DataFrames (no Dagster, no models), so that every formula of the
study can be tested on hand-made numbers. The assets ``step_advantages`` and
``preference_pairs`` are thin wrappers around them.

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
rollouts all failed were never rolled out, and their Q is null (unknown), not 0. A sample must have
at least one step (an empty solution has no prefixes to credit: drop it upstream).

Advantages and pits (``step_advantages``)
------------------------------------------
``advantage_i = q_i - q_{i-1}`` for ``i >= 1`` (null at step 0). The first pit of a NEGATIVE
sample is the step after which the answer is no longer reachable (``PIT_RULES``):

- ``first_zero``: the first step ``i >= 1`` with ``q_i == 0``. With exact terminal values a
  negative always has one (``q_L == 0``), so a pit at ``L`` means "the final step went wrong".
- ``largest_drop``: the first step with the most negative advantage, only if it is ``< 0``.

At most one pit per sample; positives never have one. ``is_spurious`` marks steps of
POSITIVE samples whose advantage is below ``spurious_threshold`` (correct traces that passed
through a step that made success less likely).

Preference pairs (``preference_pairs``)
---------------------------------------
``PAIR_KINDS``: ``per_step`` (the paper: correct solution vs. the negative cut right after
its first pit, the cut text gets no EOS), ``outcome`` (plain DPO: whole correct vs. whole
negative), ``edit_distance`` (each positive vs. the most different negative of its problem),
``shared_prefix`` (Self-Explore: same prompt + pre-pit prefix, chosen = the first step of a
successful rollout from there, rejected = the pit step). Choices:

- The correct solution of a pair comes from the policy's own correct samples of the problem
  when there are any (on-policy, as in the paper), otherwise from the teacher's verified
  solutions; negatives of a problem with no correct solution anywhere get no pair. The pick
  is a seeded RNG keyed by ``sha256(seed, sample_id)`` (never Python's salted ``hash``), and
  it does not depend on the kind: ``per_step`` and ``outcome`` pair a negative with the same
  correct solution, so the two methods differ only in the rejected side.
- Text conventions. A side with EOS (``*_has_eos``) is stored the way SFT completions are
  built (:func:`training.prompts.format_example`): trailing newlines dropped, then exactly
  one ``"\\n"`` (the trainer appends EOS after it; applying ``format_example`` again is a
  no-op). A side without EOS is stored with its trailing whitespace stripped, so a truncated
  negative ends on the last character of its pit step.
- ``pair_id`` is ``f"{kind}/{sample_id}/{j}"`` with ``sample_id`` the negative's id; ``j`` is
  ``0`` for the one-pair-per-negative kinds, and the positive's sample_id for
  ``edit_distance`` (one negative can be the farthest from several positives).
- ``pit_step_idx`` is set for ``per_step`` and ``shared_prefix``, null for the others.
- Edit distance is the character Levenshtein distance, computed with the bit-parallel
  algorithm of Myers/Hyyrö on Python integers (``O(len(a) * len(b) / wordsize)``; a plain
  DP over two 1000-character strings would cost ~1 s in Python). Ties -> lowest sample_id.

Rows come out in a fixed order (kind in the order asked, then problem_id, negative
sample_id, j), and empty inputs give empty frames with the module's schemas
(``Q_SCHEMA``, ``STEP_ADVANTAGE_SCHEMA``, ``PAIR_SCHEMA``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence

import polars as pl

from synthdata_assets.steps import STEP_RULES, prefix, split_steps

ROLLOUT_POLICIES: tuple[str, ...] = ("pi_sft", "best_of_k")
PIT_RULES: tuple[str, ...] = ("first_zero", "largest_drop")
PAIR_KINDS: tuple[str, ...] = ("per_step", "outcome", "edit_distance", "shared_prefix")

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

PAIR_SCHEMA = pl.Schema(
    {
        "pair_id": pl.String,
        "problem_id": pl.String,
        "kind": pl.String,
        "prompt": pl.String,
        "chosen": pl.String,
        "rejected": pl.String,
        "sample_id": pl.String,
        "pit_step_idx": pl.Int64,
        "chosen_id": pl.String,
        "chosen_has_eos": pl.Boolean,
        "rejected_has_eos": pl.Boolean,
    }
)


# --------------------------------------------------------------------------------------------
# helpers


def _require(df: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {df.columns}")


def _no_nulls(df: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    for c in columns:
        n = df[c].null_count()
        if n:
            raise ValueError(f"{name}.{c} has {n} null value(s)")


def _typed(
    df: pl.DataFrame, schema: dict[str, pl.DataType], name: str, nullable: Iterable[str] = ()
) -> pl.DataFrame:
    """``df``'s columns of ``schema``, cast to its types, none of them null but ``nullable``."""
    _require(df, schema, name)
    out = df.select(pl.col(c).cast(dtype) for c, dtype in schema.items())
    _no_nulls(out, [c for c in out.columns if c not in set(nullable)], name)
    return out


def _first_row(df: pl.DataFrame) -> dict:
    return df.row(0, named=True)


def _no_duplicates(df: pl.DataFrame, key: list[str], name: str) -> None:
    dup = df.filter(pl.struct(key).is_duplicated())
    if dup.height:
        raise ValueError(
            f"{name} has {dup.height} rows with a duplicated key {key}, e.g. "
            f"{ {k: _first_row(dup)[k] for k in key} }"
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
    r = _typed(
        rollouts,
        {
            "sample_id": pl.String,
            "step_idx": pl.Int64,
            "rollout_idx": pl.Int64,
            "is_correct": pl.Boolean,
        },
        "rollouts",
    )
    t = _typed(
        terminal,
        {"sample_id": pl.String, "n_steps": pl.Int64, "is_correct": pl.Boolean},
        "terminal",
    )
    _no_duplicates(r, ["sample_id", "step_idx", "rollout_idx"], "rollouts")
    _no_duplicates(t, ["sample_id"], "terminal")
    empty = t.filter(pl.col("n_steps") < 1)
    if empty.height:
        raise ValueError(
            f"terminal: sample {_first_row(empty)['sample_id']!r} has n_steps="
            f"{_first_row(empty)['n_steps']} ({empty.height} such); a sample needs at least "
            "one step: drop empty solutions before rolling out"
        )

    counts = r.group_by("sample_id", "step_idx").agg(
        pl.len().cast(pl.Int64).alias("n_rollouts"),
        pl.col("is_correct").sum().cast(pl.Int64).alias("n_correct"),
    )
    unknown = counts.join(t, on="sample_id", how="anti")
    if unknown.height:
        raise ValueError(
            f"rollouts of sample {_first_row(unknown)['sample_id']!r} have no terminal row "
            f"({unknown['sample_id'].n_unique()} such samples)"
        )
    out_of_range = counts.join(t.select("sample_id", "n_steps"), on="sample_id").filter(
        (pl.col("step_idx") < 0) | (pl.col("step_idx") >= pl.col("n_steps"))
    )
    if out_of_range.height:
        row = _first_row(out_of_range.sort("sample_id", "step_idx"))
        raise ValueError(
            f"rollouts of sample {row['sample_id']!r} at step_idx {row['step_idx']}: only "
            f"prefixes 0..{row['n_steps'] - 1} are rolled out (prefix {row['n_steps']} is the "
            "finished sample, valued exactly from terminal)"
        )

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
        row = _first_row(missing.sort("sample_id", "step_idx"))
        raise ValueError(
            f"no rollouts for sample {row['sample_id']!r} at step_idx {row['step_idx']} "
            f"({missing.height} prefixes missing in all); every prefix 0..L-1 must be rolled "
            "out (a missing prefix is never read as Q = 0)"
            + ("" if not stopped_at_pit else ", up to the first one whose rollouts all fail")
        )
    grid = grid.with_columns(pl.col("n_rollouts").fill_null(0), pl.col("n_correct").fill_null(0))
    grid = grid.with_columns(
        pl.when(~pl.col("skipped"))
        .then(pl.col("n_correct") / pl.col("n_rollouts"))
        .cast(pl.Float64)
        .alias("success_rate")
    )
    if policy == "pi_sft":
        q = pl.col("success_rate")
    else:
        short = grid.filter((pl.col("n_rollouts") < k) & ~pl.col("skipped"))
        if short.height:
            row = _first_row(short.sort("sample_id", "step_idx"))
            raise ValueError(
                f"best_of_k with k={k} needs at least {k} rollouts per prefix; sample "
                f"{row['sample_id']!r} step {row['step_idx']} has {row['n_rollouts']} "
                f"({short.height} such prefixes). Roll out more, lower k, or use pi_sft."
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
        q = 1.0 - failing
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
    qq = _typed(
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
        row = _first_row(unknown)
        raise ValueError(
            f"q: sample {row['sample_id']!r} step {row['step_idx']} has a null q_value from "
            f"{row['n_rollouts']} rollouts; only prefixes skipped by early stop (no rollouts) "
            "may have an unknown Q"
        )
    ss = _typed(
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
    _no_duplicates(qq, ["sample_id", "step_idx"], "q")
    _no_duplicates(ss, ["sample_id", "step_idx"], "steps")

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
            f"steps: sample {_first_row(bad)['sample_id']!r} has more than one problem_id or "
            "sample_is_correct across its steps"
        )
    bad = info.filter((pl.col("lo") != 1) | (pl.col("hi") != pl.col("n")))
    if bad.height:
        row = _first_row(bad.sort("sample_id"))
        raise ValueError(
            f"steps: sample {row['sample_id']!r} has step_idx {row['lo']}..{row['hi']} over "
            f"{row['n']} rows; steps must be numbered 1..L without gaps"
        )
    qinfo = qq.group_by("sample_id").agg(
        pl.col("step_idx").min().alias("qlo"),
        pl.col("step_idx").max().alias("qhi"),
        pl.len().alias("qn"),
    )
    joined = info.join(qinfo, on="sample_id", how="full", coalesce=True)
    no_q = joined.filter(pl.col("qn").is_null())
    if no_q.height:
        raise ValueError(
            f"sample {_first_row(no_q)['sample_id']!r} has steps but no q-values "
            f"({no_q.height} such samples)"
        )
    no_steps = joined.filter(pl.col("n").is_null())
    if no_steps.height:
        raise ValueError(
            f"sample {_first_row(no_steps)['sample_id']!r} has q-values but no steps "
            f"({no_steps.height} such samples)"
        )
    bad = joined.filter(
        (pl.col("qlo") != 0) | (pl.col("qhi") != pl.col("n")) | (pl.col("qn") != pl.col("n") + 1)
    )
    if bad.height:
        row = _first_row(bad.sort("sample_id"))
        raise ValueError(
            f"sample {row['sample_id']!r}: q has step_idx {row['qlo']}..{row['qhi']} over "
            f"{row['qn']} rows, but the sample has {row['n']} steps; q needs exactly 0..{row['n']}"
        )

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


def first_pits(adv: pl.DataFrame) -> pl.DataFrame:
    """sample_id -> pit_step_idx, for the samples that have a first pit."""
    _require(adv, ["sample_id", "step_idx", "is_first_pit"], "adv")
    return (
        adv.filter(pl.col("is_first_pit").fill_null(False))
        .select(
            pl.col("sample_id").cast(pl.String),
            pl.col("step_idx").cast(pl.Int64).alias("pit_step_idx"),
        )
        .sort("sample_id")
    )


# --------------------------------------------------------------------------------------------
# preference pairs


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert, delete, substitute; all cost 1).

    Myers' bit-vector algorithm in Hyyrö's formulation: one column of the DP matrix is two
    bit masks (vertical +1 / -1 deltas) over the shorter string, updated per character of
    the longer one.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = (ph << 1) | 1
        mh <<= 1
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv & mask
    return score


def _rng(seed: int, key: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _with_eos(text: str) -> str:
    """A completion followed by EOS, as SFT builds it: trailing newlines -> one ``"\\n"``."""
    return text.rstrip("\n") + "\n"


def _without_eos(text: str) -> str:
    return text.rstrip()


_INPUT_DTYPES = {
    "is_correct": pl.Boolean,
    "is_first_pit": pl.Boolean,
    "step_idx": pl.Int64,
    "rollout_idx": pl.Int64,
}


def _rows_to_frame(rows: list[dict]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    return pl.DataFrame(rows, schema=PAIR_SCHEMA)


def preference_pairs(
    problems: pl.DataFrame,
    samples: pl.DataFrame,
    adv: pl.DataFrame,
    rollouts: pl.DataFrame,
    teacher: pl.DataFrame,
    *,
    kinds: Sequence[str],
    seed: int,
    prompt_fn: Callable[[str], str],
    step_rule: str = "lines",
) -> pl.DataFrame:
    """Preference pairs of the requested ``kinds`` (``PAIR_SCHEMA``); see the module docstring.

    ``problems``: problem_id, question. ``samples``: problem_id, sample_id, solution,
    is_correct. ``adv``: sample_id, step_idx, is_first_pit (+ step_text, checked at the pit).
    ``rollouts``: sample_id, step_idx, rollout_idx, completion, is_correct. ``teacher``:
    problem_id, solution_id, solution, is_correct. Frames a requested kind does not read may
    be empty (even without columns).
    """
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence of kinds, not the string {kinds!r}")
    unknown = [k for k in kinds if k not in PAIR_KINDS]
    if unknown:
        raise ValueError(f"unknown pair kind(s) {unknown}; allowed: {PAIR_KINDS}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown step rule {step_rule!r}; allowed: {STEP_RULES}")
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        return _rows_to_frame([])

    def needed(df: pl.DataFrame, columns: list[str], name: str) -> pl.DataFrame:
        if df.height == 0 and not set(columns) <= set(df.columns):
            return pl.DataFrame(schema={c: _INPUT_DTYPES.get(c, pl.String) for c in columns})
        _require(df, columns, name)
        return df

    samples = needed(samples, ["problem_id", "sample_id", "solution", "is_correct"], "samples")
    problems = needed(problems, ["problem_id", "question"], "problems")
    _no_nulls(samples, ["problem_id", "sample_id", "solution", "is_correct"], "samples")
    _no_duplicates(samples, ["sample_id"], "samples")
    _no_duplicates(problems, ["problem_id"], "problems")
    questions = dict(
        zip(
            problems["problem_id"].cast(pl.String).to_list(),
            problems["question"].cast(pl.String).to_list(),
            strict=True,
        )
    )
    sample_rows = sorted(
        samples.select(
            pl.col("problem_id").cast(pl.String),
            pl.col("sample_id").cast(pl.String),
            pl.col("solution").cast(pl.String),
            pl.col("is_correct").cast(pl.Boolean),
        ).iter_rows(named=True),
        key=lambda r: (r["problem_id"], r["sample_id"]),
    )
    orphan = [r["sample_id"] for r in sample_rows if r["problem_id"] not in questions]
    if orphan:
        raise ValueError(
            f"samples of unknown problems (not in problems), e.g. sample {orphan[0]!r} "
            f"({len(orphan)} such)"
        )
    by_id = {r["sample_id"]: r for r in sample_rows}
    positives: dict[str, list[dict]] = {}
    negatives: dict[str, list[dict]] = {}
    for r in sample_rows:
        (positives if r["is_correct"] else negatives).setdefault(r["problem_id"], []).append(r)

    # correct solutions: the policy's own first, the teacher's as fallback
    pools: dict[str, list[tuple[str, str]]] = {
        pid: [(r["sample_id"], r["solution"]) for r in rows] for pid, rows in positives.items()
    }
    if {"per_step", "outcome"} & set(kinds):
        teacher = needed(
            teacher, ["problem_id", "solution_id", "solution", "is_correct"], "teacher"
        )
        correct = teacher.filter(pl.col("is_correct").cast(pl.Boolean).fill_null(False)).select(
            pl.col("problem_id").cast(pl.String),
            pl.col("solution_id").cast(pl.String),
            pl.col("solution").cast(pl.String),
        )
        teacher_pool: dict[str, list[tuple[str, str]]] = {}
        for r in sorted(correct.iter_rows(named=True), key=lambda r: r["solution_id"]):
            teacher_pool.setdefault(r["problem_id"], []).append((r["solution_id"], r["solution"]))
        for pid, pool in teacher_pool.items():
            pools.setdefault(pid, pool)

    def pick_correct(neg: dict) -> tuple[str, str] | None:
        pool = pools.get(neg["problem_id"])
        if not pool:
            return None
        return pool[_rng(seed, neg["sample_id"]).randrange(len(pool))]

    pits: dict[str, int] = {}
    pit_text: dict[str, str] = {}
    if {"per_step", "shared_prefix"} & set(kinds):
        adv = needed(adv, ["sample_id", "step_idx", "is_first_pit"], "adv")
        for row in first_pits(adv).iter_rows(named=True):
            pits[row["sample_id"]] = row["pit_step_idx"]
        if "step_text" in adv.columns:
            at_pit = adv.filter(pl.col("is_first_pit").fill_null(False))
            for sid, text in zip(at_pit["sample_id"], at_pit["step_text"], strict=True):
                pit_text[str(sid)] = text
        for sid in pits:
            if sid not in by_id:
                raise ValueError(f"adv has a first pit for sample {sid!r}, which is not in samples")
            if by_id[sid]["is_correct"]:
                raise ValueError(f"adv has a first pit for sample {sid!r}, which is correct")

    def steps_at_pit(neg: dict) -> tuple[list[str], int] | None:
        p = pits.get(neg["sample_id"])
        if p is None:
            return None
        steps = split_steps(neg["solution"], step_rule)
        if not 1 <= p <= len(steps) or (
            neg["sample_id"] in pit_text and pit_text[neg["sample_id"]] != steps[p - 1]
        ):
            raise ValueError(
                f"sample {neg['sample_id']!r}: its first pit is step {p}, but its solution "
                f"split with step_rule={step_rule!r} gives {len(steps)} steps"
                + ("" if p > len(steps) else " whose pit step differs from adv.step_text")
                + "; step_advantages must be built with the same step rule"
            )
        return steps, p

    successes: dict[tuple[str, int], list[tuple[int, str]]] = {}
    if "shared_prefix" in kinds:
        rollouts = needed(
            rollouts,
            ["sample_id", "step_idx", "rollout_idx", "completion", "is_correct"],
            "rollouts",
        )
        ok = rollouts.filter(pl.col("is_correct").cast(pl.Boolean).fill_null(False)).select(
            pl.col("sample_id").cast(pl.String),
            pl.col("step_idx").cast(pl.Int64),
            pl.col("rollout_idx").cast(pl.Int64),
            pl.col("completion").cast(pl.String),
        )
        wanted = {(sid, p - 1) for sid, p in pits.items()}
        for r in ok.sort("sample_id", "step_idx", "rollout_idx").iter_rows(named=True):
            key = (r["sample_id"], r["step_idx"])
            if key in wanted and r["completion"] is not None:
                successes.setdefault(key, []).append((r["rollout_idx"], r["completion"]))

    rows: list[dict] = []

    def add(kind: str, neg: dict, j: str, prompt: str, chosen: str, rejected: str, **kw) -> None:
        rows.append(
            {
                "pair_id": f"{kind}/{neg['sample_id']}/{j}",
                "problem_id": neg["problem_id"],
                "kind": kind,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "sample_id": neg["sample_id"],
                **kw,
            }
        )

    for kind in kinds:
        for pid in sorted(negatives):
            question = questions[pid]
            for neg in negatives[pid]:
                if kind == "per_step":
                    cut = steps_at_pit(neg)
                    pick = pick_correct(neg)
                    if cut is None or pick is None:
                        continue
                    steps, p = cut
                    rejected = _without_eos(prefix(steps, p))
                    if not rejected:
                        continue
                    add(
                        kind,
                        neg,
                        "0",
                        prompt_fn(question),
                        _with_eos(pick[1]),
                        rejected,
                        pit_step_idx=p,
                        chosen_id=pick[0],
                        chosen_has_eos=True,
                        rejected_has_eos=False,
                    )
                elif kind == "outcome":
                    pick = pick_correct(neg)
                    if pick is None:
                        continue
                    add(
                        kind,
                        neg,
                        "0",
                        prompt_fn(question),
                        _with_eos(pick[1]),
                        _with_eos(neg["solution"]),
                        pit_step_idx=None,
                        chosen_id=pick[0],
                        chosen_has_eos=True,
                        rejected_has_eos=True,
                    )
                elif kind == "shared_prefix":
                    cut = steps_at_pit(neg)
                    if cut is None:
                        continue
                    steps, p = cut
                    rejected = _without_eos(steps[p - 1])
                    options = []
                    for ridx, completion in successes.get((neg["sample_id"], p - 1), []):
                        first = split_steps(completion, step_rule)[:1]
                        chosen = _without_eos(first[0]) if first else ""
                        if chosen and chosen != rejected:
                            options.append((ridx, chosen))
                    if not rejected or not options:
                        continue
                    ridx, chosen = options[_rng(seed, neg["sample_id"]).randrange(len(options))]
                    add(
                        kind,
                        neg,
                        "0",
                        prompt_fn(question) + prefix(steps, p - 1),
                        chosen,
                        rejected,
                        pit_step_idx=p,
                        chosen_id=f"{neg['sample_id']}/rollout/{p - 1}/{ridx}",
                        chosen_has_eos=False,
                        rejected_has_eos=False,
                    )
            if kind == "edit_distance":
                for pos in positives.get(pid, []):
                    best, best_d = None, -1
                    for neg in negatives[pid]:  # sorted by sample_id: ties keep the lowest
                        d = levenshtein(pos["solution"], neg["solution"])
                        if d > best_d:
                            best, best_d = neg, d
                    add(
                        kind,
                        best,
                        pos["sample_id"],
                        prompt_fn(question),
                        _with_eos(pos["solution"]),
                        _with_eos(best["solution"]),
                        pit_step_idx=None,
                        chosen_id=pos["sample_id"],
                        chosen_has_eos=True,
                        rejected_has_eos=True,
                    )
    # edit_distance rows were appended per positive: put every kind in one documented order
    order = {k: i for i, k in enumerate(kinds)}
    rows.sort(key=lambda r: (order[r["kind"]], r["problem_id"], r["sample_id"], r["pair_id"]))
    return _rows_to_frame(rows)
