"""Does the validation split choose the draw the test split would, and does it choose the
kind of base that reads a step's operator by the name?

    python docs/experiments/draw_selection.py FOLDER ...

For each base folder (draws of the pretraining recipe, e.g. ``/tmp/recipe_draws/shipped/s7``):
greedy accuracy on the 1000 problems of the task's ``validation`` split that
``synthdata pretrain --draws`` chooses by (``pretrain.greedy_accuracy``, stream seed 0), on
the 1000 test problems of pools 0 and 7 (``pretrain.score_base``), and the share of operators
right under teacher forcing where a dead end reading the same quantity is stated before the
step's own sentence (``operator_source.py``: about 86% for a base that reads by the name,
46-55% for one that reads by the quantity). Appends one row per folder to
``draw_selection.jsonl`` next to this file and prints a markdown table sorted by validation
accuracy, then which draw each split would keep. Run with one torch thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import operator_source  # noqa: E402
from base_recipe import _cpu  # noqa: E402

from synthdata_assets.config import load_config  # noqa: E402
from synthdata_assets.pretrain import (  # noqa: E402
    VALIDATION_PROBLEMS,
    VALIDATION_SEED,
    greedy_accuracy,
    score_base,
)
from synthdata_assets.problems import generated_split  # noqa: E402
from training.checkpoint import load_checkpoint, read_meta  # noqa: E402

OUT = Path(__file__).with_name("draw_selection.jsonl")


def score(folder: str) -> dict:
    config = load_config("demo")
    validation = generated_split(
        config.task, "validation", VALIDATION_PROBLEMS, seed=VALIDATION_SEED
    )
    model, tokenizer = load_checkpoint(folder)
    pools = {
        pool: score_base(
            model, tokenizer, load_config("demo", overrides={"task": {"pool_seed": pool}})
        )["accuracy"]
        for pool in (0, 7)
    }
    counts = operator_source.sources(folder)
    before = operator_source.CASES[2]
    return {
        "folder": folder,
        "seed": read_meta(folder).get("recipe", {}).get("seed"),  # None: a continued base
        "validation": round(100 * greedy_accuracy(model, tokenizer, config, validation), 1),
        "pool0": round(100 * pools[0], 1),
        "pool7": round(100 * pools[7], 1),
        "operator_sibling_before": round(100 * counts[before, "right"] / counts[before, "n"]),
        "cpu_model": _cpu(),
    }


def main(*folders: str) -> None:
    rows = []
    for folder in folders:
        rows.append(score(folder))
        with OUT.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    print("| draw | validation | pool 0 | pool 7 | operator, sibling before |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: -r["validation"]):
        cells = (r["folder"], r["validation"], r["pool0"], r["pool7"], r["operator_sibling_before"])
        print("| " + " | ".join(map(str, cells)) + " |")
    for split in ("validation", "pool0", "pool7"):
        print(f"kept by {split}: {max(rows, key=lambda r: r[split])['folder']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
