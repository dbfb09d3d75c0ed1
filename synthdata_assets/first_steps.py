"""The first step, measured on its own (asset ``first_step_curves``): the didactic study's
figure, and a view of any generated task.

On path-star graphs (``task.name: star_graph``) the first step is the only decision: every
later node is the edge out of the previous one. Next-token SFT is known to learn those
lookups and to leave the first step near chance, 1/degree (Bachmann & Nagarajan 2024). What
this module measures, per method, data size and seed, from the ``evaluations`` (greedy
answers to the test split) and the problems' specs:

- ``first_step_accuracy``: the share of answers whose first line is the true path's first
  node (``star_graph``), or whose first line is a true needed step (``embedded``); null
  without a spec (real data);
- ``accuracy``: the share of whole answers graded right;
- ``later_steps_given_first``: of the answers with a right first step, the share that are
  right as a whole (near 1 when the lookups are learnt: the first step is then the whole
  difficulty).

And from ``step_advantages``, where the Monte Carlo first pits of the negatives fall
(:func:`first_pit_histogram`): per step, how many negatives have their first pit there, and
how many have their true first wrong step there.

:func:`first_step_report` writes the plot (accuracy and first-step accuracy against data
size, mean over seeds with min-max bars, the baseline line; the first-pit histogram) and a
markdown report, both atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from synthdata_assets import tasks
from warehouse.parquet import temp_sibling

TABLE_SCHEMA = pl.Schema(
    {
        "method": pl.String,
        "data_size": pl.Int64,
        "seed": pl.Int64,
        "n_test": pl.Int64,
        "accuracy": pl.Float64,
        "first_step_accuracy": pl.Float64,
        "later_steps_given_first": pl.Float64,
    }
)
HISTOGRAM_SCHEMA = pl.Schema(
    {
        "data_size": pl.Int64,
        "seed": pl.Int64,
        "step_idx": pl.Int64,
        "first_pits": pl.Int64,
        "true_first_wrong": pl.Int64,
    }
)
METHOD_ORDER = ("base", "sft", "rft", "per_step_dpo", "nll_control", "dpo")


@dataclass(frozen=True)
class FirstStepReport:
    table: pl.DataFrame
    histogram: pl.DataFrame
    plot: Path
    report: Path
    markdown: str


def first_step_right(spec: str | None, completion: str) -> bool | None:
    """Whether an answer's first step is right by the task's ground truth (None: no spec)."""
    if spec is None:
        return None
    labels = tasks.step_labels(spec, completion)
    return bool(labels) and labels[0] in ("needed", "answer")


def first_step_table(evaluations: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """:data:`TABLE_SCHEMA`: one row per method, data size and seed of ``evaluations``."""
    specs = (
        dict(zip(problems["problem_id"], problems["spec"], strict=True))
        if "spec" in problems.columns
        else {}
    )
    firsts = [
        first_step_right(specs.get(pid), completion)
        for pid, completion in zip(
            evaluations["problem_id"], evaluations["completion"], strict=True
        )
    ]
    scored = evaluations.with_columns(first_right=pl.Series(firsts, dtype=pl.Boolean))
    table = (
        scored.group_by("method", "data_size", "seed")
        .agg(
            n_test=pl.len(),
            accuracy=pl.col("is_correct").mean(),
            first_step_accuracy=pl.col("first_right").mean(),
            later_steps_given_first=pl.col("is_correct").filter(pl.col("first_right")).mean(),
        )
        .with_columns(_method_rank())
        .sort("_rank", "method", "data_size", "seed")
        .drop("_rank")
    )
    return table.select(TABLE_SCHEMA.names()).cast(dict(TABLE_SCHEMA))


def first_pit_histogram(step_advantages: pl.DataFrame) -> pl.DataFrame:
    """:data:`HISTOGRAM_SCHEMA`: per data size, seed and step, the negatives whose Monte Carlo
    first pit is there, and those whose true first wrong step is (0 without ground truth)."""
    negatives = step_advantages.filter(~pl.col("sample_is_correct") & (pl.col("step_idx") >= 1))
    truth = (
        pl.col("is_true_first_wrong").fill_null(False)
        if "is_true_first_wrong" in negatives.columns
        else pl.lit(False)
    )
    return (
        negatives.group_by("data_size", "seed", "step_idx")
        .agg(
            first_pits=pl.col("is_first_pit").sum(),
            true_first_wrong=truth.sum(),
        )
        .filter((pl.col("first_pits") > 0) | (pl.col("true_first_wrong") > 0))
        .sort("data_size", "seed", "step_idx")
        .select(HISTOGRAM_SCHEMA.names())
        .cast(dict(HISTOGRAM_SCHEMA))
    )


def _method_rank() -> pl.Expr:
    ranks = {m: i for i, m in enumerate(METHOD_ORDER)}
    return pl.col("method").replace_strict(ranks, default=len(ranks)).alias("_rank")


def over_seeds(table: pl.DataFrame) -> pl.DataFrame:
    """Mean, min and max over seeds of the accuracies, per method and data size."""
    figures = ("accuracy", "first_step_accuracy")
    return (
        table.group_by("method", "data_size")
        .agg(
            seeds=pl.len(),
            **{f"{f}_mean": pl.col(f).mean() for f in figures},
            **{f"{f}_min": pl.col(f).min() for f in figures},
            **{f"{f}_max": pl.col(f).max() for f in figures},
        )
        .with_columns(_method_rank())
        .sort("_rank", "method", "data_size")
        .drop("_rank")
    )


def _cell(mean: float | None, low: float | None, high: float | None, seeds: int) -> str:
    if mean is None:
        return "-"
    if seeds < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def report_markdown(
    table: pl.DataFrame,
    histogram: pl.DataFrame,
    plot: Path,
    *,
    baseline: float | None,
    baseline_label: str = "chance",
    relative_to: Path,
) -> str:
    """The first-step report: first-step and whole-answer accuracy per method and data size
    (mean over seeds, min-max in brackets), SFT's first step against ``baseline`` (1/degree
    on star graphs, named by ``baseline_label``), where first pits fall."""
    summary = over_seeds(table)
    sizes = sorted(summary["data_size"].unique().to_list())
    methods = list(dict.fromkeys(summary["method"].to_list()))
    n_seeds = int(summary["seeds"].max()) if summary.height else 0
    base_text = f"{100 * baseline:.1f}%" if baseline is not None else "unknown"
    lines = [
        "# The first step",
        "",
        f"Greedy answers to {int(table['n_test'].max()) if table.height else 0} test problems; "
        f"mean over {n_seeds} seed(s), min-max over seeds in brackets; "
        f"{baseline_label} {base_text}.",
    ]
    for figure, title in (
        ("first_step_accuracy", "First-step accuracy (%): the first line is the true first step"),
        ("accuracy", "Whole-answer accuracy (%)"),
    ):
        lines += ["", f"{title}:", ""]
        lines.append("| method | " + " | ".join(str(s) for s in sizes) + " |")
        lines.append("| --- |" + " ---: |" * len(sizes))
        for method in methods:
            rows = {
                r["data_size"]: r for r in summary.filter(pl.col("method") == method).to_dicts()
            }
            cells = [
                _cell(
                    rows[s][f"{figure}_mean"],
                    rows[s][f"{figure}_min"],
                    rows[s][f"{figure}_max"],
                    rows[s]["seeds"],
                )
                if s in rows
                else "-"
                for s in sizes
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    sft = summary.filter(pl.col("method") == "sft")
    if baseline is not None and sft.height and sft["first_step_accuracy_mean"].null_count() == 0:
        lines += ["", f"SFT's first step against {baseline_label} ({100 * baseline:.1f}%):"]
        for r in sft.to_dicts():
            gap = 100 * (r["first_step_accuracy_mean"] - baseline)
            lines.append(
                f"- {r['data_size']} problems: {100 * r['first_step_accuracy_mean']:.1f}% "
                f"({gap:+.1f} points)"
            )
    later = table.filter(pl.col("later_steps_given_first").is_not_null())
    if later.height:
        lines += [
            "",
            "Whole answer right when the first step is right (the later steps, given the first): "
            + ", ".join(
                f"{m} {100 * v:.0f}%"
                for m, v in later.group_by("method", maintain_order=True)
                .agg(pl.col("later_steps_given_first").mean())
                .iter_rows()
            ),
        ]
    lines += _histogram_lines(histogram)
    lines += ["", f"![first step]({plot.relative_to(relative_to)})", ""]
    return "\n".join(lines)


def _histogram_lines(histogram: pl.DataFrame) -> list[str]:
    """The report's table of where the Monte Carlo first pits and the true first wrong steps
    of pi_sft's negatives fall, over every partition."""
    if not histogram.height:
        return []
    total = histogram.group_by("step_idx").agg(pl.col("first_pits", "true_first_wrong").sum())
    total = total.sort("step_idx")
    pits, truth = int(total["first_pits"].sum()), int(total["true_first_wrong"].sum())
    lines = [
        "",
        "Negatives of pi_sft by step (all partitions): Monte Carlo first pit, true first "
        "wrong step:",
        "",
        "| step | first pits | share | true first wrong | share |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for step, p, t in total.select("step_idx", "first_pits", "true_first_wrong").iter_rows():
        lines.append(
            f"| {step} | {p} | {p / pits if pits else 0:.0%} | {t} | "
            f"{t / truth if truth else 0:.0%} |"
        )
    return lines


def plot_first_steps(
    table: pl.DataFrame,
    histogram: pl.DataFrame,
    path: Path,
    *,
    baseline: float | None,
    baseline_label: str = "chance",
) -> Path:
    """Accuracy and first-step accuracy against data size per method (mean over seeds,
    min-max bars, the baseline's line), and the first-pit histogram; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = over_seeds(table)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, figure, title in (
        (axes[0], "first_step_accuracy", "First step right (the only decision)"),
        (axes[1], "accuracy", "Whole answer right"),
    ):
        for method in dict.fromkeys(summary["method"].to_list()):
            rows = summary.filter(pl.col("method") == method).sort("data_size")
            mean = rows[f"{figure}_mean"]
            if mean.null_count() == rows.height:
                continue
            y = [100 * v for v in mean.to_list()]
            low = [max(0.0, m - 100 * v) for m, v in zip(y, rows[f"{figure}_min"], strict=True)]
            high = [max(0.0, 100 * v - m) for m, v in zip(y, rows[f"{figure}_max"], strict=True)]
            ax.errorbar(
                rows["data_size"].to_list(),
                y,
                yerr=[low, high],
                marker="o",
                capsize=3,
                label=method,
            )
        if baseline is not None:
            ax.axhline(100 * baseline, color="grey", linestyle=":", label=baseline_label)
        ax.set_xscale("log")
        ax.set_xticks(sorted(summary["data_size"].unique().to_list()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("synthetic training problems (data size)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{title}: mean over seeds, bars min-max", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    if histogram.height:
        total = histogram.group_by("step_idx").agg(pl.col("first_pits", "true_first_wrong").sum())
        total = total.sort("step_idx")
        steps = total["step_idx"].to_list()
        width = 0.4
        ax.bar([s - width / 2 for s in steps], total["first_pits"].to_list(), width, label="MC pit")
        ax.bar(
            [s + width / 2 for s in steps],
            total["true_first_wrong"].to_list(),
            width,
            label="true first wrong step",
        )
        ax.set_xticks(steps)
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("negatives of pi_sft")
    ax.set_title("Where the first pits fall (all partitions)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    tmp = temp_sibling(path)
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def first_step_report(
    evaluations: pl.DataFrame,
    problems: pl.DataFrame,
    step_advantages: pl.DataFrame,
    reports: Path,
    *,
    baseline: float | None,
    baseline_label: str = "chance",
) -> FirstStepReport:
    """The ``first_step_curves`` table, the histogram, the plot (``first_steps.png``) and the
    report (``first_step_report.md``) in ``reports``. ``baseline``: the first-step accuracy to
    compare with (1/degree on star graphs, chance elsewhere), named by ``baseline_label``."""
    table = first_step_table(evaluations, problems)
    histogram = first_pit_histogram(step_advantages)
    reports.mkdir(parents=True, exist_ok=True)
    plot = plot_first_steps(
        table,
        histogram,
        reports / "first_steps.png",
        baseline=baseline,
        baseline_label=baseline_label,
    )
    markdown = report_markdown(
        table,
        histogram,
        plot,
        baseline=baseline,
        baseline_label=baseline_label,
        relative_to=reports,
    )
    report = reports / "first_step_report.md"
    tmp = temp_sibling(report)
    tmp.write_text(markdown)
    tmp.replace(report)
    return FirstStepReport(table, histogram, plot, report, markdown)
