"""Scaling curves: power-law fits, data multipliers with paired bootstrap CIs, plot, report."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from synthdata_assets.curves import (
    FIT_SCHEMA,
    MULTIPLIER_SCHEMA,
    SCALING_SCHEMA,
    fit_power_laws,
    multipliers,
    plot_curves,
    report_markdown,
    scaling_table,
    size_multipliers,
)

SIZES = [4, 16, 64, 256, 1024]


def sft_law(n: float) -> float:
    return 0.8 * n**-0.3


def eightfold_law(n: float) -> float:
    """Reaches SFT's error with 8x less data: multiplier 8."""
    return sft_law(8 * n)


def make_evals(
    laws: dict[str, Callable[[float], float]],
    *,
    sizes=SIZES,
    n_seeds: int = 3,
    n_problems: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """Independent Bernoulli(1 - error) answers for every method x size x seed x problem."""
    rng = np.random.default_rng(seed)
    problem_ids = np.array([f"test-{i:05d}" for i in range(n_problems)])
    frames = []
    for method, law in laws.items():
        for size in sizes:
            for s in range(n_seeds):
                frames.append(
                    pl.DataFrame(
                        {
                            "method": method,
                            "data_size": size,
                            "seed": s,
                            "problem_id": problem_ids,
                            "completion": "The answer is 1.",
                            "is_correct": rng.random(n_problems) >= law(size),
                        }
                    )
                )
    return pl.concat(frames).with_columns(pl.col("data_size", "seed").cast(pl.Int64))


def by_method(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["method"]: r for r in frame.iter_rows(named=True)}


@pytest.fixture(scope="module")
def study() -> pl.DataFrame:
    laws = {
        "base": lambda n: 0.7,
        "sft": sft_law,
        "sft_twin": sft_law,
        "per_step_dpo": eightfold_law,
    }
    return make_evals(laws, n_problems=6000, seed=1)


@pytest.fixture(scope="module")
def study_mults(study: pl.DataFrame) -> pl.DataFrame:
    return multipliers(study, n_boot=400, seed=0)


# --------------------------------------------------------------------------- table + fits


def test_scaling_table_contract():
    ev = pl.DataFrame(
        {
            "method": ["sft"] * 4 + ["base"] * 2,
            "data_size": [10, 10, 20, 20, 10, 10],
            "seed": [0, 0, 0, 0, 0, 0],
            "problem_id": ["a", "b", "a", "b", "a", "b"],
            "is_correct": [True, None, True, True, False, False],
        }
    )
    table = scaling_table(ev)
    assert table.schema == pl.Schema(SCALING_SCHEMA)
    rows = {(r["method"], r["data_size"]): r for r in table.iter_rows(named=True)}
    assert rows[("sft", 10)]["accuracy"] == 0.5  # null is_correct counts as wrong
    assert rows[("sft", 10)]["n_test"] == 2
    assert rows[("sft", 20)]["test_error"] == 0.0
    assert rows[("base", 10)]["test_error"] == 1.0
    # methods keep their order of appearance
    assert table["method"].unique(maintain_order=True).to_list() == ["sft", "base"]


def test_missing_columns_are_named():
    ev = pl.DataFrame({"method": ["sft"], "problem_id": ["a"]})
    for fn in (scaling_table, multipliers):
        with pytest.raises(ValueError, match="data_size.*seed.*is_correct"):
            fn(ev)
    with pytest.raises(ValueError, match="n_test"):
        fit_power_laws(
            pl.DataFrame({"method": ["sft"], "data_size": [1], "seed": [0], "test_error": [0.5]})
        )


def test_duplicate_keys_rejected():
    ev = make_evals({"sft": sft_law}, sizes=[4], n_seeds=1, n_problems=5)
    with pytest.raises(ValueError, match="duplicated"):
        scaling_table(pl.concat([ev, ev.head(1)]))


def test_power_law_recovered(study: pl.DataFrame):
    fits = by_method(fit_power_laws(scaling_table(study)))
    sft = fits["sft"]
    assert sft["b"] == pytest.approx(0.3, abs=0.03)
    assert sft["a"] == pytest.approx(0.8, rel=0.15)
    assert sft["r2"] > 0.97 and sft["n_points"] == 5
    assert (sft["min_size"], sft["max_size"]) == (4, 1024)
    assert fits["per_step_dpo"]["b"] == pytest.approx(0.3, abs=0.03)
    assert abs(fits["base"]["b"]) < 0.03  # base does not depend on data size


def test_fit_schema_and_single_size_method():
    ev = pl.concat(
        [
            make_evals({"sft": sft_law}, n_problems=200),
            make_evals({"rft": sft_law}, sizes=[64], n_problems=200),
        ]
    )
    fits = fit_power_laws(scaling_table(ev))
    assert fits.schema == pl.Schema(FIT_SCHEMA)
    rft = by_method(fits)["rft"]
    assert rft["n_points"] == 1 and rft["a"] is None and rft["b"] is None and rft["r2"] is None


# --------------------------------------------------------------------------- multipliers


def test_eightfold_multiplier(study_mults: pl.DataFrame):
    assert study_mults.schema == pl.Schema(MULTIPLIER_SCHEMA)
    row = by_method(study_mults)["per_step_dpo"]
    assert row["multiplier"] == pytest.approx(8.0, rel=0.2)
    assert row["ci_low"] < 8.0 < row["ci_high"]
    assert row["ci_low"] <= row["multiplier"] <= row["ci_high"]
    assert row["n_sizes"] == 5
    # better than SFT at the largest SFT size -> needs more SFT data than was measured
    assert row["extrapolated"] is True and "extrapolated" in row["note"]


def test_equal_method_has_multiplier_one(study_mults: pl.DataFrame):
    rows = by_method(study_mults)
    assert rows["sft"]["multiplier"] == pytest.approx(1.0, abs=1e-9)
    assert rows["sft"]["extrapolated"] is False
    twin = rows["sft_twin"]  # same law, independent draws
    assert twin["multiplier"] == pytest.approx(1.0, rel=0.2)
    assert twin["ci_low"] < 1.0 < twin["ci_high"]
    assert rows["base"]["multiplier"] < 0.2  # base is worth far less than SFT


def test_bootstrap_is_paired():
    """A row-for-row copy of SFT gets exactly 1x in every resample when problems and seeds
    are resampled jointly across methods."""
    ev = make_evals({"sft": sft_law}, n_problems=300)
    ev = pl.concat([ev, ev.with_columns(method=pl.lit("copy"))])
    row = by_method(multipliers(ev, n_boot=200))["copy"]
    assert row["multiplier"] == pytest.approx(1.0, abs=1e-9)
    assert row["ci_low"] == pytest.approx(1.0, abs=1e-9)
    assert row["ci_high"] == pytest.approx(1.0, abs=1e-9)


def test_interval_narrows_with_more_problems():
    laws = {"sft": sft_law, "per_step_dpo": eightfold_law}
    widths = []
    for n_problems in (500, 8000):
        row = by_method(multipliers(make_evals(laws, n_problems=n_problems, seed=3), n_boot=300))[
            "per_step_dpo"
        ]
        widths.append(math.log(row["ci_high"] / row["ci_low"]))
    assert widths[1] < 0.5 * widths[0]


def test_bootstrap_deterministic_with_seed():
    ev = make_evals({"sft": sft_law, "per_step_dpo": eightfold_law}, n_problems=300)
    a = multipliers(ev, n_boot=200, seed=7)
    b = multipliers(ev, n_boot=200, seed=7)
    c = multipliers(ev, n_boot=200, seed=8)
    assert a.equals(b)
    assert by_method(a)["per_step_dpo"]["ci_low"] != by_method(c)["per_step_dpo"]["ci_low"]
    assert by_method(a)["per_step_dpo"]["multiplier"] == by_method(c)["per_step_dpo"]["multiplier"]


def test_size_multipliers_match_summary(study: pl.DataFrame, study_mults: pl.DataFrame):
    table = scaling_table(study)
    per_size = size_multipliers(table, fit_power_laws(table))
    dpo = per_size.filter(pl.col("method") == "per_step_dpo")
    assert dpo.height == 5
    geo = math.exp(float(np.log(dpo["multiplier"].to_numpy()).mean()))
    assert geo == pytest.approx(by_method(study_mults)["per_step_dpo"]["multiplier"], rel=1e-9)
    assert dpo.filter(pl.col("data_size") == 1024)["extrapolated"].item() is True


def _assert_no_inf(frame: pl.DataFrame):
    for col in ("multiplier", "ci_low", "ci_high"):
        values = frame[col].drop_nulls().to_numpy()
        assert np.isfinite(values).all(), col


def test_undefined_when_sft_does_not_improve(tmp_path: Path):
    # SFT gets worse with data: fitted b < 0
    ev = make_evals({"sft": lambda n: 0.1 * n**0.2, "per_step_dpo": eightfold_law}, n_problems=500)
    mults = multipliers(ev, n_boot=100)
    _assert_no_inf(mults)
    row = by_method(mults)["per_step_dpo"]
    assert row["multiplier"] is None and row["ci_low"] is None
    assert "does not fall" in row["note"] and "undefined" in row["note"]
    # exactly flat SFT (identical answers at every size): b == 0
    flat = make_evals({"sft": lambda n: 0.4}, sizes=[4], n_problems=500)
    flat = pl.concat([flat.with_columns(data_size=pl.lit(s, pl.Int64)) for s in SIZES])
    flat = pl.concat([flat, make_evals({"rft": eightfold_law}, n_problems=500)])
    row = by_method(multipliers(flat, n_boot=50))["rft"]
    assert row["multiplier"] is None and "b = 0 <= 0" in row["note"]
    table = scaling_table(ev)
    fits = fit_power_laws(table)
    report = report_markdown(table, fits, mults, plot_curves(table, fits, tmp_path / "u.png"))
    assert "per_step_dpo: undefined" in report


def test_edge_cases_single_size_missing_sizes_all_right_all_wrong(tmp_path: Path):
    # a single data size: no fit, multipliers undefined with a reason
    one = make_evals({"sft": sft_law, "rft": eightfold_law}, sizes=[64], n_problems=100)
    mults = multipliers(one, n_boot=50)
    assert mults["multiplier"].null_count() == 2
    assert all("needs >= 2" in n for n in mults["note"])
    table = scaling_table(one)
    fits = fit_power_laws(table)
    assert plot_curves(table, fits, tmp_path / "one.png").exists()
    assert "rft: undefined" in report_markdown(table, fits, mults, tmp_path / "one.png")

    # a method missing at some sizes; a perfect method; a hopeless method
    ev = pl.concat(
        [
            make_evals({"sft": sft_law}, n_problems=400),
            make_evals({"rft": eightfold_law}, sizes=[16, 256], n_problems=400),
            make_evals({"oracle": lambda n: 0.0, "broken": lambda n: 1.0}, n_problems=400),
        ]
    )
    mults = by_method(multipliers(ev, n_boot=100))
    assert mults["rft"]["n_sizes"] == 2 and mults["rft"]["multiplier"] > 1
    oracle, broken = mults["oracle"], mults["broken"]
    # zero error is clipped at half an error on the pooled test set: large but finite
    assert math.isfinite(oracle["multiplier"]) and oracle["multiplier"] > 100
    assert oracle["extrapolated"] is True
    assert 0 < broken["multiplier"] < 1
    _assert_no_inf(multipliers(ev, n_boot=100))
    fits = by_method(fit_power_laws(scaling_table(ev)))
    # the floor depends only on the pooled test count, equal at every size: flat fit
    assert fits["oracle"]["b"] == pytest.approx(0.0, abs=1e-12)
    assert fits["broken"]["b"] == pytest.approx(0.0, abs=1e-12)


def test_missing_reference():
    ev = make_evals({"rft": sft_law}, n_problems=50)
    row = by_method(multipliers(ev, n_boot=10))["rft"]
    assert row["multiplier"] is None and "'sft' is not in the evaluations" in row["note"]
    row = by_method(multipliers(ev, reference="rft", n_boot=10))["rft"]
    assert row["multiplier"] == pytest.approx(1.0)


def test_resamples_with_an_undefined_reference_fit_are_dropped():
    """An SFT slope barely above 0: some resamples fit b <= 0; they are counted in the note,
    and the interval is null once more than half are dropped."""
    laws = {"sft": lambda n: 0.5 * n**-0.03, "rft": lambda n: 0.45 * n**-0.03}
    notes = {}
    for seed in (1, 2):
        ev = make_evals(laws, sizes=[8, 512], n_seeds=2, n_problems=80, seed=seed)
        notes[seed] = by_method(multipliers(ev, n_boot=100))["rft"]
    kept, too_few = notes[2], notes[1]
    assert "40 of 100 bootstrap resamples had an undefined sft fit" in kept["note"]
    assert "too few left" not in kept["note"]
    assert kept["ci_low"] is not None and kept["ci_high"] is not None
    assert "51 of 100" in too_few["note"] and "too few left for an interval" in too_few["note"]
    assert too_few["multiplier"] is not None
    assert too_few["ci_low"] is None and too_few["ci_high"] is None


def _scaled(k: float) -> Callable[[float], float]:
    return lambda n: sft_law(k * n)


# --------------------------------------------------------------------------- plot + report


def test_plot_and_report(tmp_path: Path, study: pl.DataFrame, study_mults: pl.DataFrame):
    table = scaling_table(study)
    fits = fit_power_laws(table)
    out = tmp_path / "figures" / "scaling.png"
    assert plot_curves(table, fits, out) == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["scaling.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file, not private
    plot_curves(table, fits, out)  # overwrite in place
    report = report_markdown(table, fits, study_mults, out, relative_to=tmp_path)
    for method in ("base", "sft", "sft_twin", "per_step_dpo"):
        assert f"| {method} |" in report and f"- {method}:" in report
    assert "figures/scaling.png" in report
    assert "95% CI" in report and "x SFT data" in report
    assert "extrapolated" in report
    assert "| method | 4 | 16 | 64 | 256 | 1024 |" in report


def test_empty_evaluations():
    ev = make_evals({"sft": sft_law}, n_problems=1).head(0)
    assert scaling_table(ev).height == 0
    assert fit_power_laws(scaling_table(ev)).height == 0
    assert multipliers(ev).height == 0
