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

Several correct paths (``goal_arms``): with ``goal_arms = k > 1``, ``k`` of the arms end at
the same goal node (the goal has ``k`` edges into it) and the other ``degree - k`` end
elsewhere, so the decision has ``k`` right answers and ``degree - k`` wrong ones. Each of the
``k`` arms is a true path; the oracle teacher writes one of them at random. It tests
whether a negative says more than a positive where right answers outnumber wrong ones:
lowering the one wrong arm should raise every right one, where the NLL of one right arm
lowers the others (measured in docs/experiments/goal_arms.md). ``goal_arms = 1`` is the
standard path-star graph and draws exactly the same problems as before the knob existed.

A learnable hint (``hint_rate``): the last ``hint_labels`` node labels are hint labels. In a
hinted problem (a share ``hint_rate`` of training and test problems alike) every true path's
first node is a hint label; no other arm starts with one, in any problem, though hint labels
appear deeper in arms. So "take the arm out of the start whose first node is a hint label" is
a local rule, one lookup away, that decides a hinted problem, and nothing decides the others
short of tracing the goal back. A model that learns the rule makes the decision partly right
(``hint_rate + (1 - hint_rate) * goal_arms / degree`` at most, without tracing), which the
standard graph never gets from a small model: it tests whether per-step negatives sharpen a
partly learned decision faster than positives do. ``hint_rate = 0`` (the default) draws
exactly the problems drawn before the knob existed.

Ground truth (:func:`step_labels`): a line is ``needed`` when it is a true path's node at its
position and every line before it was on that same path, ``answer`` when that node is the
goal, and ``wrong`` otherwise. The verifier's format ``star_graph``
(:mod:`synthdata_assets.verify`) grades the whole path: right only when the lines are exactly a
true path (the gold answer lists every true path, separated by ``|``).

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
ALTERNATIVE_SEP = "|"  # between the true paths of a gold answer


@dataclass(frozen=True)
class StarGraphParams:
    """A star graph's shape: ``degree`` arms of ``path_length`` nodes each, labels from
    ``0 .. n_nodes - 1``; ``goal_arms`` of the arms end at the goal (they share its node)."""

    degree: int = 2
    path_length: int = 5
    n_nodes: int = 50
    goal_arms: int = 1
    hint_rate: float = 0.0
    hint_labels: int = 2

    def __post_init__(self) -> None:
        if self.degree < 2:
            raise ValueError(f"degree must be at least 2 (got {self.degree}): one arm is no choice")
        if self.path_length < 1:
            raise ValueError(f"path_length must be at least 1 (got {self.path_length})")
        if not 1 <= self.goal_arms < self.degree:
            raise ValueError(
                f"goal_arms must be at least 1 and below degree ({self.degree}; got "
                f"{self.goal_arms}): with every arm at the goal there is no wrong choice"
            )
        if self.goal_arms > 1 and self.path_length < 2:
            raise ValueError(
                "path_length must be at least 2 when goal_arms > 1: arms of one node that all "
                "end at the goal would be the same arm"
            )
        if self.n_nodes < self.nodes_per_graph:
            raise ValueError(
                f"n_nodes ({self.n_nodes}) must be at least 1 + degree * path_length - "
                f"(goal_arms - 1) ({self.nodes_per_graph}): every node of a graph has its own "
                "label"
            )
        if not 0.0 <= self.hint_rate <= 1.0:
            raise ValueError(f"hint_rate must be within 0-1 (got {self.hint_rate})")
        if self.hint_rate > 0:
            if self.path_length < 2:
                raise ValueError(
                    "path_length must be at least 2 when hint_rate > 0: a true arm of one node "
                    "starts at the goal, which the query names"
                )
            if self.hint_labels < self.goal_arms:
                raise ValueError(
                    f"hint_labels ({self.hint_labels}) must be at least goal_arms "
                    f"({self.goal_arms}): each true path of a hinted problem starts with its own"
                )
            if self.n_nodes - self.hint_labels < self.degree:
                raise ValueError(
                    f"n_nodes - hint_labels ({self.n_nodes - self.hint_labels}) must be at least "
                    f"degree ({self.degree}): the arms of a problem without the hint all start "
                    "with other labels"
                )

    @property
    def hint_set(self) -> frozenset[int]:
        """The hint labels (empty without the hint): the last ``hint_labels`` values."""
        if self.hint_rate == 0:
            return frozenset()
        return frozenset(range(self.n_nodes - self.hint_labels, self.n_nodes))

    @property
    def nodes_per_graph(self) -> int:
        """The start, every arm's nodes, and the goal counted once."""
        return 1 + self.degree * self.path_length - (self.goal_arms - 1)


@dataclass(frozen=True)
class StarProblem:
    """One graph and its query; ``path`` is the true path after the start, ending at the goal,
    and ``other_paths`` the other true paths when several arms end at the goal."""

    problem_id: str
    edges: tuple[tuple[int, int], ...]
    start: int
    goal: int
    path: tuple[int, ...]
    other_paths: tuple[tuple[int, ...], ...] = ()
    hinted: bool = False  # every true path starts with a hint label (``hint_rate``)

    @property
    def paths(self) -> tuple[tuple[int, ...], ...]:
        """Every true path: ``path`` first."""
        return (self.path, *self.other_paths)

    @property
    def question(self) -> str:
        edges = EDGE_SEP.join(f"{u}{NODE_SEP}{v}" for u, v in self.edges)
        return f"{edges}{QUERY_SEP}{self.start}{NODE_SEP}{self.goal}{QUERY_END}"

    @property
    def answer(self) -> str:
        """The gold answer as the verifier compares it: the path's nodes joined by commas,
        and with several true paths each of them, joined by ``|``."""
        return ALTERNATIVE_SEP.join(NODE_SEP.join(str(n) for n in p) for p in self.paths)

    @property
    def n_steps(self) -> int:
        return len(self.path)

    @property
    def spec(self) -> str:
        """Everything the ground truth needs, as JSON (the ``problems`` table's ``spec``)."""
        data = {
            "task": TASK,
            "edges": [list(e) for e in self.edges],
            "start": self.start,
            "goal": self.goal,
            "path": list(self.path),
        }
        if self.other_paths:  # absent with one true path, so older specs read the same
            data["other_paths"] = [list(p) for p in self.other_paths]
        if self.hinted:  # absent without the hint, likewise
            data["hinted"] = True
        return json.dumps(data)

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
            other_paths=tuple(tuple(int(n) for n in p) for p in data.get("other_paths", [])),
            hinted=bool(data.get("hinted", False)),
        )

    def arms(self) -> list[tuple[int, ...]]:
        """Every arm out of the start, as the nodes after the start (the true paths among them)."""
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
    random arm (of ``goal_arms`` arms), the edges in a random order."""
    if params.hint_rate > 0:
        return _hinted_problem(params, rng, problem_id)
    if params.goal_arms > 1:
        return _merged_problem(params, rng, problem_id)
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


def _merged_problem(params: StarGraphParams, rng: random.Random, problem_id: str) -> StarProblem:
    """A star graph whose first ``goal_arms`` arms (in label order; the edges are shuffled, so
    nothing in the question tells them apart but the goal) share their last node, the goal."""
    labels = rng.sample(range(params.n_nodes), params.nodes_per_graph)
    start, goal, rest = labels[0], labels[1], labels[2:]
    inner = params.path_length - 1
    good = [(*rest[a * inner : (a + 1) * inner], goal) for a in range(params.goal_arms)]
    rest = rest[params.goal_arms * inner :]
    bad = [
        tuple(rest[a * params.path_length : (a + 1) * params.path_length])
        for a in range(params.degree - params.goal_arms)
    ]
    edges = [(start, arm[0]) for arm in good + bad] + [
        (arm[j], arm[j + 1]) for arm in good + bad for j in range(params.path_length - 1)
    ]
    rng.shuffle(edges)
    return StarProblem(problem_id, tuple(edges), start, goal, good[0], tuple(good[1:]))


def _hinted_problem(params: StarGraphParams, rng: random.Random, problem_id: str) -> StarProblem:
    """A star graph drawn with the hint (``hint_rate > 0``): the arms' first nodes first (hint
    labels for the true arms of a hinted problem, other labels for every other first node),
    then the start, the goal and the deeper nodes from every label left, hint labels included.
    """
    hint = sorted(params.hint_set)
    plain = [n for n in range(params.n_nodes) if n not in params.hint_set]
    k, wrong = params.goal_arms, params.degree - params.goal_arms
    hinted = rng.random() < params.hint_rate
    if hinted:
        true_firsts, wrong_firsts = rng.sample(hint, k), rng.sample(plain, wrong)
    else:
        firsts = rng.sample(plain, params.degree)
        true_firsts, wrong_firsts = firsts[:k], firsts[k:]
    used = set(true_firsts) | set(wrong_firsts)
    left = [n for n in range(params.n_nodes) if n not in used]
    rest = rng.sample(left, params.nodes_per_graph - params.degree)
    start, goal, rest = rest[0], rest[1], rest[2:]
    inner = params.path_length - 2  # true arms: first node, inner nodes, then the goal
    good = [
        (first, *rest[a * inner : (a + 1) * inner], goal) for a, first in enumerate(true_firsts)
    ]
    rest = rest[k * inner :]
    deep = params.path_length - 1
    bad = [(first, *rest[a * deep : (a + 1) * deep]) for a, first in enumerate(wrong_firsts)]
    edges = [(start, arm[0]) for arm in good + bad] + [
        (arm[j], arm[j + 1]) for arm in good + bad for j in range(params.path_length - 1)
    ]
    rng.shuffle(edges)
    return StarProblem(problem_id, tuple(edges), start, goal, good[0], tuple(good[1:]), hinted)


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
    """A true path (one of them at random when there are several); with probability
    ``slip_rate`` a slip instead: a wrong arm taken at the first step and followed to its end
    (so the answer is wrong and the first wrong step is 1)."""
    if rng.random() < slip_rate:
        wrong = [arm for arm in problem.arms() if arm not in problem.paths]
        return solution_text(rng.choice(wrong))
    if problem.other_paths:
        return solution_text(rng.choice(problem.paths))
    return solution_text(problem.path)


def parse_path(text: str) -> list[str]:
    """The lines of a solution, stripped, without blank lines (what each step wrote)."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def step_labels(spec: str, solution: str) -> list[str]:
    """The ground truth of each line of ``solution`` (``needed``, ``answer``, ``wrong``; see
    the module docstring). Index ``i`` here is step ``i + 1`` of ``step_advantages``."""
    paths = [[str(n) for n in p] for p in StarProblem.from_spec("", spec).paths]
    labels = []
    for i, step in enumerate(split_steps(solution, "lines")):
        node = step.strip()
        # The true paths this solution can still be on: those that agree with every line so far.
        paths = [p for p in paths if i < len(p) and p[i] == node]
        if not paths:
            labels.append("wrong")
        else:
            labels.append("answer" if i == len(paths[0]) - 1 else "needed")
    return labels


def first_wrong_step(spec: str, solution: str) -> int | None:
    """The 1-based index of the first ``wrong`` line, or None (every line is on the true path:
    a solution cut off before the goal has no wrong step)."""
    labels = step_labels(spec, solution)
    return labels.index("wrong") + 1 if "wrong" in labels else None


def first_step_correct(spec: str, solution: str) -> bool:
    """Whether the solution's first line is a true path's first node: the one decision."""
    nodes = parse_path(solution)
    return bool(nodes) and nodes[0] in {str(p[0]) for p in StarProblem.from_spec("", spec).paths}


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
