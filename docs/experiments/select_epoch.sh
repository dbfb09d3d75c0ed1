#!/bin/sh
# RPO4 on three dead ends with SFT's and RFT's epoch chosen on held-out problems
# (training.select_epoch: validation, at most 24 epochs), seeds 0-2 at 250-1000 problems, pools
# 0 and 7 side by side (one torch thread each), then SFT chosen the same way at 2000 problems
# (sft_beyond.py, so that the 1000-problem cells lie inside a measured SFT curve) and the
# reports (choices_from_data.md, section 8).
#   sh docs/experiments/select_epoch.sh WAREHOUSE_POOL0 WAREHOUSE_POOL7
set -e
cd "$(dirname "$0")/../.."
stem=choices_from_data_rpo4_select
lane() {
    SYNTHDATA_HOME="$2" SYNTHDATA_CONFIG="docs/experiments/$1.yaml" OMP_NUM_THREADS=1 \
        .venv/bin/synthdata run
}
lane "$stem" "$1" > /tmp/select_pool0.log 2>&1 &
lane "${stem}_pool7" "$2" > /tmp/select_pool7.log 2>&1
wait
sh docs/experiments/sft_beyond.sh "$1" "$2" 2000 "$stem" -beyond
