#!/usr/bin/env bash
# The seventeenth session's cells of oracle_pits.py (negatives_elsewhere.md): per-step DPO's
# pairs trained from other models, with teacher slips as negatives, with the rejected side cut
# after its first wrong token, and the dose of the negatives at more sizes and on pool 7.
#
#   docs/experiments/negatives_elsewhere.sh HOME0 HOME7
#
# HOME0 and HOME7: warehouses of `synthdata run` with SYNTHDATA_CONFIG set to
# docs/experiments/embedded_rpo4.yaml and embedded_rpo4_pool7.yaml (every partition). Two
# one-thread processes at a time (the machine has 2 cores); rows go to oracle_pits.jsonl.
# About 50 minutes on 2 cores of an AMD EPYC (105 cells). Then:
#   python docs/experiments/oracle_summary.py HOME0 HOME7
#   python docs/experiments/error_kinds.py --rows HOME0 --minus slips nll
set -euo pipefail
cd "$(dirname "$0")/../.."
home0=${1:?HOME0}
home7=${2:?HOME7}
c0=docs/experiments/embedded_rpo4.yaml
c7=docs/experiments/embedded_rpo4_pool7.yaml
cells() {
    local s sz m b
    for s in 0 1 2; do
        for sz in 500 1000 2000; do
            for m in mc nll; do echo "$home0 $c0 $sz $s $m init=rft_model"; done
            for m in mc nll slips token; do echo "$home0 $c0 $sz $s $m"; done
        done
        for sz in 250 500; do
            for m in mc nll; do echo "$home0 $c0 $sz $s $m init=sft_model@2000"; done
        done
        for sz in 500 2000; do
            for b in 0.01 0.03 0.3; do echo "$home0 $c0 $sz $s mc dpo_beta=$b"; done
        done
        for m in mc nll slips token; do echo "$home7 $c7 1000 $s $m"; done
        for b in 0.01 0.03 0.3; do echo "$home7 $c7 1000 $s mc dpo_beta=$b"; done
    done
}
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
cells | xargs -P 2 -L 1 "${PYTHON:-.venv/bin/python}" docs/experiments/oracle_pits.py
