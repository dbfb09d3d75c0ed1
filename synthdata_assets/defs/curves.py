"""The study's answer: ``scaling_curves`` over every materialized ``evaluations`` partition,
with its plot and report in the warehouse's ``reports/`` folder and on the asset in the UI;
``first_step_curves``, the first step on its own (the didactic study's figure)."""

import base64

import dagster as dg
import polars as pl

from synthdata_assets import curves, first_steps
from warehouse import Warehouse

GROUP = "study"


def build(
    warehouse: Warehouse,
    *,
    chance: float | None = None,
    first_step_baseline: tuple[float | None, str] | None = None,
    method_notes: dict[str, str] | None = None,
) -> list[dg.AssetsDefinition]:
    """``chance``: the task's chance accuracy (1/modulus for the embedded task), None when
    unknown; multipliers clip accuracies at it (see ``curves``). ``first_step_baseline``:
    the first-step accuracy ``first_step_curves`` compares with, and its name (default:
    ``chance``). ``method_notes``: what the report says under its accuracy table about a
    method whose name alone would mislead (:func:`method_notes`)."""

    @dg.asset(
        group_name=GROUP,
        kinds={"polars", "matplotlib"},
        ins={
            # Curves from whatever partitions exist: a sweep in progress still plots.
            "evaluations": dg.AssetIn(metadata={"allow_missing_partitions": True}),
            "sft_reference": dg.AssetIn(metadata={"allow_missing_partitions": True}),
        },
    )
    def scaling_curves(context: dg.AssetExecutionContext, evaluations, sft_reference):
        """Accuracy per method x data size x seed; paired differences and data multipliers
        vs SFT (measured past the study's sizes where sft_reference has partitions) with
        bootstrap intervals over seeds and test problems; per-step DPO paired against
        ``nll_control`` where the warehouse has it."""
        partitions = 1 if isinstance(evaluations, pl.DataFrame) else len(evaluations)
        table = _evaluations(evaluations)
        reference = _frames(sft_reference)
        if reference is not None:  # SFT alone at sizes past the study's, as method sft
            table = pl.concat([table, reference], how="diagonal_relaxed")
        report = curves.study_report(
            table, warehouse.reports, chance=chance, method_notes=method_notes
        )
        metadata = {
            **_report_metadata(context, report, "scaling curves"),
            "floor": curves.floor_note(chance),
            "partitions": partitions,
            "sft_reference_partitions": 0
            if reference is None
            else reference.n_unique(["data_size", "seed"]),
            **_comparison_metadata(report.comparison),
        }
        if method_notes:
            metadata["method_notes"] = dg.MetadataValue.json(method_notes)
        if report.control is not None:  # per-step DPO against its control without negatives
            metadata.update(_paired_metadata(report.control))
        flat = curves.flat_note(report.comparison)
        if flat:  # where SFT's curve is pooled flat, a small gain reads as a large multiplier
            metadata["flat"] = flat
        return dg.Output(report.table, metadata=metadata)

    baseline, label = first_step_baseline or (chance, "chance")
    return [scaling_curves, _first_step_curves(warehouse, baseline, label)]


def method_notes(rft_init: str) -> dict[str, str]:
    """The report's notes on methods whose name alone would mislead: ``rft`` is the paper's
    RFT (from the base model) unless ``training.rft_init`` starts it from pi_sft."""
    if rft_init == "sft":
        return {"rft": "trained from pi_sft (`training.rft_init: sft`), not from the base model"}
    return {}


def _first_step_curves(
    warehouse: Warehouse, baseline: float | None, label: str
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name=GROUP,
        kinds={"polars", "matplotlib"},
        ins={
            "evaluations": dg.AssetIn(metadata={"allow_missing_partitions": True}),
            "step_advantages": dg.AssetIn(metadata={"allow_missing_partitions": True}),
        },
    )
    def first_step_curves(
        context: dg.AssetExecutionContext, evaluations, step_advantages, problems: pl.DataFrame
    ):
        """First-step and whole-answer accuracy per method x data size x seed against a
        baseline (1/degree on star graphs), and where the Monte Carlo first pits fall."""
        evaluations, step_advantages = _evaluations(evaluations), _frames(step_advantages)
        if step_advantages is None:
            step_advantages = pl.DataFrame(
                schema={**first_steps.HISTOGRAM_SCHEMA, "sample_is_correct": pl.Boolean}
            )
        report = first_steps.first_step_report(
            evaluations,
            problems,
            step_advantages,
            warehouse.reports,
            baseline=baseline,
            baseline_label=label,
        )
        metadata = _report_metadata(context, report, "first step")
        sft = first_steps.over_seeds(report.table).filter(pl.col("method") == "sft")
        for row in sft.iter_rows(named=True):
            if row["first_step_accuracy_mean"] is not None:
                metadata[f"sft_first_step_{row['data_size']}"] = row["first_step_accuracy_mean"]
        return dg.Output(report.table, metadata=metadata)

    return first_step_curves


def _report_metadata(context: dg.AssetExecutionContext, report, title: str) -> dict:
    """The plot (shown in the UI), the report and where both were written, for a report with
    ``plot``, ``report`` and ``markdown``."""
    context.log.info(f"plot: {report.plot}\nreport: {report.report}")
    image = base64.b64encode(report.plot.read_bytes()).decode()
    return {
        "plot": dg.MetadataValue.md(f"![{title}](data:image/png;base64,{image})"),
        "plot_path": dg.MetadataValue.path(str(report.plot)),
        "report_path": dg.MetadataValue.path(str(report.report)),
        "report": dg.MetadataValue.md(report.markdown),
    }


def _evaluations(loaded) -> pl.DataFrame:
    """Every materialized evaluations partition as one frame; a failure when there is none."""
    frames = _frames(loaded)
    if frames is None:
        raise dg.Failure(
            "no evaluations partition is materialized yet; run the study job (or "
            "`synthdata run`) first"
        )
    return frames


def _frames(loaded) -> pl.DataFrame | None:
    """All partitions as one frame (the IO manager hands over a frame per partition key, or
    the frame itself when the study has a single partition); None when there are none."""
    if isinstance(loaded, pl.DataFrame):
        return loaded
    if not loaded:
        return None
    return pl.concat(list(loaded.values()), how="diagonal_relaxed")


def _comparison_metadata(comparison: curves.Comparison) -> dict:
    """Multipliers with their intervals, and the paired differences as a table."""
    metadata = {}
    for row in comparison.multipliers.iter_rows(named=True):
        if row["multiplier"] is None or row["method"] == comparison.reference:
            continue
        key = f"multiplier_{row['method']}"
        metadata[key] = row["multiplier"]
        for stat in ("ci_low", "ci_high", "share_above_1"):
            if row[stat] is not None:
                metadata[f"{key}_{stat}"] = row[stat]
        if row["bound"] is not None:
            metadata[f"{key}_bound"] = row["bound"]
    return {**metadata, **_paired_metadata(comparison)}


def _paired_metadata(comparison: curves.Comparison) -> dict:
    """The paired differences against the comparison's reference, as a table."""
    metadata = {}
    paired = comparison.paired
    if paired.height:
        kinds = {pl.String: "string", pl.Int64: "int", pl.Float64: "float"}
        schema = dg.TableSchema(
            columns=[dg.TableColumn(name, kinds[dtype]) for name, dtype in paired.schema.items()]
        )
        records = [dg.TableRecord(row) for row in paired.iter_rows(named=True)]
        metadata[f"paired_vs_{comparison.reference}"] = dg.MetadataValue.table(records, schema)
    return metadata
