#!/bin/sh
# One cell (1000 problems, seed 0, pool 0) of the `embedded` preset under the four
# combinations of the chain task's reserved dead-end names (`task.embedded.dead_end_names: 6`)
# and the teacher's spurious steps (`teacher.spurious_rate` 0.1, the default, or 0): which of
# the two changes makes SFT stronger (docs/experiments/dead_end_names.md).
#   sh docs/experiments/dead_end_names_cells.sh WAREHOUSE_ROOT
# Two cells at a time, one torch thread each (5-6 minutes a pair on 2 cores); prints each
# cell's test accuracy table. The twenty-seventh session ran the cells `plain` and
# `no_spurious` this way, `reserved` alone with two threads, and read `both` off the full run
# of `DEAD_END_NAMES=6 sh docs/experiments/embedded_pools.sh ROOT 0` (two one-thread lanes).
set -e
cd "$(dirname "$0")/../.."
root=$1
mkdir -p "$root"
cell() {  # NAME EXTRA_YAML
    printf 'preset: embedded\ndata_sizes: [1000]\nseeds: [0]\nsft_reference_sizes: []\n%b' \
        "$2" > "$root/$1.yaml"
    rm -rf "$root/$1"
    SYNTHDATA_CONFIG="$root/$1.yaml" SYNTHDATA_HOME="$root/$1" OMP_NUM_THREADS=1 \
        .venv/bin/synthdata run > "$root/$1.log" 2>&1
}
cell plain "" &
cell no_spurious "teacher: {spurious_rate: 0.0}\n" &
wait
cell reserved "task: {embedded: {dead_end_names: 6}}\n" &
cell both "task: {embedded: {dead_end_names: 6}}\nteacher: {spurious_rate: 0.0}\n" &
wait
for name in plain no_spurious reserved both; do
    echo "== $name"
    sed -n '/^| method  *| 1000 |$/,/^$/p' "$root/$name.log"
done
