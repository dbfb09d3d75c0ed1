"""Scaling curves: accuracy vs. synthetic data size, paired comparisons against SFT, and data
multipliers with bootstrap intervals over seeds and test problems.

The study's efficiency claims (RFT ~2x, per-step DPO ~8x the SFT data, Setlur et al. 2024)
are read off accuracy-vs-data-size curves. This module turns the ``evaluations`` table (one
row per method x data_size x seed x test problem; ``is_correct`` grades the greedy answer,
and a null counts as wrong) into:

``scaling_table(evaluations)``
    the ``scaling_curves`` table: accuracy, test_error and n_test per method x size x seed.
``compare(evaluations, reference="sft", chance=None, n_boot=2000, confidence=0.95, seed=0)``
    a :class:`Comparison` of every method with the reference, in three frames:

    - ``paired`` (``PAIRED_SCHEMA``): per method and size, the mean paired difference
      method - reference in accuracy points (same seeds, same test problems), its bootstrap
      interval, and wins/losses: (seed, problem) pairs the method gets right and the
      reference wrong, and the reverse;
    - ``per_size`` (``SIZE_MULTIPLIER_SCHEMA``): each method's reference-equivalent data
      size at each of its sizes, and the multiplier ``reference_size / data_size``;
    - ``multipliers`` (``MULTIPLIER_SCHEMA``): one summary multiplier per method, with the
      bootstrap median, percentile interval and share of resamples above 1x.
``multipliers(evaluations, ...)``
    ``compare(...).multipliers``.
``control_comparison(evaluations, ...)``
    per-step DPO paired against its control without negatives (``nll_control``): what the
    negatives add over imitating the chosen sides.
``plot_curves``, ``report_markdown``, ``study_report``
    the figure, the markdown report, and both written into the reports folder.

How a multiplier is measured, and why not with a power law
    Near the chance floor a power law on test error is nearly flat (error can barely fall
    below 1 - chance), so its exponent is tiny and one accuracy point moves a multiplier by
    2x. The reference curve is therefore read off the measurements, not fitted: its
    seed-mean accuracy per size is clipped from below at ``chance`` (accuracy at chance says
    nothing about data size), made non-decreasing by isotonic regression (pool adjacent
    violators, every size weighted alike) and interpolated linearly in log data size between
    measured sizes. A method's reference-equivalent size at accuracy ``a`` is the least
    reference data whose curve reaches ``a``. Nothing is extrapolated: above the reference's
    best accuracy the equivalent size is only known to exceed the largest measured size
    (censored "above", counted at that size: the multiplier there is a lower bound); below
    the accuracy at its smallest size, or at chance, it is only known to fall short of the
    smallest size (censored "below": an upper bound).

    A method's summary is the geometric mean of its multipliers over the sizes where its
    full-data accuracy lies inside the reference's range. With no such size it is the mean
    over all its sizes and itself a bound (``bound`` "lower" or "upper"; undefined when its
    sizes fall out on both sides). The reference is 1x by definition. When the reference has
    fewer than 2 sizes or its curve does not rise, every multiplier is undefined and
    ``note`` says why.

Bootstrap
    Each resample draws the study's seeds with replacement and, independently, the test
    problems with replacement. One draw serves every method and size, so comparisons stay
    paired; the problem draw is shared by all seeds, because every seed's models answer the
    same test split (problems are crossed with seeds, not nested in them). Every accuracy,
    paired difference and multiplier is recomputed on the resample; the summary multiplier
    keeps the full data's choice of sizes, and a size that leaves the reference's range in a
    resample counts at the range's edge. Intervals are percentiles. Resamples whose
    reference curve does not rise are dropped and counted in ``note``; with fewer than half
    left there is no interval. With one seed the interval covers test-problem sampling only,
    not training noise. It is vectorised numpy: a correctness array [method, size, seed,
    problem] and count arrays for the draws; deterministic given ``seed``.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from warehouse.parquet import temp_sibling

__all__ = [
    "MULTIPLIER_SCHEMA",
    "PAIRED_SCHEMA",
    "SCALING_SCHEMA",
    "SIZE_MULTIPLIER_SCHEMA",
    "Comparison",
    "StudyReport",
    "compare",
    "flat_note",
    "floor_note",
    "multipliers",
    "plot_curves",
    "report_markdown",
    "scaling_table",
    "study_report",
]

SCALING_SCHEMA = {
    "method": pl.String,
    "data_size": pl.Int64,
    "seed": pl.Int64,
    "accuracy": pl.Float64,
    "test_error": pl.Float64,
    "n_test": pl.Int64,
}

# difference, ci_low, ci_high in accuracy points (percent); n_pairs = (seed, problem) pairs.
PAIRED_SCHEMA = {
    "method": pl.String,
    "data_size": pl.Int64,
    "difference": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "wins": pl.Int64,
    "losses": pl.Int64,
    "n_pairs": pl.Int64,
}

# censored: null (inside the reference's range), "above" (a lower bound), "below" (an upper).
SIZE_MULTIPLIER_SCHEMA = {
    "method": pl.String,
    "data_size": pl.Int64,
    "accuracy": pl.Float64,
    "reference_size": pl.Float64,
    "multiplier": pl.Float64,
    "censored": pl.String,
}

# bound: null (an estimate), "lower" or "upper" (every size censored that way).
MULTIPLIER_SCHEMA = {
    "method": pl.String,
    "multiplier": pl.Float64,
    "median": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "share_above_1": pl.Float64,
    "n_sizes": pl.Int64,
    "bound": pl.String,
    "note": pl.String,
}

EVAL_COLUMNS = ("method", "data_size", "seed", "problem_id", "is_correct")
# Per-step DPO's control without negatives (synthdata_assets.preference): the report pairs
# per-step DPO against it as well as against SFT.
CONTROL = "nll_control"

# Accuracies closer than this are equal (isotonic averages are not bit-exact).
_TOL = 1e-12
# Bootstrap resamples processed at once, and at most this many (resample, problem) counts.
_BOOT_CHUNK = 500
_BOOT_CELLS = 2_000_000


# --------------------------------------------------------------------------- validation


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} is missing required column(s): {', '.join(missing)} "
            f"(has: {', '.join(frame.columns) or 'none'})"
        )


def _normalise_evaluations(evaluations: pl.DataFrame) -> pl.DataFrame:
    _require(evaluations, EVAL_COLUMNS, "evaluations")
    try:
        df = evaluations.select(
            pl.col("method").cast(pl.String),
            pl.col("data_size").cast(pl.Int64),
            pl.col("seed").cast(pl.Int64),
            pl.col("problem_id").cast(pl.String),
            pl.col("is_correct").cast(pl.Boolean).fill_null(False),
        )
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"evaluations has columns of the wrong type: {exc}") from exc
    if df.height == 0:
        return df
    for col in ("method", "data_size", "seed", "problem_id"):
        if df[col].null_count():
            raise ValueError(f"evaluations has null values in column {col!r}")
    bad = [s for s in df["data_size"].unique().to_list() if s <= 0]
    if bad:
        raise ValueError(f"data_size must be a positive integer, got {bad[:5]}")
    keys = ["method", "data_size", "seed", "problem_id"]
    dupes = df.group_by(keys).len().filter(pl.col("len") > 1)
    if dupes.height:
        example = dupes.row(0, named=True)
        raise ValueError(
            f"evaluations has {dupes.height} duplicated (method, data_size, seed, problem_id) "
            f"keys, e.g. { ({k: example[k] for k in keys}) }"
        )
    return df


def _check_options(chance: float | None, n_boot: int, confidence: float) -> None:
    if chance is not None and not 0.0 <= chance < 1.0:
        raise ValueError(f"chance must be in [0, 1) or None, got {chance}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


# --------------------------------------------------------------------------- scaling table


def scaling_table(evaluations: pl.DataFrame) -> pl.DataFrame:
    """One row per method x data_size x seed: accuracy, test_error, n_test (``SCALING_SCHEMA``)."""
    df = _normalise_evaluations(evaluations)
    if df.height == 0:
        return pl.DataFrame(schema=SCALING_SCHEMA)
    methods = df["method"].unique(maintain_order=True).to_list()
    return (
        df.group_by(["method", "data_size", "seed"], maintain_order=True)
        .agg(
            accuracy=pl.col("is_correct").cast(pl.Float64).mean(),
            n_test=pl.len().cast(pl.Int64),
        )
        .with_columns(test_error=1.0 - pl.col("accuracy"))
        # methods in order of first appearance (e.g. base, sft, rft, ...), then size, seed
        .sort(
            pl.col("method").replace_strict(methods, list(range(len(methods)))),
            "data_size",
            "seed",
        )
        .select(list(SCALING_SCHEMA))
        .cast(SCALING_SCHEMA)
    )


# --------------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class _Cube:
    """Evaluations as arrays [method, size, seed, problem]; ``present`` is 1 where evaluated."""

    methods: list[str]
    sizes: list[int]
    seeds: list[int]
    correct: np.ndarray
    present: np.ndarray

    @property
    def log_n(self) -> np.ndarray:
        return np.log(np.asarray(self.sizes, dtype=float))


def _cube(df: pl.DataFrame) -> _Cube:
    methods = df["method"].unique(maintain_order=True).to_list()
    sizes = sorted(df["data_size"].unique().to_list())
    seeds = sorted(df["seed"].unique().to_list())
    problems = df["problem_id"].unique(maintain_order=True).to_list()
    shape = (len(methods), len(sizes), len(seeds), len(problems))
    correct = np.zeros(shape)
    present = np.zeros(shape)
    idx = tuple(
        df[col].replace_strict(values, list(range(len(values))), return_dtype=pl.Int64).to_numpy()
        for col, values in (
            ("method", methods),
            ("data_size", sizes),
            ("seed", seeds),
            ("problem_id", problems),
        )
    )
    correct[idx] = df["is_correct"].to_numpy().astype(float)
    present[idx] = 1.0
    return _Cube(methods, sizes, seeds, correct, present)


@dataclass(frozen=True)
class _Means:
    """A quantity averaged per (method, size, seed) over problems, then over seeds, as
    matrices ready for weighted draws: ``values`` and ``mask`` are [M*N*K, P]."""

    values: np.ndarray
    mask: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, values: np.ndarray, mask: np.ndarray) -> _Means:
        m, n, k, p = values.shape
        return cls((values * mask).reshape(-1, p), mask.reshape(-1, p), (m, n, k))

    def __call__(self, seed_w: np.ndarray, prob_w: np.ndarray) -> np.ndarray:
        """[B, M, N]: per seed, the problem-weighted mean; then the seed-weighted mean of
        the seeds with data. ``seed_w`` [B, K] and ``prob_w`` [B, P] are draw counts."""
        b = len(prob_w)
        sums = (prob_w @ self.values.T).reshape(b, *self.shape)
        counts = (prob_w @ self.mask.T).reshape(b, *self.shape)
        has = counts > 0
        per_seed = np.where(has, sums / np.where(has, counts, 1.0), 0.0)
        weight = seed_w[:, None, None, :] * has
        total = weight.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (weight * per_seed).sum(axis=-1) / total, np.nan)


# --------------------------------------------------------------------------- reference curve


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of each row of ``y`` [B, L], sizes weighted alike:
    ``fit_i = max_{j<=i} min_{k>=i} mean(y_j..y_k)`` (equal to pool adjacent violators)."""
    b, length = y.shape
    csum = np.concatenate([np.zeros((b, 1)), np.cumsum(y, axis=1)], axis=1)
    span = np.arange(1, length + 1)[None, :] - np.arange(length)[:, None]  # k + 1 - j
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = (csum[:, None, 1:] - csum[:, :-1, None]) / span  # [B, j, k], used for j <= k
    fit = np.empty_like(y)
    for i in range(length):
        fit[:, i] = avg[:, : i + 1, i:].min(axis=2).max(axis=1)
    return fit


def _invert(
    x: np.ndarray, curve: np.ndarray, acc: np.ndarray, chance: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Least log size at which the piecewise-linear ``curve`` [B, L] over ``x`` [L] reaches
    each accuracy ``acc`` [B, M, N]. Returns (log size clamped to x's range, side): side is
    -1 below the curve's start or at chance, +1 above its end, 0 inside."""
    y = np.broadcast_to(curve[:, None, None, :], (*acc.shape, len(x)))
    reach = y >= acc[..., None] - _TOL
    first = reach.argmax(axis=-1)
    hi = np.clip(first, 1, len(x) - 1)
    y_lo = np.take_along_axis(y, (hi - 1)[..., None], axis=-1)[..., 0]
    y_hi = np.take_along_axis(y, hi[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((acc - y_lo) / (y_hi - y_lo), 0.0, 1.0)
    log_size = np.where(first == 0, x[0], x[hi - 1] + t * (x[hi] - x[hi - 1]))
    below = acc < curve[:, None, None, :1][..., 0] - _TOL
    if chance is not None:
        below |= acc <= chance + _TOL
    above = ~reach.any(axis=-1) & ~below
    side = np.where(below, -1, np.where(above, 1, 0))
    log_size = np.where(below, x[0], np.where(above, x[-1], log_size))
    finite = np.isfinite(acc)
    return np.where(finite, log_size, np.nan), np.where(finite, side, 0)


def _equivalent_sizes(acc: np.ndarray, ref: int, log_n: np.ndarray, chance: float | None):
    """Per resample, the reference curve and every method's reference-equivalent log size.

    ``acc`` [B, M, N] (NaN where a method has no data at a size). Returns (log reference
    size [B, M, N], side [B, M, N], curve [B, N] with NaN off the reference's sizes, rises
    [B]: the curve has >= 2 sizes and ends above where it starts)."""
    if chance is not None:
        acc = np.maximum(acc, chance)
    log_ref = np.full(acc.shape, np.nan)
    side = np.zeros(acc.shape, dtype=np.int8)
    curve = np.full((acc.shape[0], acc.shape[2]), np.nan)
    rises = np.zeros(acc.shape[0], dtype=bool)
    nodes = np.isfinite(acc[:, ref, :])
    # Resamples can miss a size (a seed without it drawn): each pattern of sizes separately.
    patterns, which = np.unique(nodes, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        rows = np.flatnonzero(which.ravel() == p)
        if pattern.sum() < 2:
            continue
        fit = _isotonic(acc[rows][:, ref][:, pattern])
        log_ref[rows], side[rows] = _invert(log_n[pattern], fit, acc[rows], chance)
        curve[np.ix_(rows, np.flatnonzero(pattern))] = fit
        rises[rows] = fit[:, -1] > fit[:, 0] + _TOL
    return log_ref, side, curve, rises


# --------------------------------------------------------------------------- resamples


@dataclass(frozen=True)
class _Resamples:
    """Everything recomputed on a resample: accuracy, paired difference vs. the reference,
    log reference-equivalent size and its side [B, M, N]; reference curve [B, N]; rises [B]."""

    acc: np.ndarray
    diff: np.ndarray
    log_ref: np.ndarray
    side: np.ndarray
    curve: np.ndarray
    rises: np.ndarray

    @staticmethod
    def join(parts: list[_Resamples]) -> _Resamples:
        return _Resamples(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _Resamples.__annotations__)
        )


def _resample(
    accuracy: _Means,
    difference: _Means,
    ref: int,
    log_n: np.ndarray,
    chance: float | None,
    seed_w: np.ndarray,
    prob_w: np.ndarray,
) -> _Resamples:
    acc = accuracy(seed_w, prob_w)
    diff = difference(seed_w, prob_w)
    log_ref, side, curve, rises = _equivalent_sizes(acc, ref, log_n, chance)
    return _Resamples(acc, diff, log_ref, side, curve, rises)


def _draw_counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """[b, n]: how often each of n items is drawn in each of b draws of n with replacement."""
    draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)


def _resamples(
    cube: _Cube, ref: int, chance: float | None, n_boot: int, seed: int
) -> tuple[_Resamples, _Resamples | None]:
    """The full data once (every seed and problem drawn once), then ``n_boot`` resamples
    (None when ``n_boot`` is 0)."""
    both = cube.present * cube.present[ref]
    accuracy = _Means.of(cube.correct, cube.present)
    difference = _Means.of(cube.correct - cube.correct[ref], both)
    _, _, k, p = cube.correct.shape
    point = _resample(
        accuracy, difference, ref, cube.log_n, chance, np.ones((1, k)), np.ones((1, p))
    )
    rng = np.random.default_rng(seed)
    chunk = max(1, min(_BOOT_CHUNK, _BOOT_CELLS // max(p, 1)))
    parts = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seed_w, prob_w = _draw_counts(rng, b, k), _draw_counts(rng, b, p)
        parts.append(_resample(accuracy, difference, ref, cube.log_n, chance, seed_w, prob_w))
    boot = _Resamples.join(parts) if parts else None
    return point, boot


def _percentiles(samples: np.ndarray, confidence: float) -> np.ndarray:
    """[3, ...]: low, median, high of the finite samples along axis 0; NaN where fewer than
    half of them are finite."""
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        out = np.nanquantile(samples, [alpha, 0.5, 1.0 - alpha], axis=0)
    enough = np.isfinite(samples).sum(axis=0) * 2 >= len(samples)
    return np.where(enough, out, np.nan)


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """Every method against ``reference``: see the module docstring for the frames.

    ``curve`` is the reference curve the multipliers are read from (``data_size``,
    ``accuracy``: seed means clipped at chance and made non-decreasing)."""

    paired: pl.DataFrame
    per_size: pl.DataFrame
    multipliers: pl.DataFrame
    curve: pl.DataFrame
    reference: str
    chance: float | None
    n_boot: int
    confidence: float
    n_seeds: int
    n_problems: int


def _f(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _reference_problem(cube: _Cube, ref: int, point: _Resamples) -> str | None:
    """Why multipliers against the reference are undefined, or None when they are defined."""
    name = cube.methods[ref]
    n = int(np.isfinite(point.acc[0, ref]).sum())
    if n < 2:
        return (
            f"reference {name!r} has {n} data size(s); reading its curve needs >= 2, "
            "so the multiplier is undefined"
        )
    if not point.rises[0]:
        return (
            f"{name} accuracy does not rise over its data sizes (after the chance floor and "
            f"isotonic smoothing): no amount of {name} data reaches a given accuracy, so the "
            "multiplier is undefined"
        )
    return None


def _paired_frame(
    cube: _Cube, ref: int, point: _Resamples, boot: _Resamples | None, confidence: float
) -> pl.DataFrame:
    both = cube.present * cube.present[ref]
    wins = (cube.correct * (1.0 - cube.correct[ref]) * both).sum(axis=(2, 3))
    losses = ((1.0 - cube.correct) * cube.correct[ref] * both).sum(axis=(2, 3))
    pairs = both.sum(axis=(2, 3))
    shape = (3, len(cube.methods), len(cube.sizes))
    ci = _percentiles(boot.diff, confidence) if boot is not None else np.full(shape, np.nan)
    rows = [
        {
            "method": method,
            "data_size": size,
            "difference": _f(100.0 * point.diff[0, i, j]),
            "ci_low": _f(100.0 * ci[0, i, j]),
            "ci_high": _f(100.0 * ci[2, i, j]),
            "wins": int(wins[i, j]),
            "losses": int(losses[i, j]),
            "n_pairs": int(pairs[i, j]),
        }
        for i, method in enumerate(cube.methods)
        for j, size in enumerate(cube.sizes)
        if i != ref and pairs[i, j] > 0
    ]
    return pl.DataFrame(rows, schema=PAIRED_SCHEMA)


def _per_size_frame(
    cube: _Cube, acc: np.ndarray, ref: int | None, point: _Resamples | None
) -> pl.DataFrame:
    """``acc`` [M, N]; reference fields null when ``point`` is None (undefined)."""
    rows = []
    for i, method in enumerate(cube.methods):
        for j, size in enumerate(cube.sizes):
            if not np.isfinite(acc[i, j]):
                continue
            row = {"method": method, "data_size": size, "accuracy": float(acc[i, j])}
            if i == ref and point is not None:
                row.update(reference_size=float(size), multiplier=1.0)
            elif point is not None:
                log_ref = float(point.log_ref[0, i, j])
                side = int(point.side[0, i, j])
                row.update(
                    reference_size=math.exp(log_ref),
                    multiplier=math.exp(log_ref - cube.log_n[j]),
                    censored={-1: "below", 0: None, 1: "above"}[side],
                )
            rows.append(row)
    return pl.DataFrame(rows, schema=SIZE_MULTIPLIER_SCHEMA)


def _summaries(log_mult: np.ndarray, use: np.ndarray) -> np.ndarray:
    """[B, M] mean of ``log_mult`` [B, M, N] over the sizes in ``use`` [M, N] that are finite."""
    keep = use[None] & np.isfinite(log_mult)
    count = keep.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(keep, log_mult, 0.0).sum(axis=-1) / count, np.nan)


def _summary_sizes(point: _Resamples, log_n: np.ndarray):
    """(log multipliers [M, N], sizes used per method [M, N], bound per method): a method's
    sizes inside the reference's range, or all its sizes (then a bound) when none is."""
    log_mult = point.log_ref[0] - log_n
    have = np.isfinite(log_mult)
    inside = have & (point.side[0] == 0)
    use = np.where(inside.any(axis=1, keepdims=True), inside, have)
    bounds = []
    for i in range(len(use)):
        sides = set(point.side[0, i, have[i]].tolist())
        if inside[i].any() or not sides:
            bounds.append(None)
        else:
            bounds.append({frozenset({1}): "lower", frozenset({-1}): "upper"}.get(frozenset(sides)))
            if bounds[-1] is None:
                use[i] = False  # outside on both sides: no number means anything
    return log_mult, use, bounds


def _bootstrap_stats(
    boot: _Resamples | None, use: np.ndarray, log_n: np.ndarray, confidence: float
) -> tuple[np.ndarray, int]:
    """([4, M]: low, median, high, share above 1x of the summaries; dropped resamples).

    Resamples whose reference curve does not rise are dropped; with fewer than half left, or
    no resamples, every statistic is NaN."""
    stats = np.full((4, len(use)), np.nan)
    if boot is None:
        return stats, 0
    kept = boot.rises
    dropped = int((~kept).sum())
    if kept.sum() * 2 < len(kept):
        return stats, dropped
    samples = _summaries(boot.log_ref[kept] - log_n, use)
    low, median, high = _percentiles(samples, confidence)
    finite = np.isfinite(samples)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (finite & (samples > 0)).sum(axis=0) / finite.sum(axis=0)
    stats[:] = np.exp(low), np.exp(median), np.exp(high), np.where(np.isfinite(high), share, np.nan)
    return stats, dropped


def _multiplier_notes(
    cube: _Cube, i: int, ref: int, point: _Resamples, bound: str | None, use: np.ndarray
) -> list[str]:
    have = np.isfinite(point.acc[0, i])
    ref_sizes = np.asarray(cube.sizes)[np.isfinite(point.acc[0, ref])]
    reached = f"what {cube.methods[ref]} reached at sizes {ref_sizes.min()}-{ref_sizes.max()}"
    side = point.side[0, i]
    outside = [
        f"{size} ({'above' if side[j] > 0 else 'below'})"
        for j, size in enumerate(cube.sizes)
        if have[j] and side[j] != 0
    ]
    if bound == "lower":
        return [f"accuracy above {reached} at every size: the multiplier is a lower bound"]
    if bound == "upper":
        return [f"accuracy below {reached}, or at chance, at every size: an upper bound"]
    if not use[i].any() and have.any():
        return [f"accuracy outside {reached} at every size, above and below: undefined"]
    if outside:
        return [f"left out of the mean, accuracy outside {reached}: {', '.join(outside)}"]
    return []


def _multiplier_frame(
    cube: _Cube,
    ref: int,
    point: _Resamples,
    boot: _Resamples | None,
    confidence: float,
) -> pl.DataFrame:
    log_mult, use, bounds = _summary_sizes(point, cube.log_n)
    summary = _summaries(log_mult[None], use)[0]
    stats, dropped = _bootstrap_stats(boot, use, cube.log_n, confidence)
    boot_note = []
    if dropped:
        boot_note.append(
            f"{dropped} of {len(boot.rises)} resamples dropped ({cube.methods[ref]} curve "
            "did not rise)"
            + ("; too few left for an interval" if dropped * 2 > len(boot.rises) else "")
        )
    rows = []
    for i, method in enumerate(cube.methods):
        if i == ref:
            n_ref = int(np.isfinite(point.acc[0, ref]).sum())
            rows.append(
                _undefined_row(method, "reference: 1x by definition", n_ref) | {"multiplier": 1.0}
            )
            continue
        notes = _multiplier_notes(cube, i, ref, point, bounds[i], use) + boot_note
        rows.append(
            {
                "method": method,
                "multiplier": _f(math.exp(summary[i])) if np.isfinite(summary[i]) else None,
                "median": _f(stats[1, i]),
                "ci_low": _f(stats[0, i]),
                "ci_high": _f(stats[2, i]),
                "share_above_1": _f(stats[3, i]),
                "n_sizes": int(use[i].sum()),
                "bound": bounds[i],
                "note": "; ".join(notes) or None,
            }
        )
    return pl.DataFrame(rows, schema=MULTIPLIER_SCHEMA)


def _undefined_row(method: str, note: str, n_sizes: int) -> dict:
    return {
        "method": method,
        "multiplier": None,
        "median": None,
        "ci_low": None,
        "ci_high": None,
        "share_above_1": None,
        "n_sizes": n_sizes,
        "bound": None,
        "note": note,
    }


def compare(
    evaluations: pl.DataFrame,
    *,
    reference: str = "sft",
    chance: float | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Paired differences, reference-equivalent sizes and multipliers of every method
    against ``reference``, with bootstrap intervals (``n_boot=0`` skips them).

    ``chance`` is the task's chance accuracy (e.g. 1/23 for answers modulo 23); None when
    unknown or negligible. Deterministic given ``seed``."""
    _check_options(chance, n_boot, confidence)
    df = _normalise_evaluations(evaluations)
    settings = {
        "reference": reference,
        "chance": chance,
        "n_boot": n_boot,
        "confidence": confidence,
    }
    if df.height == 0:
        return _comparison(settings, pl.DataFrame(schema=PAIRED_SCHEMA), None, [], 0, 0)
    cube = _cube(df)
    shape = (len(cube.seeds), cube.correct.shape[3])
    if reference not in cube.methods:
        note = f"reference method {reference!r} is not in the evaluations; multiplier undefined"
        k, p = shape
        acc = _Means.of(cube.correct, cube.present)(np.ones((1, k)), np.ones((1, p)))[0]
        per_size = _per_size_frame(cube, acc, None, None)
        rows = [
            _undefined_row(m, note, int(np.isfinite(a).sum()))
            for m, a in zip(cube.methods, acc, strict=True)
        ]
        return _comparison(settings, pl.DataFrame(schema=PAIRED_SCHEMA), per_size, rows, *shape)
    ref = cube.methods.index(reference)
    point, boot = _resamples(cube, ref, chance, n_boot, seed)
    paired = _paired_frame(cube, ref, point, boot, confidence)
    problem = _reference_problem(cube, ref, point)
    if problem is not None:
        per_size = _per_size_frame(cube, point.acc[0], None, None)
        n_sizes = np.isfinite(point.acc[0]).sum(axis=1)
        rows = [
            _undefined_row(m, problem, int(n)) for m, n in zip(cube.methods, n_sizes, strict=True)
        ]
        return _comparison(settings, paired, per_size, rows, *shape)
    curve = pl.DataFrame(
        {"data_size": cube.sizes, "accuracy": point.curve[0]},
        schema={"data_size": pl.Int64, "accuracy": pl.Float64},
    ).filter(pl.col("accuracy").is_not_nan())
    return Comparison(
        paired=paired,
        per_size=_per_size_frame(cube, point.acc[0], ref, point),
        multipliers=_multiplier_frame(cube, ref, point, boot, confidence),
        curve=curve,
        n_seeds=shape[0],
        n_problems=shape[1],
        **settings,
    )


def _comparison(settings: dict, paired, per_size, rows, n_seeds, n_problems) -> Comparison:
    """A comparison without multipliers (``rows`` say why)."""
    return Comparison(
        paired=paired,
        per_size=per_size if per_size is not None else pl.DataFrame(schema=SIZE_MULTIPLIER_SCHEMA),
        multipliers=pl.DataFrame(rows, schema=MULTIPLIER_SCHEMA),
        curve=pl.DataFrame(schema={"data_size": pl.Int64, "accuracy": pl.Float64}),
        n_seeds=n_seeds,
        n_problems=n_problems,
        **settings,
    )


def multipliers(evaluations: pl.DataFrame, **options) -> pl.DataFrame:
    """The data multipliers of ``compare(evaluations, **options)`` (``MULTIPLIER_SCHEMA``)."""
    return compare(evaluations, **options).multipliers


# --------------------------------------------------------------------------- plot

_UNTRAINED = "base"


def _size_axis(ax, sizes: list[int]) -> None:
    """Log data size with the measured sizes as the ticks."""
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("synthetic training problems (data size)")


def _seed_stats(table: pl.DataFrame) -> pl.DataFrame:
    """Per method and size: mean, sd, min and max of the seeds' accuracies, in percent."""
    methods = table["method"].unique(maintain_order=True).to_list()
    return (
        table.group_by("method", "data_size")
        .agg(
            mean=100 * pl.col("accuracy").mean(),
            sd=100 * pl.col("accuracy").std(),
            low=100 * pl.col("accuracy").min(),
            high=100 * pl.col("accuracy").max(),
            seeds=pl.len(),
        )
        .sort(pl.col("method").replace_strict(methods, list(range(len(methods)))), "data_size")
    )


def _plot_accuracy(ax, table: pl.DataFrame, comparison: Comparison, colors: dict) -> None:
    stats = _seed_stats(table)
    for method, color in colors.items():
        rows = stats.filter(pl.col("method") == method)
        mean = rows["mean"].to_numpy()
        bars = np.vstack([mean - rows["low"].to_numpy(), rows["high"].to_numpy() - mean])
        # Equal seeds give a mean a rounding error outside [low, high]; matplotlib refuses
        # negative bars.
        bars = np.clip(bars, 0.0, None)
        ax.errorbar(
            rows["data_size"],
            mean,
            yerr=bars,
            fmt="o-",
            color=color,
            capsize=3,
            label=method,
            linewidth=1.0,
            markersize=4,
        )
        if method == comparison.reference and comparison.curve.height:
            curve = comparison.curve
            ax.plot(
                curve["data_size"],
                100 * curve["accuracy"],
                "--",
                color=color,
                linewidth=2.0,
                alpha=0.5,
                label=f"{method} curve read for multipliers",
            )
    if comparison.chance is not None:
        ax.axhline(100 * comparison.chance, color="grey", linestyle=":", label="chance")
    _size_axis(ax, sorted(table["data_size"].unique().to_list()))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy: mean over seeds, bars min-max", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _plot_paired(ax, comparison: Comparison, colors: dict) -> None:
    paired = comparison.paired
    # The untrained base model's gap grows with SFT and would flatten the trained methods.
    others = [m for m in colors if m not in (comparison.reference, _UNTRAINED)]
    for k, method in enumerate(others):
        rows = paired.filter(pl.col("method") == method)
        if not rows.height:
            continue
        # spread the methods apart a little along the log axis so their bars do not overlap
        x = rows["data_size"].to_numpy() * 1.06 ** (k - (len(others) - 1) / 2)
        y = rows["difference"].to_numpy()
        low = rows["ci_low"].fill_null(np.nan).to_numpy()
        high = rows["ci_high"].fill_null(np.nan).to_numpy()
        bars = np.nan_to_num(np.vstack([y - low, high - y]))
        ax.errorbar(x, y, yerr=bars, fmt="o", color=colors[method], capsize=3, label=method)
    ax.axhline(0.0, color="black", linewidth=0.8)
    _size_axis(ax, sorted(paired["data_size"].unique().to_list()))
    ax.set_ylabel(f"accuracy − {comparison.reference} (points)")
    ax.set_title(
        f"Paired difference vs. {comparison.reference} ({_UNTRAINED} left out), "
        f"{100 * comparison.confidence:g}% bootstrap interval",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    if paired.height:
        ax.legend(fontsize=7)


def plot_curves(table: pl.DataFrame, comparison: Comparison, path: str | os.PathLike) -> Path:
    """Accuracy vs. data size per method, and paired differences vs. the reference with
    their intervals; written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = table["method"].unique(maintain_order=True).to_list()
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = Figure(figsize=(12.0, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _plot_accuracy(left, table, comparison, colors)
    _plot_paired(right, comparison, colors)
    fig.suptitle("Setlur et al. 2024 scaling study: test accuracy vs. synthetic data", fontsize=11)
    fig.tight_layout()
    # Written beside the target and renamed over it, like the tables; created with open() so
    # that it gets the usual permissions (mkstemp's files are private to their owner).
    tmp = temp_sibling(path)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- report

_WIDTH = 100  # the report is printed in a terminal


def floor_note(chance: float | None, reference: str = "sft") -> str:
    """One sentence: how the chance floor is handled when reading multipliers."""
    ref = _name(reference)
    floor = (
        f"accuracies are clipped at chance ({100 * chance:.1f}%), which says nothing about "
        "data size"
        if chance is not None
        else "no chance rate given, so accuracies are used as measured"
    )
    return (
        f"Chance floor: {floor}; {ref}'s curve is made monotone (isotonic) and interpolated in "
        "log data size between measured sizes: no power-law fit, no extrapolation."
    )


def flat_note(comparison: Comparison) -> str | None:
    """One sentence naming the stretches where the reference's curve is flat above chance (its
    measured means did not rise there, and the monotone curve pools them), or None. An accuracy just
    above a flat stretch reads as the stretch's largest size, so a gain of a fraction of a
    point at its sizes can read as a multiplier of 2x or more."""
    sizes = comparison.curve["data_size"].to_list()
    accuracy = comparison.curve["accuracy"].to_list()
    floor = comparison.chance if comparison.chance is not None else -math.inf
    stretches, start = [], 0
    for end in range(1, len(sizes) + 1):
        if end < len(sizes) and abs(accuracy[end] - accuracy[start]) <= _TOL:
            continue
        if end - 1 > start and accuracy[start] > floor + _TOL:
            stretches.append(f"{sizes[start]}-{sizes[end - 1]} (at {100 * accuracy[start]:.1f}%)")
        start = end
    if not stretches:
        return None
    ref = _name(comparison.reference)
    return (
        f"Flat {ref} curve: {ref}'s measured means do not rise over {', '.join(stretches)}, "
        "where its monotone curve is pooled flat. An accuracy just above a flat stretch reads as "
        f"its largest size's {ref} data, so a small gain at its sizes can read as a large "
        "multiplier: read those cells with their paired differences."
    )


def _name(method: str) -> str:
    return method.upper() if method == "sft" else method


def _prose(text: str) -> list[str]:
    return [*textwrap.wrap(text, _WIDTH), ""]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """An aligned markdown table; every column but the first is right-aligned."""
    widths = [max(3, len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    return [line(header), line(rule), *(line(r) for r in rows), ""]


def _fmt_x(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _accuracy_section(table: pl.DataFrame, comparison: Comparison) -> list[str]:
    """Mean ± sd over seeds of the test accuracy per method (rows) and data size (columns)."""
    if not table.height:
        return ["No evaluations yet.", ""]
    sizes = sorted(table["data_size"].unique().to_list())
    cells = {(r["method"], r["data_size"]): r for r in _seed_stats(table).iter_rows(named=True)}
    chance = "" if comparison.chance is None else f"; chance {100 * comparison.chance:.1f}%"
    seeds = f"mean ± sd over {comparison.n_seeds} seeds"
    if comparison.n_seeds == 1:
        seeds = "one seed"
    lines = _prose(
        f"Test accuracy (%) of the greedy answers: {seeds}, "
        f"{comparison.n_problems} test problems{chance}."
    )
    rows = []
    for method in table["method"].unique(maintain_order=True).to_list():
        row = [method]
        for s in sizes:
            c = cells.get((method, s))
            sd = "" if c is None or c["sd"] is None else f" ± {c['sd']:.1f}"
            row.append("—" if c is None else f"{c['mean']:.1f}{sd}")
        rows.append(row)
    return lines + _md_table(["method", *map(str, sizes)], rows)


def _paired_section(comparison: Comparison) -> list[str]:
    ref = _name(comparison.reference)
    conf = f"{100 * comparison.confidence:g}%"
    lines = _prose(
        f"Paired difference vs. {ref} (same seeds, same test problems), in accuracy points, with "
        f"a {conf} bootstrap interval ({comparison.n_boot} resamples of seeds and problems). "
        f"Wins/losses: (seed, problem) pairs the method gets right and {ref} wrong, and the "
        "reverse."
    )
    rows = [[r["method"], *_paired_cells(r)] for r in comparison.paired.iter_rows(named=True)]
    return lines + _md_table(["method", "size", "diff", f"{conf} CI", "wins", "losses"], rows)


def _paired_cells(r: dict) -> list[str]:
    """Size, difference, interval, wins and losses of one row of a paired frame."""
    ci = "—"
    if r["ci_low"] is not None:
        ci = f"{r['ci_low']:+.1f} to {r['ci_high']:+.1f}"
    return [str(r["data_size"]), f"{r['difference']:+.1f}", ci, str(r["wins"]), str(r["losses"])]


def _control_section(control: Comparison) -> list[str]:
    conf = f"{100 * control.confidence:g}%"
    lines = _prose(
        f"What the negatives add: per-step DPO minus {CONTROL} (the same pairs, schedule and "
        "updates from pi_sft with each rejected side set to its chosen side, so only the chosen "
        f"side's NLL trains), in accuracy points, paired, with a {conf} bootstrap interval. "
        "Below 0, the stage does better without its negatives."
    )
    paired = control.paired.filter(pl.col("method") == "per_step_dpo")
    rows = [_paired_cells(r) for r in paired.iter_rows(named=True)]
    return lines + _md_table(["size", "diff", f"{conf} CI", "wins", "losses"], rows)


def _equivalent_section(comparison: Comparison) -> list[str]:
    ref = _name(comparison.reference)
    per_size = comparison.per_size.filter(pl.col("method") != comparison.reference)
    if per_size["reference_size"].null_count() == per_size.height:
        return []
    sizes = sorted(comparison.per_size["data_size"].unique().to_list())
    lines = _prose(
        f"{ref}-equivalent data: the least {ref} data whose curve reaches the method's accuracy "
        f"(> above {ref}'s best measured accuracy, < below its smallest size's or at chance)."
    )
    mark = {"above": ">", "below": "<", None: ""}
    cells = {
        (r["method"], r["data_size"]): f"{mark[r['censored']]}{r['reference_size']:.0f}"
        for r in per_size.iter_rows(named=True)
    }
    methods = per_size["method"].unique(maintain_order=True).to_list()
    rows = [[m, *(cells.get((m, s), "—") for s in sizes)] for m in methods]
    return lines + _md_table(["method", *map(str, sizes)], rows)


def _multiplier_section(comparison: Comparison) -> list[str]:
    ref = _name(comparison.reference)
    conf = f"{100 * comparison.confidence:g}%"
    text = (
        f"Data multipliers vs. {ref}: geometric mean over the sizes where the method's accuracy "
        f"lies within {ref}'s measured curve; {conf} percentile interval, median and share "
        f"above 1x over {comparison.n_boot} bootstrap resamples."
    )
    if comparison.n_seeds == 1:
        text += " With one seed they cover test-problem sampling only, not training noise."
    rows, notes = [], []
    for r in comparison.multipliers.iter_rows(named=True):
        if r["method"] == comparison.reference:
            rows.append([r["method"], "1x (ref)", "", "", "", str(r["n_sizes"])])
            continue
        value = "—"
        if r["multiplier"] is not None:
            sign = {"lower": "≥ ", "upper": "≤ ", None: ""}[r["bound"]]
            value = f"{sign}{_fmt_x(r['multiplier'])}x"
        ci = med = share = "—"
        if r["ci_low"] is not None:
            ci = f"{_fmt_x(r['ci_low'])}–{_fmt_x(r['ci_high'])}"
            med, share = _fmt_x(r["median"]), f"{100 * r['share_above_1']:.0f}%"
        rows.append([r["method"], value, ci, med, share, str(r["n_sizes"])])
        if r["note"]:
            notes.append((r["method"], r["note"]))
    if len({note for _, note in notes}) == 1 and len(notes) == len(rows) - 1:
        notes = [("every method", notes[0][1])]  # e.g. the reference's curve is unusable
    notes = [
        line
        for method, note in notes
        for line in textwrap.wrap(f"- {method}: {note}", _WIDTH, subsequent_indent="  ")
    ]
    header = ["method", "multiplier", f"{conf} CI", "median", "> 1x", "sizes"]
    return _prose(text) + _md_table(header, rows) + notes + ([""] if notes else [])


def report_markdown(
    table: pl.DataFrame,
    comparison: Comparison,
    plot_path: str | os.PathLike,
    *,
    relative_to: str | os.PathLike | None = None,
    control: Comparison | None = None,
    method_notes: dict[str, str] | None = None,
) -> str:
    """The report: accuracy table, paired differences, equivalent sizes, multipliers, how
    the chance floor is handled, per-step DPO against its control without negatives
    (``control``: :func:`control_comparison`, where there is one), and the plot, linked
    relative to ``relative_to`` (default: the plot's own folder, i.e. the report is expected
    to sit next to it). ``method_notes``: a line under the accuracy table per method whose
    name alone would mislead (e.g. RFT trained from pi_sft, not from the base)."""
    plot_path = Path(plot_path)
    base = Path(relative_to) if relative_to is not None else plot_path.parent
    rel = os.path.relpath(plot_path, base)
    lines = ["# Scaling curves (Setlur et al. 2024)", ""]
    lines += _accuracy_section(table, comparison)
    if method_notes:
        lines += [f"- {method}: {note}" for method, note in method_notes.items()] + [""]
    if comparison.paired.height:
        lines += _paired_section(comparison)
    if comparison.per_size.height:
        lines += _equivalent_section(comparison)
    if comparison.multipliers.height:
        lines += _multiplier_section(comparison)
        lines += _prose(floor_note(comparison.chance, comparison.reference))
        flat = flat_note(comparison)
        if flat:
            lines += _prose(flat)
    if control is not None and control.paired.height:
        lines += _control_section(control)
    lines += [f"![accuracy vs. data size]({rel})", f"Plot: `{rel}`", ""]
    return "\n".join(lines)


def control_comparison(evaluations: pl.DataFrame, **options) -> Comparison | None:
    """Per-step DPO against its control without negatives (:data:`CONTROL`), paired as
    :func:`compare` pairs against SFT; None where either method is missing."""
    pair = evaluations.filter(pl.col("method").is_in(["per_step_dpo", CONTROL]))
    if set(pair["method"].unique().to_list()) != {"per_step_dpo", CONTROL}:
        return None
    return compare(pair, reference=CONTROL, **options)


@dataclass(frozen=True)
class StudyReport:
    """What :func:`study_report` computed and wrote."""

    table: pl.DataFrame
    comparison: Comparison
    plot: Path
    report: Path
    markdown: str
    control: Comparison | None = None


def study_report(
    evaluations: pl.DataFrame,
    reports: Path,
    *,
    chance: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    method_notes: dict[str, str] | None = None,
) -> StudyReport:
    """The ``scaling_curves`` table and the comparison against SFT of every evaluation, with
    the plot (``scaling_curves.png``) and the markdown report (``scaling_report.md``) written
    atomically into ``reports``. ``chance``: the task's chance accuracy, None if unknown;
    ``method_notes``: as :func:`report_markdown`'s."""
    table = scaling_table(evaluations)
    comparison = compare(evaluations, reference="sft", chance=chance, n_boot=n_boot, seed=seed)
    control = control_comparison(evaluations, chance=chance, n_boot=n_boot, seed=seed)
    reports.mkdir(parents=True, exist_ok=True)
    plot = plot_curves(table, comparison, reports / "scaling_curves.png")
    markdown = report_markdown(
        table, comparison, plot, relative_to=reports, control=control, method_notes=method_notes
    )
    report = reports / "scaling_report.md"
    tmp = temp_sibling(report)
    tmp.write_text(markdown)
    tmp.replace(report)
    return StudyReport(table, comparison, plot, report, markdown, control)
