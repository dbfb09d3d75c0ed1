#!/bin/sh
# The `embedded` preset as shipped, on other task pools (`task.pool_seed`): does per-step
# DPO's multiplier against SFT hold off the pool it was measured on (pool 0)?
#   sh docs/experiments/embedded_pools.sh WAREHOUSE_ROOT POOL...
# Each pool is one full `synthdata run` (30-36 minutes on 2 cores) into a fresh
# WAREHOUSE_ROOT/poolN; its printed report goes to docs/results/embedded-preset-poolN.md under
# a header naming the commit, the CPU and the wall time, its plot beside it. The twenty-sixth
# session ran, from a fresh clone,
#   sh docs/experiments/embedded_pools.sh /tmp/pools 7 3 5
# With DEAD_END_NAMES=N in the environment, the chain task's dead ends take their names from a
# reserved set of N names (`task.embedded.dead_end_names`) and the teacher writes no spurious
# steps (`teacher.spurious_rate: 0`; a spurious step is a correct line naming a dead end), so
# that a wrong choice writes a name no correct solution writes; reports then go to
# docs/results/embedded-dead-end-names-poolN.md. The twenty-seventh session ran
#   DEAD_END_NAMES=6 sh docs/experiments/embedded_pools.sh /tmp/de 0 7
# With SPURIOUS_RATE=R instead, only the teacher's spurious steps change
# (`teacher.spurious_rate: R`); reports go to docs/results/embedded-spurious-R-poolN.md. The
# twenty-seventh session ran pool 0 with R = 0.0 by hand, with the config this writes; the
# twenty-eighth ran
#   SPURIOUS_RATE=0.0 sh docs/experiments/embedded_pools.sh /tmp/sp 7
# and the same with pools 3 and 5.
set -e
cd "$(dirname "$0")/../.."
root=$1
shift
mkdir -p "$root"
commit=$(git rev-parse --short HEAD)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
capability=$(.venv/bin/python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')
if [ -n "$DEAD_END_NAMES" ]; then
    name=embedded-dead-end-names
    knob=", embedded: {dead_end_names: $DEAD_END_NAMES}}\nteacher: {spurious_rate: 0.0"
    title="with dead ends named from $DEAD_END_NAMES reserved names, on task pool"
    setting="\`task.embedded.dead_end_names: $DEAD_END_NAMES\`, \`teacher.spurious_rate: 0\`, \`task.pool_seed:"
elif [ -n "$SPURIOUS_RATE" ]; then
    name=embedded-spurious-$SPURIOUS_RATE
    knob="}\nteacher: {spurious_rate: $SPURIOUS_RATE"
    title="with the teacher's spurious steps at rate $SPURIOUS_RATE, on task pool"
    setting="\`teacher.spurious_rate: $SPURIOUS_RATE\`, \`task.pool_seed:"
else
    name=embedded-preset
    knob=""
    title="on task pool"
    setting="\`task.pool_seed:"
fi
for pool in "$@"; do
    config="$root/pool$pool.yaml"
    home="$root/pool$pool"
    rm -rf "$home"
    printf 'preset: embedded\ntask: {pool_seed: %s%b}\n' "$pool" "$knob" > "$config"
    start=$(date +%s)
    SYNTHDATA_CONFIG="$config" SYNTHDATA_HOME="$home" .venv/bin/synthdata run \
        > "$root/pool$pool.log" 2>&1
    seconds=$(($(date +%s) - start))
    out="docs/results/$name-pool$pool"
    cp "$home/reports/scaling_curves.png" "$out.png"
    {
        echo "# The \`embedded\` preset $title $pool"
        echo
        echo "$setting $pool\`, everything else the preset's"
        echo "([embedded_pools.sh](../experiments/embedded_pools.sh)), at \`$commit\`, on 2 cores of"
        echo "an $cpu (torch CPU capability \`$capability\`): $((seconds / 60)) min $((seconds % 60)) s"
        echo "wall for the whole run. Plot: [$name-pool$pool.png]($name-pool$pool.png)."
        echo
        echo '```'
        sed -n '/^run  *seconds$/,$p' "$root/pool$pool.log"  # the report as printed
        echo '```'
    } > "$out.md"
done
