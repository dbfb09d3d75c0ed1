"""Preference pairs for DPO from graded samples, their first pits and step rollouts.

Pure functions over polars DataFrames (no Dagster, no models); the pits come from
:func:`synthdata_assets.advantages.step_advantages`. ``preference_pairs`` reads its input
tables once (:func:`prepare_pairs`, only the tables the requested kinds need) and builds each
kind with its own function.

Pair kinds (``PAIR_KINDS``)
---------------------------
- ``per_step`` (:func:`per_step_pairs`, the paper): correct solution vs. the negative cut
  right after its first pit; the cut text gets no EOS.
- ``outcome`` (:func:`outcome_pairs`, plain DPO): whole correct vs. whole negative, for
  exactly the negatives that have a ``per_step`` pair.
- ``edit_distance`` (:func:`edit_distance_pairs`): each positive vs. the most different
  negative of its problem.
- ``shared_prefix`` (:func:`shared_prefix_pairs`, Self-Explore): same prompt + pre-pit
  prefix, chosen = the first step of a successful rollout from there, rejected = the pit step.

Choices
-------
- The correct solution of a pair comes from the policy's own correct samples of the problem
  when there are any (on-policy, as in the paper), otherwise from the teacher's verified
  solutions; negatives of a problem with no correct solution anywhere get no pair. The pick
  is a seeded RNG keyed by ``sha256(seed, sample_id)`` (never Python's salted ``hash``), and
  it does not depend on the kind: ``per_step`` and ``outcome`` pair a negative with the same
  correct solution.
- Plain DPO and per-step DPO train on the same negatives: an ``outcome`` pair is made for a
  negative only when it has a ``per_step`` pair (it was rolled out, has a first pit and a
  non-empty cut), so the two kinds have the same sample_ids, the same chosen sides and the
  same number of pairs, and the two methods differ only in the rejected side (the whole
  negative vs. its prefix up to the pit). Without this, plain DPO would get a pair for every
  negative and per-step DPO only ``credit.max_negatives_per_problem`` of them per problem.
- Text conventions. A side with EOS (``*_has_eos``) is stored the way SFT completions are
  built (:func:`training.prompts.format_example`): trailing newlines dropped, then exactly
  one ``"\\n"`` (the trainer appends EOS after it; applying ``format_example`` again is a
  no-op). A side without EOS is stored with its trailing whitespace stripped, so a truncated
  negative ends on the last character of its pit step.
- ``pair_id`` is ``f"{kind}/{sample_id}/{j}"`` with ``sample_id`` the negative's id; ``j`` is
  ``0`` for the one-pair-per-negative kinds, and the positive's sample_id for
  ``edit_distance`` (one negative can be the farthest from several positives).
- ``pit_step_idx`` is set for ``per_step`` and ``shared_prefix``, null for the others.
- Edit distance is the character Levenshtein distance, computed with the bit-parallel
  algorithm of Myers/Hyyrö on Python integers (``O(len(a) * len(b) / wordsize)``; a plain
  DP over two 1000-character strings would cost ~1 s in Python). Ties -> lowest sample_id.

Rows come out in a fixed order (kind in the order asked, then problem_id, negative
sample_id, j), and empty inputs give an empty frame with ``PAIR_SCHEMA``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import polars as pl

from synthdata_assets.advantages import first_pits
from synthdata_assets.frames import no_duplicates, no_nulls, require
from synthdata_assets.steps import STEP_RULES, clean_samples, prefix, split_steps
from training.prompts import format_prompt

PAIR_KINDS: tuple[str, ...] = ("per_step", "outcome", "edit_distance", "shared_prefix")

PAIR_SCHEMA = pl.Schema(
    {
        "pair_id": pl.String,
        "problem_id": pl.String,
        "kind": pl.String,
        "prompt": pl.String,
        "chosen": pl.String,
        "rejected": pl.String,
        "sample_id": pl.String,
        "pit_step_idx": pl.Int64,
        "chosen_id": pl.String,
        "chosen_has_eos": pl.Boolean,
        "rejected_has_eos": pl.Boolean,
    }
)

_INPUT_DTYPES = {
    "is_correct": pl.Boolean,
    "is_first_pit": pl.Boolean,
    "step_idx": pl.Int64,
    "rollout_idx": pl.Int64,
}


def preference_pairs(
    problems: pl.DataFrame,
    samples: pl.DataFrame,
    adv: pl.DataFrame,
    rollouts: pl.DataFrame,
    teacher: pl.DataFrame,
    *,
    kinds: Sequence[str],
    seed: int,
    prompt_fn: Callable[[str], str],
    step_rule: str = "lines",
) -> pl.DataFrame:
    """Preference pairs of the requested ``kinds`` (``PAIR_SCHEMA``); see the module docstring.

    ``problems``: problem_id, question. ``samples``: problem_id, sample_id, solution,
    is_correct. ``adv``: sample_id, step_idx, is_first_pit (+ step_text, checked at the pit).
    ``rollouts``: sample_id, step_idx, rollout_idx, completion, is_correct. ``teacher``:
    problem_id, solution_id, solution, is_correct. Frames a requested kind does not read may
    be empty (even without columns).
    """
    if isinstance(kinds, str):
        raise ValueError(f"kinds must be a sequence of kinds, not the string {kinds!r}")
    unknown = [k for k in kinds if k not in PAIR_KINDS]
    if unknown:
        raise ValueError(f"unknown pair kind(s) {unknown}; allowed: {PAIR_KINDS}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown step rule {step_rule!r}; allowed: {STEP_RULES}")
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    inputs = prepare_pairs(
        problems,
        samples,
        kinds=kinds,
        teacher=teacher,
        adv=adv,
        rollouts=rollouts,
        options=PairOptions(seed=seed, prompt_fn=prompt_fn, step_rule=step_rule),
    )
    builders = {
        "per_step": per_step_pairs,
        "outcome": outcome_pairs,
        "edit_distance": edit_distance_pairs,
        "shared_prefix": shared_prefix_pairs,
    }
    rows = [
        row
        for kind in kinds
        for row in sorted(
            builders[kind](inputs), key=lambda r: (r["problem_id"], r["sample_id"], r["pair_id"])
        )
    ]
    return pl.DataFrame(rows, schema=PAIR_SCHEMA) if rows else pl.DataFrame(schema=PAIR_SCHEMA)


# --------------------------------------------------------------------------------------------
# the inputs every kind reads


@dataclass(frozen=True)
class PairOptions:
    """How pairs are drawn and written: the seed of the picks, the prompt, the step rule."""

    seed: int
    prompt_fn: Callable[[str], str]
    step_rule: str


@dataclass(frozen=True)
class PairInputs:
    """Samples indexed by problem, plus what the requested kinds read (else empty).

    A sample is a dict with problem_id, sample_id, solution, is_correct; the lists of
    ``positives`` and ``negatives`` (by problem_id) are sorted by sample_id.
    """

    questions: dict[str, str]
    positives: dict[str, list[dict]]
    negatives: dict[str, list[dict]]
    # problem_id -> (id, solution) of its correct solutions: own samples, else the teacher's
    pools: dict[str, list[tuple[str, str]]]
    pits: dict[str, int]  # negative sample_id -> step of its first pit
    pit_text: dict[str, str]  # negative sample_id -> adv.step_text at its pit
    # (sample_id, prefix) -> (rollout_idx, completion) of its successful rollouts
    successes: dict[tuple[str, int], list[tuple[int, str]]]
    options: PairOptions

    def each_negative(self) -> Iterator[dict]:
        """The negatives by problem_id, then sample_id."""
        for pid in sorted(self.negatives):
            yield from self.negatives[pid]

    def prompt(self, sample: dict) -> str:
        return self.options.prompt_fn(self.questions[sample["problem_id"]])

    def pick_correct(self, neg: dict) -> tuple[str, str] | None:
        """The (id, solution) paired with ``neg``, or None if its problem has none."""
        pool = self.pools.get(neg["problem_id"])
        if not pool:
            return None
        return pool[_rng(self.options.seed, neg["sample_id"]).randrange(len(pool))]

    def steps_at_pit(self, neg: dict) -> tuple[list[str], int] | None:
        """``neg``'s steps and its first pit, or None without one; raises if they disagree."""
        p = self.pits.get(neg["sample_id"])
        if p is None:
            return None
        steps = split_steps(neg["solution"], self.options.step_rule)
        if not 1 <= p <= len(steps) or (
            neg["sample_id"] in self.pit_text and self.pit_text[neg["sample_id"]] != steps[p - 1]
        ):
            raise ValueError(
                f"sample {neg['sample_id']!r}: its first pit is step {p}, but its solution "
                f"split with step_rule={self.options.step_rule!r} gives {len(steps)} steps"
                + ("" if p > len(steps) else " whose pit step differs from adv.step_text")
                + "; step_advantages must be built with the same step rule"
            )
        return steps, p


def prepare_pairs(
    problems: pl.DataFrame,
    samples: pl.DataFrame,
    *,
    kinds: Collection[str],
    teacher: pl.DataFrame,
    adv: pl.DataFrame,
    rollouts: pl.DataFrame,
    options: PairOptions,
) -> PairInputs:
    """Check the input tables and index them for the pair kinds.

    ``problems`` and ``samples`` are always read; ``teacher`` only for ``per_step`` and
    ``outcome``, ``adv`` for ``per_step``, ``outcome`` and ``shared_prefix``, ``rollouts`` for
    ``shared_prefix`` (columns as in :func:`preference_pairs`).
    """
    questions, sample_rows = _index_samples(problems, samples)
    positives: dict[str, list[dict]] = {}
    negatives: dict[str, list[dict]] = {}
    for r in sample_rows:
        (positives if r["is_correct"] else negatives).setdefault(r["problem_id"], []).append(r)
    pools: dict[str, list[tuple[str, str]]] = {}
    if {"per_step", "outcome"} & set(kinds):
        pools = _correct_pools(positives, teacher)
    pits: dict[str, int] = {}
    pit_text: dict[str, str] = {}
    if {"per_step", "outcome", "shared_prefix"} & set(kinds):
        pits, pit_text = _pits(adv, {r["sample_id"]: r for r in sample_rows})
    successes = _rollout_successes(rollouts, pits) if "shared_prefix" in kinds else {}
    return PairInputs(questions, positives, negatives, pools, pits, pit_text, successes, options)


def _needed(df: pl.DataFrame, columns: list[str], name: str) -> pl.DataFrame:
    """``df``, checked to have ``columns``; an empty frame without them reads as no rows."""
    if df.height == 0 and not set(columns) <= set(df.columns):
        return pl.DataFrame(schema={c: _INPUT_DTYPES.get(c, pl.String) for c in columns})
    require(df, columns, name)
    return df


def _index_samples(
    problems: pl.DataFrame, samples: pl.DataFrame
) -> tuple[dict[str, str], list[dict]]:
    """problem_id -> question, and the samples sorted by (problem_id, sample_id)."""
    samples = _needed(samples, ["problem_id", "sample_id", "solution", "is_correct"], "samples")
    problems = _needed(problems, ["problem_id", "question"], "problems")
    no_nulls(samples, ["problem_id", "sample_id", "solution", "is_correct"], "samples")
    no_duplicates(samples, ["sample_id"], "samples")
    no_duplicates(problems, ["problem_id"], "problems")
    questions = dict(
        zip(
            problems["problem_id"].cast(pl.String).to_list(),
            problems["question"].cast(pl.String).to_list(),
            strict=True,
        )
    )
    sample_rows = sorted(
        samples.select(
            pl.col("problem_id").cast(pl.String),
            pl.col("sample_id").cast(pl.String),
            pl.col("solution").cast(pl.String),
            pl.col("is_correct").cast(pl.Boolean),
        ).iter_rows(named=True),
        key=lambda r: (r["problem_id"], r["sample_id"]),
    )
    orphan = [r["sample_id"] for r in sample_rows if r["problem_id"] not in questions]
    if orphan:
        raise ValueError(
            f"samples of unknown problems (not in problems), e.g. sample {orphan[0]!r} "
            f"({len(orphan)} such)"
        )
    return questions, sample_rows


def _correct_pools(
    positives: dict[str, list[dict]], teacher: pl.DataFrame
) -> dict[str, list[tuple[str, str]]]:
    """problem_id -> its correct (id, solution)s: the policy's own, else the teacher's."""
    pools = {
        pid: [(r["sample_id"], r["solution"]) for r in rows] for pid, rows in positives.items()
    }
    teacher = _needed(teacher, ["problem_id", "solution_id", "solution", "is_correct"], "teacher")
    correct = teacher.filter(pl.col("is_correct").cast(pl.Boolean).fill_null(False)).select(
        pl.col("problem_id").cast(pl.String),
        pl.col("solution_id").cast(pl.String),
        pl.col("solution").cast(pl.String),
    )
    teacher_pool: dict[str, list[tuple[str, str]]] = {}
    for r in sorted(correct.iter_rows(named=True), key=lambda r: r["solution_id"]):
        teacher_pool.setdefault(r["problem_id"], []).append((r["solution_id"], r["solution"]))
    for pid, pool in teacher_pool.items():
        pools.setdefault(pid, pool)
    return pools


def _pits(adv: pl.DataFrame, by_id: dict[str, dict]) -> tuple[dict[str, int], dict[str, str]]:
    """sample_id -> first pit step, and -> adv.step_text there (when adv has step_text)."""
    adv = _needed(adv, ["sample_id", "step_idx", "is_first_pit"], "adv")
    pits = dict(first_pits(adv).iter_rows())
    pit_text: dict[str, str] = {}
    if "step_text" in adv.columns:
        at_pit = adv.filter(pl.col("is_first_pit").fill_null(False))
        for sid, text in zip(at_pit["sample_id"], at_pit["step_text"], strict=True):
            pit_text[str(sid)] = text
    for sid in pits:
        if sid not in by_id:
            raise ValueError(f"adv has a first pit for sample {sid!r}, which is not in samples")
        if by_id[sid]["is_correct"]:
            raise ValueError(f"adv has a first pit for sample {sid!r}, which is correct")
    return pits, pit_text


def _rollout_successes(
    rollouts: pl.DataFrame, pits: dict[str, int]
) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """The successful rollouts from each pit's prefix, by (sample_id, pit - 1)."""
    rollouts = _needed(
        rollouts,
        ["sample_id", "step_idx", "rollout_idx", "completion", "is_correct"],
        "rollouts",
    )
    ok = rollouts.filter(pl.col("is_correct").cast(pl.Boolean).fill_null(False)).select(
        pl.col("sample_id").cast(pl.String),
        pl.col("step_idx").cast(pl.Int64),
        pl.col("rollout_idx").cast(pl.Int64),
        pl.col("completion").cast(pl.String),
    )
    wanted = {(sid, p - 1) for sid, p in pits.items()}
    successes: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for r in ok.sort("sample_id", "step_idx", "rollout_idx").iter_rows(named=True):
        key = (r["sample_id"], r["step_idx"])
        if key in wanted and r["completion"] is not None:
            successes.setdefault(key, []).append((r["rollout_idx"], r["completion"]))
    return successes


# --------------------------------------------------------------------------------------------
# one function per kind


def per_step_pairs(inputs: PairInputs) -> list[dict]:
    """Per negative with a pit and a correct solution: that solution vs. the negative cut
    right after its pit."""
    rows = []
    for neg in inputs.each_negative():
        cut = inputs.steps_at_pit(neg)  # before the pick: a bad pit raises even without one
        pick = inputs.pick_correct(neg)
        if cut is None or pick is None:
            continue
        steps, p = cut
        rejected = _without_eos(prefix(steps, p))
        if rejected:
            chosen_id, chosen = pick
            rows.append(
                _pair_row("per_step", neg, "0", inputs.prompt(neg), p, chosen_id)
                | {"chosen": _with_eos(chosen), "chosen_has_eos": True}
                | {"rejected": rejected, "rejected_has_eos": False}
            )
    return rows


def outcome_pairs(inputs: PairInputs) -> list[dict]:
    """Per negative with a ``per_step`` pair: the same correct solution vs. the whole
    negative (plain DPO on per-step DPO's negatives; see the module docstring)."""
    per_step = {row["sample_id"] for row in per_step_pairs(inputs)}
    rows = []
    for neg in inputs.each_negative():
        pick = inputs.pick_correct(neg)
        if neg["sample_id"] in per_step and pick is not None:
            rows.append(_whole_pair("outcome", neg, "0", inputs.prompt(neg), *pick))
    return rows


def edit_distance_pairs(inputs: PairInputs) -> list[dict]:
    """Per positive: it vs. the negative of its problem farthest from it in edit distance."""
    rows = []
    for pid in sorted(inputs.negatives):
        for pos in inputs.positives.get(pid, []):
            # negatives are sorted by sample_id, and max keeps the first of ties: the lowest id
            farthest = max(
                inputs.negatives[pid], key=lambda neg: levenshtein(pos["solution"], neg["solution"])
            )
            sid = pos["sample_id"]
            rows.append(
                _whole_pair(
                    "edit_distance", farthest, sid, inputs.prompt(pos), sid, pos["solution"]
                )
            )
    return rows


def shared_prefix_pairs(inputs: PairInputs) -> list[dict]:
    """Per negative with a pit: from the prefix before the pit, the first step of a
    successful rollout vs. the pit step."""
    rows = []
    for neg in inputs.each_negative():
        cut = inputs.steps_at_pit(neg)
        if cut is None:
            continue
        steps, p = cut
        rejected = _without_eos(steps[p - 1])
        candidates = []
        for ridx, completion in inputs.successes.get((neg["sample_id"], p - 1), []):
            first = split_steps(completion, inputs.options.step_rule)[:1]
            chosen = _without_eos(first[0]) if first else ""
            if chosen and chosen != rejected:
                candidates.append((ridx, chosen))
        if not rejected or not candidates:
            continue
        ridx, chosen = candidates[
            _rng(inputs.options.seed, neg["sample_id"]).randrange(len(candidates))
        ]
        chosen_id = f"{neg['sample_id']}/rollout/{p - 1}/{ridx}"
        prompt = inputs.prompt(neg) + prefix(steps, p - 1)
        rows.append(
            _pair_row("shared_prefix", neg, "0", prompt, p, chosen_id)
            | {"chosen": chosen, "chosen_has_eos": False}
            | {"rejected": rejected, "rejected_has_eos": False}
        )
    return rows


def _pair_row(
    kind: str, neg: dict, j: str, prompt: str, pit_step_idx: int | None, chosen_id: str
) -> dict:
    """A pair's columns other than its two sides (chosen, rejected and their ``*_has_eos``)."""
    return {
        "pair_id": f"{kind}/{neg['sample_id']}/{j}",
        "problem_id": neg["problem_id"],
        "kind": kind,
        "prompt": prompt,
        "sample_id": neg["sample_id"],
        "pit_step_idx": pit_step_idx,
        "chosen_id": chosen_id,
    }


def _whole_pair(kind: str, neg: dict, j: str, prompt: str, chosen_id: str, chosen: str) -> dict:
    """A whole correct solution vs. the whole negative, both sides with EOS."""
    return _pair_row(kind, neg, j, prompt, None, chosen_id) | {
        "chosen": _with_eos(chosen),
        "rejected": _with_eos(neg["solution"]),
        "chosen_has_eos": True,
        "rejected_has_eos": True,
    }


def _rng(seed: int, key: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _with_eos(text: str) -> str:
    """A completion followed by EOS, as SFT builds it: trailing newlines -> one ``"\\n"``."""
    return text.rstrip("\n") + "\n"


def _without_eos(text: str) -> str:
    return text.rstrip()


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert, delete, substitute; all cost 1).

    Myers' bit-vector algorithm in Hyyrö's formulation: one column of the DP matrix is two
    bit masks (vertical +1 / -1 deltas) over the shorter string, updated per character of
    the longer one.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = (ph << 1) | 1
        mh <<= 1
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv & mask
    return score


def partition_pairs(
    problems: pl.DataFrame,
    samples: pl.DataFrame,
    adv: pl.DataFrame,
    rollouts: pl.DataFrame,
    teacher: pl.DataFrame,
    *,
    seed: int,
    step_rule: str,
) -> pl.DataFrame:
    """The ``preference_pairs`` table of a partition: pairs of every kind (the trainers pick
    theirs by ``kind``), prompted as every stage prompts
    (:func:`training.prompts.format_prompt`)."""
    return preference_pairs(
        problems,
        clean_samples(samples),
        adv,
        rollouts,
        teacher,
        kinds=PAIR_KINDS,
        seed=seed,
        prompt_fn=format_prompt,
        step_rule=step_rule,
    )
