#!/usr/bin/env bash
# The nineteenth session's cells of oracle_pits.py on RPO4 with three dead ends per problem
# (choices_from_data.md, section 5): per-step DPO with the oracle's first pits (truth), with
# only the negatives that first go wrong at a step's name (mcnames), or only the others
# (mcrest), against nll (none: the pipeline's nll_control, which oracle_summary.py pairs each
# arm with); mc reproduces the pipeline's per_step_dpo_model (one cell per pool, a check).
#
#   docs/experiments/choices_from_data_cells.sh HOME0 HOME7
#
# HOME0, HOME7: warehouses of `synthdata run` with SYNTHDATA_CONFIG set to
# docs/experiments/choices_from_data_rpo4.yaml and choices_from_data_rpo4_pool7.yaml, run at
# one torch thread (OMP_NUM_THREADS=1), as these cells are, so that mc matches to the digit.
# Two one-thread processes at a time (the machine has 2 cores); rows go to oracle_pits.jsonl.
# Then: python docs/experiments/oracle_summary.py HOME0 HOME7
set -euo pipefail
cd "$(dirname "$0")/../.."
home0=${1:?HOME0}
home7=${2:?HOME7}
c0=docs/experiments/choices_from_data_rpo4.yaml
c7=docs/experiments/choices_from_data_rpo4_pool7.yaml
cells() {
    local s sz m
    echo "$home0 $c0 1000 0 mc"
    echo "$home7 $c7 1000 0 mc"
    for sz in 1000 500 2000; do
        for s in 0 1 2; do
            for m in nll truth mcnames mcrest; do echo "$home0 $c0 $sz $s $m"; done
        done
    done
    for s in 0 1 2; do
        for m in nll truth mcnames mcrest; do echo "$home7 $c7 1000 $s $m"; done
    done
}
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
cells | xargs -P "${LANES:-2}" -L 1 "${PYTHON:-.venv/bin/python}" docs/experiments/oracle_pits.py
