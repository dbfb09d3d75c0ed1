"""Partitions on Celery workers: wall time of a study on one worker against two, and whether
their tables are identical.

Runs ``synthdata run --workers N --threads T`` for each ``N x T`` asked for, each into a fresh
warehouse, against a Redis server it starts itself (``redis-server`` must be installed), and
writes ``<out>.json`` and ``<out>.md``: each run's wall time, the speed-up against the first,
and, for every pair of runs at the same thread count, whether every table is identical
(provenance aside: paths, run ids, timings). Thread counts change floating-point sums, so runs
at different counts are compared too but are not expected to match bit for bit::

    .venv/bin/python benchmarks/workers.py                       # demo: 1x2, 2x1, 1x1
    .venv/bin/python benchmarks/workers.py --preset tiny --runs 1x1 2x1 --out /tmp/w

The machine should be otherwise idle: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SYNTHDATA = Path(sys.executable).with_name("synthdata")
PROVENANCE = {"run_id", "path", "base", "checkpoint", "rollout_key"}
PROVENANCE |= {"tokens_per_second", "train_seconds"}


def differing_tables(a: Path, b: Path) -> list[str]:
    """Tables of warehouse ``a`` whose content differs from ``b``'s (provenance aside)."""
    names = sorted(p.relative_to(a / "tables") for p in (a / "tables").rglob("*.parquet"))
    out = []
    for name in names:
        other = b / "tables" / name
        if not other.exists():
            out.append(f"{name} (missing)")
            continue
        x, y = pl.read_parquet(a / "tables" / name), pl.read_parquet(other)
        keep = [c for c in x.columns if c not in PROVENANCE]
        if x.columns != y.columns or not x.select(keep).equals(y.select(keep)):
            out.append(str(name))
    return out


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return proc, f"redis://127.0.0.1:{port}/0"


def run(preset: str, workers: int, threads: int, home: Path, broker: str) -> dict:
    env = os.environ | {
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "SYNTHDATA_PRESET": preset,
        "SYNTHDATA_BROKER": broker,
    }
    env.pop("SYNTHDATA_CONFIG", None)
    cmd = [str(SYNTHDATA), "run", "--workers", str(workers), "--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (home / "run.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed; its output is in {home / 'run.log'}")
    return {"workers": workers, "threads": threads, "seconds": round(seconds, 1)}


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# `synthdata run --workers N`: preset {result['preset']}",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch CPU capability {m['torch_cpu_capability']}; "
        f"measured {result['date']}, by `benchmarks/workers.py`. Wall time of the whole "
        "`synthdata run` (setup, every partition, report; workers' start included), each "
        "into a fresh warehouse.",
        "",
        "| workers x threads | wall time (s) | speed-up vs the first |",
        "| --- | ---: | ---: |",
    ]
    first = result["runs"][0]["seconds"]
    for r in result["runs"]:
        speedup = first / r["seconds"]
        lines.append(f"| {r['workers']} x {r['threads']} | {r['seconds']:.1f} | {speedup:.2f}x |")
    lines += ["", "| runs compared | same threads | tables that differ |", "| --- | --- | --- |"]
    for c in result["comparisons"]:
        differ = ", ".join(c["differ"]) or "none: identical"
        lines.append(f"| {c['a']} vs {c['b']} | {c['same_threads']} | {differ} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--runs", nargs="+", default=["1x2", "2x1", "1x1"], help="NxT ...")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "workers"))
    parser.add_argument("--keep", help="keep the warehouses in this folder")
    args = parser.parse_args()
    from benchmarks.stages import machine

    scratch = Path(args.keep or tempfile.mkdtemp(prefix="synthdata-workers-"))
    scratch.mkdir(parents=True, exist_ok=True)
    redis, broker = start_redis(scratch)
    runs, homes = [], {}
    try:
        for spec in args.runs:
            workers, threads = (int(v) for v in spec.split("x"))
            homes[spec] = scratch / spec
            shutil.rmtree(homes[spec], ignore_errors=True)
            runs.append(run(args.preset, workers, threads, homes[spec], broker))
            print(f"{spec}: {runs[-1]['seconds']:.1f}s", flush=True)
    finally:
        redis.terminate()
    comparisons = [
        {
            "a": a,
            "b": b,
            "same_threads": a.split("x")[1] == b.split("x")[1],
            "differ": differing_tables(homes[a], homes[b]),
        }
        for i, a in enumerate(args.runs)
        for b in args.runs[i + 1 :]
    ]
    result = {
        "preset": args.preset,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "runs": runs,
        "comparisons": comparisons,
    }
    write(result, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
