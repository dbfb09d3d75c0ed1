"""Does a base pretrained from scratch with a longer phase 2 converge, and is SFT on the
teacher's solutions then above that base?

    python docs/experiments/base_recipe.py pretrain CHAIN_STEPS [FOLDER]
    python docs/experiments/base_recipe.py recipe FOLDER FIELD=VALUE ...
    python docs/experiments/base_recipe.py sft FOLDER SIZE SEED POOL_SEED LR
    python docs/experiments/base_recipe.py eval FOLDER

``pretrain`` runs ``pretrain_base(PretrainRecipe(chain_steps=CHAIN_STEPS))`` from scratch into
FOLDER (default /tmp/base_recipe_runs/chain{CHAIN_STEPS}), times it, and scores greedy accuracy
on the test problems of pools 0 and 7 (sft_forgetting.accuracy); ``recipe`` does the same with
any of the recipe's fields changed (values in JSON: ``num_layers=4``), and with
``drill_learning_rate=X`` phase 1's peak learning rate (``pretrain.DRILL_TRAINING``, not a
recipe field: the shipped base keeps 3e-3), and with ``init_seed=N`` the weights initialised
from seed N while the recipe's ``seed`` still draws the data and the batch order. ``sft``
fine-tunes the base at FOLDER as sft_forgetting.py's ``sft`` does (the demo preset's teacher
solutions of SIZE problems, the preset's ``training`` section with ``learning_rate`` LR, no
replay) and scores greedy accuracy (``eval=acc``). ``eval`` scores a saved base (greedy accuracy
and first errors, pools 0 and 7). Rows are appended to ``base_recipe.jsonl`` next to this file.
Run with one torch thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import sft_forgetting  # noqa: E402
from base_p import recipe_p  # noqa: E402

from synthdata_assets import pretrain  # noqa: E402
from synthdata_assets.pretrain import PretrainRecipe, pretrain_base, pretraining_corpus  # noqa: E402

OUT = Path(__file__).with_name("base_recipe.jsonl")
# sft_forgetting's _record appends to its module-level OUT: send its rows here instead.
sft_forgetting.OUT = OUT


def _cpu() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_environment() -> None:
    """One JSON line: what the figures of this run were measured on."""
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "cpu": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "cpu_model": _cpu(),
            }
        ),
        flush=True,
    )


def cmd_pretrain(chain_steps: str, folder: str = "") -> None:
    out = Path(folder or f"/tmp/base_recipe_runs/chain{chain_steps}")
    _pretrain(recipe_p(chain_steps=int(chain_steps)), out)


def cmd_recipe(folder: str, *settings: str) -> None:
    """Pretrain by the shipped recipe with SETTINGS (``field=value``) changed."""
    changed = {k: json.loads(v) for k, v in (s.split("=", 1) for s in settings)}
    fields = {k: v for k, v in changed.items() if k not in ("drill_learning_rate", "init_seed")}
    if "drill_learning_rate" in changed:
        pretrain.DRILL_TRAINING = pretrain.DRILL_TRAINING.model_copy(
            update={"learning_rate": changed["drill_learning_rate"]}
        )
    if "init_seed" in changed:
        build = pretrain.build_tiny_llama

        def build_with_init_seed(config, tokenizer, *, seed):
            return build(config, tokenizer, seed=changed["init_seed"])

        pretrain.build_tiny_llama = build_with_init_seed
    _pretrain(recipe_p(**fields), Path(folder), changed)


def _pretrain(recipe: PretrainRecipe, out: Path, changed: dict | None = None) -> None:
    started = time.monotonic()
    drill, chains = pretraining_corpus(recipe)  # only to record the corpus sizes
    corpus_s = time.monotonic() - started
    started = time.monotonic()
    meta = pretrain_base(recipe, out, log=lambda m: print(m, flush=True))
    pretrain_s = time.monotonic() - started
    row = {
        "cmd": "pretrain",
        **({"recipe": changed} if changed is not None else {}),
        "chain_steps": recipe.chain_steps,
        "parameters": meta["parameters"],
        "folder": str(out),
        "drill_examples": len(drill),
        "chain_problems": len(chains),
        "lookups": recipe.lookups,
        "drill_accuracy": round(meta["drill_accuracy"], 4),
        "loss_last_10pct": round(meta["final_loss"], 4),
        "corpus_seconds": round(corpus_s, 1),
        "pretrain_seconds": round(pretrain_s, 1),
        "cpu_model": _cpu(),
    }
    started = time.monotonic()
    for pool in (0, 7):
        scored = sft_forgetting.accuracy(str(out), pool, 0)
        row[f"accuracy_pool{pool}"] = scored["accuracy"]
        row[f"first_error_pool{pool}"] = scored["first_error"]
    row["eval_seconds"] = round(time.monotonic() - started, 1)
    sft_forgetting._record(row)


def cmd_eval(folder: str) -> None:
    row = {"cmd": "eval", "folder": folder}
    for pool in (0, 7):
        scored = sft_forgetting.accuracy(folder, pool, 0)
        row[f"accuracy_pool{pool}"] = scored["accuracy"]
        row[f"first_error_pool{pool}"] = scored["first_error"]
    sft_forgetting._record(row)


def cmd_sft(folder: str, size: str, seed: str, pool_seed: str, lr: str) -> None:
    sft_forgetting.cmd_sft(
        size, seed, pool_seed, "0", "pretrain", f"base={folder}", f"learning_rate={lr}", "eval=acc"
    )


if __name__ == "__main__":
    print_environment()
    {"pretrain": cmd_pretrain, "recipe": cmd_recipe, "sft": cmd_sft, "eval": cmd_eval}[sys.argv[1]](
        *sys.argv[2:]
    )
