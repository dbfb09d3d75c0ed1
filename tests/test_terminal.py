"""The terminal side of a run: progress lines in the log, bars or lines from them."""

from __future__ import annotations

import io

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
    display = StageDisplay(out, interactive=False)
    display.message("sft_model", "training on 12 examples")
    display.message("sft_model", "progress: 5/10 updates loss=1.2")
    display.message("sft_model", "progress: 10/10 updates loss=0.8")
    display.message("evaluations", "progress: 4/4 prompts")
    display.message("evaluations", "progress: 2/4 prompts")  # a second call starts over
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "      sft_model: training on 12 examples"
    assert lines[1].startswith("      sft_model: 10/10 updates in ") and "loss=0.8" in lines[1]
    assert sum(line.startswith("      evaluations: 4/4 prompts") for line in lines) == 1
    assert lines[-1].startswith("      evaluations: 2/4 prompts")
    assert len(lines) == 4


def test_an_interactive_display_draws_bars() -> None:
    out = io.StringIO()
    display = StageDisplay(out, interactive=True)
    display.message("sft_model", "progress: 5/10 updates loss=1.2")
    display.message("sft_model", "progress: 10/10 updates loss=0.8")
    display.close()
    assert "10/10 updates" in out.getvalue() and "loss=0.8" in out.getvalue()


def test_runs_table_totals_the_runs() -> None:
    table = runs_table([("setup", 10.0), ("partition 250|0", 2.5)])
    assert table.splitlines()[-1].split() == ["all", "12.5"]
