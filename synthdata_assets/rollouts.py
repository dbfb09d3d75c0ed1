"""Step rollouts (asset ``step_rollouts``): M graded completions of pi_sft from every step
prefix of the rolled-out samples, the raw material of the Q-values in
:mod:`synthdata_assets.advantages`.

A rolled-out sample (a negative of ``policy_samples``, at most
``credit.max_negatives_per_problem`` per problem, and the positives too when
``credit.rollout_positives`` is set) with ``L`` steps has prefixes ``0..L-1`` to roll out
(prefix ``L`` is the finished sample, whose value is its grade). The prompt of prefix ``i`` is
the problem's prompt followed by the sample's first ``i`` steps, which end with a newline, so
a rollout starts on a fresh line.

Every prompt of a partition goes to the generator in ONE call, which batches across samples
and prefixes (the transformers generator keeps ``sampling.batch_size`` prompts x M samples in
flight, refilling finished places, and prefills the prefixes of one sample once). Identical
prompts are generated once: prefix 0 is the same for every negative of a problem, and so is
any shared opening step.

Grading
-------
Where the answer is a line of the solution (``embedded``, ``gsm8k``, ``math``), a rollout is
graded on its completion alone: the answer must come from what the rollout wrote. Graded as
``prefix + completion``, an answer in the prefix would count whenever the completion has none
(a rollout cut at ``max_new_tokens``, or one that stops at once), and the ``gsm8k`` and
``math`` extractors fall back to the last number or expression anywhere in the text, which
the prefix's working almost always has. Q of prefix ``i`` is therefore the
chance that the policy, continuing from the sample's first ``i`` steps, writes a correct
answer itself. The full prefix ``L`` is never rolled out: nothing remains to be written, so
its value is the sample's own grade (``terminal`` in :mod:`synthdata_assets.advantages`),
which also grades only what the policy wrote (the whole sample, from prefix 0). A sample that
wrote an answer line before its last step and went on is the one case where the two differ:
its prefixes after that line are worth only what a rollout adds.

Where the answer is the whole solution (``verify.WHOLE_SOLUTION_FORMATS``: a star_graph path,
one node per step), a rollout is graded on the prefix's steps followed by its completion: the
completion alone holds only the path's remaining nodes, which is never the path (graded so,
every prefix after the first step had Q = 0, and ``first_zero`` put every negative's pit on its
first step, right or wrong). A prefix is never the whole sample (prefix ``L`` is not rolled
out), so an empty completion is graded on the sample's first ``i`` nodes: wrong, unless those
are already the true path and the sample went on past it, where its later lines are the
mistake, as its own grade says.

Seeds
-----
Every engine draws sample ``j`` of a prompt from a stream seeded by (seed, prompt, j), and
prefix 0's prompt IS the prompt of the policy samples. Seeded with the partition seed,
rollout ``j`` of prefix 0 would replay policy sample ``j`` token for token (at the same
temperature), so Q of prefix 0 would not be independent of the samples it scores. Rollouts
are therefore seeded with :func:`rollout_seed` of the partition seed, a stream of their own.

Reuse
-----
A rollout is identified by ``rollout_key`` (a digest of the checkpoint's identity, the prompt
text, temperature, top-p, max_new_tokens and the rollout seed) and ``rollout_idx``. Since
sample ``j`` of a prompt depends only on (seed, prompt, j), a rollout with the same key and
index is the same completion whether it is generated now or was generated before.
``step_rollouts`` therefore reads its previous file for the partition and generates only the
(key, index) pairs it lacks: re-estimating Q with another policy, K or pit rule generates
nothing, and raising M generates only the new indices. The checkpoint's identity is the
Dagster run that wrote it, so retraining pi_sft invalidates every rollout.

Journal (``execution.rollout_chunk_prompts``)
---------------------------------------------
With a chunk size set, the prompts go to the generator in calls of at most that many, and each
call's graded rollouts are written at once to the partition's journal (``journal``: a folder
of Parquet files, each written atomically) before the next call starts. A stage killed after
hours loses at most the call in flight: the rerun reads the journal beside the previous file
and generates only the (key, index) pairs that neither holds. Journal files older than the
previous file were folded into it by a stage that finished, and are deleted when read. Unset
(the CPU presets), every prompt goes in one call, which the transformers engine batches best.

Early stop (``credit.early_stop``)
----------------------------------
Off by default. On, the prefixes are rolled out in rounds (prefix 0 of every sample, then
prefix 1, ...; each round one batched call) and a negative stops after its first pit, the
first prefix ``i >= 1`` whose M rollouts all fail: its later prefixes are never generated and
their Q is null in ``step_advantages``. It needs ``pit_rule: first_zero``. The rows it does
generate have the same keys as a full run's, so turning it off later generates only the
skipped prefixes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import polars as pl

from synthdata_assets.config import CreditConfig
from synthdata_assets.samples import sampling_params
from synthdata_assets.steps import clean_samples, prefix, split_steps
from synthdata_assets.verify import WHOLE_SOLUTION_FORMATS, grade_many
from training.config import SamplingConfig
from training.generation import Generator, SamplingParams
from training.progress import Progress, no_progress
from training.prompts import format_prompt
from warehouse.parquet import write_parquet_atomic

Log = Callable[[str], None]

ROLLOUT_SCHEMA = {
    "sample_id": pl.String,
    "problem_id": pl.String,
    "step_idx": pl.Int64,
    "rollout_idx": pl.Int64,
    "completion": pl.String,
    "final_answer": pl.String,
    "is_correct": pl.Boolean,
    "num_tokens": pl.Int64,
    "finish_reason": pl.String,
    "rollout_key": pl.String,
    "checkpoint": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_new_tokens": pl.Int64,
    "rollout_seed": pl.Int64,
}


# What a rollout's outcome holds, whether generated now or read from the previous file.
_OUTCOME_FIELDS = (
    "rollout_idx",
    "completion",
    "final_answer",
    "is_correct",
    "num_tokens",
    "finish_reason",
)


# A journal row: a rollout's key and its outcome.
JOURNAL_SCHEMA = {"rollout_key": pl.String} | {f: ROLLOUT_SCHEMA[f] for f in _OUTCOME_FIELDS}


class Request(NamedTuple):
    """One step prefix of one sample to roll out. ``graded_prefix`` goes in front of each
    completion when it is graded: the sample's first ``step_idx`` steps where the answer is
    the whole solution, else nothing ("Grading")."""

    sample_id: str
    problem_id: str
    step_idx: int
    prompt: str
    key: str
    graded_prefix: str


def rolled_out_samples(samples: pl.DataFrame, credit: CreditConfig) -> pl.DataFrame:
    """The samples that get rollouts: each problem's first negatives by sample id (and the
    positives when configured)."""
    samples = clean_samples(samples).sort("problem_id", "sample_id")
    negatives = (
        samples.filter(~pl.col("is_correct"))
        .group_by("problem_id", maintain_order=True)
        .head(credit.max_negatives_per_problem)
        .select(samples.columns)  # group_by puts the key first
    )
    if not credit.rollout_positives:
        return negatives
    return pl.concat([negatives, samples.filter(pl.col("is_correct"))]).sort(
        "problem_id", "sample_id"
    )


def rollout_key(
    checkpoint: str, prompt: str, params: SamplingParams, *, whole_solution: bool = False
) -> str:
    """The identity of the rollouts of ``prompt`` (see the module docstring). A row's grade is
    stored with its completion, so ``whole_solution`` (graded with the prefix's steps: see
    "Grading") enters the key: rows graded on the completion alone are not reused for it."""
    fields = (
        checkpoint,
        prompt,
        params.temperature,
        params.top_p,
        params.max_new_tokens,
        params.seed,
    )
    if params.stop:  # only when set, so that the keys made before stop strings stay valid
        fields += tuple(params.stop)
    if whole_solution:  # likewise for the grading of whole-solution answers
        fields += ("graded with the prefix's steps",)
    return hashlib.sha256("\x1f".join(map(str, fields)).encode()).hexdigest()[:24]


def rollout_backend(chosen: str, sampling_backend: str) -> str:
    """The engine of the rollouts: ``credit.rollout_backend``, where ``auto`` is vLLM when it
    is installed and a GPU is present, else ``sampling.backend``."""
    if chosen != "auto":
        return chosen
    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vllm"
    return sampling_backend


def rollout_seed(seed: int) -> int:
    """The seed of a partition's rollouts: 31 bits of SHA-256 of ``("rollouts", seed)``, a
    stream apart from the policy samples' (seeded with ``seed`` itself; see "Seeds" in the
    module docstring)."""
    digest = hashlib.sha256(f"rollouts\x1f{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def rollout_params(credit: CreditConfig, sampling: SamplingConfig, seed: int) -> SamplingParams:
    """M completions per prefix at the rollout temperature (default: sampling's), seeded with
    :func:`rollout_seed` of the partition ``seed``."""
    temperature = credit.rollout_temperature
    return sampling_params(
        sampling,
        n=credit.rollouts_per_prefix,
        temperature=sampling.temperature if temperature is None else temperature,
        seed=rollout_seed(seed),
    )


def rollout_requests(
    chosen: pl.DataFrame,
    problems: pl.DataFrame,
    *,
    step_rule: str,
    checkpoint_id: str,
    params: SamplingParams,
    answer_format: str,
) -> list[Request]:
    """Every (sample, prefix) request of the ``chosen`` samples, in sample then prefix order."""
    questions = dict(problems.select("problem_id", "question").iter_rows())
    whole = answer_format in WHOLE_SOLUTION_FORMATS
    requests = []
    for sid, pid, solution in chosen.select("sample_id", "problem_id", "solution").iter_rows():
        steps = split_steps(solution, step_rule)
        head = format_prompt(questions[pid])
        for i in range(len(steps)):
            text = prefix(steps, i)
            prompt = head + text
            key = rollout_key(checkpoint_id, prompt, params, whole_solution=whole)
            requests.append(Request(sid, pid, i, prompt, key, text if whole else ""))
    return requests


class Journal:
    """The rollouts of a partition generated so far, one Parquet file per generation call of
    at most ``chunk`` prompts (see "Journal" in the module docstring)."""

    def __init__(self, folder: Path, chunk: int, *, previous_written: float | None) -> None:
        self.folder, self.chunk = folder, chunk
        self.previous_written = previous_written  # mtime of the previous file, if any

    def read(self) -> list[pl.DataFrame]:
        """The journal's files not yet folded into the previous file; those that are go."""
        frames = []
        for path in sorted(self.folder.glob("*.parquet")):
            if self.previous_written is not None and path.stat().st_mtime < self.previous_written:
                path.unlink()
            else:
                frames.append(pl.read_parquet(path))
        return frames

    def write(self, rows: list[dict]) -> None:
        if rows:
            frame = pl.DataFrame(rows, schema=JOURNAL_SCHEMA)
            write_parquet_atomic(
                frame, self.folder / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
            )


def _offset(progress: Progress, done_before: int, total: int) -> Progress:
    """``progress`` of one call among several: its counts shifted to the whole."""

    def shifted(done: int, _total: int, **figures: float) -> None:
        progress(done_before + done, total, **figures)

    return shifted


class _Rollouts:
    """The completions of every rollout key, reused from an earlier file or generated in
    batched calls (:meth:`fetch`)."""

    def __init__(
        self,
        generator: Generator,
        params: SamplingParams,
        *,
        answers: dict[str, str],
        answer_format: str,
        previous: pl.DataFrame | None,
        progress: Progress,
        journal: Journal | None = None,
    ) -> None:
        self.generator, self.params = generator, params
        self.answers, self.answer_format, self.progress = answers, answer_format, progress
        self.journal = journal
        self.known: dict[tuple[str, int], dict] = {}
        earlier = [previous] if previous is not None else []
        if journal is not None:
            earlier += journal.read()
        for frame in earlier:
            for row in frame.filter(pl.col("rollout_idx") < params.n).iter_rows(named=True):
                self.known[(row["rollout_key"], row["rollout_idx"])] = row
        self.outcomes: dict[str, list[dict]] = {}  # rollout_key -> M result rows
        self.stats = {"prompts": 0, "generated": 0, "reused": 0, "new_tokens": 0, "seconds": 0.0}

    def fetch(self, batch: Sequence[Request]) -> None:
        """Make sure every request of ``batch`` has its M outcomes: reuse, else generate."""
        m = self.params.n
        todo: dict[str, Request] = {}
        for request in batch:
            key = request.key
            if key in self.outcomes or key in todo:
                continue
            rows = [self.known.get((key, j)) for j in range(m)]
            if all(r is not None for r in rows):
                self.outcomes[key] = rows
                self.stats["reused"] += m
            else:
                todo[key] = request
        if todo:
            self._generate(list(todo.values()))

    def _generate(self, todo: list[Request]) -> None:
        size = self.journal.chunk if self.journal is not None else None
        size = size or len(todo)
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            self._generate_chunk(chunk, _offset(self.progress, start, len(todo)))
            if self.journal is not None:
                self.journal.write([row for r in chunk for row in self.outcomes[r.key]])

    def _generate_chunk(self, todo: list[Request], progress: Progress) -> None:
        start = time.perf_counter()
        completions = self.generator.generate(
            [r.prompt for r in todo], self.params, progress=progress
        )
        self.stats["seconds"] += time.perf_counter() - start
        # Graded on the completion alone: the answer must be the rollout's own; a whole-solution
        # answer with the prefix's steps in front ("Grading").
        texts, golds = [], []
        for request, outs in zip(todo, completions, strict=True):
            texts += [request.graded_prefix + c.text for c in outs]
            golds += [self.answers[request.problem_id]] * len(outs)
        grades = iter(grade_many(texts, golds, self.answer_format))
        for request, outs in zip(todo, completions, strict=True):
            rows = []
            for j, c in enumerate(outs):
                g = next(grades)
                rows.append(
                    {
                        "rollout_key": request.key,
                        "rollout_idx": j,
                        "completion": c.text,
                        "final_answer": g.extracted,
                        "is_correct": g.is_correct,
                        "num_tokens": c.num_tokens,
                        "finish_reason": c.finish_reason,
                    }
                )
                self.stats["new_tokens"] += c.num_tokens
            self.outcomes[request.key] = rows
        self.stats["generated"] += len(todo) * self.params.n
        self.stats["prompts"] += len(todo)


def generate_rollouts(
    generator: Generator,
    credit: CreditConfig,
    params: SamplingParams,
    *,
    step_rule: str,
    answer_format: str,
    checkpoint_id: str,
    samples: pl.DataFrame,
    problems: pl.DataFrame,
    previous: pl.DataFrame | None,
    log: Log,
    progress: Progress = no_progress,
    journal: Journal | None = None,
) -> tuple[pl.DataFrame, dict]:
    """``step_rollouts`` of a partition, reusing ``previous`` rows and the ``journal``'s (see
    the module docstring). ``generator`` is only called for what they lack.

    Returns the table and counts for the asset's metadata: prompts, completions generated
    and reused, new tokens and tokens per second of the generation.
    """
    chosen = rolled_out_samples(samples, credit)
    requests = rollout_requests(
        chosen,
        problems,
        step_rule=step_rule,
        checkpoint_id=checkpoint_id,
        params=params,
        answer_format=answer_format,
    )
    run = _Rollouts(
        generator,
        params,
        answers=dict(problems.select("problem_id", "answer").iter_rows()),
        answer_format=answer_format,
        previous=previous,
        progress=progress,
        journal=journal,
    )
    stats = run.stats
    stats["skipped_prefixes"] = 0
    if credit.early_stop:
        requests = _roll_out_until_pits(requests, chosen, run)
    else:
        run.fetch(requests)
    table = _rollout_rows(requests, run.outcomes, checkpoint_id, params)
    stats["samples"] = chosen.height
    stats["tokens_per_second"] = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    log(
        f"step rollouts: {chosen.height} samples, {len(requests)} prefixes, "
        f"{stats['generated']} completions generated ({stats['prompts']} distinct prompts x "
        f"{params.n}), {stats['reused']} reused"
        + (
            f", {stats['skipped_prefixes']} prefixes after first pits skipped"
            if credit.early_stop
            else ""
        )
    )
    return table, stats


def _roll_out_until_pits(
    requests: list[Request], chosen: pl.DataFrame, run: _Rollouts
) -> list[Request]:
    """``credit.early_stop``: roll out prefix 0 of every sample, then prefix 1, ..., each
    round one batched call across the samples still going; a negative stops after the first
    prefix ``i >= 1`` whose M rollouts all fail. That prefix is its first pit under
    ``first_zero`` whatever the rollout policy (pi_sft and best-of-K both give Q = 0 exactly
    when no rollout succeeds), so the later prefixes cannot change the pit; positives have no
    pit and are rolled out in full. Returns the requests that were rolled out, in order."""
    negative = dict(chosen.select("sample_id", ~pl.col("is_correct")).iter_rows())
    by_sample: dict[str, list[Request]] = {}
    for request in requests:
        by_sample.setdefault(request.sample_id, []).append(request)
    going = list(by_sample)
    done: set[tuple[str, int]] = set()
    step = 0
    while going:
        batch = [by_sample[sid][step] for sid in going]
        run.fetch(batch)
        done.update((sid, step) for sid in going)
        still = []
        for sid, request in zip(going, batch, strict=True):
            pit = (
                step >= 1
                and negative[sid]
                and not any(r["is_correct"] for r in run.outcomes[request.key])
            )
            if not pit and step + 1 < len(by_sample[sid]):
                still.append(sid)
        going = still
        step += 1
    run.stats["skipped_prefixes"] = len(requests) - len(done)
    return [r for r in requests if (r.sample_id, r.step_idx) in done]


def _rollout_rows(
    requests: Sequence[Request],
    outcomes: dict[str, list[dict]],
    checkpoint_id: str,
    params: SamplingParams,
) -> pl.DataFrame:
    rows = [
        {
            "sample_id": request.sample_id,
            "problem_id": request.problem_id,
            "step_idx": request.step_idx,
            **{field: row[field] for field in _OUTCOME_FIELDS},
            "rollout_key": request.key,
            "checkpoint": checkpoint_id,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "rollout_seed": params.seed,
        }
        for request in requests
        for row in outcomes[request.key]
    ]
    return pl.DataFrame(rows, schema=ROLLOUT_SCHEMA)
