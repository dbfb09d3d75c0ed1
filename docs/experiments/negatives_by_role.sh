#!/usr/bin/env bash
# The eighteenth session's cells of oracle_pits.py (choices_from_data.md): per-step DPO with
# only the negatives that first go wrong at a step's name (mcnames), or only the others
# (mcrest), against mc (all) and nll (none), which negatives_elsewhere.sh and the sixteenth
# session's cells ran on the same warehouses.
#
#   docs/experiments/negatives_by_role.sh HOME0 HOME7 [HOME3]
#
# HOME0, HOME7: warehouses of `synthdata run` with SYNTHDATA_CONFIG set to
# docs/experiments/embedded_rpo4.yaml and embedded_rpo4_pool7.yaml; HOME3 (optional): with
# choices_from_data.yaml (three dead ends per problem, one negative per problem), whose cells
# all train with the chosen side's NLL (dpo_sft_weight=1, as RPO4 does), so that nll is the
# pipeline's nll_control there; its mc and nll cells run here too.
# Two one-thread processes at a time (the machine has 2 cores); rows go to oracle_pits.jsonl.
# Then: python docs/experiments/oracle_summary.py HOME0 HOME7 HOME3
set -euo pipefail
cd "$(dirname "$0")/../.."
home0=${1:?HOME0}
home7=${2:?HOME7}
home3=${3:-}
c0=docs/experiments/embedded_rpo4.yaml
c7=docs/experiments/embedded_rpo4_pool7.yaml
c3=docs/experiments/choices_from_data.yaml
cells() {
    local s sz m
    for s in 0 1 2; do
        for sz in 500 1000 2000; do
            for m in mcnames mcrest; do echo "$home0 $c0 $sz $s $m"; done
        done
        for m in mcnames mcrest; do echo "$home7 $c7 1000 $s $m"; done
        if [ -n "$home3" ]; then
            for sz in 500 1000 2000; do
                for m in mc nll mcnames mcrest; do echo "$home3 $c3 $sz $s $m dpo_sft_weight=1"; done
            done
        fi
    done
}
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
cells | xargs -P "${LANES:-2}" -L 1 "${PYTHON:-.venv/bin/python}" docs/experiments/oracle_pits.py
