"""Is per-step DPO held back by where its Monte Carlo first pits land?

Monte Carlo first pits (best-of-K rollouts from every step prefix) land on the true first
wrong step for 55-60% of negatives in the demo (at or one step before it for about 80%). This
script retrains a finished partition's per-step DPO model with its pits replaced by the task
solver's ground truth (``is_true_first_wrong`` of ``step_advantages``), everything else as the
pipeline's ``per_step_dpo_model`` does it: the same negatives, chosen sides, settings and
seeds. ``mc`` keeps the Monte Carlo pits and must reproduce the pipeline's model (the control);
``truth`` is the oracle. If the oracle gains much more over SFT than ``mc`` does, credit
assignment is what limits the method here; if not, the pairs' signal is not the bottleneck.
``nll`` is the control without negatives: every pair's rejected side is its chosen side, so
the DPO term is log 2 with no gradient and only the chosen side's NLL (``dpo_sft_weight``)
trains, with the same pairs, schedule and updates: what the stage does without the per-step
negatives.

    python docs/experiments/oracle_pits.py HOME CONFIG_YAML SIZE SEED mc|truth|nll

HOME is a warehouse where the partition SIZE|SEED of CONFIG_YAML (``SYNTHDATA_CONFIG``) is
materialized. Scores: greedy accuracy on the pool's test problems, and the paired difference
to the partition's SFT model (its ``evaluations`` rows). Rows go to ``oracle_pits.jsonl`` next
to this file. Run with one torch thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from synthdata_assets import pairs, preference
from synthdata_assets.config import load_config
from synthdata_assets.steps import resolve_rule
from warehouse import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import base_recipe  # noqa: E402
import sft_forgetting  # noqa: E402

OUT = Path(__file__).with_name("oracle_pits.jsonl")


def main(home: str, config_yaml: str, size: str, seed: str, pits: str) -> None:
    started = time.monotonic()
    config = load_config(config_path=config_yaml)
    warehouse = Warehouse(Path(home))
    size_, seed_ = int(size), int(seed)

    def table(name: str) -> pl.DataFrame:
        return pl.read_parquet(warehouse.partition_file(name, size_, seed_))

    problems = pl.read_parquet(warehouse.table_file("problems"))
    adv = table("step_advantages")
    if pits == "truth":
        adv = adv.with_columns(is_first_pit=pl.col("is_true_first_wrong"))
    elif pits not in ("mc", "nll"):
        raise SystemExit(f"pits must be mc, truth or nll, got {pits!r}")
    built = pairs.partition_pairs(
        problems,
        table("policy_samples"),
        adv,
        table("step_rollouts"),
        table("teacher_solutions"),
        seed=seed_,
        step_rule=resolve_rule(config.credit.step_rule, config.task.name),
    )
    chosen = built.filter(pl.col("kind") == "per_step")
    twins = built.filter(pl.col("kind") == "outcome")
    if pits == "nll":
        chosen = chosen.with_columns(
            rejected=pl.col("chosen"), rejected_has_eos=pl.col("chosen_has_eos")
        )
    sft_path = table("sft_model")["path"][0]
    test = problems.filter(pl.col("split") == "test")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "per_step_dpo"
        row = preference.train_preference_model(
            config.training,
            "per_step_dpo",
            sft_path,
            chosen,
            folder,
            seed=seed_,
            max_seq_len=config.model.max_seq_len,
            log=lambda m: print(m, flush=True),
            twins=twins,
            held_out=preference.held_out_texts(problems),
        ).row(0, named=True)
        greedy = sft_forgetting.greedy(config, str(folder), test, seed_)
    evals = table("evaluations")
    sft = evals.filter(pl.col("method") == "sft").select("problem_id", sft="is_correct")
    mine = greedy.select("problem_id", new="is_correct").join(sft, on="problem_id")
    out = {
        "home": home,
        "config": config_yaml,
        "pool_seed": config.task.pool_seed,
        "size": size_,
        "seed": seed_,
        "pits": pits,
        "pairs": chosen.height,
        "pits_moved": int(
            adv.filter(pl.col("is_true_first_wrong") != pl.col("is_first_pit_best_of_k")).height
        ),
        "sft": round(100 * float(mine["sft"].mean()), 1),
        "per_step_dpo": round(100 * float(mine["new"].mean()), 1),
        "wins": int((mine["new"] & ~mine["sft"]).sum()),
        "losses": int((~mine["new"] & mine["sft"]).sum()),
        "reward_accuracy": round(row["reward_accuracy"], 3),
        "chosen_logp_change": round(row["chosen_logp_change"], 3),
        "rejected_logp_change": round(row["rejected_logp_change"], 3),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_model": base_recipe._cpu(),
    }
    sft_forgetting.write_row(OUT, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
