#!/bin/sh
# Per-step DPO on the path-star hint with Monte Carlo pits (mc, which must reproduce the
# pipeline's model), the true first wrong steps (truth) and no negatives (nll), per seed of
# one partition (docs/experiments/hint.md). Two runs at a time, one torch thread each.
#   sh docs/experiments/hint_pits.sh HOME SIZE [KEY=VALUE ...]
# HOME is a warehouse made by goal_arms.py (its study.yaml beside it); KEY=VALUE pairs set
# training fields, as oracle_pits.py takes them. Rows go to docs/experiments/oracle_pits.jsonl,
# each run's output to HOME/pits_SIZE_SEED_MODE.log.
set -eu
home=$1 size=$2
shift 2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 EXTRA="$*"
for seed in 0 1 2; do
    for pits in mc truth nll; do
        echo "$seed $pits"
    done
done | xargs -P 2 -L 1 sh -c \
    'python docs/experiments/oracle_pits.py "$0" "$0/study.yaml" "$1" "$2" "$3" $EXTRA \
        > "$0/pits_$1_$2_$3.log" 2>&1' "$home" "$size"
