#!/bin/sh
# SFT past the study's largest size on the RPO4 three-dead-end runs (sft_beyond.py), pools 0
# and 7 side by side, one torch thread each; then the reports with the longer SFT curve.
#   sh docs/experiments/sft_beyond.sh WAREHOUSE_POOL0 WAREHOUSE_POOL7 [SIZES [STEM [SUFFIX]]]
# STEM names the configs (docs/experiments/STEM.yaml and STEM_pool7.yaml), SUFFIX the reports'
# ending. The twenty-first session ran SFT at 12 epochs on 2000 problems with
#   sh docs/experiments/sft_beyond.sh /tmp/sft12 /tmp/sft12_pool7 2000 \
#       choices_from_data_rpo4_sft12 -beyond
set -e
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
sizes=${3:-"4000 8000 16000"}
stem=${4:-choices_from_data_rpo4}
suffix=${5:--sft-beyond}
report=$(echo "$stem" | tr _ -)
lane() {
    for size in $sizes; do
        for seed in 0 1 2; do
            OMP_NUM_THREADS=1 $py docs/experiments/sft_beyond.py sft "$1" "$size" "$seed"
        done
    done
}
lane "docs/experiments/$stem.yaml" > /tmp/sft_beyond_pool0.log 2>&1 &
lane "docs/experiments/${stem}_pool7.yaml" > /tmp/sft_beyond_pool7.log 2>&1
wait
for pair in "$stem $1 $report" "${stem}_pool7 $2 $report-pool7"; do
    set -- $pair
    OMP_NUM_THREADS=1 $py docs/experiments/sft_beyond.py report \
        "docs/experiments/$1.yaml" "$2" "docs/results/$3$suffix.md"
done
