"""The study's invariants as plain checks on its tables, for the asset checks that run with
every materialization of the asset that makes the table (:mod:`synthdata_assets.defs`).

Each check returns a :class:`Verdict`: whether the table holds the invariant, and metadata
that says by how much it misses (counts, the first offending id). A check never raises on a
broken table: reporting it is its job, and the asset check records it in the Dagster UI
(a failing blocking check then stops the stages downstream in the same run).

- :func:`q_values_in_unit_interval` (``step_advantages``): Q is a probability of success.
- :func:`first_pit_per_negative` (``step_advantages``): under ``first_zero`` every negative
  has exactly one first pit (its finished sample is worth exactly 0), under ``largest_drop``
  at most one; positives have none.
- :func:`per_step_rejected_is_prefix` (``preference_pairs``): a per-step pair's rejected side
  is its negative sample cut after the pit: a literal prefix of the solution, without EOS.
- :func:`evaluations_cover` (``evaluations``): one answer per method and test problem.
- :func:`teacher_pass_rate_in_bounds` (``teacher_solutions``): the pass rate the teacher's
  configuration implies (:func:`teacher_pass_rate_bounds`).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

import polars as pl

from synthdata_assets.config import TeacherConfig

Metadata = dict[str, int | float | str | None]
# The chance, on each side, that the oracle teacher's pass rate falls outside its bounds by
# luck alone: small enough that a blocking check never stops a sound run (one in 500,000
# partitions), while slips graded correct, or correct solutions graded wrong, still show at
# the data sizes of a study (with slip_rate 0 the bounds are exactly 1).
PASS_RATE_ALPHA = 1e-6


@dataclass(frozen=True)
class Verdict:
    """Whether a table holds an invariant, with metadata on what was counted."""

    passed: bool
    metadata: Metadata = field(default_factory=dict)


def _first_id(offenders: pl.DataFrame, columns: list[str]) -> str | None:
    """``"a/b"`` of the first row of ``offenders`` (sorted by ``columns``), or None."""
    if offenders.height == 0:
        return None
    row = offenders.sort(columns).row(0, named=True)
    return "/".join(str(row[c]) for c in columns)


def q_values_in_unit_interval(table: pl.DataFrame, *, early_stop: bool) -> Verdict:
    """Every ``q_value`` of a ``step_advantages`` table is in [0, 1]. A null Q (unknown) is
    allowed only after the sample's first pit under ``early_stop`` (``credit.early_stop``:
    those prefixes are never rolled out); anywhere else it is a hole in the advantages."""
    q = pl.col("q_value")
    pit = pl.col("step_idx").filter(pl.col("is_first_pit")).min().over("sample_id")
    skipped = (pl.col("step_idx") > pit).fill_null(False) if early_stop else pl.lit(False)
    outside = table.filter(q.is_not_null() & (q.is_nan() | (q < 0.0) | (q > 1.0)))
    holes = table.filter(q.is_null() & ~skipped)
    known = table.filter(q.is_not_null() & q.is_not_nan())["q_value"]
    return Verdict(
        passed=outside.height == holes.height == 0,
        metadata={
            "steps": table.height,
            "outside_unit_interval": outside.height,
            "null_q_values": table["q_value"].null_count(),
            "null_q_values_not_skipped": holes.height,
            "min_q": known.min(),
            "max_q": known.max(),
            "first": _first_id(pl.concat([outside, holes]), ["sample_id", "step_idx"]),
        },
    )


def first_pit_per_negative(table: pl.DataFrame, pit_rule: str) -> Verdict:
    """Under ``pit_rule`` ``first_zero`` every negative sample of a ``step_advantages`` table
    has exactly one first pit (its finished prefix is worth exactly 0, so some step is);
    under ``largest_drop`` at most one (a negative whose Q never drops has none); a positive
    never has one. ``first`` names the first offending sample."""
    per_sample = table.group_by("sample_id").agg(
        pl.col("sample_is_correct").first().alias("positive"),
        pl.col("is_first_pit").fill_null(False).sum().alias("pits"),
    )
    negatives = per_sample.filter(~pl.col("positive"))
    none = negatives.filter(pl.col("pits") == 0)
    several = negatives.filter(pl.col("pits") > 1)
    positives = per_sample.filter(pl.col("positive") & (pl.col("pits") > 0))
    required = [several, positives] + ([none] if pit_rule == "first_zero" else [])
    offenders = pl.concat(required)
    return Verdict(
        passed=offenders.height == 0,
        metadata={
            "pit_rule": pit_rule,
            "negatives": negatives.height,
            "negatives_without_pit": none.height,
            "negatives_with_several_pits": several.height,
            "positives_with_pit": positives.height,
            "first": _first_id(offenders, ["sample_id"]),
        },
    )


def per_step_rejected_is_prefix(pairs: pl.DataFrame, samples: pl.DataFrame) -> Verdict:
    """The rejected side of every ``per_step`` pair is its negative sample cut after the pit:
    non-empty, a literal prefix of the sample's solution in ``samples`` (``policy_samples``),
    and stored without EOS (a cut negative must not teach the model to stop there)."""
    per_step = pairs.filter(pl.col("kind") == "per_step").join(
        samples.select("sample_id", "solution", pl.col("is_correct").alias("sample_is_correct")),
        on="sample_id",
        how="left",
    )
    not_negative = per_step.filter(pl.col("sample_is_correct").fill_null(True))
    rejected = pl.col("rejected").fill_null("")
    not_prefix = per_step.filter(
        (rejected == "") | ~pl.col("solution").fill_null("").str.starts_with(rejected)
    )
    with_eos = per_step.filter(pl.col("rejected_has_eos").fill_null(True))
    offenders = pl.concat([not_negative, not_prefix, with_eos], how="diagonal_relaxed")
    return Verdict(
        passed=offenders.height == 0,
        metadata={
            "per_step_pairs": per_step.height,
            "not_a_negative_sample": not_negative.height,
            "not_a_prefix": not_prefix.height,
            "rejected_with_eos": with_eos.height,
            "first": _first_id(offenders, ["pair_id"]),
        },
    )


def evaluations_cover(
    evaluations: pl.DataFrame, test_problem_ids: Collection[str], methods: Collection[str]
) -> Verdict:
    """An ``evaluations`` table holds exactly one row for every method of ``methods`` and
    every test problem, and nothing else: a curve's point is an accuracy over the whole test
    split, the same for every method."""
    keys = ["method", "problem_id"]
    expected = pl.DataFrame({"method": list(methods)}).join(
        pl.DataFrame({"problem_id": list(test_problem_ids)}), how="cross"
    )
    got = evaluations.select(keys)
    missing = expected.join(got, on=keys, how="anti")
    unexpected = got.join(expected, on=keys, how="anti")
    duplicated = got.filter(pl.struct(keys).is_duplicated())
    extra = got.height - got.unique().height
    offenders = pl.concat([missing, unexpected, duplicated])
    return Verdict(
        passed=offenders.height == 0,
        metadata={
            "methods": len(methods),
            "test_problems": len(test_problem_ids),
            "rows": evaluations.height,
            "missing": missing.height,
            "unexpected": unexpected.height,
            "duplicated": extra,
            "first": _first_id(offenders, keys),
        },
    )


def binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """The counts ``lo..hi`` that Binomial(``n``, ``p``) falls below, or above, with a
    probability of at most ``alpha`` each (exact tails, summed in log space)."""
    if p <= 0.0:
        return 0, 0
    if p >= 1.0:
        return n, n

    def pmf(k: int) -> float:
        log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        return math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))

    lo, below = 0, 0.0
    while lo < n and below + pmf(lo) <= alpha:
        below += pmf(lo)
        lo += 1
    hi, above = n, 0.0
    while hi > 0 and above + pmf(hi) <= alpha:
        above += pmf(hi)
        hi -= 1
    return lo, hi


def teacher_pass_rate_bounds(teacher: TeacherConfig, n: int) -> tuple[int, int] | None:
    """The numbers of correct solutions among ``n`` that ``teacher``'s configuration allows,
    or None where it implies no rate.

    The configuration names no pass-rate bounds, but the oracle teacher's follow from what it
    enforces: each of its solutions slips independently with probability ``slip_rate`` (in
    [0, 1]), a slip always changes the final answer (the embedded task slips the target's own
    step when an error would cancel; star_graph takes a wrong arm), and an unslipped solution
    is the task's exact answer. So the number correct is Binomial(n, 1 - slip_rate), and
    outside its bounds (:data:`PASS_RATE_ALPHA` on each side) the verifier misgrades the
    oracle. The reference and endpoint teachers imply no rate: an endpoint's pass rate is
    what is being measured. Whatever the teacher, SFT needs a positive (check
    ``has_positives``).
    """
    if teacher.kind != "oracle":
        return None
    return binomial_bounds(n, 1.0 - teacher.slip_rate, PASS_RATE_ALPHA)


def teacher_pass_rate_in_bounds(is_correct: pl.Series, teacher: TeacherConfig) -> Verdict:
    """The teacher's pass rate (``is_correct`` of ``teacher_solutions``) is within the bounds
    of :func:`teacher_pass_rate_bounds`; a table without solutions has no rate and fails."""
    n, positives = is_correct.len(), int(is_correct.fill_null(False).sum())
    bounds = teacher_pass_rate_bounds(teacher, n)
    lo, hi = bounds or (0, n)
    return Verdict(
        passed=n > 0 and lo <= positives <= hi,
        metadata={
            "solutions": n,
            "pass_rate": positives / n if n else None,
            "expected_pass_rate": 1.0 - teacher.slip_rate if bounds else None,
            "lower_bound": lo / n if n else None,
            "upper_bound": hi / n if n else None,
        },
    )
