"""What a changed setting recomputes: a study rerun in its warehouse after one setting changed,
against the same study run from scratch under the new setting.

For each change (a JSON mapping merged into the base configuration), runs ``synthdata run``
under the base configuration into a fresh warehouse, then under the changed one in the same
warehouse (which recomputes only the stages whose fingerprints the change moves:
``study.FIELD_READERS``), then under the changed one into another fresh warehouse. Writes
``<out>.json`` and ``<out>.md``: each run's wall time, the stages the rerun recomputed, and
whether every table of the rerun's warehouse equals the fresh run's (provenance aside: paths,
run ids, timings). Equal tables mean that what the rerun reused is what it would have made::

    .venv/bin/python benchmarks/reuse.py     # didactic, 2000 problems: dpo_beta, pit_rule
    .venv/bin/python benchmarks/reuse.py --preset tiny --size 64 --out /tmp/reuse

One torch thread per run (``--threads``); the machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SYNTHDATA = Path(sys.executable).with_name("synthdata")
CHANGES = ('{"training": {"dpo_beta": 0.3}}', '{"credit": {"pit_rule": "largest_drop"}}')
_RECOMPUTING = re.compile(r"~ \[(?P<key>[^\]]+)\]: recomputing (?P<stages>.+)")


def run(config: dict, home: Path, threads: int) -> dict:
    """``synthdata run`` on ``config`` into warehouse ``home``: wall seconds and what the run
    printed it recomputed."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"study{len(list(home.glob('study*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "SYNTHDATA_CONFIG": str(path),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    env.pop("SYNTHDATA_PRESET", None)
    start = time.perf_counter()
    done = subprocess.run([str(SYNTHDATA), "run"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = home / f"{path.stem}.log"
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"synthdata run failed; its output is in {log}")
    recomputed = {m["key"]: m["stages"] for m in _RECOMPUTING.finditer(done.stdout)}
    return {"seconds": round(seconds, 1), "recomputed": recomputed}


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# A changed setting, rerun in its warehouse: preset {result['preset']}, "
        f"{result['size']} problems, seed {result['seed']}",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch CPU capability {m['torch_cpu_capability']}, "
        f"{result['threads']} torch thread(s); measured {result['date']} at `{result['commit']}`, "
        "by `benchmarks/reuse.py`. Wall time of the whole `synthdata run` (setup, the "
        f"partition, report). The study under the preset's settings took "
        f"{result['base_seconds']:.1f} s into a fresh warehouse.",
        "",
        "| change | rerun in the warehouse (s) | from scratch (s) | the rerun recomputed | "
        "tables that differ from scratch's |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for c in result["changes"]:
        # a partition key's "|" would end the table's cell
        stages = "; ".join(f"[{k.replace('|', '/')}] {v}" for k, v in c["recomputed"].items())
        differ = ", ".join(c["differ"]) or "none: identical"
        lines.append(
            f"| `{c['change']}` | {c['rerun_seconds']:.1f} | {c['fresh_seconds']:.1f} | "
            f"{stages or 'nothing'} | {differ} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="didactic")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--changes", nargs="+", default=list(CHANGES), help="JSON mappings")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reuse"))
    parser.add_argument("--keep", help="keep the warehouses in this folder")
    args = parser.parse_args()
    from benchmarks.stages import machine
    from benchmarks.workers import differing_tables
    from synthdata_assets.config import _merge as merge_overrides
    from synthdata_assets.config import load_config

    base = {"preset": args.preset, "data_sizes": [args.size], "seeds": [args.seed]}
    changes = [json.loads(c) for c in args.changes]
    for change in changes:  # every change is a valid configuration before any run starts
        load_config(args.preset, overrides=merge_overrides(base, change))
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="synthdata-reuse-"))
    results = []
    first = None
    for i, change in enumerate(changes):
        changed = merge_overrides(base, change)
        rerun_home, fresh_home = scratch / f"{i}-rerun", scratch / f"{i}-fresh"
        for home in (rerun_home, fresh_home):
            shutil.rmtree(home, ignore_errors=True)
        made = run(base, rerun_home, args.threads)
        first = first or made["seconds"]
        rerun = run(changed, rerun_home, args.threads)
        fresh = run(changed, fresh_home, args.threads)
        results.append(
            {
                "change": json.dumps(change),
                "rerun_seconds": rerun["seconds"],
                "fresh_seconds": fresh["seconds"],
                "recomputed": rerun["recomputed"],
                "differ": differing_tables(rerun_home, fresh_home),
            }
        )
        print(f"{results[-1]['change']}: {rerun['seconds']}s against {fresh['seconds']}s")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "preset": args.preset,
        "size": args.size,
        "seed": args.seed,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "machine": machine(),
        "base_seconds": first,
        "changes": results,
    }
    write(result, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
