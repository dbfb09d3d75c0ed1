"""The embedded task: procedurally generated multi-step word problems modulo a small prime.

Why this task exists
--------------------
The study (Setlur et al. 2024) needs a task on which a tiny (~1M-parameter) model can be
fine-tuned, sampled and graded on a CPU, so that the whole pipeline runs offline. Following iGSM
(Ye et al., "Physics of Language Models 2.1"), a problem is a small graph of quantities linked by
operations; the difficulty is the number of derived quantities the asked-for one depends on, and
distractor quantities that the question does not need force the model to find the dependencies.

All arithmetic is modulo a small prime ``p`` (default 23). Every number is then one of ``p``
short tokens and the arithmetic is a finite table that a tiny model can memorise, so that what is
learned (or not) is the multi-step reasoning, not long-number arithmetic. A prime keeps
multiplication by any constant in ``2..p-1`` invertible, so a wrong intermediate value changes
what is computed from it (except where one value reaches the answer along two paths).

Question grammar
----------------
Each problem has people with short distinct names who each own a count of one item kind.
A quantity is given, or defined from earlier ones (all results mod ``p``)::

    Ann has 7 apples.                                    Ann = 7
    Bob has 3 more apples than Ann.                      Bob = Ann + 3
    Cid has 4 fewer apples than Bob.                     Cid = Bob - 4
    Dee has 2 times as many apples as Cid.               Dee = Cid * 2   (constant in 2..p-1)
    Eve has as many apples as Bob and Dee together.      Eve = Bob + Dee

The question holds one defining sentence per quantity on one line, and ends with
``How many apples does Eve have? Count modulo 23.`` The sentences come in one of two orders
(``EmbeddedParams.shuffle``):

- **shuffled**: a seeded random order, usually not the order of computation;
- **dependency order**: every quantity after its operands, and every derived distractor after
  the asked-for quantity too (given distractors, which have no operands, go anywhere).
  A solution then computes the derived quantities in the order the question states them and
  stops at the asked-for one, without first tracing the target's dependencies back through
  the sentences.

Solution grammar
----------------
One line per needed derived quantity, in dependency order, then the answer line::

    Bob has 7 + 3 = 10 apples.
    Cid has 10 - 4 = 6 apples.
    Dee has 6 * 2 = 12 apples.
    Eve has 10 + 12 = 22 apples.
    The answer is 22.

A step line is exactly ``{Name} has {a} {op} {b} = {result} {item}.`` with ``op`` in ``+ - *``;
a sum of two quantities is written with ``+`` like adding a constant.

Knobs
-----
``EmbeddedParams``: ``modulus`` (prime), ``min_steps``/``max_steps`` (the number of needed
derived quantities is drawn uniformly from this range) and ``n_distractors`` (unneeded
quantities; at least half of them, and at least one, are derived so that a solution can take a
spurious step). ``oracle_solution`` writes teacher solutions with ``spurious_rate`` (correct steps
about distractors inserted between needed steps) and ``slip_rate`` (one wrong step result that is
carried through to a wrong final answer).

The chain graph (``graph="chain"``, the study's default)
------------------------------------------------------
One given quantity, then a chain of ``min_steps..max_steps`` unary steps to the target, each
with a constant of ``1..max_constant`` (``times``: ``2..``), and ``n_distractors`` dead ends:
quantities that read a chain quantity and feed nothing, so each is a sibling of a needed step
and "which quantity comes next" is a choice. Sentences and step lines name the quantity read
first, so the next step is found from the last name written::

    Wes has 22 apples. After Wes, Yul has 4 times as many apples. After Yul, Hal has 1 fewer
    apples. After Yul, Gus has 3 more apples. How many apples does Hal have? Count modulo 23.

    After Wes, Yul has 22 * 4 = 19.
    After Yul, Hal has 19 - 1 = 18.
    The answer is 18.

Sentences come in dependency order (each dead end anywhere after the quantity it reads) or
shuffled. ``cue_rate`` plants a shortcut in every split but ``test``: the needed step of each
choice is stated before its dead-end siblings with that probability. ``dead_end_names``
reserves the last that many names of ``NAMES`` for dead ends, so a wrong choice writes a name
that no correct solution of any problem writes (and the choice can be read from the name
alone: a probe of whether negatives help where their tokens are never right). The spec of a chain
problem has a ``"grammar": "chain"`` key. :func:`step_labels`, :func:`first_wrong_step` and
:func:`cue_followed` give per-step ground truth for any solution.

Structure and determinism
-------------------------
``EmbeddedProblem.spec`` is canonical JSON holding the whole structure::

    {"item": "apples", "modulus": 23, "order": [names in sentence order],
     "quantities": [{"name", "op", "args", "const", "value"} in dependency order],
     "target": "Eve"}

with ``op`` in ``given add sub mul sum``, ``args`` the operand names, ``const`` the constant of
``add``/``sub``/``mul`` (``null`` otherwise) and ``value`` the true value. The question, gold
answer and solutions are rebuilt from it alone (``EmbeddedProblem.from_spec``).

Problem ``i`` of a split is a pure function of ``(seed, split, i)``: its random stream is seeded
from a SHA-256 digest, never from Python's per-process salted ``hash()``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from synthdata_assets.steps import split_steps

NAMES: tuple[str, ...] = (
    "Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea", "Max",
    "Ned", "Oli", "Pam", "Quinn", "Ray", "Sue", "Tom", "Uma", "Vic", "Wes", "Xia", "Yul", "Zed",
)  # fmt: skip
ITEMS: tuple[str, ...] = (
    "apples",
    "coins",
    "books",
    "stamps",
    "shells",
    "marbles",
    "pens",
    "cards",
)

GRAPHS = ("chain", "dag")
_DERIVED_OPS = ("add", "sub", "mul", "sum")
_UNARY_OPS = ("add", "sub", "mul")
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "sum": "+"}
_SPLIT_RE = re.compile(r"[a-z][a-z0-9]*")
_NAME_RE = re.compile(r"[A-Z][a-z]+")
_ITEM_RE = re.compile(r"[a-z]+")
# How often an operand is an already used needed quantity rather than a fresh given; reuse makes
# the needed graph a DAG rather than a tree, so a model cannot assume each value is read once.
_REUSE_PROB = 0.3


@dataclass(frozen=True)
class EmbeddedParams:
    """Generator settings; see the module docstring."""

    modulus: int = 23
    min_steps: int = 2
    max_steps: int = 4
    n_distractors: int = 2
    shuffle: bool = True
    multiply: bool = True
    graph: str = "dag"
    cue_rate: float | None = None
    max_constant: int | None = None
    dead_end_names: int = 0

    def __post_init__(self) -> None:
        if self.graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {self.graph!r}")
        if self.cue_rate is not None:
            if self.graph != "chain":
                raise ValueError("cue_rate needs graph 'chain' (its choices are sibling steps)")
            if not 0.0 <= self.cue_rate <= 1.0:
                raise ValueError(f"cue_rate must be in [0, 1], got {self.cue_rate}")
        if self.max_constant is not None:
            if self.graph != "chain":
                raise ValueError("max_constant needs graph 'chain' (dag sums need the full table)")
            if not 2 <= self.max_constant < self.modulus:
                raise ValueError(f"max_constant must be in [2, modulus), got {self.max_constant}")
        if self.dead_end_names:
            if self.graph != "chain":
                raise ValueError(
                    "dead_end_names needs graph 'chain' (dead ends are its distractors)"
                )
            if not self.n_distractors <= self.dead_end_names <= len(NAMES) - self.max_steps - 1:
                raise ValueError(
                    f"dead_end_names must be between n_distractors ({self.n_distractors}) and "
                    f"{len(NAMES) - self.max_steps - 1} (the chain needs max_steps + 1 names), "
                    f"got {self.dead_end_names}"
                )
        if self.modulus < 3 or not _is_prime(self.modulus):
            raise ValueError(f"modulus must be a prime >= 3, got {self.modulus}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"need 1 <= min_steps <= max_steps, got {self.min_steps}..{self.max_steps}"
            )
        if self.n_distractors < 0:
            raise ValueError(f"n_distractors must be >= 0, got {self.n_distractors}")
        # A problem with k steps uses at most k + 1 needed givens, k derived quantities and the
        # distractors, each under its own name.
        if 2 * self.max_steps + 1 + self.n_distractors > len(NAMES):
            raise ValueError(
                f"max_steps={self.max_steps} with n_distractors={self.n_distractors} can need more "
                f"than the {len(NAMES)} available names"
            )


@dataclass(frozen=True)
class EmbeddedProblem:
    """One problem; everything but ``problem_id`` is derived from ``spec``."""

    problem_id: str
    question: str
    answer: str
    n_steps: int
    spec: str

    @classmethod
    def from_spec(cls, problem_id: str, spec: str) -> EmbeddedProblem:
        """Rebuild a problem from its spec; raises ``ValueError`` if the spec is inconsistent."""
        world = _parse(spec)
        return cls(
            problem_id=problem_id,
            question=_question(world),
            answer=str(world.values[world.target]),
            n_steps=len(world.steps),
            spec=world.spec,
        )


@dataclass(frozen=True)
class _Quantity:
    name: str
    op: str
    args: tuple[str, ...]
    const: int | None
    value: int


@dataclass(frozen=True)
class _World:
    spec: str
    modulus: int
    item: str
    target: str
    quantities: tuple[_Quantity, ...]
    order: tuple[str, ...]
    values: Mapping[str, int]
    steps: tuple[_Quantity, ...]  # needed derived quantities, in dependency order
    spurious: tuple[_Quantity, ...]  # derived quantities the target does not depend on
    grammar: str = "dag"  # "chain": sentences and step lines name the quantity read first


def generate_problems(
    params: EmbeddedParams, n: int, *, seed: int, split: str
) -> list[EmbeddedProblem]:
    """Problems ``0..n-1`` of the ``(seed, split)`` stream, with ids ``emb-{split}-{i:06d}``."""
    if not _SPLIT_RE.fullmatch(split):
        raise ValueError(f"split must be a lowercase word like 'train' or 'test', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    problems = []
    for i in range(n):
        rng = _rng("problem", seed, split, i)
        n_steps = rng.randint(params.min_steps, params.max_steps)
        if params.graph == "chain":
            # The cue is a property of what the model trains on: the test split keeps the plain
            # order, where the first-listed sibling is right by chance.
            cue = params.cue_rate if split != "test" else None
            spec = _build_chain_spec(
                rng,
                params.modulus,
                n_steps,
                params.n_distractors,
                ops=_ops(params),
                cue_rate=cue,
                max_constant=params.max_constant,
                shuffle=params.shuffle,
                dead_end_names=params.dead_end_names,
            )
        else:
            spec = _build_spec(
                rng,
                params.modulus,
                n_steps,
                params.n_distractors,
                shuffle=params.shuffle,
                ops=_ops(params),
            )
        problems.append(EmbeddedProblem.from_spec(f"emb-{split}-{i:06d}", spec))
    return problems


def exclude_overlap(
    test: list[EmbeddedProblem], train: list[EmbeddedProblem]
) -> list[EmbeddedProblem]:
    """The test problems, in order, without those whose question text is also a train question."""
    train_questions = {problem.question for problem in train}
    return [problem for problem in test if problem.question not in train_questions]


def solve(problem: EmbeddedProblem) -> list[str]:
    """The minimal correct step lines, in dependency order, without the answer line."""
    return _minimal_solution(_parse(problem.spec))[:-1]


def oracle_solution(
    problem: EmbeddedProblem,
    *,
    rng: random.Random,
    spurious_rate: float = 0.0,
    slip_rate: float = 0.0,
) -> str:
    """A teacher solution: step lines and the answer line, joined by newlines.

    With probability ``slip_rate`` one needed step gets a wrong result; every later line
    (spurious ones included) uses the written values, so all other lines have right arithmetic
    and the final answer is wrong. Before each needed step, with probability ``spurious_rate``, a
    correct step about a not-yet-written derived distractor whose operands are already known is
    inserted; the answer is unaffected.
    """
    for label, rate in (("spurious_rate", spurious_rate), ("slip_rate", slip_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{label} must be in [0, 1], got {rate}")
    world = _parse(problem.spec)
    written = dict(world.values)
    if rng.random() < slip_rate:
        written = _values_with_slip(world, rng.choice(world.steps), rng)
        # One value can reach the target along two paths, so the error can cancel; the target's
        # own step always changes the answer.
        if written[world.target] == world.values[world.target]:
            written = _values_with_slip(world, world.steps[-1], rng)

    known = {q.name for q in world.quantities if q.op == "given"}
    pending = list(world.spurious)
    lines = []
    for step in world.steps:
        if rng.random() < spurious_rate:
            usable = [q for q in pending if all(arg in known for arg in q.args)]
            if usable:
                extra = rng.choice(usable)
                pending.remove(extra)
                lines.append(_step_line(extra, written, world))
                known.add(extra.name)
        lines.append(_step_line(step, written, world))
        known.add(step.name)
    lines.append(final_answer_line(written[world.target]))
    return "\n".join(lines)


def final_answer_line(answer: int | str) -> str:
    """The last line of every solution."""
    return f"The answer is {answer}."


STEP_LABELS = ("needed", "spurious", "wrong", "answer", "wrong_answer")
_ANSWER_LINE_RE = re.compile(r"The answer is\b")


def step_labels(spec: str, solution: str) -> list[str]:
    """The ground truth of each step (line) of ``solution``, from the problem's spec.

    ``needed``: a step line the minimal solution has, with true values; ``spurious``: a true
    step line about a quantity the target does not need; ``wrong``: any other line (a wrong
    value or operand, a name not in the problem, a malformed line); ``answer`` /
    ``wrong_answer``: an answer line with the right / a wrong number. Steps are the ``lines``
    steps of :func:`synthdata_assets.steps.split_steps`, so index ``i`` here is step ``i + 1``
    of ``step_advantages``.
    """
    world = _parse(spec)
    true_lines = {
        _step_line(q, world.values, world): q.name for q in world.quantities if q.op != "given"
    }
    needed = {q.name for q in world.steps}
    right_answer = final_answer_line(world.values[world.target])
    labels = []
    for step in split_steps(solution, "lines"):
        line = step.strip()
        if _ANSWER_LINE_RE.match(line):
            labels.append("answer" if line == right_answer else "wrong_answer")
        elif line in true_lines:
            labels.append("needed" if true_lines[line] in needed else "spurious")
        else:
            labels.append("wrong")
    return labels


def first_wrong_step(spec: str, solution: str) -> int | None:
    """The 1-based index of the first ``wrong`` or ``wrong_answer`` step, or None (every step
    is true; a solution cut off before its answer line has no wrong step)."""
    for i, label in enumerate(step_labels(spec, solution), start=1):
        if label in ("wrong", "wrong_answer"):
            return i
    return None


def misleading_cues(spec: str) -> list[tuple[str, str]]:
    """The choices of a chain problem where the sentence order misleads: ``(needed, listed
    first)`` for each needed step stated after one of its dead-end siblings (none for a
    word problem)."""
    world = _parse(spec)
    if world.grammar != "chain":
        return []  # the word problems have no sibling choices
    by_parent: dict[str, list[str]] = {}
    for q in world.quantities:
        if q.op != "given":
            by_parent.setdefault(q.args[0], []).append(q.name)
    out = []
    for step in world.steps:
        group = by_parent.get(step.args[0], [])
        if len(group) > 1:
            first = min(group, key=world.order.index)
            if first != step.name:
                out.append((step.name, first))
    return out


_ARITHMETIC_RE = re.compile(r"\bhas (\d+ [-+*] \d+ = \d+)\.?$")


def cue_followed(spec: str, solution: str) -> tuple[int, int]:
    """``(choices where the cue misleads, how many of them the solution followed)``: it
    follows the cue at a choice when it writes a step for the first-listed sibling, by name or
    by arithmetic (a line applying that sibling's operation to the value it reads, whatever
    name it writes, unless the step to take computes the very same thing)."""
    world = _parse(spec)
    misleading = misleading_cues(spec)
    if not misleading:
        return 0, 0
    by_name = {q.name: q for q in world.quantities}
    lines = [step.strip() for step in split_steps(solution, "lines")]
    named = {step_name(line) for line in lines}
    computed = {m.group(1) for line in lines if (m := _ARITHMETIC_RE.search(line))}

    def arithmetic(q: _Quantity) -> str:
        a, b = _operands(q, world.values)
        return f"{a} {_SYMBOL[q.op]} {b} = {world.values[q.name]}"

    followed = 0
    for needed, first in misleading:
        own = arithmetic(by_name[first])
        followed += first in named or (own != arithmetic(by_name[needed]) and own in computed)
    return len(misleading), followed


def pretraining_facts(params: EmbeddedParams, *, seed: int, n: int) -> list[str]:
    """Text from the task's world for pretraining a base model, not fine-tuning data.

    Each entry is, with equal odds, a single arithmetic fact in step grammar (operands uniform
    over ``[0, p)``, so the whole table is covered) or a one-step problem without distractors,
    followed on the next lines by its solution. Entry ``i`` depends only on ``(seed, i)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    p = params.modulus
    texts = []
    for i in range(n):
        rng = _rng("pretrain", seed, i)
        if rng.random() < 0.5:
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            op = rng.choice(_UNARY_OPS)
            a, b = rng.randrange(p), rng.randrange(p)
            texts.append(f"{name} has {a} {_SYMBOL[op]} {b} = {_apply(op, a, b, p)} {item}.")
        else:
            world = _parse(_build_spec(rng, p, 1, 0))
            texts.append("\n".join([_question(world), *_minimal_solution(world)]))
    return texts


def arithmetic_drill(
    params: EmbeddedParams, *, seed: int, copies: int = 8
) -> list[tuple[str, str]]:
    """Every arithmetic fact of the task ``copies`` times, as ``(prompt, completion)`` pairs in
    step grammar: ``("Bob has 3 + 5 =", " 1")``, each copy with another random name (seeded).

    The first pretraining phase of the tiny base model trains on these with the loss on the
    result alone. The copies under different names make the result a function of the operands
    alone, so that a model cannot memorise (name, a, b) instead.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    p = params.modulus
    rng = _rng("drill", seed)
    pairs = []
    for op in [op for op in _UNARY_OPS if op in _ops(params)]:
        # The whole table, or with max_constant just the constants a step can use.
        low = 2 if op == "mul" else 1
        constants = range(p) if params.max_constant is None else range(low, params.max_constant + 1)
        for a in range(p):
            for b in constants:
                for name in rng.sample(NAMES, min(copies, len(NAMES))):
                    pairs.append((f"{name} has {a} {_SYMBOL[op]} {b} =", f" {_apply(op, a, b, p)}"))
    return pairs


def easy_problems(
    params: EmbeddedParams, *, seed: int, n: int, max_steps: int = 2
) -> list[tuple[str, str]]:
    """``n`` (question, solution) pairs of easier problems than the task's: 1..``max_steps``
    needed steps and at most one distractor. The second pretraining phase trains on them, so
    that the base model reads questions and writes solutions in the task's format before it
    sees any fine-tuning data (problem ``i`` depends only on ``(seed, i)``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = []
    for i in range(n):
        rng = _rng("easy", seed, i)
        if params.graph == "chain":
            steps = rng.randint(1, max_steps)
            spec = _build_chain_spec(
                rng,
                params.modulus,
                steps,
                rng.randrange(2),
                ops=_ops(params),
                cue_rate=None,
                max_constant=params.max_constant,
                shuffle=params.shuffle,
                dead_end_names=params.dead_end_names,
            )
            world = _parse(spec)
            out.append((_question(world), "\n".join(_minimal_solution(world))))
            continue
        spec = _build_spec(
            rng,
            params.modulus,
            rng.randint(1, max_steps),
            rng.randrange(2),
            shuffle=params.shuffle,
            ops=_ops(params),
        )
        world = _parse(spec)
        out.append((_question(world), "\n".join(_minimal_solution(world))))
    return out


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("/".join(["synthdata.embedded", *map(str, parts)]).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _apply(op: str, a: int, b: int, modulus: int) -> int:
    if op == "sub":
        return (a - b) % modulus
    if op == "mul":
        return (a * b) % modulus
    return (a + b) % modulus


def _operands(q: _Quantity, values: Mapping[str, int]) -> tuple[int, int]:
    second = values[q.args[1]] if q.op == "sum" else q.const
    assert second is not None
    return values[q.args[0]], second


def _step_line(q: _Quantity, values: Mapping[str, int], world: _World) -> str:
    a, b = _operands(q, values)
    if world.grammar == "chain":
        # No item: it is the same in every line, and copying it cost a small model capacity.
        return f"After {q.args[0]}, {q.name} has {a} {_SYMBOL[q.op]} {b} = {values[q.name]}."
    return f"{q.name} has {a} {_SYMBOL[q.op]} {b} = {values[q.name]} {world.item}."


_STEP_NAME_RE = re.compile(r"(?:After [A-Z][a-z]+, )?([A-Z][a-z]+) has\b")


def step_name(line: str) -> str | None:
    """The quantity a step line computes (``Max`` of ``After Fay, Max has ...``)."""
    match = _STEP_NAME_RE.match(line.strip())
    return match.group(1) if match else None


def _minimal_solution(world: _World) -> list[str]:
    """The needed step lines in dependency order, then the answer line."""
    lines = [_step_line(q, world.values, world) for q in world.steps]
    return [*lines, final_answer_line(world.values[world.target])]


def _values_with_slip(world: _World, slipped: _Quantity, rng: random.Random) -> dict[str, int]:
    values: dict[str, int] = {}
    for q in world.quantities:
        if q.op == "given":
            values[q.name] = q.value
            continue
        value = _apply(q.op, *_operands(q, values), world.modulus)
        if q is slipped:
            value = (value + rng.randrange(1, world.modulus)) % world.modulus
        values[q.name] = value
    return values


def _sentence(q: _Quantity, item: str, grammar: str = "dag") -> str:
    if grammar == "chain" and q.op != "given":
        # The quantity read comes first, as in the step line, so the sentence to follow is
        # found from the last name written: "After Fay, Max has 4 more cards."
        amount = {"add": "more", "sub": "fewer", "mul": "times as many"}[q.op]
        return f"After {q.args[0]}, {q.name} has {q.const} {amount} {item}."
    if q.op == "given":
        return f"{q.name} has {q.value} {item}."
    if q.op == "add":
        return f"{q.name} has {q.const} more {item} than {q.args[0]}."
    if q.op == "sub":
        return f"{q.name} has {q.const} fewer {item} than {q.args[0]}."
    if q.op == "mul":
        return f"{q.name} has {q.const} times as many {item} as {q.args[0]}."
    return f"{q.name} has as many {item} as {q.args[0]} and {q.args[1]} together."


def _question(world: _World) -> str:
    by_name = {q.name: q for q in world.quantities}
    sentences = [_sentence(by_name[name], world.item, world.grammar) for name in world.order]
    ask = f"How many {world.item} does {world.target} have? Count modulo {world.modulus}."
    return " ".join([*sentences, ask])


def _ops(params: EmbeddedParams) -> tuple[str, ...]:
    return _DERIVED_OPS if params.multiply else tuple(op for op in _DERIVED_OPS if op != "mul")


def _build_spec(
    rng: random.Random,
    modulus: int,
    n_steps: int,
    n_distractors: int,
    *,
    shuffle: bool = True,
    ops: tuple[str, ...] = _DERIVED_OPS,
) -> str:
    draft = _SpecDraft(rng, modulus)
    target = _grow_needed(draft, n_steps, ops)
    _add_distractors(draft, n_distractors, ops)
    order = _sentence_order(rng, draft.quantities, target, n_distractors, shuffle=shuffle)
    spec = {
        "item": draft.item,
        "modulus": modulus,
        "order": order,
        "quantities": draft.quantities,
        "target": target,
    }
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _build_chain_spec(
    rng: random.Random,
    modulus: int,
    n_steps: int,
    n_dead_ends: int,
    *,
    ops: tuple[str, ...],
    cue_rate: float | None,
    max_constant: int | None = None,
    shuffle: bool = False,
    dead_end_names: int = 0,
) -> str:
    """A chain ``given -> S1 -> ... -> Sk`` (the target), each step one unary operation on the
    previous value, and ``n_dead_ends`` derived quantities that branch off a chain quantity and
    feed nothing: each is a sibling of a needed step, so choosing which one to compute next is
    the decision of a step. See :func:`_chain_order` for the sentence order and the cue.
    With ``dead_end_names``, dead ends are named from the last that many names and chain
    quantities from the others."""
    unary = [op for op in ops if op in _UNARY_OPS]
    draft = _SpecDraft(rng, modulus, max_constant, reserved=NAMES[len(NAMES) - dead_end_names :])
    chain = [draft.given()]
    for _ in range(n_steps):
        chain.append(draft.derived(rng.choice(unary), [chain[-1]]))
    siblings: dict[str, list[str]] = {}
    for _ in range(n_dead_ends):
        parent = rng.randrange(n_steps)
        dead_end = draft.derived(rng.choice(unary), [chain[parent]], reserved=True)
        siblings.setdefault(chain[parent + 1], []).append(dead_end)
    order = _chain_order(rng, chain, siblings, cue_rate, shuffle=shuffle)
    spec = {
        "grammar": "chain",
        "item": draft.item,
        "modulus": modulus,
        "order": order,
        "quantities": draft.quantities,
        "target": chain[-1],
    }
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _chain_order(
    rng: random.Random,
    chain: list[str],
    siblings: dict[str, list[str]],
    cue_rate: float | None,
    *,
    shuffle: bool,
) -> list[str]:
    """Sentence order of a chain problem.

    Dependency order (the default): the chain in order, each dead end at a random place after
    its parent, so reading on to the next sentence is right unless a dead end was stated
    between a step and its needed sibling. Shuffled: a random order. With ``cue_rate``, each
    choice's needed step comes before its dead-end siblings with that probability, and one of
    them comes first otherwise: "the first sentence that reads the last value" is then a
    shortcut that holds at that rate.
    """
    parent = {step: chain[i] for i, step in enumerate(chain[1:])}
    if shuffle:
        order = [*chain, *(d for dead in siblings.values() for d in dead)]
        rng.shuffle(order)
        if cue_rate is not None:
            for needed, others in siblings.items():
                group = sorted([needed, *others], key=order.index)
                slots = sorted(order.index(name) for name in group)
                first = needed if rng.random() < cue_rate else rng.choice(others)
                rest = [n for n in group if n != first]
                for slot, name in zip(slots, [first, *rest], strict=True):
                    order[slot] = name
        return order
    order = list(chain)
    for needed, dead in siblings.items():
        misled = cue_rate is not None and rng.random() >= cue_rate
        for j, name in enumerate(dead):
            if cue_rate is None:
                low = order.index(parent[needed]) + 1
            elif misled and j == 0:
                low = order.index(parent[needed]) + 1
                order.insert(rng.randint(low, order.index(needed)), name)
                continue
            else:
                low = order.index(needed if not misled else parent[needed]) + 1
            order.insert(rng.randint(low, len(order)), name)
    return order


class _SpecDraft:
    """The quantities of a spec being drawn, each under a fresh name from a shuffled list.

    Names in ``reserved`` go only to quantities drawn with ``reserved=True``."""

    def __init__(
        self,
        rng: random.Random,
        modulus: int,
        max_constant: int | None = None,
        *,
        reserved: tuple[str, ...] = (),
    ) -> None:
        self.rng = rng
        self.modulus = modulus
        self.max_constant = max_constant or modulus - 1
        shuffled = list(NAMES)
        rng.shuffle(shuffled)
        self.names = [name for name in shuffled if name not in reserved]
        self.reserved = [name for name in shuffled if name in reserved]
        self.item = rng.choice(ITEMS)
        self.quantities: list[dict[str, object]] = []
        self.values: dict[str, int] = {}

    def given(self) -> str:
        name = self.names.pop()
        self.values[name] = self.rng.randrange(self.modulus)
        self._add(name, "given", [], None)
        return name

    def derived(self, op: str, args: list[str], *, reserved: bool = False) -> str:
        low = 2 if op == "mul" else 1
        const = None if op == "sum" else self.rng.randint(low, self.max_constant)
        a = self.values[args[0]]
        b = self.values[args[1]] if const is None else const
        name = (self.reserved if reserved and self.reserved else self.names).pop()
        self.values[name] = _apply(op, a, b, self.modulus)
        self._add(name, op, args, const)
        return name

    def _add(self, name: str, op: str, args: list[str], const: int | None) -> None:
        self.quantities.append(
            {"name": name, "op": op, "args": args, "const": const, "value": self.values[name]}
        )


class _NeededGraph:
    """The quantities the target depends on, as they are grown.

    Every derived quantity but the last is consumed by a later one, which makes all of them
    ancestors of the target. ``open`` holds the derived quantities not yet consumed; ``leaves``
    the givens; ``closed`` the consumed derived quantities.
    """

    def __init__(self, draft: _SpecDraft) -> None:
        self.draft = draft
        self.leaves: list[str] = []
        self.open: list[str] = []
        self.closed: list[str] = []

    def operands(self, shape: str) -> list[str]:
        """The operands of a step of this shape (see ``_feasible_shapes``), in drawn order."""
        if shape == "unary_leaf":
            return [self._leaf()]
        if shape == "unary_open":
            return [self._take_open()]
        if shape == "sum_open_open":
            return [self._take_open(), self._take_open()]
        if shape == "sum_leaf_leaf":
            self.leaves.extend([self.draft.given(), self.draft.given()])
            return self.leaves[-2:]
        others = self.leaves + self.closed
        first = self._take_open()
        if others and self.draft.rng.random() < _REUSE_PROB:
            return [first, self.draft.rng.choice(others)]
        self.leaves.append(self.draft.given())
        return [first, self.leaves[-1]]

    def _leaf(self) -> str:
        if self.leaves and self.draft.rng.random() < _REUSE_PROB:
            return self.draft.rng.choice(self.leaves)
        self.leaves.append(self.draft.given())
        return self.leaves[-1]

    def _take_open(self) -> str:
        name = self.draft.rng.choice(self.open)
        self.open.remove(name)
        self.closed.append(name)
        return name


def _feasible_shapes(n_open: int, steps_after: int) -> list[str]:
    """The step shapes after which the remaining steps can still merge the open quantities into
    a single target (a sum of two open quantities closes one)."""
    shapes = [("unary_leaf", n_open + 1)]
    if n_open >= 1:
        shapes += [("unary_open", n_open), ("sum_open_other", n_open)]
    if n_open >= 2:
        shapes.append(("sum_open_open", n_open - 1))
    if n_open == 0:
        shapes.append(("sum_leaf_leaf", 1))
    return [shape for shape, open_after in shapes if 1 <= open_after <= steps_after + 1]


def _grow_needed(draft: _SpecDraft, n_steps: int, ops: tuple[str, ...]) -> str:
    """Add the needed givens and ``n_steps`` derived quantities; returns the target's name."""
    rng = draft.rng
    graph = _NeededGraph(draft)
    for k in range(n_steps):
        feasible = _feasible_shapes(len(graph.open), n_steps - k - 1)
        usable = [
            op for op in ops if any(shape.startswith("sum") == (op == "sum") for shape in feasible)
        ]
        op = rng.choice(usable)
        shape = rng.choice([s for s in feasible if s.startswith("sum") == (op == "sum")])
        args = graph.operands(shape)
        rng.shuffle(args)
        graph.open.append(draft.derived(op, args))
    (target,) = graph.open
    return target


def _add_distractors(draft: _SpecDraft, n_distractors: int, ops: tuple[str, ...]) -> None:
    """Add the distractors after the needed graph, so nothing needed can depend on them."""
    rng = draft.rng
    n_derived = rng.randint((n_distractors + 1) // 2, n_distractors) if n_distractors else 0
    for _ in range(n_distractors - n_derived):
        draft.given()
    for _ in range(n_derived):
        op = rng.choice(ops)
        pool = [str(q["name"]) for q in draft.quantities]
        draft.derived(op, rng.sample(pool, 2 if op == "sum" else 1))


def _sentence_order(
    rng: random.Random,
    quantities: list[dict[str, object]],
    target: str,
    n_distractors: int,
    *,
    shuffle: bool,
) -> list[str]:
    """The names in sentence order: shuffled, or the dependency order of the module docstring
    (each given distractor anywhere, each derived one at a random place after its operands and
    after the target)."""
    order = [str(q["name"]) for q in quantities]
    if shuffle:
        rng.shuffle(order)
        return order
    n_needed = len(order) - n_distractors
    order = order[:n_needed]
    for q in quantities[n_needed:]:
        after = max((order.index(str(a)) + 1 for a in q["args"]), default=0)
        if q["op"] != "given":
            after = max(after, order.index(target) + 1)
        order.insert(rng.randint(after, len(order)), str(q["name"]))
    return order


@functools.lru_cache(maxsize=4096)
def _parse(spec: str) -> _World:
    def check(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(f"invalid embedded spec: {message}")

    try:
        raw = json.loads(spec)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid embedded spec: not JSON ({error})") from error
    check(isinstance(raw, dict), "not an object")
    keys = {"item", "modulus", "order", "quantities", "target"}
    check(set(raw) in (keys, keys | {"grammar"}), "wrong keys")
    grammar = raw.get("grammar", "dag")
    check(grammar in GRAPHS, f"bad grammar {grammar!r}")
    modulus, item = raw["modulus"], raw["item"]
    check(isinstance(modulus, int) and modulus >= 3 and _is_prime(modulus), "bad modulus")
    check(isinstance(item, str) and _ITEM_RE.fullmatch(item) is not None, "bad item")
    check(isinstance(raw["quantities"], list), "quantities is not a list")

    quantities: list[_Quantity] = []
    values: dict[str, int] = {}
    for entry in raw["quantities"]:
        check(
            isinstance(entry, dict) and set(entry) == {"name", "op", "args", "const", "value"},
            f"bad quantity {entry!r}",
        )
        name, op, args, const = entry["name"], entry["op"], entry["args"], entry["const"]
        check(isinstance(name, str) and _NAME_RE.fullmatch(name) is not None, f"bad name {name!r}")
        check(name not in values, f"duplicate name {name}")
        check(op == "given" or op in _DERIVED_OPS, f"{name}: bad op {op!r}")
        arity = {"given": 0, "sum": 2}.get(op, 1)
        check(
            isinstance(args, list) and len(args) == arity and len(set(args)) == arity,
            f"{name}: {op} needs {arity} distinct operands",
        )
        check(all(arg in values for arg in args), f"{name}: operand defined later or missing")
        if op in _UNARY_OPS:
            low = 2 if op == "mul" else 1
            check(isinstance(const, int) and low <= const < modulus, f"{name}: bad constant")
        else:
            check(const is None, f"{name}: unexpected constant")
        q = _Quantity(name, op, tuple(args), const, entry["value"])
        check(isinstance(q.value, int) and 0 <= q.value < modulus, f"{name}: bad value")
        if op != "given":
            check(q.value == _apply(op, *_operands(q, values), modulus), f"{name}: wrong value")
        values[name] = q.value
        quantities.append(q)

    target, order = raw["target"], raw["order"]
    check(isinstance(target, str) and target in values, "unknown target")
    check(
        isinstance(order, list) and all(isinstance(name, str) for name in order),
        "order is not a list of names",
    )
    check(sorted(order) == sorted(values), "order is not a permutation of the names")
    needed = {target}
    for q in reversed(quantities):
        if q.name in needed:
            needed.update(q.args)
    derived = [q for q in quantities if q.op != "given"]
    steps = tuple(q for q in derived if q.name in needed)
    check(bool(steps) and steps[-1].name == target, "target is not derived")
    return _World(
        spec=json.dumps(raw, sort_keys=True, separators=(",", ":")),
        modulus=modulus,
        item=item,
        target=target,
        quantities=tuple(quantities),
        order=tuple(order),
        values=MappingProxyType(values),
        steps=steps,
        spurious=tuple(q for q in derived if q.name not in needed),
        grammar=grammar,
    )
