"""The shipped base model of the embedded task: its recipe, and the one command that makes it.

The study starts from a pretrained model, as the paper's starts from DeepSeek-Math-7B. For the
embedded task that model is a small Llama pretrained here once, by :func:`pretrain_base` with
the :class:`PretrainRecipe`, and committed to the repository under :data:`SHIPPED_BASE`
(safetensors, tokenizer, and ``meta.json`` holding the recipe and the base's greedy accuracy
on the demo preset's test split). ``synthdata pretrain`` runs it and prints that score beside
the shipped base's. A test compares the code's default recipe with the shipped
``meta.json``, so a change of the task or the recipe cannot silently keep using a stale base.

What the base learns is the task's world, not the whole task. Phase 1 drills the arithmetic
facts and the two name lookups of a step line (:func:`lookup_drill`), with the loss on the
drilled token alone and no EOS. Phase 2 trains on chain problems (from its own split, one
step to four, where the task has two to four) with the drill mixed in, their dead ends
stated anywhere after the quantity they read, as the task states them
(``dead_end_order``). A base whose pretraining stated every dead end after the step to take
learned to take a step's operator from the first sentence reading the same quantity, a
shortcut no amount of fine-tuning data undid. Phase 3 (``polish_steps``) continues phase 2
at a lower learning rate. The draws of this recipe differ by seed (4-36% after phase 2); the
shipped base is seed 15, one of the two draws of 25 measured that read a step's operator by
the name just written, which phase 3 takes from 22 to 64%. The tokenizer is trained on the
same pretraining text, never on test questions. How each part of the recipe was found is in
docs/laptop-study.md.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Literal

import polars as pl
import torch
from pydantic import Field

from synthdata_assets.config import SHIPPED_BASE, SHIPPED_NAME, ExperimentConfig
from synthdata_assets.evaluations import greedy_solutions
from synthdata_assets.problems import generated_split, problem_pool
from synthdata_assets.tasks import embedded
from training.checkpoint import META_FILE, load_checkpoint, read_meta, save_checkpoint
from training.config import ModelConfig, Section, TrainingConfig
from training.generation import SamplingParams
from training.generation.transformers_engine import TransformersGenerator
from training.model import build_tiny_llama, count_parameters
from training.progress import Progress, no_progress
from training.prompts import format_example, format_prompt
from training.sft import train_sft
from training.tokenizer import build_tokenizer

Log = Callable[[str], None]

# Phase 1: what gets a small model off the loss plateau of a modular table.
DRILL_TRAINING = TrainingConfig(
    batch_size=64, learning_rate=3e-3, weight_decay=0.1, warmup_ratio=0.02, bf16=False
)


# Phase 3's batch order: seed + 100, as the continuation that found it (sft_forgetting.py).
POLISH_SEED = 100


class PretrainRecipe(Section):
    """Everything that determines the shipped base (see the module docstring)."""

    modulus: int = Field(23, description="The task's modulus the base is drilled on.")
    multiply: bool = Field(True, description="Whether 'times as many' steps exist.")
    max_constant: int | None = Field(5, description="The largest constant of a step.")
    shuffle: bool = Field(False, description="Sentences shuffled (else dependency order).")
    max_steps: int = Field(4, ge=1, description="Longest chain in phase 2.")
    dead_ends: int = Field(
        2,
        ge=0,
        description="Dead ends per pretraining problem (stated where dead_end_order says).",
    )
    dead_end_order: Literal["after", "anywhere"] = Field(
        "anywhere",
        description="Where phase 2 states each dead end: always after the needed step it "
        "sits beside, or anywhere after the quantity it reads (as the task does).",
    )
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 3
    intermediate_size: int = 384
    max_seq_len: int = 320
    vocab_size: int = 512
    drill_steps: int = Field(1500, ge=0, description="Phase 1 updates (batch 64).")
    lookups: int = Field(
        20000, ge=0, description="Phase 1: lookup examples mixed with the arithmetic."
    )
    operand_lookups: bool = Field(
        False,
        description="Phase 1 also drills the operator and constant lookups of a step line, "
        "on questions whose dead ends are stated anywhere.",
    )
    chain_steps: int = Field(3000, ge=0, description="Phase 2 updates.")
    chain_learning_rate: float = 2e-3
    chain_batch_size: int = 32
    polish_steps: int = Field(
        1000,
        ge=0,
        description="Phase 3: more updates on phase 2's data, from a new warmup at "
        "polish_learning_rate. It lifts the draws that read a step's operator by the name just "
        "written (seed 15: from 22 to 64% with 1000 updates) and barely moves the others "
        "(docs/experiments/recipe_draws.md, step 7), so with --draws it makes those draws the "
        "ones validation keeps.",
    )
    polish_learning_rate: float = 5e-4
    seed: int = 15

    def learner(self) -> ModelConfig:
        return ModelConfig(
            name="tiny-llama",
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_seq_len=self.max_seq_len,
        )

    def task_params(self) -> embedded.EmbeddedParams:
        """The world of the pretraining text: chains without dead ends."""
        return embedded.EmbeddedParams(
            modulus=self.modulus,
            min_steps=1,
            max_steps=self.max_steps,
            n_distractors=self.dead_ends,
            cue_rate=1.0 if self.dead_ends and self.dead_end_order == "after" else None,
            multiply=self.multiply,
            graph="chain",
            max_constant=self.max_constant,
            shuffle=self.shuffle,
        )


LOOKUPS = ("name", "read", "operator", "constant")


def lookup_drill(
    params: embedded.EmbeddedParams,
    *,
    seed: int,
    n: int,
    kinds: Sequence[str] = ("name", "read"),
) -> list[tuple[str, str]]:
    """``n`` examples of the lookups of a step line, with the loss on the looked-up token
    alone: a chain question and the solution's first lines, then

    - ``name``: ``After Fay,``, completed by the quantity whose sentence reads Fay;
    - ``read``: ``After``, completed by the name the previous line computed (or the given);
    - ``operator``: ``After Fay, Max has 14``, completed by the operator of Max's sentence;
    - ``constant``: ``After Fay, Max has 14 +``, completed by its constant.

    Phase 2 alone left the name lookups at chance for small models (docs/laptop-study.md);
    drilled like the arithmetic table, they are learned.
    """
    out = []
    problems = embedded.generate_problems(params, n, seed=seed, split="lookup")
    for i, problem in enumerate(problems):
        lines = embedded.solve(problem)
        j = i % len(lines) if i % 3 else 0
        head, tail = lines[j].removeprefix("After ").split(" has ")
        read, name = head.split(", ")
        a, op, b = tail.split(" ")[:3]
        context = format_prompt(problem.question) + "".join(line + "\n" for line in lines[:j])
        kind = kinds[i % len(kinds)]
        if kind == "name":
            out.append((context + f"After {read},", f" {name}"))
        elif kind == "read":
            out.append((context + "After", f" {read}"))
        elif kind == "operator":
            out.append((context + f"After {read}, {name} has {a}", f" {op}"))
        elif kind == "constant":
            out.append((context + f"After {read}, {name} has {a} {op}", f" {b}"))
        else:
            raise ValueError(f"unknown lookup {kind!r} (known: {', '.join(LOOKUPS)})")
    return out


def pretraining_corpus(recipe: PretrainRecipe) -> tuple[list, list]:
    """(drill pairs, chain (prompt, completion) pairs) of the recipe."""
    params = recipe.task_params()
    # Drill completions stop mid-line: trained with EOS after them, a model learns to stop
    # after a name or a number.
    drill = embedded.arithmetic_drill(params, seed=recipe.seed)
    drill += lookup_drill(params, seed=recipe.seed, n=recipe.lookups)
    if recipe.operand_lookups:
        # On questions whose dead ends are stated anywhere: the step's own sentence, not the
        # first one reading the same quantity, holds its operator and constant.
        anywhere = dataclasses.replace(params, cue_rate=None)
        drill += lookup_drill(
            anywhere, seed=recipe.seed + 1, n=recipe.lookups, kinds=("operator", "constant")
        )
    drill = [(prompt, completion, False) for prompt, completion in drill]
    n_chains = recipe.chain_steps * recipe.chain_batch_size // 2
    chains = embedded.generate_problems(params, max(n_chains, 64), seed=recipe.seed, split="base")
    pairs = [
        format_example(p.question, "\n".join([*embedded.solve(p), _answer(p)])) for p in chains
    ]
    return drill, pairs


def _answer(problem: embedded.EmbeddedProblem) -> str:
    return embedded.final_answer_line(problem.answer)


def pretrain_base(
    recipe: PretrainRecipe,
    folder: Path,
    *,
    log: Log,
    progress: Progress = no_progress,
    score_on: ExperimentConfig | None = None,
) -> dict:
    """Pretrain the base by ``recipe`` into ``folder``; returns its ``meta.json``. With
    ``score_on``, the meta also holds the base's greedy accuracy on that configuration's test
    split (:func:`score_base`, as ``greedy_accuracy``)."""
    started = time.monotonic()
    drill, chains = pretraining_corpus(recipe)
    tokenizer = build_tokenizer(
        [d[0] + d[1] for d in drill] + [p + c for p, c in chains], vocab_size=recipe.vocab_size
    )
    model = build_tiny_llama(recipe.learner(), tokenizer, seed=recipe.seed)
    log(f"base: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)}")
    train = {"max_seq_len": recipe.max_seq_len, "log": log, "progress": progress}
    if recipe.drill_steps:
        log(f"phase 1: {len(drill)} arithmetic facts and lookups, {recipe.drill_steps} updates")
        train_sft(
            model, tokenizer, drill, config=DRILL_TRAINING, seed=recipe.seed,
            max_steps=recipe.drill_steps, **train,
        )  # fmt: skip
    drill_accuracy = drill_accuracy_of(model, tokenizer, drill)
    log(f"phase 1: drill accuracy {drill_accuracy:.1%}")
    phase2 = TrainingConfig(
        batch_size=recipe.chain_batch_size, learning_rate=recipe.chain_learning_rate, bf16=False
    )
    stats = None
    if recipe.chain_steps:
        log(f"phase 2: {len(chains)} chain problems with the drill mixed in")
        stats = train_sft(
            model, tokenizer, chains + drill, config=phase2, seed=recipe.seed + 1,
            max_steps=recipe.chain_steps, **train,
        )  # fmt: skip
    if recipe.polish_steps:
        log(f"phase 3: {recipe.polish_steps} more updates at {recipe.polish_learning_rate:g}")
        phase3 = phase2.model_copy(update={"learning_rate": recipe.polish_learning_rate})
        stats = train_sft(
            model, tokenizer, chains + drill, config=phase3, seed=recipe.seed + POLISH_SEED,
            max_steps=recipe.polish_steps, **train,
        )  # fmt: skip
    meta = {
        "method": "base",
        "name": SHIPPED_NAME,
        "recipe": recipe.model_dump(),
        "parameters": count_parameters(model),
        "drill_accuracy": drill_accuracy,
        "final_loss": stats.mean_loss_last_10pct if stats else None,
        "pretrain_seconds": round(time.monotonic() - started, 1),
        # Thread count changes floating-point sums, so the same recipe on another count (or
        # CPU) trains a different base; and draws of this recipe differ widely (4-64% of the
        # task over 25 seeds, docs/laptop-study.md), so such a base can be much worse than the
        # shipped one.
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if score_on is not None:
        meta["greedy_accuracy"] = score_base(model, tokenizer, score_on)
        log(
            f"greedy accuracy {meta['greedy_accuracy']['accuracy']:.1%} on "
            f"{meta['greedy_accuracy']['test_problems']} test problems"
        )
    save_checkpoint(model, tokenizer, folder, meta)
    return meta


def drill_accuracy_of(model, tokenizer, drill: Sequence[tuple]) -> float:
    """Share of the arithmetic drill's facts the model completes right, greedily (results are
    single tokens): whether the base model learned the table."""
    outputs = TransformersGenerator(model, tokenizer, batch_size=256).generate(
        [d[0] for d in drill], SamplingParams(max_new_tokens=1)
    )
    right = sum(o[0].text.strip() == d[1].strip() for o, d in zip(outputs, drill, strict=True))
    return right / len(drill)


def score_base(
    model, tokenizer, config: ExperimentConfig, *, progress: Progress = no_progress
) -> dict:
    """Greedy accuracy of a base model on the test split of ``config``'s pool, as the
    ``base_evaluation`` asset scores it. Draws of the recipe differ by tens of points
    (docs/laptop-study.md), so this is the figure to compare before a base replaces another."""
    test = problem_pool(config.task).filter(pl.col("split") == "test")
    return {
        "pool_seed": config.task.pool_seed,
        "test_problems": test.height,
        "accuracy": greedy_accuracy(model, tokenizer, config, test, progress=progress),
    }


def greedy_accuracy(
    model,
    tokenizer,
    config: ExperimentConfig,
    problems: pl.DataFrame,
    *,
    progress: Progress = no_progress,
) -> float:
    """Share of ``problems`` the model solves greedily, sampled and graded as ``config``
    says."""
    solved = greedy_solutions(
        TransformersGenerator(model, tokenizer, batch_size=config.sampling.batch_size),
        problems,
        config.sampling,
        seed=0,
        answer_format=config.answer_format,
        progress=progress,
    )
    return float(solved["is_correct"].mean())


VALIDATION_PROBLEMS = 1000
# The validation split's stream: one for every pool, so the draw chosen does not depend on
# task.pool_seed, and no pool's train or test split is what it is chosen by.
VALIDATION_SEED = 0


def draws_folder(folder: Path) -> Path:
    """Where :func:`pretrain_draws` keeps each draw (``seed-N``), beside ``folder``."""
    return folder.parent / f".{folder.name}.draws"


def pretrain_draws(
    recipe: PretrainRecipe,
    folder: Path,
    *,
    draws: int,
    score_on: ExperimentConfig,
    jobs: int | None = None,
    validation_problems: int | None = None,
    log: Log,
) -> dict:
    """Pretrain ``draws`` draws of ``recipe`` (seeds ``recipe.seed`` to
    ``recipe.seed + draws - 1``), keep the one with the best greedy accuracy on the task's
    ``validation`` split in ``folder``, and return its ``meta.json``.

    Draws of the shipped recipe solve 4-64% of the test split (docs/laptop-study.md), so
    one draw says little about a recipe; the best of several on problems no study trains or
    tests on is the base to use. Each draw is trained in its own process at one torch thread
    (``jobs`` at a time, by default one per core): two one-thread processes outrun one
    two-thread process, and the shipped base was trained at one thread, so the first draw of
    the default recipe on a CPU like the one named in its meta is the shipped base again. Each
    finished draw is kept under :func:`draws_folder` (written atomically), so a run that is
    stopped resumes from the draws it finished. The meta gains ``draws`` (seed, validation
    accuracy, loss, seconds of each) and ``validation`` (the split: ``validation_problems``
    problems, :data:`VALIDATION_PROBLEMS` by default), and ``greedy_accuracy``
    on ``score_on``'s test split as :func:`pretrain_base` records it.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if score_on.task.name != "embedded":
        raise ValueError(f"the base is scored on the embedded task, not {score_on.task.name!r}")
    store = draws_folder(folder)
    recipes = [recipe.model_copy(update={"seed": recipe.seed + k}) for k in range(draws)]
    todo = []
    for each in recipes:
        kept = store / f"seed-{each.seed}"
        if (kept / META_FILE).is_file() and _recipe_of(read_meta(kept)) == each:
            log(f"seed {each.seed}: kept from an earlier run ({kept})")
        else:
            todo.append(each)
    if todo:
        jobs = max(1, min(len(todo), jobs or os.cpu_count() or 1))
        log(
            f"pretraining {len(todo)} draw(s) into {store}, {jobs} at a time, one torch thread "
            "each (a draw of the default recipe: about 16 minutes on one core of an AMD EPYC)"
        )
        _run_draws(todo, store, jobs)
    validation = generated_split(
        score_on.task,
        "validation",
        validation_problems or VALIDATION_PROBLEMS,
        seed=VALIDATION_SEED,
    )
    rows = [_scored_draw(store / f"seed-{each.seed}", score_on, validation) for each in recipes]
    for row in rows:
        log(f"seed {row['seed']}: validation accuracy {row['validation_accuracy']:.1%}")
    best = max(rows, key=lambda row: (row["validation_accuracy"], -row["seed"]))
    kept = store / f"seed-{best['seed']}"
    model, tokenizer = load_checkpoint(kept)
    meta = read_meta(kept) | {
        "draws": rows,
        "validation": {
            "split": "validation",
            "stream_seed": VALIDATION_SEED,
            "problems": validation.height,
        },
        "greedy_accuracy": score_base(model, tokenizer, score_on),
    }
    save_checkpoint(model, tokenizer, folder, meta)
    return meta


# What a recipe field added since a draw was stored means where it is absent: the phase it
# controls did not run, whatever the field's default is now.
_ABSENT_FIELDS = {"polish_steps": 0}


def _recipe_of(meta: dict) -> PretrainRecipe | None:
    """The recipe a stored draw was made by, fields added since read as ``_ABSENT_FIELDS`` says
    (so a draw made before phase 3 existed is still reused, as a draw without it); None if
    unreadable."""
    stored = meta.get("recipe")
    if not isinstance(stored, dict):
        return None
    try:
        return PretrainRecipe.model_validate({**_ABSENT_FIELDS, **stored})
    except ValueError:
        return None


def _scored_draw(folder: Path, score_on: ExperimentConfig, validation: pl.DataFrame) -> dict:
    """A draw's row of the meta's ``draws``: its seed, validation accuracy, loss and time."""
    model, tokenizer = load_checkpoint(folder)
    meta = read_meta(folder)
    return {
        "seed": meta["recipe"]["seed"],
        "validation_accuracy": greedy_accuracy(model, tokenizer, score_on, validation),
        "final_loss": meta["final_loss"],
        "drill_accuracy": meta["drill_accuracy"],
        "pretrain_seconds": meta["pretrain_seconds"],
    }


def _run_draws(recipes: list[PretrainRecipe], store: Path, jobs: int) -> None:
    # Spawned, not forked: a forked child inherits the parent's torch thread pool, and the
    # draws must train exactly as a fresh one-thread process does.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    try:
        futures = [
            pool.submit(
                _pretrain_one_draw, each.model_dump_json(), str(store / f"seed-{each.seed}")
            )
            for each in recipes
        ]
        for future in as_completed(futures):
            future.result()
    except BaseException:
        # One failed or interrupted draw stops the run; the draws already written stay.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _pretrain_one_draw(recipe_json: str, folder: str) -> None:
    """One draw, in a worker process at one torch thread; lines are prefixed by its seed."""
    from synthdata_assets.terminal import progress_logger

    torch.set_num_threads(1)
    recipe = PretrainRecipe.model_validate_json(recipe_json)

    def log(line: str) -> None:
        print(f"seed {recipe.seed}: {line}", flush=True)

    pretrain_base(
        recipe, Path(folder), log=log, progress=progress_logger(log, "updates", every_s=60)
    )


def shipped_meta(folder: Path = SHIPPED_BASE) -> dict:
    """The ``meta.json`` of a pretrained base folder."""
    return json.loads((folder / "meta.json").read_text())
