"""How well a model does each lookup of a step line, given the right context (greedy, one
token), on questions whose dead ends are stated after the step to take and before it.

    python docs/experiments/lookups.py MODEL

The lookups are those of :func:`synthdata_assets.pretrain.lookup_drill` (name, read,
operator, constant), on 800 fresh questions per order. Appends one row to
probe_results.jsonl.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from probe import _record  # noqa: E402

from synthdata_assets.pretrain import LOOKUPS, PretrainRecipe, lookup_drill  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.generation import SamplingParams  # noqa: E402
from training.generation.transformers_engine import TransformersGenerator  # noqa: E402


def main(folder: str) -> None:
    model, tokenizer = load_checkpoint(folder)
    generator = TransformersGenerator(model, tokenizer, batch_size=256)
    row: dict = {"cmd": "lookups", "model": folder}
    # cue_rate 1.0: every dead end after the step to take; 0.0: one before it at each choice.
    for order, cue_rate in (("dead_end_after", 1.0), ("dead_end_before", 0.0)):
        params = dataclasses.replace(PretrainRecipe().task_params(), cue_rate=cue_rate)
        drill = lookup_drill(params, seed=99, n=800, kinds=LOOKUPS)
        outs = generator.generate([p for p, _ in drill], SamplingParams(max_new_tokens=1))
        right = collections.defaultdict(list)
        for i, ((_, completion), out) in enumerate(zip(drill, outs, strict=True)):
            right[LOOKUPS[i % len(LOOKUPS)]].append(out[0].text.strip() == completion.strip())
        row[order] = {k: round(sum(v) / len(v), 3) for k, v in right.items()}
    _record(row)


if __name__ == "__main__":
    main(*sys.argv[1:])
