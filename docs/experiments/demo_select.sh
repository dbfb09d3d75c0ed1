#!/bin/sh
# SFT alone on the demo's task with its epoch chosen on 250 held-out problems (at most 12),
# seeds 0-2 at 250-2000 problems, two lanes of one torch thread; then what
# training.validation_patience would have kept (choices_from_data.md, section 9).
#   sh docs/experiments/demo_select.sh
set -e
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
cell() {
    OMP_NUM_THREADS=1 $py docs/experiments/sft_beyond.py sft docs/experiments/demo_select.yaml "$1" "$2"
}
(for c in "250 0" "500 0" "1000 0" "2000 0" "250 1" "500 1"; do cell $c; done) > /tmp/demo_select_a.log 2>&1 &
(for c in "1000 1" "2000 1" "250 2" "500 2" "1000 2" "2000 2"; do cell $c; done) > /tmp/demo_select_b.log 2>&1
wait
$py docs/experiments/patience.py docs/experiments/demo_select.yaml
