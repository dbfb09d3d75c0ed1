"""What a researcher sees on the terminal during ``synthdata run``: one progress bar per long
stage, a line per finished stage, and a summary table at the end.

Stages run inside Dagster runs, in a child process whose output is Dagster's event log. A
stage reports progress through :func:`progress_logger`, which turns the library's
:class:`training.progress.Progress` calls into log lines of one fixed shape (at most one a
second, and the last one), so they also stay in the run's log file. :class:`StageDisplay`, in
the parent, reads the child's log lines back: progress lines become a tqdm bar per stage
(with its rate), other lines of a stage are printed above the bars, and on a terminal that is
not interactive (CI, a pipe) a stage's bar is replaced by one line when it ends (for phases
of a second or more).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm
from tqdm.utils import disp_len

from training.progress import Progress

PROGRESS_MARK = "progress:"
BAR_WIDTH = 24
_STATS = "{n_fmt}/{total_fmt}{unit} {elapsed} {rate_fmt}{postfix}"
_PROGRESS = re.compile(rf"^{PROGRESS_MARK} (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)(?P<rest>.*)$")


def progress_logger(
    log: Callable[[str], None], unit: str, *, every_s: float = 1.0, clock=time.monotonic
) -> Progress:
    """A :class:`Progress` that writes ``progress: DONE/TOTAL UNIT name=value ...`` through
    ``log``, at most once every ``every_s`` seconds and always when ``done == total``."""
    last = [-float("inf")]

    def report(done: int, total: int, **figures: float) -> None:
        now = clock()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        shown = " ".join(f"{name}={_figure(value)}" for name, value in figures.items())
        log(f"{PROGRESS_MARK} {done}/{total} {unit}" + (f" {shown}" if shown else ""))

    return report


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def parse_progress(message: str) -> tuple[int, int, str, str] | None:
    """``(done, total, unit, figures)`` of a progress line, or None for any other line."""
    match = _PROGRESS.match(message)
    if match is None:
        return None
    return int(match["done"]), int(match["total"]), match["unit"], match["rest"].strip()


class StageDisplay:
    """Progress bars and lines for the stages of one run, from their log messages."""

    def __init__(
        self,
        out: TextIO = sys.stderr,
        *,
        interactive: bool | None = None,
        min_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "",
    ) -> None:
        self.out = out
        # Before each stage's name: which run a line is of, where several share the terminal,
        # so bars (which redraw one line each) would overwrite each other's: lines only.
        self.prefix = prefix
        self.interactive = out.isatty() if interactive is None else interactive
        self.interactive = self.interactive and not prefix
        # No tqdm monitor thread: the launcher forks runs, and a fork beside a thread can hang.
        tqdm.monitor_interval = 0
        # Phases shorter than this get no line of their own when bars cannot be drawn.
        self.min_seconds = min_seconds
        self.clock = clock
        self.bars: dict[str, tqdm] = {}
        self.started: dict[str, float] = {}
        self.last: dict[str, tuple[int, int, str, str]] = {}

    def message(self, step: str, text: str) -> None:
        """One log message of ``step``: a progress update, or a line to show."""
        progress = parse_progress(text)
        if progress is None:
            self._print(f"      {self.prefix}{step}: {text}")
            return
        done, total, unit, figures = progress
        previous = self.last.get(step)
        if previous is None or done < previous[0] or total != previous[1] or unit != previous[2]:
            self._finish(step)  # a new phase of the stage (another call, another model)
            self.started[step] = self.clock()
        self.last[step] = progress
        if self.interactive:
            bar = self.bars.get(step)
            if bar is None:
                size = shutil.get_terminal_size((100, 20))
                # The first report arrives with `done` already counted: it starts the bar, so
                # the rate is measured over the updates after it.
                bar = tqdm(
                    total=total,
                    initial=done,
                    desc=f"      {step}",
                    unit=f" {unit}",
                    file=self.out,
                    bar_format=bar_format(BAR_WIDTH),
                    # A terminal that reports no size (some ptys) still gets a bar.
                    ncols=size.columns,
                    nrows=size.lines,
                )
                self.bars[step] = bar
            bar.set_postfix_str(figures, refresh=False)
            bar.update(done - bar.n)
            fit(bar)
            bar.refresh()
        if done >= total:
            self._finish(step)

    def close(self) -> None:
        """End every bar (the run is over)."""
        for step in list(self.last):
            self._finish(step)

    def _finish(self, step: str) -> None:
        bar = self.bars.pop(step, None)
        if bar is not None:
            bar.close()
        last = self.last.pop(step, None)
        started = self.started.pop(step, None)
        if last is None or started is None or self.interactive:
            return
        done, total, unit, figures = last
        seconds = self.clock() - started
        if seconds < self.min_seconds:
            return
        rate = done / seconds
        self._print(
            f"      {self.prefix}{step}: {done}/{total} {unit} in {seconds:.1f}s ({rate:,.1f}/s) "
            f"{figures}"
        )

    def _print(self, line: str) -> None:
        if self.bars:
            tqdm.write(line.rstrip(), file=self.out)
        else:
            self.out.write(line.rstrip() + "\n")
            self.out.flush()


def bar_format(width: int) -> str:
    """A stage's bar line with a bar of ``width`` characters (none at 0)."""
    return "{desc} " + (f"{{bar:{width}}} " if width > 0 else "") + _STATS


def fit(bar: tqdm) -> None:
    """Give ``bar`` the columns its text leaves, at most :data:`BAR_WIDTH`, so that on a narrow
    terminal the bar shrinks before the figures are cut: tqdm keeps a bar's width fixed and
    trims the line's end, where the rate and the figures are."""
    text = bar.format_meter(**(bar.format_dict | {"bar_format": bar_format(0), "ncols": 0}))
    room = (bar.ncols or 0) - disp_len(text) - 1  # the bar's own space after it
    bar.bar_format = bar_format(max(0, min(BAR_WIDTH, room)) if bar.ncols else BAR_WIDTH)


def runs_table(runs: list[tuple[str, float]], wall: float | None = None) -> str:
    """The runs of a study and their wall time, as an aligned text table. ``all`` is their sum,
    or ``wall`` where given: the wall clock of runs that overlapped."""
    total = sum(seconds for _, seconds in runs) if wall is None else wall
    last = "all" if wall is None else "all (wall clock)"
    width = max([len("run"), len(last)] + [len(label) for label, _ in runs])
    lines = [f"{'run'.ljust(width)}  {'seconds':>8}", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{label.ljust(width)}  {seconds:8.1f}" for label, seconds in runs]
    lines.append(f"{last.ljust(width)}  {total:8.1f}")
    return "\n".join(lines)
