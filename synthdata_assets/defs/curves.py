"""The study's answer: ``scaling_curves`` over every materialized ``evaluations`` partition,
with its plot and report in the warehouse's ``reports/`` folder and on the asset in the UI."""

import base64

import dagster as dg
import polars as pl

from synthdata_assets import curves
from warehouse import Warehouse

GROUP = "study"


def build(warehouse: Warehouse) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name=GROUP,
        kinds={"polars", "matplotlib"},
        ins={
            "evaluations": dg.AssetIn(
                # Curves from whatever partitions exist: a sweep in progress still plots.
                metadata={"allow_missing_partitions": True},
            )
        },
    )
    def scaling_curves(context: dg.AssetExecutionContext, evaluations):
        """Test error per method x data size x seed, power-law fits, data multipliers vs SFT."""
        # The IO manager hands over a frame per partition key, or the frame itself when the
        # study has a single partition.
        if isinstance(evaluations, pl.DataFrame):
            evaluations = {"single partition": evaluations}
        if not evaluations:
            raise dg.Failure(
                "no evaluations partition is materialized yet; run the study job (or "
                "`synthdata run`) first"
            )
        frames = pl.concat(list(evaluations.values()), how="diagonal_relaxed")
        report = curves.study_report(frames, warehouse.reports)
        context.log.info(f"plot: {report.plot}\nreport: {report.report}")
        image = base64.b64encode(report.plot.read_bytes()).decode()
        metadata = {
            "plot": dg.MetadataValue.md(f"![scaling curves](data:image/png;base64,{image})"),
            "plot_path": dg.MetadataValue.path(str(report.plot)),
            "report_path": dg.MetadataValue.path(str(report.report)),
            "report": dg.MetadataValue.md(report.markdown),
            "partitions": len(evaluations),
        }
        for row in report.multipliers.iter_rows(named=True):
            if row["multiplier"] is not None:
                metadata[f"multiplier_{row['method']}"] = float(row["multiplier"])
        return dg.Output(report.table, metadata=metadata)

    return [scaling_curves]
