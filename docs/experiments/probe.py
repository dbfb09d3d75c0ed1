"""Small, fast experiments on the embedded task, outside the pipeline (one size, one seed).

    python docs/experiments/probe.py pretrain OUT [recipe overrides as key=value ...]
    python docs/experiments/probe.py eval MODEL [task overrides ...]
    python docs/experiments/probe.py sft BASE SIZE OUT [epochs=3 lr=2e-3 task overrides ...]

``pretrain`` runs :func:`synthdata_assets.pretrain.pretrain_base` with the overrides and
evaluates the result on chains without dead ends and on the task's test split. ``eval``
scores a model folder greedily on the task's test split (task overrides such as
``n_distractors=2 cue_rate=0.9``) and prints accuracy, the ground-truth step labels of its
solutions and, with a cue, how often it follows the cue where it misleads. ``sft`` trains a
base on the oracle teacher's solutions of the first SIZE training problems.
Every command appends one JSON line to ``docs/experiments/probe_results.jsonl``.
"""

from __future__ import annotations

import collections
import json
import random
import sys
import time
from pathlib import Path

import torch

from synthdata_assets import verify
from synthdata_assets.pretrain import PretrainRecipe, pretrain_base, pretraining_corpus
from synthdata_assets.tasks import embedded
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainingConfig
from training.generation import SamplingParams
from training.generation.transformers_engine import TransformersGenerator
from training.prompts import format_example, format_prompt
from training.sft import train_sft

RESULTS = Path(__file__).with_name("probe_results.jsonl")
TASK = {
    "modulus": 23,
    "min_steps": 2,
    "max_steps": 4,
    "n_distractors": 2,
    "graph": "chain",
    "max_constant": 5,
    "shuffle": False,
}


def _kv(args: list[str]) -> dict:
    out = {}
    for arg in args:
        key, value = arg.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _record(row: dict) -> None:
    row = {
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        **row,
    }
    print(json.dumps(row))
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def evaluate(folder: str, task: dict, n: int = 400, split: str = "test") -> dict:
    params = embedded.EmbeddedParams(**{**TASK, **task})
    problems = embedded.generate_problems(params, n, seed=12345, split=split)
    model, tokenizer = load_checkpoint(folder)
    gen = TransformersGenerator(model, tokenizer, batch_size=256)
    outs = gen.generate(
        [format_prompt(p.question) for p in problems], SamplingParams(max_new_tokens=120)
    )
    right, labels, cue_points, cue_follow = 0, collections.Counter(), 0, 0
    for p, o in zip(problems, outs, strict=True):
        text = o[0].text
        right += verify.grade(text, p.answer, "embedded").is_correct
        labels.update(embedded.step_labels(p.spec, text))
        points, followed = embedded.cue_followed(p.spec, text)
        cue_points, cue_follow = cue_points + points, cue_follow + followed
    return {
        "accuracy": right / n,
        "labels": dict(labels),
        "cue_follow": cue_follow / cue_points if cue_points else None,
        "example": outs[0][0].text,
    }


def cmd_pretrain(out: str, *overrides: str) -> None:
    recipe = PretrainRecipe(**_kv(list(overrides)))
    meta = pretrain_base(recipe, Path(out), log=print)
    plain = evaluate(out, {"n_distractors": 0})
    task = evaluate(out, {})
    _record({"cmd": "pretrain", "out": out, "meta": meta, "no_dead_ends": plain, "task": task})


def cmd_more(base: str, out: str, steps: str, *overrides: str) -> None:
    """Continue phase 2 of a pretrained base for STEPS more updates (lr=..., seed=...)."""
    opts = _kv(list(overrides))
    recipe = PretrainRecipe(**opts.pop("recipe", {}))
    drill, chains = pretraining_corpus(recipe)
    model, tokenizer = load_checkpoint(base)
    config = TrainingConfig(batch_size=32, learning_rate=opts.get("lr", 1e-3), bf16=False)
    started = time.monotonic()
    stats = train_sft(
        model, tokenizer, chains + drill, config=config, seed=opts.get("seed", 5),
        max_steps=int(steps), max_seq_len=320,
    )  # fmt: skip
    save_checkpoint(model, tokenizer, Path(out), {"method": "probe-more", "from": base})
    row = {"cmd": "more", "base": base, "out": out, "steps": int(steps), **opts}
    row |= {"seconds": round(time.monotonic() - started, 1), "loss": stats.mean_loss_last_10pct}
    _record(row | {"no_dead_ends": evaluate(out, {"n_distractors": 0}), "task": evaluate(out, {})})


def cmd_eval(folder: str, *overrides: str) -> None:
    task = _kv(list(overrides))
    _record({"cmd": "eval", "model": folder, "task": task, **evaluate(folder, task)})


def cmd_sft(base: str, size: str, out: str, *overrides: str) -> None:
    opts = _kv(list(overrides))
    epochs, lr = opts.pop("epochs", 3), opts.pop("lr", 2e-3)
    params = embedded.EmbeddedParams(**{**TASK, **opts})
    problems = embedded.generate_problems(params, int(size), seed=0, split="train")
    rng = random.Random(0)
    pairs = [
        format_example(p.question, embedded.oracle_solution(p, rng=rng, spurious_rate=0.1))
        for p in problems
    ]
    model, tokenizer = load_checkpoint(base)
    started = time.monotonic()
    stats = train_sft(
        model, tokenizer, pairs, config=TrainingConfig(epochs=epochs, learning_rate=lr),
        seed=0, max_seq_len=320,
    )  # fmt: skip
    save_checkpoint(model, tokenizer, Path(out), {"method": "probe-sft"})
    test = {k: v for k, v in opts.items() if k != "cue_rate"}
    row = {"cmd": "sft", "base": base, "size": int(size), "epochs": epochs, "lr": lr, "task": opts}
    row |= {"seconds": round(time.monotonic() - started, 1), "loss": stats.mean_loss_last_10pct}
    _record(row | evaluate(out, test))


if __name__ == "__main__":
    commands = {"pretrain": cmd_pretrain, "more": cmd_more, "eval": cmd_eval, "sft": cmd_sft}
    commands[sys.argv[1]](*sys.argv[2:])
