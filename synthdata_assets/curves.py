"""Scaling curves: test error vs. synthetic data size, power-law fits, data multipliers.

The study's efficiency claims (RFT ~2x, per-step DPO ~8x the teacher data of SFT) are read
off test-error vs. data-size curves. This module turns the ``evaluations`` table (one row per
method x data_size x seed x test problem, with ``is_correct``) into:

``scaling_table(evaluations)``
    the ``scaling_curves`` table: one row per method x data_size x seed with ``accuracy``,
    ``test_error = 1 - accuracy`` and ``n_test`` (``SCALING_SCHEMA``). A null ``is_correct``
    counts as wrong (the model gave no gradable answer).
``fit_power_laws(table)``
    per method, ``error(n) = a * n**(-b)`` by least squares in log-log space over the per-size
    mean error (unweighted mean over seeds). A method needs >= 2 distinct sizes; with fewer,
    its row has null ``a``/``b``/``r2``. Zero errors cannot be logged, so every per-size mean
    error is clipped from below at ``0.5 / (test answers at that size, summed over seeds)``:
    half an error on the pooled test set, the usual continuity correction. ``r2`` is in
    log space and null when the errors are all equal (nothing to explain).
``size_multipliers(table, fits, reference="sft")`` / ``multipliers(evaluations, ...)``
    the effective data multiplier: a method reaching (clipped, seed-mean) error ``e`` at data
    size ``n`` is worth ``n_ref(e) = (a_ref / e) ** (1 / b_ref)`` reference data, so its
    multiplier at ``n`` is ``n_ref(e) / n``; the summary is the geometric mean over the
    method's sizes (computed in log space, so huge values never become ``inf``). The method
    itself needs no fit, only the reference does. ``extrapolated`` is true when some
    ``n_ref(e)`` lies outside the reference's measured size range (never for the reference
    itself, whose geometric-mean multiplier is exactly 1 by least squares). When the
    reference is missing, has < 2 sizes, or its fitted ``b <= 0`` (error does not fall with
    data), every multiplier is null with a ``note`` saying why.
    ``multipliers`` adds a paired percentile bootstrap interval: resample seeds with
    replacement and, within each drawn seed, test problems with replacement (the same
    problem draw for every method and size, so comparisons stay paired), then recompute
    table -> reference fit -> summary. Resamples where the reference fit is undefined are
    dropped and counted in ``note``; with fewer than half left the interval is null. It is
    vectorised numpy over a correctness tensor [method, size, seed, problem].
``plot_curves(table, fits, path)`` and ``report_markdown(table, fits, mults, plot_path)``
    a log-log figure (Agg, written atomically) and a short markdown summary;
    ``study_report(evaluations, reports)`` computes all of the above and writes both.

"base" and any other method are treated as data: base does not depend on data size, so its
fit has b ~ 0 and its multiplier (usually < 1, extrapolated) is reported like any other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from warehouse.parquet import temp_sibling

__all__ = [
    "FIT_SCHEMA",
    "MULTIPLIER_SCHEMA",
    "SCALING_SCHEMA",
    "SIZE_MULTIPLIER_SCHEMA",
    "fit_power_laws",
    "multipliers",
    "plot_curves",
    "report_markdown",
    "scaling_table",
    "size_multipliers",
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

FIT_SCHEMA = {
    "method": pl.String,
    "a": pl.Float64,
    "b": pl.Float64,
    "r2": pl.Float64,
    "n_points": pl.Int64,
    "min_size": pl.Int64,
    "max_size": pl.Int64,
}

SIZE_MULTIPLIER_SCHEMA = {
    "method": pl.String,
    "data_size": pl.Int64,
    "test_error": pl.Float64,
    "reference_size": pl.Float64,
    "multiplier": pl.Float64,
    "extrapolated": pl.Boolean,
}

MULTIPLIER_SCHEMA = {
    "method": pl.String,
    "multiplier": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_sizes": pl.Int64,
    "extrapolated": pl.Boolean,
    "note": pl.String,
}

EVAL_COLUMNS = ("method", "data_size", "seed", "problem_id", "is_correct")
TABLE_COLUMNS = ("method", "data_size", "seed", "test_error", "n_test")

# exp() of anything above this overflows a float64.
_MAX_LOG = math.log(np.finfo(np.float64).max) - 1.0
# Relative slack when deciding whether an equivalent reference size is outside the range.
_RANGE_TOL = 1e-9
# Bootstrap resamples processed at once (bounds memory on large sweeps).
_BOOT_CHUNK = 256
# ... and at most this many (resample, seed, problem) weights at once.
_BOOT_CELLS = 4_000_000


# --------------------------------------------------------------------------- validation


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} is missing required column(s): {', '.join(missing)} "
            f"(has: {', '.join(frame.columns) or 'none'})"
        )


def _check_sizes(sizes: Sequence[int]) -> None:
    bad = [s for s in sizes if s is None or s <= 0]
    if bad:
        raise ValueError(f"data_size must be a positive integer, got {bad[:5]}")


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
    _check_sizes(df["data_size"].unique().to_list())
    keys = ["method", "data_size", "seed", "problem_id"]
    dupes = df.group_by(keys).len().filter(pl.col("len") > 1)
    if dupes.height:
        example = dupes.row(0, named=True)
        raise ValueError(
            f"evaluations has {dupes.height} duplicated (method, data_size, seed, problem_id) "
            f"keys, e.g. { ({k: example[k] for k in keys}) }"
        )
    return df


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


# --------------------------------------------------------------------------- numeric core


def _size_errors(err: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-size mean error over seeds (last axis), clipped at 0.5 / pooled n_test.

    ``err``/``n`` are [..., seed] with NaN / 0 where a cell is missing. Returns the clipped
    mean error (NaN where no seed has data) and the pooled test count.
    """
    present = np.isfinite(err) & (n > 0)
    count = present.sum(axis=-1)
    total = np.where(present, n, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, err, 0.0).sum(axis=-1) / count
        floor = 0.5 / total
    mean = np.where(count > 0, np.maximum(mean, floor), np.nan)
    return mean, total


def _loglog_fit(log_n: np.ndarray, log_e: np.ndarray):
    """Least squares ``log_e = log_a - b * log_n`` along the last axis, ignoring NaNs.

    Returns (log_a, b, r2, n_points); log_a/b NaN when fewer than 2 distinct sizes, r2 NaN
    also when the errors are all equal.
    """
    w = np.isfinite(log_e).astype(float)
    y = np.where(w > 0, log_e, 0.0)
    npts = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (w * log_n).sum(axis=-1) / npts
        ym = (w * y).sum(axis=-1) / npts
        dx = (log_n - xm[..., None]) * w
        dy = (y - ym[..., None]) * w
        sxx = (dx * dx).sum(axis=-1)
        sxy = (dx * dy).sum(axis=-1)
        syy = (dy * dy).sum(axis=-1)
        ok = (npts >= 2) & (sxx > 1e-12)
        slope = np.where(ok, sxy / np.where(ok, sxx, 1.0), np.nan)
        log_a = np.where(ok, ym - slope * xm, np.nan)
        resid = dy - slope[..., None] * dx
        sse = (resid * resid * w).sum(axis=-1)
        r2 = np.where(ok & (syy > 1e-24), 1.0 - sse / np.where(syy > 0, syy, 1.0), np.nan)
    return log_a, 0.0 - slope, r2, npts.astype(int)


def _log_multipliers(
    log_e: np.ndarray, log_n: np.ndarray, log_a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """log(n_ref(e) / n) for errors [..., method, size] and reference fits [...]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        log_ref = (log_a[..., None, None] - log_e) / b[..., None, None]
        out = log_ref - log_n
    bad = ~(b > 0)
    if np.ndim(bad):
        out[bad] = np.nan
    elif bad:
        out[...] = np.nan
    return out


def _exp_or_none(x: float) -> float | None:
    if x is None or not np.isfinite(x) or x > _MAX_LOG:
        return None
    return float(math.exp(x))


def _reference_problem(ref: str, methods: list[str], fit_row: dict | None) -> str | None:
    """Why multipliers against ``ref`` are undefined, or None when they are defined."""
    if ref not in methods:
        return f"reference method {ref!r} is not in the evaluations; multiplier undefined"
    if fit_row is None or fit_row["n_points"] < 2:
        n = 0 if fit_row is None else fit_row["n_points"]
        return (
            f"reference {ref!r} has {n} data size(s); a power-law fit needs >= 2, "
            "so the multiplier is undefined"
        )
    b = fit_row["b"]
    if b is None or not np.isfinite(b) or b <= 0:
        shown = "nan" if b is None or not np.isfinite(b) else f"{b:.3g}"
        return (
            f"{ref} test error does not fall with data size (fitted b = {shown} <= 0): "
            f"no amount of {ref} data reaches a given error, so the multiplier is undefined"
        )
    return None


# --------------------------------------------------------------------------- fits


def _table_arrays(table: pl.DataFrame):
    """Scaling table -> (methods, sizes, err[M,N,K], n[M,N,K], lo[M,N], hi[M,N])."""
    _require(table, TABLE_COLUMNS, "scaling table")
    t = table.select(
        pl.col("method").cast(pl.String),
        pl.col("data_size").cast(pl.Int64),
        pl.col("seed").cast(pl.Int64),
        pl.col("test_error").cast(pl.Float64),
        pl.col("n_test").cast(pl.Int64),
    )
    methods = t["method"].unique(maintain_order=True).to_list()
    sizes = sorted(t["data_size"].unique().to_list())
    seeds = sorted(t["seed"].unique().to_list())
    _check_sizes(sizes)
    m, n, k = len(methods), len(sizes), len(seeds)
    err = np.full((m, n, k), np.nan)
    cnt = np.zeros((m, n, k))
    if t.height:
        mi = t["method"].replace_strict(methods, list(range(m)), return_dtype=pl.Int64).to_numpy()
        ni = t["data_size"].replace_strict(sizes, list(range(n)), return_dtype=pl.Int64)
        ki = t["seed"].replace_strict(seeds, list(range(k)), return_dtype=pl.Int64)
        ni, ki = ni.to_numpy(), ki.to_numpy()
        err[mi, ni, ki] = t["test_error"].fill_null(np.nan).to_numpy()
        cnt[mi, ni, ki] = t["n_test"].fill_null(0).to_numpy()
    return methods, sizes, err, cnt


def fit_power_laws(table: pl.DataFrame) -> pl.DataFrame:
    """Per method, ``test_error = a * n**(-b)`` fit in log-log space (``FIT_SCHEMA``).

    Fitted on the per-size mean error over seeds, clipped at ``0.5 / pooled n_test`` so that
    zero errors can be logged. Methods with < 2 sizes get null ``a``, ``b``, ``r2``.
    """
    methods, sizes, err, cnt = _table_arrays(table)
    if not methods:
        return pl.DataFrame(schema=FIT_SCHEMA)
    mean, _ = _size_errors(err, cnt)
    log_n = np.log(np.asarray(sizes, dtype=float))
    log_a, b, r2, npts = _loglog_fit(log_n, np.log(mean))
    rows = []
    for i, method in enumerate(methods):
        have = [s for s, e in zip(sizes, mean[i], strict=True) if np.isfinite(e)]
        rows.append(
            {
                "method": method,
                "a": _exp_or_none(log_a[i]),
                "b": float(b[i]) if np.isfinite(b[i]) else None,
                "r2": float(r2[i]) if np.isfinite(r2[i]) else None,
                "n_points": int(npts[i]),
                "min_size": min(have) if have else None,
                "max_size": max(have) if have else None,
            }
        )
    return pl.DataFrame(rows, schema=FIT_SCHEMA)


def _fit_row(fits: pl.DataFrame, method: str) -> dict | None:
    rows = fits.filter(pl.col("method") == method)
    return rows.row(0, named=True) if rows.height else None


def size_multipliers(
    table: pl.DataFrame, fits: pl.DataFrame, *, reference: str = "sft"
) -> pl.DataFrame:
    """The multiplier of every method at each of its data sizes (``SIZE_MULTIPLIER_SCHEMA``).

    ``test_error`` is the clipped seed-mean error; ``reference_size`` is the amount of
    reference data whose fitted error equals it. Null everywhere when the reference fit is
    undefined (see ``multipliers`` for the reason in words).
    """
    methods, sizes, err, cnt = _table_arrays(table)
    if not methods:
        return pl.DataFrame(schema=SIZE_MULTIPLIER_SCHEMA)
    mean, _ = _size_errors(err, cnt)
    ref_fit = _fit_row(fits, reference)
    problem = _reference_problem(reference, methods, ref_fit)
    log_n = np.log(np.asarray(sizes, dtype=float))
    rows = []
    for i, method in enumerate(methods):
        for j, size in enumerate(sizes):
            if not np.isfinite(mean[i, j]):
                continue
            row = {
                "method": method,
                "data_size": size,
                "test_error": float(mean[i, j]),
                "reference_size": None,
                "multiplier": None,
                "extrapolated": None,
            }
            if problem is None:
                log_ref = (math.log(ref_fit["a"]) - math.log(mean[i, j])) / ref_fit["b"]
                row["reference_size"] = _exp_or_none(log_ref)
                row["multiplier"] = _exp_or_none(log_ref - log_n[j])
                row["extrapolated"] = method != reference and _outside(
                    log_ref, ref_fit["min_size"], ref_fit["max_size"]
                )
            rows.append(row)
    return pl.DataFrame(rows, schema=SIZE_MULTIPLIER_SCHEMA)


def _outside(log_ref: float, lo: float, hi: float) -> bool:
    return bool(
        log_ref < math.log(lo) - _RANGE_TOL * abs(math.log(lo)) - _RANGE_TOL
        or log_ref > math.log(hi) + _RANGE_TOL * abs(math.log(hi)) + _RANGE_TOL
    )


# --------------------------------------------------------------------------- bootstrap


def _tensor(df: pl.DataFrame):
    """Evaluations -> correctness and presence tensors [method, size, seed, problem]."""
    methods = df["method"].unique(maintain_order=True).to_list()
    sizes = sorted(df["data_size"].unique().to_list())
    seeds = sorted(df["seed"].unique().to_list())
    problems = df["problem_id"].unique(maintain_order=True).to_list()
    shape = (len(methods), len(sizes), len(seeds), len(problems))
    correct = np.zeros(shape, dtype=np.float64)
    present = np.zeros(shape, dtype=np.float64)
    idx = tuple(
        df[col].replace_strict(values, list(range(len(values))), return_dtype=pl.Int64).to_numpy()
        for col, values in (
            ("method", methods),
            ("data_size", sizes),
            ("seed", seeds),
            ("problem_id", problems),
        )
    )
    correct[idx] = df["is_correct"].to_numpy().astype(np.float64)
    present[idx] = 1.0
    return methods, sizes, seeds, problems, correct, present


def _resampled_errors(
    correct: np.ndarray, present: np.ndarray, seed_idx: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed-slot error and test count, [B, method, size, slot].

    ``seed_idx`` [B, J] picks the seed of each slot; ``weights`` [B, J, P] are how often each
    problem was drawn in that slot (shared by every method and size: paired).
    """
    m, n, k, p = correct.shape
    b, j = seed_idx.shape
    flat_w = weights.reshape(b * j, p)
    hits = flat_w @ (correct * present).reshape(m * n * k, p).T  # [B*J, M*N*K]
    tests = flat_w @ present.reshape(m * n * k, p).T
    pick = seed_idx.reshape(b * j)
    rows = np.arange(b * j)
    hits = hits.reshape(b * j, m, n, k)[rows, :, :, pick]  # [B*J, M, N]
    tests = tests.reshape(b * j, m, n, k)[rows, :, :, pick]
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(tests > 0, 1.0 - hits / np.where(tests > 0, tests, 1.0), np.nan)
    err = err.reshape(b, j, m, n).transpose(0, 2, 3, 1)
    tests = tests.reshape(b, j, m, n).transpose(0, 2, 3, 1)
    return err, tests


def _summaries(
    err: np.ndarray, tests: np.ndarray, log_n: np.ndarray, ref: int, method_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seed-level errors [B, M, N, J] -> (summary log multiplier [B, M], per-size [B, M, N],
    reference log_a [B], reference b [B])."""
    mean, _ = _size_errors(err, tests)  # [B, M, N]
    log_e = np.log(mean)
    log_e = np.where(method_sizes[None], log_e, np.nan)
    log_a, b, _, _ = _loglog_fit(log_n, log_e[:, ref, :])
    per_size = _log_multipliers(log_e, log_n, log_a, b)
    finite = np.isfinite(per_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        summary = np.where(finite, per_size, 0.0).sum(axis=-1) / finite.sum(axis=-1)
    summary = np.where(finite.any(axis=-1), summary, np.nan)
    return summary, per_size, log_a, b


def multipliers(
    evaluations: pl.DataFrame,
    *,
    reference: str = "sft",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pl.DataFrame:
    """Effective data multiplier of every method vs. ``reference`` (``MULTIPLIER_SCHEMA``).

    ``multiplier`` is the geometric mean over the method's sizes of ``n_ref(e) / n``;
    ``ci_low``/``ci_high`` a paired percentile bootstrap interval (seeds, then problems
    within seeds, with replacement; ``n_boot=0`` skips it). Deterministic given ``seed``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    df = _normalise_evaluations(evaluations)
    if df.height == 0:
        return pl.DataFrame(schema=MULTIPLIER_SCHEMA)
    methods, sizes, _, _, correct, present = _tensor(df)
    log_n = np.log(np.asarray(sizes, dtype=float))
    method_sizes = present.any(axis=(2, 3))  # [M, N]
    n_sizes = method_sizes.sum(axis=1)

    problem = _reference_problem(
        reference, methods, _fit_row(fit_power_laws(scaling_table(df)), reference)
    )
    if problem is not None:
        return _undefined_multipliers(methods, n_sizes, problem)
    ref = methods.index(reference)

    # Point estimate: every seed once, every problem once (same code path as the bootstrap).
    k, p = correct.shape[2:]
    err, tests = _resampled_errors(correct, present, np.arange(k)[None, :], np.ones((1, k, p)))
    summary, per_size, _, _ = _summaries(err, tests, log_n, ref, method_sizes)
    ref_sizes = np.asarray(sizes)[method_sizes[ref]]
    ref_range = float(ref_sizes.min()), float(ref_sizes.max())
    log_ref = per_size[0] + log_n[None, :]  # [M, N]

    ci = np.full((len(methods), 2), np.nan)
    boot_note = ""
    if n_boot > 0:
        boot = _bootstrap(correct, present, log_n, ref, method_sizes, n_boot=n_boot, seed=seed)
        ci = _percentile_intervals(boot, confidence)
        boot_note = _dropped_note(boot[:, ref], reference)

    rows = [
        _multiplier_row(
            method,
            reference,
            summary[0, i],
            log_ref[i, np.isfinite(per_size[0, i])],
            ref_range,
            ci[i],
            int(n_sizes[i]),
            boot_note,
        )
        for i, method in enumerate(methods)
    ]
    return pl.DataFrame(rows, schema=MULTIPLIER_SCHEMA)


def _undefined_multipliers(methods: list[str], n_sizes: np.ndarray, note: str) -> pl.DataFrame:
    rows = [
        {
            "method": method,
            "multiplier": None,
            "ci_low": None,
            "ci_high": None,
            "n_sizes": int(n_sizes[i]),
            "extrapolated": None,
            "note": note,
        }
        for i, method in enumerate(methods)
    ]
    return pl.DataFrame(rows, schema=MULTIPLIER_SCHEMA)


def _bootstrap(
    correct: np.ndarray,
    present: np.ndarray,
    log_n: np.ndarray,
    ref: int,
    method_sizes: np.ndarray,
    *,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Summary log multipliers [n_boot, M] of paired resamples: seeds with replacement, then
    in each drawn seed slot problems with replacement, the same draw for every method and size.
    """
    _, _, k, p = correct.shape
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, min(_BOOT_CHUNK, _BOOT_CELLS // (k * p)))
    for start in range(0, n_boot, chunk):
        nb = min(chunk, n_boot - start)
        seed_idx = rng.integers(0, k, size=(nb, k))
        prob_idx = rng.integers(0, p, size=(nb, k, p))
        offsets = np.arange(nb * k)[:, None] * p
        weights = np.bincount(
            (prob_idx.reshape(nb * k, p) + offsets).ravel(), minlength=nb * k * p
        ).reshape(nb, k, p)
        err_b, tests_b = _resampled_errors(correct, present, seed_idx, weights.astype(float))
        draws.append(_summaries(err_b, tests_b, log_n, ref, method_sizes)[0])
    return np.concatenate(draws, axis=0)


def _percentile_intervals(boot: np.ndarray, confidence: float) -> np.ndarray:
    """[M, 2] percentile interval of each method's finite resamples; NaN where fewer than half
    of the resamples are finite."""
    n_boot, m = boot.shape
    ci = np.full((m, 2), np.nan)
    alpha = (1.0 - confidence) / 2.0
    for i in range(m):
        ok = np.isfinite(boot[:, i])
        if ok.sum() * 2 >= n_boot:
            ci[i] = np.quantile(boot[ok, i], [alpha, 1.0 - alpha])
    return ci


def _dropped_note(ref_boot: np.ndarray, reference: str) -> str:
    """How many resamples had an undefined reference fit, or "" when none."""
    n_boot = len(ref_boot)
    dropped = int((~np.isfinite(ref_boot)).sum())
    if not dropped:
        return ""
    note = (
        f"{dropped} of {n_boot} bootstrap resamples had an undefined {reference} fit "
        "(b <= 0) and were dropped"
    )
    if dropped * 2 > n_boot:
        note += "; too few left for an interval"
    return note


def _multiplier_row(
    method: str,
    reference: str,
    log_summary: float,
    log_ref_sizes: np.ndarray,
    ref_range: tuple[float, float],
    ci: np.ndarray,
    n_sizes: int,
    boot_note: str,
) -> dict:
    """One ``MULTIPLIER_SCHEMA`` row; ``log_ref_sizes`` are the log reference-equivalent sizes
    at the method's sizes with a finite error."""
    notes = []
    extrapolated = False
    if method == reference:
        notes.append("reference method: 1x by definition")
    else:
        lo, hi = ref_range
        extrapolated = any(_outside(float(x), lo, hi) for x in log_ref_sizes)
        if extrapolated:
            notes.append(
                f"extrapolated: the {reference}-equivalent data size lies outside the "
                f"measured {reference} range {int(lo)}-{int(hi)} at some size"
            )
    value = _exp_or_none(log_summary)
    if value is None and np.isfinite(log_summary):
        notes.append("multiplier beyond float range; undefined")
    elif value is None:
        notes.append("no data size with a finite error; undefined")
    if boot_note:
        notes.append(boot_note)
    return {
        "method": method,
        "multiplier": value,
        "ci_low": _exp_or_none(ci[0]),
        "ci_high": _exp_or_none(ci[1]),
        "n_sizes": n_sizes,
        "extrapolated": extrapolated if value is not None else None,
        "note": "; ".join(notes) or None,
    }


# --------------------------------------------------------------------------- plot


def _per_size_stats(table: pl.DataFrame):
    """method -> (sizes, mean, min, max) of the clipped seed errors, for the plot."""
    methods, sizes, err, cnt = _table_arrays(table)
    mean, total = _size_errors(err, cnt)
    floor = np.where(total > 0, 0.5 / np.where(total > 0, total, 1.0), np.nan)
    with np.errstate(invalid="ignore"):
        clipped = np.maximum(err, floor[..., None])
    out = {}
    for i, method in enumerate(methods):
        have = np.isfinite(mean[i])
        lo = np.nanmin(np.where(np.isfinite(clipped[i]), clipped[i], np.inf), axis=-1)
        hi = np.nanmax(np.where(np.isfinite(clipped[i]), clipped[i], -np.inf), axis=-1)
        out[method] = (np.asarray(sizes)[have], mean[i][have], lo[have], hi[have])
    return out


def plot_curves(table: pl.DataFrame, fits: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Log-log test error vs. data size per method; written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = _per_size_stats(table)
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i % 10}" for i in range(len(stats))]
    for color, (method, (xs, mean, lo, hi)) in zip(colors, stats.items(), strict=True):
        fit = _fit_row(fits, method) if fits.height else None
        label = method
        if fit is not None and fit["b"] is not None:
            label = f"{method} (b={fit['b']:.2f})"
        ax.errorbar(
            xs,
            mean,
            yerr=np.vstack([np.maximum(mean - lo, 0.0), np.maximum(hi - mean, 0.0)]),
            fmt="o",
            color=color,
            capsize=3,
            label=label,
        )
        if fit is not None and fit["a"] is not None and fit["b"] is not None and len(xs):
            grid = np.geomspace(xs.min(), xs.max(), 50)
            ax.plot(grid, fit["a"] * grid ** (-fit["b"]), "--", color=color, linewidth=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("synthetic training problems (data size)")
    ax.set_ylabel("test error")
    ax.set_title(
        "Setlur et al. 2024 scaling study: test error vs. data size\n"
        "(mean over seeds, bars min-max; dashed: fit error = a n^-b)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    if stats:
        ax.legend(fontsize=8)
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


def _fmt_x(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}" if value < 0.1 else f"{value:.2f}".rstrip("0").rstrip(".")


def report_markdown(
    table: pl.DataFrame,
    fits: pl.DataFrame,
    mults: pl.DataFrame,
    plot_path: str | os.PathLike,
    *,
    relative_to: str | os.PathLike | None = None,
    reference: str = "sft",
    confidence: float = 0.95,
) -> str:
    """A short markdown report: accuracy table, multipliers in words, the plot.

    The plot is linked relative to ``relative_to`` (default: the plot's own folder, i.e.
    the report is expected to sit next to it).
    """
    plot_path = Path(plot_path)
    base = Path(relative_to) if relative_to is not None else plot_path.parent
    rel = os.path.relpath(plot_path, base)
    lines = ["# Scaling curves (Setlur et al. 2024)", ""]
    lines += _accuracy_section(table)
    if fits.height:
        lines += _fit_section(fits)
    if mults.height:
        lines += _multiplier_section(fits, mults, reference=reference, confidence=confidence)
    lines += [f"![test error vs. data size]({rel})", f"Plot: `{rel}`", ""]
    return "\n".join(lines)


def _accuracy_section(table: pl.DataFrame) -> list[str]:
    """Mean test accuracy per method (rows) and data size (columns)."""
    _require(table, ("method", "data_size", "accuracy"), "scaling table")
    if not table.height:
        return ["No evaluations yet.", ""]
    sizes = sorted(table["data_size"].unique().to_list())
    acc = table.group_by(["method", "data_size"]).agg(
        mean=pl.col("accuracy").mean(), seeds=pl.len()
    )
    cells = {(r["method"], r["data_size"]): r for r in acc.iter_rows(named=True)}
    n_seeds = table["seed"].n_unique() if "seed" in table.columns else 1
    lines = [
        f"Test accuracy (%), mean over seeds ({n_seeds} seed(s)); columns are data sizes.",
        "",
        "| method | " + " | ".join(str(s) for s in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    for method in table["method"].unique(maintain_order=True).to_list():
        row = [
            f"{100 * cells[(method, s)]['mean']:.1f}" if (method, s) in cells else "—"
            for s in sizes
        ]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _fit_section(fits: pl.DataFrame) -> list[str]:
    lines = ["Power-law fits, test error = a · n^(-b):", ""]
    for r in fits.iter_rows(named=True):
        if r["b"] is None:
            lines.append(f"- {r['method']}: no fit ({r['n_points']} data size(s); needs 2)")
        else:
            r2 = "n/a" if r["r2"] is None else f"{r['r2']:.2f}"
            lines.append(
                f"- {r['method']}: a = {r['a']:.3g}, b = {r['b']:.3f} "
                f"(R² {r2}, {r['n_points']} sizes)"
            )
    return [*lines, ""]


def _multiplier_section(
    fits: pl.DataFrame, mults: pl.DataFrame, *, reference: str, confidence: float
) -> list[str]:
    ref_word = reference.upper() if reference == "sft" else reference
    ref_fit = _fit_row(fits, reference) if fits.height else None
    ref_range = ""
    if ref_fit is not None and ref_fit["min_size"] is not None:
        ref_range = f" ({ref_fit['min_size']}–{ref_fit['max_size']})"
    lines = [f"Effective data multipliers (vs. {reference}):", ""]
    for r in mults.iter_rows(named=True):
        name = r["method"]
        if r["multiplier"] is None:
            lines.append(f"- {name}: undefined — {r['note'] or 'no estimate'}")
            continue
        if name == reference:
            lines.append(f"- {name}: reference (1x by definition)")
            continue
        text = f"- {name}: {_fmt_x(r['multiplier'])}x {ref_word} data"
        if r["ci_low"] is not None and r["ci_high"] is not None:
            text += f" ({100 * confidence:g}% CI {_fmt_x(r['ci_low'])}–{_fmt_x(r['ci_high'])})"
        else:
            text += " (no interval)"
        text += f" over {r['n_sizes']} size(s)"
        if r["extrapolated"]:
            text += f"; extrapolated beyond the measured {reference} data sizes{ref_range}"
        lines.append(text)
    return [*lines, ""]


@dataclass(frozen=True)
class StudyReport:
    """What :func:`study_report` computed and wrote."""

    table: pl.DataFrame
    fits: pl.DataFrame
    multipliers: pl.DataFrame
    plot: Path
    report: Path
    markdown: str


def study_report(evaluations: pl.DataFrame, reports: Path, *, seed: int = 0) -> StudyReport:
    """The ``scaling_curves`` table, fits and multipliers against SFT of every evaluation,
    with the plot (``scaling_curves.png``) and the markdown report (``scaling_report.md``)
    written atomically into ``reports``."""
    table = scaling_table(evaluations)
    fits = fit_power_laws(table)
    mults = multipliers(evaluations, reference="sft", seed=seed)
    reports.mkdir(parents=True, exist_ok=True)
    plot = plot_curves(table, fits, reports / "scaling_curves.png")
    markdown = report_markdown(table, fits, mults, plot, relative_to=reports)
    report = reports / "scaling_report.md"
    tmp = temp_sibling(report)
    tmp.write_text(markdown)
    tmp.replace(report)
    return StudyReport(table, fits, mults, plot, report, markdown)
