"""Does SFT on a few hundred problems forget what the base's drill taught, and does replaying
the drill during SFT keep it?

    python docs/experiments/sft_forgetting.py base [POOL_SEED]
    python docs/experiments/sft_forgetting.py sft SIZE SEED POOL_SEED REPLAY [MIX [KEY=VALUE ...]]
    python docs/experiments/sft_forgetting.py noise SIGMA NOISE_SEED [POOL_SEED]
    python docs/experiments/sft_forgetting.py continue STEPS [LR [SEED [FOLDER [START]]]]

``base`` scores the shipped base (models/embedded-base); ``sft`` fine-tunes it as the demo
preset's ``sft_model`` does (the oracle teacher's solutions of the partition's SIZE problems,
``teacher`` section's slip and spurious rates, filtered to correct ones; the preset's
``training`` section; partition seed SEED; ``task.pool_seed`` POOL_SEED), with REPLAY times as
many drill examples as SFT examples mixed into its data. The drill is the base's own
(``pretraining_corpus(PretrainRecipe())``'s first element: arithmetic facts and name/read
lookups, loss on the one drilled token, no EOS); MIX ``pretrain`` samples it as pretraining
mixed it (11% arithmetic facts), ``half`` takes half arithmetic facts, half lookups, and
``chains`` replays phase 2's chain problems instead (gold solutions, drawn from the first
4000 of the 48000 the base was pretrained on). ``KEY=VALUE`` overrides a ``training`` setting
(``warmup_ratio=0.5``); ``data=chains`` is the control that trains on as many of phase 2's
chain problems (the first 4000, drawn by another stream) as the partition has verified
teacher solutions, instead of those solutions. ``steps=N`` trains N updates (``max_steps``;
with ``data=chains``, on more chains when N exceeds 3 epochs of them), ``base=FOLDER`` starts
from another base, ``eval=acc`` scores greedy accuracy only. ``noise`` scores the base with
Gaussian noise added to its weights; ``continue`` continues the base's phase 2 (see their
docstrings).

Each run scores its model on

- the task: greedy accuracy on the pool's 1000 test problems, as ``evaluations`` does, and
  the first error of each greedy solution by kind (``errors.first_error``: ``table`` is a
  wrong result of right operands, ``answer`` a wrong answer line after a right chain);
- the drill: ``drill_accuracy_of`` on every arithmetic fact of the drill (2576) and on the
  whole drill (what the base's ``meta.json`` records after phase 1);
- the four lookups of a step line (:func:`synthdata_assets.pretrain.lookup_drill`) on 1200
  fresh questions of the pretraining world, dead ends stated anywhere (300 per lookup);
- the same skills in context: the gold solutions of the first 300 test problems under
  teacher forcing, the share of tokens of each role the model would predict (argmax) and
  their mean loss, by role of a step line (``read``, ``name``, ``op``, ``b``, ``c``: the
  result, i.e. the arithmetic table in context) and the answer's value (``answer``).

and appends one JSON row to ``sft_forgetting.jsonl`` next to this file. Run with one torch
thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from synthdata_assets import models
from synthdata_assets.config import load_config
from synthdata_assets.evaluations import greedy_solutions
from synthdata_assets.pretrain import (
    LOOKUPS,
    SHIPPED_BASE,
    drill_accuracy_of,
    lookup_drill,
)
from synthdata_assets.problems import problem_pool, training_subset
from synthdata_assets.tasks import embedded
from synthdata_assets.teacher import teacher_solutions
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainingConfig
from training.generation import SamplingParams, make_generator
from training.generation.transformers_engine import TransformersGenerator
from training.lora import load_trainable
from training.prompts import format_example
from training.sft import train_sft

sys.path.insert(0, str(Path(__file__).parent))
from base_p import recipe_p  # noqa: E402
from errors import first_error  # noqa: E402

OUT = Path(__file__).with_name("sft_forgetting.jsonl")


def _config(pool_seed: int):
    return load_config("demo", overrides={"task": {"pool_seed": pool_seed}})


@functools.cache
def _problems(pool_seed: int) -> pl.DataFrame:
    return problem_pool(_config(pool_seed).task)


@functools.cache
def _drill() -> tuple[list, list]:
    """(arithmetic facts, name/read lookups) of the base's drill, as pretraining builds them
    (pretraining_corpus without its 48000 chain problems)."""
    recipe = recipe_p()
    params = recipe.task_params()
    facts = embedded.arithmetic_drill(params, seed=recipe.seed)
    lookups = lookup_drill(params, seed=recipe.seed, n=recipe.lookups)
    return [(p, c, False) for p, c in facts], [(p, c, False) for p, c in lookups]


@functools.cache
def _chains(n: int = 4000) -> list:
    """The first ``n`` chain problems of pretraining's phase 2, as its (prompt, completion)."""
    recipe = recipe_p()
    problems = embedded.generate_problems(recipe.task_params(), n, seed=recipe.seed, split="base")
    return [
        format_example(
            p.question, "\n".join([*embedded.solve(p), embedded.final_answer_line(p.answer)])
        )
        for p in problems
    ]


def _replay(n: int, mix: str, seed: int) -> list:
    facts, lookups = _drill()
    rng = random.Random(f"replay/{seed}")
    if mix == "chains":
        return rng.sample(_chains(), n)
    if mix == "pretrain":
        return rng.sample(facts + lookups, n)
    if mix == "half":
        return rng.sample(facts, n // 2) + rng.sample(lookups, n - n // 2)
    raise ValueError(f"unknown mix {mix!r} (pretrain, half, chains)")


def skills(folder: str) -> dict:
    """Drill and lookup accuracies of the model at ``folder`` (greedy, one token)."""
    model, tokenizer = load_checkpoint(folder)
    facts, lookups = _drill()
    row = {
        "arithmetic": round(drill_accuracy_of(model, tokenizer, facts), 4),
        "drill": round(drill_accuracy_of(model, tokenizer, facts + lookups), 4),
    }
    questions = lookup_drill(recipe_p().task_params(), seed=99, n=1200, kinds=LOOKUPS)
    outs = TransformersGenerator(model, tokenizer, batch_size=256).generate(
        [p for p, _ in questions], SamplingParams(max_new_tokens=1)
    )
    right = collections.defaultdict(list)
    for i, ((_, completion), out) in enumerate(zip(questions, outs, strict=True)):
        right[LOOKUPS[i % len(LOOKUPS)]].append(out[0].text.strip() == completion.strip())
    row |= {f"lookup_{k}": round(sum(v) / len(v), 4) for k, v in right.items()}
    return row


# Roles of the tokens of a step line "After Cid, Fay has 9 - 3 = 6." (one token each).
ROLES = ("After", "read", ",", "name", "has", "a", "op", "b", "=", "c", ".")
SCORED = ("read", "name", "op", "b", "c", "answer")


def in_context(folder: str, pool_seed: int, n: int = 300) -> dict:
    """Argmax accuracy and mean loss per role on gold test solutions (teacher forcing)."""
    model, tokenizer = load_checkpoint(folder)
    return in_context_of(model, tokenizer, pool_seed, n)


def in_context_of(model, tokenizer, pool_seed: int, n: int = 300) -> dict:
    """:func:`in_context` of a model in memory (in eval mode)."""
    test = _problems(pool_seed).filter(pl.col("split") == "test").head(n)
    right, loss = collections.defaultdict(list), collections.defaultdict(list)
    for role, _, logp, argmax_right in gold_scores(model, tokenizer, test):
        if role in SCORED:
            right[role].append(argmax_right)
            loss[role].append(-logp)
    return {
        **{f"ctx_{r}": round(sum(right[r]) / len(right[r]), 4) for r in SCORED},
        **{f"ctx_loss_{r}": round(sum(loss[r]) / len(loss[r]), 4) for r in SCORED},
    }


def gold_scores(model, tokenizer, test: pl.DataFrame):
    """(role, right token, its log-probability, whether it is the argmax) at every token of
    the gold solutions of the ``test`` problems, under teacher forcing (:func:`roles_of`)."""
    for pid, spec in test.select("problem_id", "spec").iter_rows():
        p = embedded.EmbeddedProblem.from_spec(pid, spec)
        solution = "\n".join([*embedded.solve(p), embedded.final_answer_line(p.answer)])
        prompt, completion = format_example(p.question, solution)
        head = tokenizer(prompt)["input_ids"]
        tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1 : -1].float()
        logp = torch.log_softmax(logits, -1)[range(len(tail)), tail].tolist()
        argmax_right = [b == t for b, t in zip(logits.argmax(-1).tolist(), tail, strict=True)]
        yield from zip(roles_of(tokenizer, tail), tail, logp, argmax_right, strict=True)


def roles_of(tokenizer, completion_ids: list[int]) -> list[str | None]:
    """The role of each token of a solution: :data:`ROLES` within a step line, ``answer`` for
    the answer's value, else None (one token per entity and number)."""
    out: list[str | None] = []
    k, answer_line = 0, False
    for token in completion_ids:
        text = tokenizer.decode([token])
        if text == "\n":
            out.append(None)
            k, answer_line = 0, False
            continue
        answer_line = answer_line or (k == 0 and text.strip() == "The")
        out.append(("answer" if k == 3 else None) if answer_line else ROLES[min(k, 10)])
        k += 1
    return out


def accuracy(folder: str, pool_seed: int, seed: int) -> dict:
    """Greedy accuracy on the pool's test split, as the ``evaluations`` asset computes it,
    and the first errors of the greedy solutions by kind."""
    test = _problems(pool_seed).filter(pl.col("split") == "test")
    solutions = greedy(_config(pool_seed), folder, test, seed, log=print)
    return {
        "accuracy": round(100 * float(solutions["is_correct"].mean()), 1),
        "first_error": first_error_kinds(solutions, test),
    }


def first_error_kinds(solutions: pl.DataFrame, problems: pl.DataFrame) -> dict[str, int]:
    """How many of the greedy ``solutions`` (columns problem_id, solution) first go wrong by
    each kind of :func:`errors.first_error`, most common first; ``problems`` holds their specs."""
    specs = dict(problems.select("problem_id", "spec").iter_rows())
    kinds = collections.Counter(
        first_error(embedded.EmbeddedProblem.from_spec(pid, specs[pid]), text)
        for pid, text in solutions.select("problem_id", "solution").iter_rows()
    )
    return dict(kinds.most_common())


def greedy(config, folder: str, test: pl.DataFrame, seed: int, log=lambda _m: None):
    """The greedy solutions of ``folder``'s model on ``test``, graded, as the ``evaluations``
    asset samples them under ``config``."""
    generator = make_generator(
        config.sampling.backend, folder, batch_size=config.sampling.batch_size, log=log
    )
    return greedy_solutions(
        generator, test, config.sampling, seed=seed, answer_format=config.answer_format
    )


def write_row(path: Path, row: dict) -> None:
    """Print ``row`` and append it to the JSON-lines file ``path``, after the CPU capability
    and the torch thread count it was measured with."""
    row = {
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        **row,
    }
    print(json.dumps(row), flush=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _record(row: dict) -> None:
    write_row(OUT, row)


def cmd_base(pool_seed: str = "0") -> None:
    started = time.monotonic()
    folder = str(SHIPPED_BASE)
    row = {
        "cmd": "base",
        "pool_seed": int(pool_seed),
        **accuracy(folder, int(pool_seed), 0),
    }
    row |= skills(folder) | in_context(folder, int(pool_seed))
    _record(row | {"seconds": round(time.monotonic() - started, 1)})


def cmd_sft(
    size: str, seed: str, pool_seed: str, replay: str, mix: str = "pretrain", *settings: str
) -> None:
    size_, seed_, pool_, ratio = int(size), int(seed), int(pool_seed), float(replay)
    config = _config(pool_)
    overrides = {
        k: json.loads(v) if k not in ("data", "base", "eval") else v
        for k, v in (a.split("=", 1) for a in settings)
    }
    data = overrides.pop("data", "teacher")
    steps = overrides.pop("steps", None)
    base = overrides.pop("base", str(SHIPPED_BASE))
    full_eval = overrides.pop("eval", "full") == "full"
    training = config.training.model_copy(update=overrides)
    started = time.monotonic()
    problems = _problems(pool_)
    subset = training_subset(problems, size_, seed_)
    table = teacher_solutions(
        config.teacher, subset, seed_, answer_format=config.answer_format, log=lambda _m: None
    )
    examples = models.sft_examples(table, problems)
    pairs = [format_example(q, s) for q, s in examples]
    if data == "chains":
        # steps=N: N updates (max_steps); as many chains as SFT's while N fits in 3 epochs of
        # them, else enough for N updates in 3 epochs (never more than 3 epochs of a chain).
        n = len(pairs)
        if steps is not None and steps > 3 * math.ceil(n / 32):
            n = math.ceil(steps / 3) * 32
        pairs = random.Random(f"control/{seed_}").sample(_chains(), n)
    drill = _replay(round(ratio * len(pairs)), mix, seed_)
    models.seeded(seed_)
    model, tokenizer, stored = load_trainable(base, training)
    start = {n: t.detach().clone() for n, t in model.named_parameters()}
    stats = train_sft(
        model, tokenizer, pairs + drill, config=training, seed=seed_,
        max_seq_len=config.model.max_seq_len, max_steps=steps,
    )  # fmt: skip
    trained_s = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, tokenizer, Path(tmp), {"method": "sft-replay"}, dtype=stored)
        row = {
            "cmd": "sft",
            "size": size_,
            "seed": seed_,
            "pool_seed": pool_,
            "replay": ratio,
            "mix": mix if ratio else None,
            "data": data,
            "training": overrides | ({"max_steps": steps} if steps is not None else {}),
            **({"base": base} if base != str(SHIPPED_BASE) else {}),
            "sft_examples": len(pairs),
            "replay_examples": len(drill),
            "updates": stats.steps,
            "loss": round(stats.mean_loss_last_10pct, 4),
            "moved": _moved(model, start),
            **accuracy(tmp, pool_, seed_),
        }
        if full_eval:
            row |= skills(tmp) | in_context(tmp, pool_)
    row |= {"train_seconds": round(trained_s, 1), "seconds": round(time.monotonic() - started, 1)}
    _record(row)


def _moved(model: torch.nn.Module, start: dict) -> float:
    """How far training moved the weights: the mean over weight tensors (more than one
    element) of rms(change) / sd(tensor at the start), the unit of ``noise``'s sigma."""
    ratios = [
        float((t.detach().cpu().float() - start[n].cpu()).pow(2).mean().sqrt() / start[n].std())
        for n, t in model.named_parameters()
        if t.numel() > 1
    ]
    return round(sum(ratios) / len(ratios), 5)


def cmd_noise(sigma: str, noise_seed: str, pool_seed: str = "0") -> None:
    """The shipped base with Gaussian noise added to every weight tensor: sd ``sigma`` times
    that tensor's own sd (accuracy only)."""
    started = time.monotonic()
    model, tokenizer = load_checkpoint(str(SHIPPED_BASE))
    gen = torch.Generator().manual_seed(int(noise_seed))
    with torch.no_grad():
        for param in model.parameters():
            scale = float(sigma) * (param.float().std() if param.numel() > 1 else 0.0)
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, tokenizer, Path(tmp), {"method": "noise"}, dtype=model.dtype)
        row = {
            "cmd": "noise",
            "sigma": float(sigma),
            "noise_seed": int(noise_seed),
            "pool_seed": int(pool_seed),
            **accuracy(tmp, int(pool_seed), 0),
        }
    _record(row | {"seconds": round(time.monotonic() - started, 1)})


def cmd_continue(
    steps: str, lr: str = "5e-4", seed: str = "100", save: str = "", start: str = ""
) -> None:
    """Continue the shipped base's phase 2 (chains + drill, batch 32, as pretrain_base mixes
    them) for ``steps`` updates at peak ``lr`` with the trainer's warmup (0.05) and cosine
    decay; greedy accuracy on pools 0 and 7. ``seed`` orders the batches (phase 2 used 1).
    ``start``: continue the base in that folder instead (one pretrained by another recipe,
    ``base_recipe.py recipe``)."""
    from synthdata_assets.pretrain import pretraining_corpus

    started = time.monotonic()
    recipe = recipe_p()
    drill, chains = pretraining_corpus(recipe)
    built_s = time.monotonic() - started
    config = TrainingConfig(batch_size=recipe.chain_batch_size, learning_rate=float(lr), bf16=False)
    models.seeded(int(seed))
    model, tokenizer, stored = load_trainable(start or str(SHIPPED_BASE), config)
    stats = train_sft(
        model, tokenizer, chains + drill, config=config, seed=int(seed),
        max_seq_len=recipe.max_seq_len, max_steps=int(steps),
    )  # fmt: skip
    trained_s = time.monotonic() - started - built_s
    folder = Path(save) if save else Path(tempfile.mkdtemp())
    save_checkpoint(model, tokenizer, folder, {"method": "base-continued"}, dtype=stored)
    row = {
        "cmd": "continue",
        "steps": int(steps),
        "learning_rate": float(lr),
        "seed": int(seed),
        **({"start": start} if start else {}),
        "saved": save or None,
        "updates": stats.steps,
        "loss": round(stats.mean_loss_last_10pct, 4),
        "corpus_seconds": round(built_s, 1),
        "train_seconds": round(trained_s, 1),
    }
    for pool in (0, 7):
        row[f"accuracy_pool{pool}"] = accuracy(str(folder), pool, 0)["accuracy"]
    _record(row | {"seconds": round(time.monotonic() - started, 1)})


if __name__ == "__main__":
    commands = {"base": cmd_base, "sft": cmd_sft, "noise": cmd_noise, "continue": cmd_continue}
    commands[sys.argv[1]](*sys.argv[2:])
