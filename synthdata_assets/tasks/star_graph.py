"""Path-star graphs (Bachmann & Nagarajan 2024, "The Pitfalls of Next-Token Prediction"): the
paper's didactic task, where next-token SFT is known to stall at the first step.

A star graph has a start node with ``degree`` arms, each a path of ``path_length`` nodes; node
labels are distinct values drawn from ``0 .. n_nodes - 1``. The question lists the edges in a
shuffled order, then the start and the goal (the last node of one arm)::

    14,3|7,22|3,9|14,7|22,5|9,30/14,30=

and the solution is the path from the start to the goal, one node per line, without the
start, which the question names::

    3
    9
    30

Every step after the first is a lookup (the edge that leaves the previous node), the "Clever
Hans" cheat that teacher forcing rewards; the first step, which arm to take, is the only
decision, and it needs the goal traced back to the start. Step ``i`` of a solution is its line
``i`` (the shared ``lines`` step rule), so a solution that takes a wrong arm has its first
wrong step at 1.

Ground truth (:func:`step_labels`): a line is ``needed`` when it is the true path's node at
its position and every line before it was too, ``answer`` when that node is the goal, and
``wrong`` otherwise. The verifier's format ``star_graph`` (:mod:`synthdata_assets.verify`)
grades the whole path: right only when the lines are exactly the true path.

Generation is pure Python and deterministic in ``(params, seed, split, index)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from synthdata_assets.steps import split_steps

TASK = "star_graph"
EDGE_SEP, NODE_SEP, QUERY_SEP, QUERY_END = "|", ",", "/", "="


@dataclass(frozen=True)
class StarGraphParams:
    """A star graph's shape: ``degree`` arms of ``path_length`` nodes each, labels from
    ``0 .. n_nodes - 1``."""

    degree: int = 2
    path_length: int = 5
    n_nodes: int = 50

    def __post_init__(self) -> None:
        if self.degree < 2:
            raise ValueError(f"degree must be at least 2 (got {self.degree}): one arm is no choice")
        if self.path_length < 1:
            raise ValueError(f"path_length must be at least 1 (got {self.path_length})")
        if self.n_nodes < self.nodes_per_graph:
            raise ValueError(
                f"n_nodes ({self.n_nodes}) must be at least 1 + degree * path_length "
                f"({self.nodes_per_graph}): every node of a graph has its own label"
            )

    @property
    def nodes_per_graph(self) -> int:
        return 1 + self.degree * self.path_length


@dataclass(frozen=True)
class StarProblem:
    """One graph and its query; ``path`` is the true path after the start, ending at the goal."""

    problem_id: str
    edges: tuple[tuple[int, int], ...]
    start: int
    goal: int
    path: tuple[int, ...]

    @property
    def question(self) -> str:
        edges = EDGE_SEP.join(f"{u}{NODE_SEP}{v}" for u, v in self.edges)
        return f"{edges}{QUERY_SEP}{self.start}{NODE_SEP}{self.goal}{QUERY_END}"

    @property
    def answer(self) -> str:
        """The gold answer as the verifier compares it: the path's nodes joined by commas."""
        return NODE_SEP.join(str(n) for n in self.path)

    @property
    def n_steps(self) -> int:
        return len(self.path)

    @property
    def spec(self) -> str:
        """Everything the ground truth needs, as JSON (the ``problems`` table's ``spec``)."""
        return json.dumps(
            {
                "task": TASK,
                "edges": [list(e) for e in self.edges],
                "start": self.start,
                "goal": self.goal,
                "path": list(self.path),
            }
        )

    @classmethod
    def from_spec(cls, problem_id: str, spec: str) -> StarProblem:
        data = json.loads(spec)
        if not isinstance(data, dict) or data.get("task") != TASK:
            raise ValueError(f"not a star_graph spec: {spec[:80]!r}")
        return cls(
            problem_id=problem_id,
            edges=tuple((int(u), int(v)) for u, v in data["edges"]),
            start=int(data["start"]),
            goal=int(data["goal"]),
            path=tuple(int(n) for n in data["path"]),
        )

    def arms(self) -> list[tuple[int, ...]]:
        """Every arm out of the start, as the nodes after the start (the true path is one)."""
        nxt = dict(self.edges)
        outgoing = [v for u, v in self.edges if u == self.start]
        arms = []
        for first in outgoing:
            arm = [first]
            while arm[-1] in nxt:
                arm.append(nxt[arm[-1]])
            arms.append(tuple(arm))
        return arms


def is_spec(spec: str) -> bool:
    """Whether ``spec`` is a star graph's (specs of other tasks have no ``task`` key)."""
    try:
        data = json.loads(spec)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("task") == TASK


def generate_problem(params: StarGraphParams, rng: random.Random, problem_id: str) -> StarProblem:
    """One random star graph: labels drawn without replacement, the goal at the end of a
    random arm, the edges in a random order."""
    labels = rng.sample(range(params.n_nodes), params.nodes_per_graph)
    start, rest = labels[0], labels[1:]
    arms = [
        tuple(rest[a * params.path_length : (a + 1) * params.path_length])
        for a in range(params.degree)
    ]
    edges = [(start, arm[0]) for arm in arms] + [
        (arm[j], arm[j + 1]) for arm in arms for j in range(params.path_length - 1)
    ]
    rng.shuffle(edges)
    path = arms[rng.randrange(params.degree)]
    return StarProblem(problem_id, tuple(edges), start, path[-1], path)


def generate_problems(
    params: StarGraphParams, n: int, *, seed: int, split: str
) -> list[StarProblem]:
    """``n`` problems of ``split``; problem ``i`` depends only on ``(params, seed, split, i)``,
    so a larger pool starts with a smaller one."""
    return [
        generate_problem(params, random.Random(f"star/{seed}/{split}/{i}"), f"star-{split}-{i}")
        for i in range(n)
    ]


def exclude_overlap(test: Sequence[StarProblem], train: Sequence[StarProblem]) -> list[StarProblem]:
    """``test`` without the problems whose question is also a training question."""
    seen = {p.question for p in train}
    return [p for p in test if p.question not in seen]


def solution_text(path: Sequence[int]) -> str:
    """A path written as a solution: one node per line."""
    return "\n".join(str(n) for n in path)


def oracle_solution(problem: StarProblem, *, rng: random.Random, slip_rate: float) -> str:
    """The true path; with probability ``slip_rate`` a slip instead: a wrong arm taken at the
    first step and followed to its end (so the answer is wrong and the first wrong step is 1)."""
    if rng.random() < slip_rate:
        wrong = [arm for arm in problem.arms() if arm != problem.path]
        return solution_text(rng.choice(wrong))
    return solution_text(problem.path)


def parse_path(text: str) -> list[str]:
    """The lines of a solution, stripped, without blank lines (what each step wrote)."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def step_labels(spec: str, solution: str) -> list[str]:
    """The ground truth of each line of ``solution`` (``needed``, ``answer``, ``wrong``; see
    the module docstring). Index ``i`` here is step ``i + 1`` of ``step_advantages``."""
    path = [str(n) for n in StarProblem.from_spec("", spec).path]
    labels, on_path = [], True
    for i, step in enumerate(split_steps(solution, "lines")):
        node = step.strip()
        on_path = on_path and i < len(path) and node == path[i]
        if not on_path:
            labels.append("wrong")
        else:
            labels.append("answer" if i == len(path) - 1 else "needed")
    return labels


def first_wrong_step(spec: str, solution: str) -> int | None:
    """The 1-based index of the first ``wrong`` line, or None (every line is on the true path:
    a solution cut off before the goal has no wrong step)."""
    labels = step_labels(spec, solution)
    return labels.index("wrong") + 1 if "wrong" in labels else None


def first_step_correct(spec: str, solution: str) -> bool:
    """Whether the solution's first line is the true path's first node: the one decision."""
    nodes = parse_path(solution)
    return bool(nodes) and nodes[0] == str(StarProblem.from_spec("", spec).path[0])


def walk_examples(params: StarGraphParams, n: int, *, seed: int) -> list[tuple[str, str]]:
    """``n`` (question, solution) pairs in the task's format that are lookups only: the query
    names a node of the goal's arm other than the start, so every step is the one edge out of
    the node before it. Pretraining on them teaches a base to read a graph (the "Clever Hans"
    skill) and never the first step out of the start, the task's decision."""
    out = []
    for i, p in enumerate(generate_problems(params, n, seed=seed, split="walks")):
        at = random.Random(f"walk/{seed}/{i}").randrange(len(p.path) - 1)
        query = f"{QUERY_SEP}{p.path[at]}{NODE_SEP}{p.goal}{QUERY_END}"
        question = p.question.rsplit(QUERY_SEP, 1)[0] + query
        out.append((question, solution_text(p.path[at + 1 :])))
    return out


def tokenizer_texts(params: StarGraphParams, *, seed: int, n: int = 2000) -> list[str]:
    """Questions and solutions of graphs drawn for the tokenizer alone (never a test
    question), so every node label and separator is in the vocabulary."""
    problems = generate_problems(params, n, seed=seed, split="tokenizer")
    return [p.question + "\n" + solution_text(p.path) for p in problems]
