"""Wall time and throughput per stage of a finished study, read from its Dagster run logs.

Run the study first (``make demo``), then::

    .venv/bin/python benchmarks/stages.py                 # SYNTHDATA_HOME or .synthdata
    .venv/bin/python benchmarks/stages.py --home /path/to/home --out benchmarks/results/stages

Every run that ``synthdata run`` launches writes Dagster's event log to
``reports/logs/<selection>__<partition>.log``. This script takes, per run, each step's
duration (Dagster's ``STEP_SUCCESS`` event) and the last tokens/s figure the stage logged
(training updates, sampling), and writes a table per data size to ``<out>.md`` and
``<out>.json``. It measures nothing itself, so the figures are those of the real run; run it
on the machine that ran the study, since it records that machine's CPU beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_SUCCESS = re.compile(
    r" - (?P<step>\w+) - STEP_SUCCESS - Finished execution of step \"\w+\" in "
    r"(?P<time>[\dhms.]+)\.$"
)
_RATE = re.compile(r" - dagster - INFO - .* - (?P<step>\w+) - .*?(?P<rate>[\d,]+) (new )?tokens/s")
_PARTITION = re.compile(r"__(?P<size>\d+)_(?P<seed>\d+)\.log$")


def seconds(text: str) -> float:
    """Dagster's durations: ``128ms``, ``10.34s``, ``1m44s``, ``1h2m3s``."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)([hms])", text):
        total += float(value) * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]
    return total


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The CPU the figures were measured on (this machine: see the module docstring)."""
    import torch

    from training.precision import cpu_flags, native_bf16

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "native_bf16": native_bf16(torch.device("cpu"), cpu_flags()).bf16,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def parse(log: Path) -> dict[str, dict]:
    steps: dict[str, dict] = {}
    for line in log.read_text(errors="replace").splitlines():
        if m := _SUCCESS.search(line):
            steps.setdefault(m["step"], {})["seconds"] = seconds(m["time"])
        elif m := _RATE.search(line):
            steps.setdefault(m["step"], {})["tokens_per_second"] = int(m["rate"].replace(",", ""))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("SYNTHDATA_HOME", ".synthdata"))
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stages")
    args = parser.parse_args()
    logs = sorted((args.home / "reports" / "logs").glob("*.log"))
    if not logs:
        raise SystemExit(
            f"no run logs under {args.home / 'reports' / 'logs'}; run `make demo` first"
        )
    runs = {}
    for log in logs:
        m = _PARTITION.search(log.name)
        key = f"{m['size']}|{m['seed']}" if m else log.stem
        runs[key] = parse(log)
    stages = list(dict.fromkeys(s for steps in runs.values() for s in steps))
    cpu = machine()
    lines = [
        f"Seconds per stage (tokens/s where the stage logs it), from the run logs in {args.home}.",
        f"Machine: {cpu['cpu']}, {cpu['cores']} cores, native bf16 {cpu['native_bf16']}, "
        f"torch CPU capability {cpu['torch_cpu_capability']}.",
        "",
        "| stage | " + " | ".join(runs) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    for stage in stages:
        cells = []
        for steps in runs.values():
            info = steps.get(stage)
            if not info or "seconds" not in info:
                cells.append("")
                continue
            cell = f"{info['seconds']:.1f}"
            if "tokens_per_second" in info:
                cell += f" ({info['tokens_per_second']:,}/s)"
            cells.append(cell)
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": cpu, "runs": runs}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
