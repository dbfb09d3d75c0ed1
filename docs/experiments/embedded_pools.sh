#!/bin/sh
# The `embedded` preset as shipped, on other task pools (`task.pool_seed`): does per-step
# DPO's multiplier against SFT hold off the pool it was measured on (pool 0)?
#   sh docs/experiments/embedded_pools.sh WAREHOUSE_ROOT POOL...
# Each pool is one full `synthdata run` (30-36 minutes on 2 cores) into a fresh
# WAREHOUSE_ROOT/poolN; its printed report goes to docs/results/embedded-preset-poolN.md under
# a header naming the commit, the CPU and the wall time, its plot beside it. The twenty-sixth
# session ran, from a fresh clone,
#   sh docs/experiments/embedded_pools.sh /tmp/pools 7 3 5
set -e
cd "$(dirname "$0")/../.."
root=$1
shift
mkdir -p "$root"
commit=$(git rev-parse --short HEAD)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
capability=$(.venv/bin/python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')
for pool in "$@"; do
    config="$root/pool$pool.yaml"
    home="$root/pool$pool"
    rm -rf "$home"
    printf 'preset: embedded\ntask: {pool_seed: %s}\n' "$pool" > "$config"
    start=$(date +%s)
    SYNTHDATA_CONFIG="$config" SYNTHDATA_HOME="$home" .venv/bin/synthdata run \
        > "$root/pool$pool.log" 2>&1
    seconds=$(($(date +%s) - start))
    out="docs/results/embedded-preset-pool$pool"
    cp "$home/reports/scaling_curves.png" "$out.png"
    {
        echo "# The \`embedded\` preset on task pool $pool"
        echo
        echo "\`task.pool_seed: $pool\`, everything else the preset's"
        echo "([embedded_pools.sh](../experiments/embedded_pools.sh)), at \`$commit\`, on 2 cores of"
        echo "an $cpu (torch CPU capability \`$capability\`): $((seconds / 60)) min $((seconds % 60)) s"
        echo "wall for the whole run. Plot: [embedded-preset-pool$pool.png](embedded-preset-pool$pool.png)."
        echo
        echo '```'
        sed -n '/^run  *seconds$/,$p' "$root/pool$pool.log"  # the report as printed
        echo '```'
    } > "$out.md"
done
