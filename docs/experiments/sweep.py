"""Run the pipeline once per setting and tabulate accuracy against SFT: the recorded sweeps.

    python docs/experiments/sweep.py NAME HOME BASE_YAML SETTINGS_JSON

``BASE_YAML`` is a configuration file (``SYNTHDATA_CONFIG``) for one size and one seed;
``SETTINGS_JSON`` a JSON list of override mappings, each merged into it for one run. Every run
uses the warehouse ``HOME``, so stages whose settings did not change are reused (a DPO sweep
retrains only the preference models and re-evaluates). Each run appends one row per setting
to ``docs/experiments/NAME.jsonl`` and rewrites ``docs/experiments/NAME.md``: greedy test
accuracy of every method, per-step DPO's and plain DPO's paired difference against SFT, and
how far each preference model moved from pi_sft. The CPU and thread count go with each row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import torch
import yaml

from synthdata_assets.config import ExperimentConfig, load_config
from synthdata_assets.config import _merge as merge_overrides

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
MOVED = ("reward_accuracy", "chosen_logp_change", "rejected_logp_change")


def _results(home: Path, config: ExperimentConfig) -> dict:
    """The run's figures, from the partitions of ``config``'s sizes and seeds only: a warehouse
    may hold other partitions, which must not be averaged in."""

    def read(table: str) -> pl.DataFrame:
        files = [
            home / "tables" / table / f"data_size={size}" / f"seed={seed}.parquet"
            for size, seed in config.partition_keys
        ]
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")

    evals = read("evaluations")
    acc = evals.group_by("method").agg(pl.col("is_correct").fill_null(False).mean())
    row = {m: round(100 * a, 1) for m, a in acc.iter_rows()}
    key = ["problem_id", "data_size", "seed"]
    sft = evals.filter(pl.col("method") == "sft").select(*key, sft="is_correct")
    for method in ("per_step_dpo", "dpo", "rft"):
        paired = evals.filter(pl.col("method") == method).join(sft, on=key)
        row[f"{method}_wins"] = int((paired["is_correct"] & ~paired["sft"]).sum())
        row[f"{method}_losses"] = int((~paired["is_correct"] & paired["sft"]).sum())
    for method in ("per_step_dpo_model", "dpo_model"):
        table = read(method)
        for col in MOVED:
            if col in table.columns:
                row[f"{method}.{col}"] = round(float(table[col][0] or 0.0), 3)
    return row


def main(name: str, home: str, base_yaml: str, settings_json: str) -> None:
    base = yaml.safe_load(Path(base_yaml).read_text())
    out_jsonl = HERE / f"{name}.jsonl"
    for setting in json.loads(settings_json):
        config = Path(home) / f"{name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(merge_overrides(base, setting)))
        env = {**os.environ, "SYNTHDATA_HOME": home, "SYNTHDATA_CONFIG": str(config)}
        env["DAGSTER_HOME"] = str(Path(home) / "dagster")
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "synthdata_assets.cli", "run"], env=env, check=True)
        row = {"setting": setting, "seconds": round(time.monotonic() - started)}
        row |= {"cpu": torch.backends.cpu.get_cpu_capability()}
        row |= _results(Path(home), load_config(config_path=config))
        with out_jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    _write_markdown(name, out_jsonl)


def _write_markdown(name: str, jsonl: Path) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    cols = ["setting", "sft", "rft", "per_step_dpo", "dpo", "per_step_dpo_wins"]
    cols += ["per_step_dpo_losses", "per_step_dpo_model.reward_accuracy"]
    cols += ["per_step_dpo_model.rejected_logp_change", "seconds", "cpu"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        cells = [json.dumps(r["setting"]) if c == "setting" else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    (HERE / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
