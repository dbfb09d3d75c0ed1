#!/bin/bash
# Submit a whole study to Slurm: the setup stages, then one job per data_size|seed partition
# (after the setup succeeded), then the report (after every partition succeeded).
#
#   export SYNTHDATA_HOME=/shared/warehouse DAGSTER_POSTGRES_URL=postgresql://...
#   export SYNTHDATA_CONFIG=/shared/study.yaml
#   deploy/slurm/submit.sh
#
# It submits every partition of the configuration; `synthdata run` remains the way to find
# which are stale. Written and checked with `bash -n`, not run on a Slurm cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
here="deploy/slurm/partition.sbatch"
stages() { "$PY" -c "from synthdata_assets import study; print(','.join(study.$1))"; }
# Create the warehouse and the instance settings once, here, where the launcher runs.
"$PY" -c "from warehouse import Warehouse; from warehouse.instance import write_instance_settings as w; h = Warehouse.from_env().ensure(); w(h.dagster_home)"
setup=$(sbatch --parsable --export=ALL,PARTITION=,STAGES="$(stages SETUP_STAGES)" "$here")
ids=()
for key in $("$PY" -c "from synthdata_assets import study; from synthdata_assets.config import load_config; print(' '.join(study.partition_keys(load_config())))"); do
    ids+=("$(sbatch --parsable --dependency=afterok:"$setup" \
        --export=ALL,PARTITION="$key",STAGES="$(stages PARTITION_STAGES)" "$here")")
done
report=$(sbatch --parsable --dependency=afterok:"$(IFS=:; echo "${ids[*]}")" \
    --export=ALL,PARTITION=,STAGES="$(stages REPORT_STAGES)" "$here")
echo "setup $setup, partitions ${ids[*]}, report $report"
