"""The terminal side of a run: progress lines in the log, bars or lines from them."""

from __future__ import annotations

import io

import pytest

from synthdata_assets.terminal import StageDisplay, parse_progress, progress_logger, runs_table


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_are_rate_limited_and_always_final() -> None:
    lines: list[str] = []
    clock = Clock()
    report = progress_logger(lines.append, "updates", every_s=1.0, clock=clock)
    for done in range(1, 11):
        clock.now = done * 0.3
        report(done, 10, loss=0.5)
    # At 0.3 s, then once a second has passed (1.5 s, 2.7 s), and the last update.
    assert [parse_progress(line)[0] for line in lines] == [1, 5, 9, 10]
    assert lines[-1] == "progress: 10/10 updates loss=0.5"


def test_other_lines_are_not_progress() -> None:
    assert parse_progress("training on 12 examples") is None
    assert parse_progress("progress: 3/7 prompts") == (3, 7, "prompts", "")


def test_a_non_interactive_display_prints_one_line_per_phase() -> None:
    out = io.StringIO()
    clock = Clock()
    display = StageDisplay(out, interactive=False, clock=clock)
    display.message("sft_model", "training on 12 examples")
    display.message("sft_model", "progress: 5/10 updates loss=1.2")
    clock.now = 2.0
    display.message("sft_model", "progress: 10/10 updates loss=0.8")
    display.message("evaluations", "progress: 4/4 prompts")  # under a second: no line
    display.message("evaluations", "progress: 2/4 prompts")
    clock.now = 3.5
    display.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "      sft_model: training on 12 examples",
        "      sft_model: 10/10 updates in 2.0s (5.0/s) loss=0.8",
        "      evaluations: 2/4 prompts in 1.5s (1.3/s)",
    ]


def test_an_interactive_display_draws_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    out = io.StringIO()
    display = StageDisplay(out, interactive=True)
    display.message("sft_model", "progress: 5/10 updates loss=1.2")
    assert f" {'#' * 12}{' ' * 12} 5/10 updates" in out.getvalue()  # 24 wide, half full
    display.message("sft_model", "progress: 10/10 updates loss=0.8")
    display.close()
    assert "10/10 updates" in out.getvalue() and "loss=0.8" in out.getvalue()


@pytest.mark.parametrize(("columns", "shown"), [(80, "tokens_per_s=7,081"), (100, "loss=0.6931")])
def test_on_a_narrow_terminal_the_bar_shrinks_before_the_figures_are_cut(
    monkeypatch: pytest.MonkeyPatch, columns: int, shown: str
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    display = StageDisplay(out, interactive=True)
    display.message("per_step_dpo_model", "progress: 5/118 updates tokens_per_s=7,081 loss=0.6931")
    drawn = out.getvalue().split("\r")[-1]
    # The text is 88 columns without a bar: at 100 a bar fits beside all of it, at 80 none
    # does and the end of the figures is cut.
    assert len(drawn) <= columns
    assert "5/118 updates" in drawn and shown in drawn
    without_bar = drawn.startswith("      per_step_dpo_model 5/118")
    assert without_bar == (columns == 80)


def test_runs_table_totals_the_runs() -> None:
    table = runs_table([("setup", 10.0), ("partition 250|0", 2.5)])
    assert table.splitlines()[-1].split() == ["all", "12.5"]


def test_runs_that_overlapped_are_totalled_by_the_wall_clock() -> None:
    table = runs_table([("partition 250|0", 10.0), ("partition 500|0", 12.5)], wall=13.0)
    assert table.splitlines()[-1].split() == ["all", "(wall", "clock)", "13.0"]


def test_a_prefixed_display_names_the_run_on_every_line_and_draws_no_bars() -> None:
    out = io.StringIO()
    ticks = iter([0.0, 5.0])
    display = StageDisplay(out, interactive=True, prefix="[250|0] ", clock=lambda: next(ticks))
    display.message("sft_model", "training on 10 examples")
    display.message("sft_model", "progress: 5/10 updates loss=1.2")
    display.message("sft_model", "progress: 10/10 updates loss=0.8")
    lines = out.getvalue().splitlines()
    assert lines[0] == "      [250|0] sft_model: training on 10 examples"
    assert lines[1].startswith("      [250|0] sft_model: 10/10 updates in 5.0s")
    assert len(lines) == 2
