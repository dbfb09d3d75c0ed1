"""Scaling curves: paired differences against SFT, data multipliers read off SFT's measured
curve with bootstrap intervals over seeds and problems, the chance floor, plot and report."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from synthdata_assets.curves import (
    MULTIPLIER_SCHEMA,
    PAIRED_SCHEMA,
    SCALING_SCHEMA,
    SIZE_MULTIPLIER_SCHEMA,
    _isotonic,
    compare,
    control_comparison,
    flat_note,
    multipliers,
    plot_curves,
    report_markdown,
    scaling_table,
    study_report,
)
from synthdata_assets.defs.curves import method_notes
from warehouse.query import named_queries

SIZES = [250, 500, 1000, 2000, 4000]
CHANCE = 1 / 23


def sft_law(n: float) -> float:
    """Accuracy linear in log data size: +12 points per doubling, 20% at 250."""
    return 0.20 + 0.12 * math.log2(n / 250)


def twice_sft(n: float) -> float:
    """SFT's accuracy at twice the data: a multiplier of exactly 2."""
    return sft_law(2 * n)


def make_evals(
    laws: dict[str, Callable[[float], float]],
    *,
    sizes=SIZES,
    n_seeds: int = 3,
    n_problems: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Independent Bernoulli(accuracy) answers for every method x size x seed x problem."""
    rng = np.random.default_rng(seed)
    problem_ids = np.array([f"test-{i:05d}" for i in range(n_problems)])
    frames = [
        pl.DataFrame(
            {
                "method": method,
                "data_size": size,
                "seed": s,
                "problem_id": problem_ids,
                "completion": "The answer is 1.",
                "is_correct": rng.random(n_problems) < law(size),
            }
        )
        for method, law in laws.items()
        for size in sizes
        for s in range(n_seeds)
    ]
    return pl.concat(frames).with_columns(pl.col("data_size", "seed").cast(pl.Int64))


def exact_evals(accuracies: dict[str, list[float]], *, sizes=SIZES, n_problems=1000):
    """One seed; the first round(accuracy * n) problems right: accuracies without noise."""
    index = np.arange(n_problems)
    frames = [
        pl.DataFrame(
            {
                "method": method,
                "data_size": size,
                "seed": 0,
                "problem_id": [f"p{i}" for i in index],
                "is_correct": index < round(acc * n_problems),
            }
        )
        for method, accs in accuracies.items()
        for size, acc in zip(sizes, accs, strict=True)
    ]
    return pl.concat(frames).with_columns(pl.col("data_size", "seed").cast(pl.Int64))


def by_method(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["method"]: r for r in frame.iter_rows(named=True)}


def cell(frame: pl.DataFrame, method: str, size: int) -> dict:
    return frame.filter((pl.col("method") == method) & (pl.col("data_size") == size)).row(
        0, named=True
    )


@pytest.fixture(scope="module")
def study() -> pl.DataFrame:
    laws = {
        "base": lambda n: 0.05,
        "sft": sft_law,
        "sft_twin": sft_law,
        "per_step_dpo": twice_sft,
    }
    return make_evals(laws, seed=1)


@pytest.fixture(scope="module")
def study_comparison(study: pl.DataFrame):
    return compare(study, chance=CHANCE, n_boot=1000, seed=0)


# --------------------------------------------------------------------------- table, inputs


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
    assert table["method"].unique(maintain_order=True).to_list() == ["sft", "base"]


def test_missing_columns_duplicates_and_bad_options_are_named():
    ev = pl.DataFrame({"method": ["sft"], "problem_id": ["a"]})
    for fn in (scaling_table, multipliers, compare):
        with pytest.raises(ValueError, match="data_size.*seed.*is_correct"):
            fn(ev)
    ev = make_evals({"sft": sft_law}, sizes=[250], n_seeds=1, n_problems=5)
    with pytest.raises(ValueError, match="duplicated"):
        compare(pl.concat([ev, ev.head(1)]))
    for bad, match in (
        ({"chance": 1.0}, "chance"),
        ({"chance": -0.1}, "chance"),
        ({"n_boot": -1}, "n_boot"),
        ({"confidence": 1.0}, "confidence"),
    ):
        with pytest.raises(ValueError, match=match):
            compare(ev, **bad)


def test_empty_evaluations():
    ev = make_evals({"sft": sft_law}, n_problems=1).head(0)
    assert scaling_table(ev).height == 0
    result = compare(ev)
    assert result.multipliers.height == 0 and result.paired.height == 0
    assert result.multipliers.schema == pl.Schema(MULTIPLIER_SCHEMA)


# --------------------------------------------------------------------------- isotonic curve


def _pava(y: list[float]) -> list[float]:
    """Pool adjacent violators, the textbook loop."""
    blocks: list[list[float]] = []
    for v in y:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            v2, n2 = blocks.pop()
            blocks[-1][0] += v2
            blocks[-1][1] += n2
    return [s / n for s, n in blocks for _ in range(int(n))]


def test_isotonic_curve_is_pool_adjacent_violators():
    np.testing.assert_allclose(_isotonic(np.array([[1.0, 3.0, 2.0, 4.0]]))[0], [1, 2.5, 2.5, 4])
    rng = np.random.default_rng(0)
    y = rng.random((300, 6))
    expected = np.array([_pava(list(row)) for row in y])
    np.testing.assert_allclose(_isotonic(y), expected, atol=1e-12)
    monotone = np.sort(y, axis=1)
    np.testing.assert_allclose(_isotonic(monotone), monotone, atol=1e-12)


# --------------------------------------------------------------------------- multipliers


def test_sft_at_twice_the_data_has_multiplier_two(study_comparison):
    mults = study_comparison.multipliers
    assert mults.schema == pl.Schema(MULTIPLIER_SCHEMA)
    row = by_method(mults)["per_step_dpo"]
    assert row["multiplier"] == pytest.approx(2.0, rel=0.15)
    assert row["ci_low"] < 2.0 < row["ci_high"]
    assert row["ci_low"] <= row["median"] <= row["ci_high"]
    assert row["share_above_1"] > 0.975 and row["bound"] is None
    # at 4000, twice the data is beyond SFT's largest size: censored, left out of the mean
    # (at 2000 it is SFT's largest size, inside or just above by chance)
    assert row["n_sizes"] in (3, 4) and "4000 (above)" in row["note"]
    per_size = study_comparison.per_size
    assert per_size.schema == pl.Schema(SIZE_MULTIPLIER_SCHEMA)
    top = cell(per_size, "per_step_dpo", 4000)
    assert top["censored"] == "above" and top["reference_size"] == pytest.approx(4000)
    assert cell(per_size, "per_step_dpo", 500)["reference_size"] == pytest.approx(1000, rel=0.2)


def test_identical_methods_have_multiplier_one(study_comparison):
    rows = by_method(study_comparison.multipliers)
    assert rows["sft"]["multiplier"] == 1.0 and "reference" in rows["sft"]["note"]
    twin = rows["sft_twin"]  # same law, independent draws
    assert twin["multiplier"] == pytest.approx(1.0, rel=0.15)
    assert twin["ci_low"] < 1.0 < twin["ci_high"]
    assert 0.025 < twin["share_above_1"] < 0.975
    # base is below SFT's curve (and near chance) at every size: an upper bound below 1x
    assert rows["base"]["bound"] == "upper" and rows["base"]["multiplier"] < 1.0


def test_above_or_below_sft_everywhere_is_a_bound_and_both_ways_is_undefined():
    sft = [0.2, 0.3, 0.4, 0.5, 0.6]
    ev = exact_evals(
        {
            "sft": sft,
            "oracle": [0.9] * 5,
            "broken": [0.1] * 5,
            "steep": [0.1, 0.15, 0.3, 0.7, 0.9],  # below at 250 and 500, above at 2000, 4000
        }
    )
    result = compare(ev, n_boot=50)
    rows = by_method(result.multipliers)
    oracle = rows["oracle"]
    # at each size the equivalent is "more than 4000": geometric mean of 4000 / n
    expected = math.exp(np.mean([math.log(4000 / n) for n in SIZES]))
    assert oracle["bound"] == "lower" and oracle["multiplier"] == pytest.approx(expected)
    assert "lower bound" in oracle["note"]
    assert rows["broken"]["bound"] == "upper" and rows["broken"]["multiplier"] < 1
    steep = rows["steep"]
    # only at 1000 inside SFT's range: 30% is SFT's accuracy at 500
    assert steep["multiplier"] == pytest.approx(0.5)
    assert steep["n_sizes"] == 1 and "250 (below)" in steep["note"]
    assert cell(result.per_size, "steep", 4000)["censored"] == "above"
    crossing = exact_evals({"sft": sft, "steep": [0.1, 0.1, 0.1, 0.9, 0.9]})
    row = by_method(compare(crossing, n_boot=20).multipliers)["steep"]
    assert row["multiplier"] is None and "above and below: undefined" in row["note"]


def test_interpolation_is_linear_in_log_size():
    # halfway between SFT's accuracies at 500 and 1000 is sqrt(500 * 1000) SFT data
    ev = exact_evals({"sft": [0.2, 0.3, 0.4, 0.5, 0.6], "rft": [0.25, 0.35, 0.45, 0.55, 0.6]})
    per_size = compare(ev, n_boot=0).per_size
    assert cell(per_size, "rft", 500)["reference_size"] == pytest.approx(math.sqrt(500 * 1000))
    assert cell(per_size, "rft", 4000)["reference_size"] == pytest.approx(4000)
    assert cell(per_size, "rft", 4000)["censored"] is None  # equal to SFT's best: inside


def test_sft_dip_is_pooled_before_reading_sizes():
    """SFT dips at 1000: its curve pools 500 and 1000, so an accuracy just above the pool is
    first reached past 1000, not between 250 and 500 where the dip's neighbour lies."""
    ev = exact_evals({"sft": [0.2, 0.35, 0.3, 0.5, 0.6], "rft": [0.33] * 5})
    result = compare(ev, n_boot=0)
    assert result.curve["accuracy"].to_list() == pytest.approx([0.2, 0.325, 0.325, 0.5, 0.6])
    equivalent = cell(result.per_size, "rft", 250)["reference_size"]
    assert 1000 < equivalent < 1100


def test_the_report_names_where_the_sft_curve_is_flat(tmp_path: Path):
    """SFT's dip at 1000 pools 500-1000 flat: a method a point above the pool at 500 reads as
    more than twice SFT's data there, and the report says why; a rising SFT gets no note."""
    ev = exact_evals({"sft": [0.2, 0.35, 0.3, 0.5, 0.6], "rft": [0.25, 0.335, 0.4, 0.55, 0.62]})
    result = compare(ev, chance=CHANCE, n_boot=0)
    assert cell(result.per_size, "rft", 500)["reference_size"] > 1000
    note = flat_note(result)
    assert note is not None and "500-1000 (at 32.5%)" in note
    assert "250" not in note and "2000" not in note
    report = report_markdown(scaling_table(ev), result, tmp_path / "p.png")
    assert "Flat SFT curve" in report
    monotone = exact_evals({"sft": [0.2, 0.3, 0.4, 0.5, 0.6], "rft": [0.3] * 5})
    rising = compare(monotone, n_boot=0)
    assert flat_note(rising) is None
    assert "Flat SFT" not in report_markdown(scaling_table(monotone), rising, tmp_path / "p.png")
    # A stretch at chance is the floor's (its own note), not a flat curve.
    at_chance = compare(
        exact_evals({"sft": [0.01, 0.02, 0.3, 0.5, 0.6], "rft": [0.3] * 5}), chance=CHANCE, n_boot=0
    )
    assert flat_note(at_chance) is None


# --------------------------------------------------------------------------- chance floor


def test_accuracy_at_chance_is_not_read_as_data():
    """SFT below chance at 250 and 500: noise there must not place a method on SFT's curve."""
    chance = 0.1
    ev = exact_evals(
        {"sft": [0.05, 0.08, 0.3, 0.5, 0.7], "rft": [0.07, 0.09, 0.3, 0.5, 0.7]},
    )
    unfloored = compare(ev, n_boot=0)
    floored = compare(ev, chance=chance, n_boot=0)
    # without a floor, rft's 9% at 500 reads as 'SFT data between 500 and 1000'
    assert cell(unfloored.per_size, "rft", 500)["censored"] is None
    assert cell(unfloored.per_size, "rft", 500)["multiplier"] > 1.0
    # with it, accuracy at or below chance is worth less than SFT's smallest size
    for size in (250, 500):
        row = cell(floored.per_size, "rft", size)
        assert row["censored"] == "below" and row["reference_size"] == pytest.approx(250)
    assert by_method(floored.multipliers)["rft"]["multiplier"] == pytest.approx(1.0)
    assert floored.curve["accuracy"].to_list()[:2] == pytest.approx([chance, chance])


def test_sft_that_does_not_rise_leaves_multipliers_undefined(tmp_path: Path):
    ev = exact_evals({"sft": [0.3, 0.25, 0.2, 0.2, 0.1], "rft": [0.4] * 5})
    result = compare(ev, n_boot=20)
    row = by_method(result.multipliers)["rft"]
    assert row["multiplier"] is None and "does not rise" in row["note"]
    at_chance = exact_evals({"sft": [0.05, 0.02, 0.08, 0.06, 0.09], "rft": [0.3] * 5})
    row = by_method(compare(at_chance, chance=0.1, n_boot=20).multipliers)["rft"]
    assert row["multiplier"] is None and "does not rise" in row["note"]
    table = scaling_table(ev)
    report = report_markdown(table, result, plot_curves(table, result, tmp_path / "u.png"))
    assert "does not rise" in report and "| rft " in report


def test_single_size_and_missing_reference(tmp_path: Path):
    one = make_evals({"sft": sft_law, "rft": twice_sft, "dpo": sft_law}, sizes=[500], n_seeds=1)
    result = compare(one, n_boot=50)
    assert result.multipliers["multiplier"].null_count() == 3
    assert all("needs >= 2" in n for n in result.multipliers["note"])
    assert result.paired.height == 2  # the paired comparison needs one size only
    table = scaling_table(one)
    report = report_markdown(table, result, plot_curves(table, result, tmp_path / "one.png"))
    assert "one seed, 1000 test problems" in report and "not training noise" in report
    assert report.count("needs >= 2") == 1 and "- every method: reference 'sft'" in report
    ev = make_evals({"rft": sft_law}, n_problems=50)
    row = by_method(multipliers(ev, n_boot=10))["rft"]
    assert row["multiplier"] is None and "'sft' is not in the evaluations" in row["note"]
    assert by_method(multipliers(ev, reference="rft", n_boot=10))["rft"]["multiplier"] == 1.0


# --------------------------------------------------------------------------- paired


def test_identical_methods_have_paired_difference_zero(study: pl.DataFrame):
    copy = study.filter(pl.col("method") == "sft").with_columns(method=pl.lit("copy"))
    better = (
        study.filter(pl.col("method") == "sft")
        .with_columns(method=pl.lit("better"))
        .with_columns(is_correct=pl.col("is_correct") | (pl.col("problem_id") < "test-00080"))
    )
    result = compare(pl.concat([study, copy, better]), n_boot=500, seed=0)
    assert result.paired.schema == pl.Schema(PAIRED_SCHEMA)
    for size in SIZES:
        same = cell(result.paired, "copy", size)
        assert same["difference"] == 0.0 and same["ci_low"] == 0.0 == same["ci_high"]
        assert same["wins"] == 0 == same["losses"] and same["n_pairs"] == 3000
        twin = cell(result.paired, "sft_twin", size)  # same law, independent draws
        assert twin["ci_low"] < 0.0 < twin["ci_high"]
        up = cell(result.paired, "better", size)
        assert up["ci_low"] > 0.0 and up["losses"] == 0
        assert up["difference"] == pytest.approx(100 * up["wins"] / up["n_pairs"])
    copy_row = by_method(result.multipliers)["copy"]
    assert copy_row["ci_low"] == pytest.approx(1.0) and copy_row["ci_high"] == pytest.approx(1.0)


def test_seeds_are_resampled():
    """Seed-to-seed differences that no problem resample can show must widen the interval."""
    sft = make_evals({"sft": sft_law}, sizes=[1000], n_problems=1000, seed=4)

    def lifted(first_right: tuple[int, ...]) -> pl.DataFrame:
        """The method: SFT, plus the first n problems right in each seed."""
        per_seed = [
            sft.filter(pl.col("seed") == s).with_columns(
                method=pl.lit("per_step_dpo"),
                is_correct=pl.col("is_correct") | (pl.col("problem_id") < f"test-{n:05d}"),
            )
            for s, n in enumerate(first_right)
        ]
        result = compare(pl.concat([sft, *per_seed]), n_boot=500)
        row = cell(result.paired, "per_step_dpo", 1000)
        return row["ci_high"] - row["ci_low"]

    assert lifted((0, 100, 200)) > 2 * lifted((100, 100, 100))


def test_bootstrap_is_deterministic_for_a_seed():
    ev = make_evals({"sft": sft_law, "per_step_dpo": twice_sft}, n_problems=300)
    a = compare(ev, n_boot=200, seed=7)
    b = compare(ev, n_boot=200, seed=7)
    c = compare(ev, n_boot=200, seed=8)
    assert a.multipliers.equals(b.multipliers) and a.paired.equals(b.paired)
    assert by_method(a.multipliers)["per_step_dpo"]["ci_low"] != pytest.approx(
        by_method(c.multipliers)["per_step_dpo"]["ci_low"], abs=1e-9
    )
    point = "multiplier"
    assert (
        by_method(a.multipliers)["per_step_dpo"][point]
        == by_method(c.multipliers)["per_step_dpo"][point]
    )


def test_interval_narrows_with_more_problems():
    laws = {"sft": sft_law, "per_step_dpo": twice_sft}
    mult_widths, diff_widths = [], []
    for n_problems in (250, 4000):
        result = compare(make_evals(laws, n_problems=n_problems, seed=3), n_boot=300)
        row = by_method(result.multipliers)["per_step_dpo"]
        mult_widths.append(math.log(row["ci_high"] / row["ci_low"]))
        diff = cell(result.paired, "per_step_dpo", 1000)
        diff_widths.append(diff["ci_high"] - diff["ci_low"])
    assert mult_widths[1] < 0.5 * mult_widths[0]
    assert diff_widths[1] < 0.5 * diff_widths[0]


def test_resamples_where_sft_does_not_rise_are_dropped():
    laws = {"sft": lambda n: 0.30 + 0.005 * (n > 300), "rft": lambda n: 0.31}
    notes = {}
    for seed in range(40):
        ev = make_evals(laws, sizes=[250, 500], n_seeds=2, n_problems=80, seed=seed)
        result = compare(ev, n_boot=100)
        if by_method(result.multipliers)["rft"]["multiplier"] is not None:
            notes[seed] = by_method(result.multipliers)["rft"]
    kept = [r for r in notes.values() if r["note"] and "too few left" not in r["note"]]
    too_few = [r for r in notes.values() if r["note"] and "too few left" in r["note"]]
    assert kept and too_few
    assert all("resamples dropped" in r["note"] for r in kept + too_few)
    assert all(r["ci_low"] is not None for r in kept if "dropped" in r["note"])
    assert all(r["ci_low"] is None and r["share_above_1"] is None for r in too_few)


def test_a_sweep_in_progress_is_compared():
    """Size 4000 has seed 0 only, rft only two sizes: resamples without seed 0 lack 4000."""
    ev = make_evals({"sft": sft_law, "per_step_dpo": twice_sft}, n_problems=300)
    ev = ev.filter((pl.col("data_size") < 4000) | (pl.col("seed") == 0))
    ev = pl.concat([ev, make_evals({"rft": sft_law}, sizes=[500, 2000], n_problems=300)])
    result = compare(ev, n_boot=200)
    assert cell(result.paired, "per_step_dpo", 4000)["n_pairs"] == 300
    rows = by_method(result.multipliers)
    assert rows["per_step_dpo"]["multiplier"] == pytest.approx(2.0, rel=0.3)
    assert rows["rft"]["ci_low"] < 1.0 < rows["rft"]["ci_high"]


def test_bootstrap_is_fast():
    laws = {"sft": sft_law, "rft": sft_law, "per_step_dpo": twice_sft, "dpo": sft_law}
    ev = make_evals(laws, n_problems=1000)
    start = time.perf_counter()
    compare(ev, n_boot=2000)
    # About 0.1 s on one core; a loop over resamples in Python would take minutes.
    assert time.perf_counter() - start < 10.0


def test_named_query_agrees_with_the_paired_comparison(tmp_path: Path):
    ev = make_evals({"sft": sft_law, "rft": twice_sft}, sizes=[250, 500], n_problems=200)
    ev = ev.with_columns(
        is_correct=pl.when(pl.col("problem_id") == "test-00003")
        .then(None)
        .otherwise(pl.col("is_correct"))
    )
    ev.write_parquet(tmp_path / "evaluations.parquet")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW evaluations AS SELECT * FROM '{tmp_path / 'evaluations.parquet'}'")
    rows = con.execute(named_queries()["paired_vs_sft"].read_text()).fetchall()
    paired = compare(ev, n_boot=0).paired
    assert len(rows) == paired.height == 2
    for method, size, seeds, pairs, diff, wins, losses in rows:
        expected = cell(paired, method, size)
        assert (seeds, pairs, wins, losses) == (
            3,
            expected["n_pairs"],
            expected["wins"],
            expected["losses"],
        )
        assert float(diff) == pytest.approx(expected["difference"], abs=0.005)


# --------------------------------------------------------------------------- plot + report


def test_plot_and_report(tmp_path: Path, study: pl.DataFrame, study_comparison):
    table = scaling_table(study)
    out = tmp_path / "figures" / "scaling.png"
    assert plot_curves(table, study_comparison, out) == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["scaling.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file, not private
    report = report_markdown(table, study_comparison, out, relative_to=tmp_path)
    assert "figures/scaling.png" in report
    assert "| method       |        250 |" in report  # accuracy table, padded
    assert "mean ± sd over 3 seeds, 1000 test problems; chance 4.3%" in report
    for method in ("base", "sft_twin", "per_step_dpo"):
        assert f"| {method} " in report
    assert "Paired difference vs. SFT" in report and "wins" in report
    assert "SFT-equivalent data" in report and ">4000" in report
    assert "Data multipliers vs. SFT" in report and "95% CI" in report
    assert "Chance floor: accuracies are clipped at chance (4.3%)" in report
    assert max(len(line) for line in report.splitlines()) <= 100


def test_study_report_writes_both(tmp_path: Path, study: pl.DataFrame):
    result = study_report(study, tmp_path / "reports", chance=CHANCE, n_boot=100)
    assert result.report.read_text() == result.markdown
    assert result.plot.name == "scaling_curves.png" and result.plot.exists()
    assert by_method(result.comparison.multipliers)["per_step_dpo"]["multiplier"] > 1.5
    assert result.table.schema == pl.Schema(SCALING_SCHEMA)


def test_the_report_says_when_rft_starts_from_pi_sft(tmp_path: Path, study: pl.DataFrame):
    plain = study_report(study, tmp_path / "plain", n_boot=0).markdown
    notes = method_notes("sft")
    noted = study_report(study, tmp_path / "noted", n_boot=0, method_notes=notes).markdown
    assert method_notes("base") == {} and "rft_init" not in plain
    line = "- rft: trained from pi_sft (`training.rft_init: sft`), not from the base model"
    assert line in noted.splitlines()
    assert noted.index(line) < noted.index("Paired difference")  # under the accuracy table


def test_report_pairs_per_step_dpo_against_its_control_without_negatives(tmp_path: Path):
    # per-step DPO 2 points below its control at every size: the negatives cost 2 points
    sizes = (250, 1000)
    evals = exact_evals(
        {"sft": [0.5, 0.6], "per_step_dpo": [0.53, 0.63], "nll_control": [0.55, 0.65]},
        sizes=sizes,
    )
    control = control_comparison(evals, n_boot=200)
    assert control is not None and control.reference == "nll_control"
    rows = control.paired.filter(pl.col("method") == "per_step_dpo").sort("data_size")
    assert rows["difference"].to_list() == pytest.approx([-2.0, -2.0])
    assert rows["losses"].to_list() == [20, 20] and rows["wins"].to_list() == [0, 0]
    result = study_report(evals, tmp_path / "reports", n_boot=200)
    assert "What the negatives add: per-step DPO minus nll_control" in result.markdown
    assert "| 250  | -2.0 |" in result.markdown
    assert max(len(line) for line in result.markdown.splitlines()) <= 100
    # without the control (an older warehouse), no such section
    assert control_comparison(evals.filter(pl.col("method") != "nll_control")) is None
    older = study_report(
        evals.filter(pl.col("method") != "nll_control"), tmp_path / "older", n_boot=200
    )
    assert "What the negatives add" not in older.markdown


def test_asset_metadata_carries_multipliers_and_paired_differences(tmp_path, study):
    import dagster as dg

    from synthdata_assets.defs.curves import build
    from warehouse import Warehouse

    asset, _ = build(Warehouse(tmp_path).ensure(), chance=CHANCE)
    output = asset(
        context=dg.build_asset_context(), evaluations={"2000|0": study}, sft_reference={}
    )
    meta = {key: getattr(value, "value", value) for key, value in output.metadata.items()}
    assert meta["multiplier_per_step_dpo"] == pytest.approx(2.0, rel=0.15)
    assert meta["multiplier_per_step_dpo_ci_low"] < 2.0 < meta["multiplier_per_step_dpo_ci_high"]
    assert meta["multiplier_per_step_dpo_share_above_1"] > 0.975
    assert len(output.metadata["paired_vs_sft"].records) == 15
    assert "clipped at chance" in meta["floor"]
    assert "paired_vs_nll_control" not in meta  # no control in this study
    assert "flat" not in meta  # SFT rises at every size
    dip = exact_evals({"sft": [0.2, 0.35, 0.3, 0.5, 0.6], "rft": [0.25, 0.335, 0.4, 0.55, 0.62]})
    output = asset(context=dg.build_asset_context(), evaluations={"x": dip}, sft_reference={})
    assert "500-1000 (at 32.5%)" in output.metadata["flat"].value


def test_sft_reference_rows_extend_the_curve_the_multipliers_are_read_off(tmp_path: Path):
    import dagster as dg

    from synthdata_assets.defs.curves import build
    from warehouse import Warehouse

    # Per-step DPO at 1000 problems is above SFT's 1000: a lower bound only, until SFT is
    # measured at 4000 (sft_reference), where it is higher still.
    evals = exact_evals({"sft": [0.5, 0.6], "per_step_dpo": [0.55, 0.75]}, sizes=(250, 1000))
    reference = exact_evals({"sft": [0.8]}, sizes=(4000,))
    asset, _ = build(Warehouse(tmp_path / "wh").ensure(), chance=CHANCE)
    context = dg.build_asset_context()
    alone = asset(context=context, evaluations={"1000|0": evals}, sft_reference={})
    longer = asset(
        context=context, evaluations={"1000|0": evals}, sft_reference={"4000|0": reference}
    )
    meta = [{k: getattr(v, "value", v) for k, v in out.metadata.items()} for out in (alone, longer)]
    assert meta[0]["sft_reference_partitions"] == 0 and meta[1]["sft_reference_partitions"] == 1
    assert longer.value.filter(pl.col("data_size") == 4000)["method"].to_list() == ["sft"]
    # Alone, 0.55 at 250 problems is SFT's at 500 (half way from 0.5 to 0.6 in log size): 2x,
    # and 0.75 at 1000 lies past SFT's best. With SFT at 4000, 0.75 is SFT's at 1000 x 4^0.75:
    # both sizes count.
    assert meta[0]["multiplier_per_step_dpo"] == pytest.approx(2.0, rel=0.01)
    assert meta[1]["multiplier_per_step_dpo"] == pytest.approx(np.sqrt(2 * 4**0.75), rel=0.01)


def test_asset_metadata_and_named_query_pair_per_step_dpo_against_its_control(tmp_path: Path):
    import dagster as dg

    from synthdata_assets.defs.curves import build
    from warehouse import Warehouse

    # per-step DPO 2 points below its control at 250 problems and 1 above at 1000
    evals = exact_evals(
        {"sft": [0.5, 0.6], "per_step_dpo": [0.53, 0.63], "nll_control": [0.55, 0.62]},
        sizes=(250, 1000),
    )
    asset, _ = build(Warehouse(tmp_path / "wh").ensure(), chance=CHANCE)
    output = asset(
        context=dg.build_asset_context(), evaluations={"1000|0": evals}, sft_reference={}
    )
    records = output.metadata["paired_vs_nll_control"].records
    cells = {r.data["data_size"]: r.data for r in records}
    assert {r.data["method"] for r in records} == {"per_step_dpo"}
    assert cells[250]["difference"] == pytest.approx(-2.0)
    assert cells[1000]["difference"] == pytest.approx(1.0)
    assert (cells[250]["wins"], cells[250]["losses"]) == (0, 20)
    # the multiplier keys stay the SFT comparison's: the control's does not overwrite them
    against_sft = by_method(compare(evals, chance=CHANCE, n_boot=0).multipliers)
    multiplier = output.metadata["multiplier_per_step_dpo"]
    assert getattr(multiplier, "value", multiplier) == against_sft["per_step_dpo"]["multiplier"]

    evals.write_parquet(tmp_path / "evaluations.parquet")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW evaluations AS SELECT * FROM '{tmp_path / 'evaluations.parquet'}'")
    rows = con.execute(named_queries()["negatives_vs_control"].read_text()).fetchall()
    assert len(rows) == len(cells)
    for size, seeds, pairs, diff, wins, losses in rows:
        expected = cells[size]
        assert (seeds, pairs, wins, losses) == (
            1,
            expected["n_pairs"],
            expected["wins"],
            expected["losses"],
        )
        assert float(diff) == pytest.approx(expected["difference"], abs=0.005)
    # a warehouse made before the control existed: no rows
    con.execute(
        "CREATE OR REPLACE VIEW evaluations AS SELECT * FROM "
        f"'{tmp_path / 'evaluations.parquet'}' WHERE method <> 'nll_control'"
    )
    assert con.execute(named_queries()["negatives_vs_control"].read_text()).fetchall() == []


def test_first_step_asset_reports_the_first_step_and_the_pits(tmp_path):
    import dagster as dg

    from synthdata_assets.defs.curves import build
    from synthdata_assets.tasks import star_graph as sg
    from warehouse import Warehouse

    problems = sg.generate_problems(sg.StarGraphParams(2, 3, 20), 40, seed=0, split="test")
    rows = []
    for method, right_first in (("sft", 20), ("per_step_dpo", 30)):
        for i, p in enumerate(problems):
            wrong = next(arm for arm in p.arms() if arm != p.path)
            path = p.path if i < right_first else wrong
            rows.append(
                {
                    "method": method,
                    "data_size": 100,
                    "seed": 0,
                    "problem_id": p.problem_id,
                    "completion": sg.solution_text(path) + "\n",
                    "is_correct": path == p.path,
                }
            )
    evaluations = pl.DataFrame(rows)
    problem_table = pl.DataFrame(
        {"problem_id": [p.problem_id for p in problems], "spec": [p.spec for p in problems]}
    )
    advantages = pl.DataFrame(
        {
            "data_size": [100] * 6,
            "seed": [0] * 6,
            "sample_id": ["a", "a", "a", "b", "b", "b"],
            "step_idx": [1, 2, 3, 1, 2, 3],
            "sample_is_correct": [False] * 6,
            "is_first_pit": [True, False, False, False, True, False],
            "is_true_first_wrong": [True, False, False, True, False, False],
        }
    )
    _, asset = build(Warehouse(tmp_path).ensure(), first_step_baseline=(0.5, "1/degree"))
    output = asset(
        context=dg.build_asset_context(),
        evaluations={"100|0": evaluations},
        step_advantages={"100|0": advantages},
        problems=problem_table,
    )
    table = output.value.sort("method")
    assert table["first_step_accuracy"].to_list() == [0.75, 0.5]  # per_step_dpo, sft
    assert table["accuracy"].to_list() == [0.75, 0.5]
    assert table["later_steps_given_first"].to_list() == [1.0, 1.0]
    meta = {key: getattr(value, "value", value) for key, value in output.metadata.items()}
    assert meta["sft_first_step_100"] == 0.5
    report = meta["report"]
    assert "| 1 | 1 | 50% | 2 | 100% |" in report and "| 2 | 1 | 50% | 0 | 0% |" in report
    assert "- 100 problems: 50.0% (+0.0 points)" in report
