"""The study's answer and how it is run: ``scaling_curves``, the study job and its schedule.

``scaling_curves`` (unpartitioned) reads every materialized ``evaluations`` partition, fits
test error against data size per method and computes each method's effective data
multiplier against SFT (:mod:`synthdata_assets.curves`). Its plot and markdown report go to
the warehouse's ``reports/`` folder and onto the asset in the Dagster UI.

``study_job`` materializes every partitioned asset of one ``data_size x seed`` partition in
one run; a backfill over its partitions is the whole sweep. The schedule
``study_backfill_schedule`` (off by default) launches one run per partition that has never
been materialized, so turning it on after adding a data size computes only the new
partitions.
"""

import base64

import dagster as dg
import polars as pl

from synthdata_assets import curves
from synthdata_assets.config import ExperimentConfig
from synthdata_assets.defs.partitions import study_partitions
from warehouse import Warehouse

GROUP = "study"
PARTITIONED_ASSETS = (
    "teacher_solutions",
    "sft_model",
    "policy_samples",
    "rft_model",
    "step_rollouts",
    "step_advantages",
    "preference_pairs",
    "per_step_dpo_model",
    "dpo_model",
    "evaluations",
)


def build(config: ExperimentConfig, warehouse: Warehouse) -> dict:
    partitions = study_partitions(config)

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
    def scaling_curves(context: dg.AssetExecutionContext, evaluations: dict[str, pl.DataFrame]):
        """Test error per method x data size x seed, power-law fits, data multipliers vs SFT."""
        if not evaluations:
            raise dg.Failure(
                "no evaluations partition is materialized yet; run the study job (or "
                "`synthdata run`) first"
            )
        table_in = pl.concat(list(evaluations.values()), how="diagonal_relaxed")
        table = curves.scaling_table(table_in)
        fits = curves.fit_power_laws(table)
        mults = curves.multipliers(table_in, reference="sft", seed=0)
        reports = warehouse.reports
        reports.mkdir(parents=True, exist_ok=True)
        plot = curves.plot_curves(table, fits, reports / "scaling_curves.png")
        report = curves.report_markdown(table, fits, mults, plot, relative_to=reports)
        report_path = reports / "scaling_report.md"
        tmp = report_path.with_name(f".{report_path.name}.tmp")
        tmp.write_text(report)
        tmp.replace(report_path)
        context.log.info(f"plot: {plot}\nreport: {report_path}")
        image = base64.b64encode(plot.read_bytes()).decode()
        metadata = {
            "plot": dg.MetadataValue.md(f"![scaling curves](data:image/png;base64,{image})"),
            "plot_path": dg.MetadataValue.path(str(plot)),
            "report_path": dg.MetadataValue.path(str(report_path)),
            "report": dg.MetadataValue.md(report),
            "partitions": len(evaluations),
        }
        for row in mults.iter_rows(named=True):
            if row["multiplier"] is not None:
                metadata[f"multiplier_{row['method']}"] = float(row["multiplier"])
        return dg.Output(table, metadata=metadata)

    study_job = dg.define_asset_job(
        "study_job",
        selection=dg.AssetSelection.assets(*PARTITIONED_ASSETS),
        partitions_def=partitions,
        description="Every stage of one data_size x seed partition; backfill it for the sweep.",
    )
    curves_job = dg.define_asset_job(
        "curves_job",
        selection=dg.AssetSelection.assets("problems", "base_model", "scaling_curves"),
        description="The unpartitioned assets: problem pool, base model, scaling curves.",
    )

    @dg.schedule(
        job=study_job,
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def study_backfill_schedule(context: dg.ScheduleEvaluationContext):
        """Hourly while on: one run per data_size x seed partition not yet materialized."""
        instance = context.instance
        done = instance.get_materialized_partitions(dg.AssetKey("evaluations"))
        for key in partitions.get_partition_keys():
            if key not in done:
                yield dg.RunRequest(run_key=f"study-{key}", partition_key=key)

    return {
        "assets": [scaling_curves],
        "jobs": [study_job, curves_job],
        "schedules": [study_backfill_schedule],
    }
