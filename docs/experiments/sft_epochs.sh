#!/bin/sh
# SFT trained longer (sft_beyond.py sft ... epochs=N), seeds 0-2, on two configs side by side
# (one torch thread each; rows go to sft_beyond.jsonl): does the study's SFT, at the presets'
# 3 epochs, learn what its data can teach (choices_from_data.md, section 7)?
#   sh docs/experiments/sft_epochs.sh [EPOCHS [SIZES [CONFIG_A CONFIG_B]]]
# Defaults: epochs 6 and 12 at 500, 1000 and 2000 problems on the RPO4 three-dead-end task,
# pools 0 and 7. The twentieth session also ran
#   sh docs/experiments/sft_epochs.sh 24 "500 1000"
#   sh docs/experiments/sft_epochs.sh "3 6 12" "500 2000" \
#       docs/experiments/embedded_rpo4.yaml docs/experiments/embedded_rpo4_pool7.yaml
set -e
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
epochs=${1:-"6 12"}
sizes=${2:-"500 1000 2000"}
config_a=${3:-docs/experiments/choices_from_data_rpo4.yaml}
config_b=${4:-docs/experiments/choices_from_data_rpo4_pool7.yaml}
lane() {
    for n in $epochs; do
        for size in $sizes; do
            for seed in 0 1 2; do
                OMP_NUM_THREADS=1 $py docs/experiments/sft_beyond.py sft "$1" "$size" "$seed" \
                    "epochs=$n"
            done
        done
    done
}
lane "$config_a" > /tmp/sft_epochs_a.log 2>&1 &
lane "$config_b" > /tmp/sft_epochs_b.log 2>&1
wait
