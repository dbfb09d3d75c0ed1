"""Tests for the embedded task (synthdata_assets.tasks.embedded).

The checks replay the JSON spec with their own arithmetic instead of the module's helpers, so a
bug in the generator and the same bug in its evaluator cannot cancel out.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synthdata_assets.tasks.embedded import (
    EmbeddedParams,
    EmbeddedProblem,
    exclude_overlap,
    final_answer_line,
    generate_problems,
    oracle_solution,
    pretraining_facts,
    solve,
)

STEP_RE = re.compile(r"^([A-Z][a-z]+) has (\d+) ([+*-]) (\d+) = (\d+) ([a-z]+)\.$")
ANSWER_RE = re.compile(r"^The answer is (\d+)\.$")
PARAMS = EmbeddedParams()
P = PARAMS.modulus


@pytest.fixture(scope="module")
def problems() -> list[EmbeddedProblem]:
    return generate_problems(PARAMS, 300, seed=7, split="train")


def compute(op: str, a: int, b: int, p: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op] % p


def quantities(problem: EmbeddedProblem) -> dict[str, dict]:
    return {q["name"]: q for q in json.loads(problem.spec)["quantities"]}


def true_values(problem: EmbeddedProblem) -> dict[str, int]:
    spec = json.loads(problem.spec)
    p = spec["modulus"]
    values: dict[str, int] = {}
    for q in spec["quantities"]:
        a = values[q["args"][0]] if q["args"] else None
        if q["op"] == "given":
            values[q["name"]] = q["value"]
        elif q["op"] == "sum":
            values[q["name"]] = (a + values[q["args"][1]]) % p
        else:
            values[q["name"]] = compute(
                {"add": "+", "sub": "-", "mul": "*"}[q["op"]], a, q["const"], p
            )
    return values


def needed_names(problem: EmbeddedProblem) -> set[str]:
    spec = json.loads(problem.spec)
    qs = quantities(problem)
    needed, stack = set(), [spec["target"]]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(qs[name]["args"])
    return needed


def replay(problem: EmbeddedProblem, text: str) -> tuple[list[str], int, int]:
    """Check a solution line by line against the spec.

    Every step must name a derived quantity not written before, read its operands from the
    givens or from earlier lines (with the values written there), and use the spec's operation
    and constant. Returns the names in written order, how many lines have wrong arithmetic, and
    the final answer.
    """
    spec = json.loads(problem.spec)
    p, item, qs = spec["modulus"], spec["item"], quantities(problem)
    written = {name: q["value"] for name, q in qs.items() if q["op"] == "given"}
    *steps, last = text.split("\n")
    names, wrong = [], 0
    for line in steps:
        match = STEP_RE.match(line)
        assert match, line
        name, a, op, b, result, line_item = match.groups()
        a, b, result = int(a), int(b), int(result)
        q = qs[name]
        assert q["op"] != "given" and name not in written, line
        assert line_item == item and 0 <= result < p, line
        assert op == {"add": "+", "sub": "-", "mul": "*", "sum": "+"}[q["op"]], line
        assert a == written[q["args"][0]], line
        assert b == (written[q["args"][1]] if q["op"] == "sum" else q["const"]), line
        wrong += compute(op, a, b, p) != result
        written[name] = result
        names.append(name)
    answer = ANSWER_RE.match(last)
    assert answer, last
    assert int(answer.group(1)) == written[spec["target"]]
    return names, wrong, int(answer.group(1))


def test_same_seed_same_problems_and_different_seed_different() -> None:
    first = generate_problems(PARAMS, 20, seed=3, split="train")
    assert first == generate_problems(PARAMS, 20, seed=3, split="train")
    other = generate_problems(PARAMS, 20, seed=4, split="train")
    assert [p.question for p in first] != [p.question for p in other]
    assert len({p.question for p in first} & {p.question for p in other}) < 3


def test_prefix_stable_and_ids() -> None:
    short = generate_problems(PARAMS, 10, seed=5, split="test")
    long = generate_problems(PARAMS, 20, seed=5, split="test")
    assert long[:10] == short
    assert [p.problem_id for p in long] == [f"emb-test-{i:06d}" for i in range(20)]


def test_train_and_test_streams_differ() -> None:
    train = generate_problems(PARAMS, 50, seed=1, split="train")
    test = generate_problems(PARAMS, 50, seed=1, split="test")
    assert all(p.problem_id.startswith("emb-train-") for p in train)
    assert len({p.question for p in train} & {p.question for p in test}) < 3


def test_bad_split_rejected() -> None:
    with pytest.raises(ValueError):
        generate_problems(PARAMS, 1, seed=0, split="Train!")


def test_reproducible_across_processes() -> None:
    """Python's hash() is salted per process; the stream must not depend on it."""
    code = (
        "from synthdata_assets.tasks.embedded import EmbeddedParams, generate_problems, "
        "pretraining_facts\n"
        "print(repr([p.spec for p in generate_problems(EmbeddedParams(), 5, seed=11, "
        "split='test')]))\n"
        "print(repr(pretraining_facts(EmbeddedParams(), seed=11, n=5)))"
    )
    root = Path(__file__).resolve().parents[1]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={"PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2")
    }
    here = repr([p.spec for p in generate_problems(PARAMS, 5, seed=11, split="test")])
    here += "\n" + repr(pretraining_facts(PARAMS, seed=11, n=5)) + "\n"
    assert outputs == {here}


def test_exclude_overlap() -> None:
    train = generate_problems(PARAMS, 5, seed=2, split="train")
    test = generate_problems(PARAMS, 5, seed=2, split="test")
    mixed = [test[0], train[1], test[2], train[3]]
    assert exclude_overlap(mixed, train) == [test[0], test[2]]
    assert exclude_overlap(test, train) == test


def test_problem_structure(problems: list[EmbeddedProblem]) -> None:
    non_topological = 0
    for problem in problems:
        spec = json.loads(problem.spec)
        p, qs = spec["modulus"], quantities(problem)
        values = true_values(problem)
        assert p == P
        assert str(values[spec["target"]]) == problem.answer
        assert all(0 <= v < p and qs[name]["value"] == v for name, v in values.items())

        lines = solve(problem)
        assert len(lines) == problem.n_steps
        names, wrong, answer = replay(
            problem, "\n".join([*lines, final_answer_line(problem.answer)])
        )
        assert wrong == 0 and str(answer) == problem.answer
        needed = needed_names(problem)
        assert set(names) == {n for n in needed if qs[n]["op"] != "given"}

        distractors = set(qs) - needed
        assert len(distractors) == PARAMS.n_distractors
        assert any(qs[n]["op"] != "given" for n in distractors)

        body, ask = problem.question.rsplit(". How many ", 1)
        assert ask == f"{spec['item']} does {spec['target']} have? Count modulo {p}."
        sentences = [s + "." for s in body.split(". ")]
        subjects = [s.split(" ")[0] for s in sentences]
        assert subjects == spec["order"] and sorted(subjects) == sorted(qs)
        position = {name: i for i, name in enumerate(subjects)}
        if any(position[a] > position[n] for n in qs for a in qs[n]["args"]):
            non_topological += 1
    assert non_topological > len(problems) // 2


def test_dependency_order_states_the_steps_in_solution_order() -> None:
    # With shuffle off, a solution computes the derived quantities in the order the question
    # states them and stops at the asked-for one: every sentence comes after its operands, and
    # every derived distractor after the target.
    params = EmbeddedParams(modulus=7, n_distractors=3, shuffle=False)
    for problem in generate_problems(params, 200, seed=3, split="train"):
        spec, qs = json.loads(problem.spec), quantities(problem)
        order = spec["order"]
        position = {name: i for i, name in enumerate(order)}
        assert all(position[a] < position[n] for n in qs for a in qs[n]["args"])
        target_at = position[spec["target"]]
        derived_before = [n for n in order[: target_at + 1] if qs[n]["op"] != "given"]
        assert [line.split(" ")[0] for line in solve(problem)] == derived_before
        distractors = set(qs) - needed_names(problem)
        assert all(position[n] > target_at for n in distractors if qs[n]["op"] != "given")


def test_sentences_render_the_spec(problems: list[EmbeddedProblem]) -> None:
    for problem in problems[:50]:
        spec = json.loads(problem.spec)
        item = spec["item"]
        for q in spec["quantities"]:
            n, args, c = q["name"], q["args"], q["const"]
            first, last = (args[0], args[-1]) if args else (None, None)
            sentence = {
                "given": f"{n} has {q['value']} {item}.",
                "add": f"{n} has {c} more {item} than {first}.",
                "sub": f"{n} has {c} fewer {item} than {first}.",
                "mul": f"{n} has {c} times as many {item} as {first}.",
                "sum": f"{n} has as many {item} as {first} and {last} together.",
            }[q["op"]]
            assert problem.question.count(sentence) == 1, (sentence, problem.question)
            if q["op"] == "mul":
                assert 2 <= c < P


def test_n_steps_range_and_coverage() -> None:
    params = EmbeddedParams(min_steps=1, max_steps=6, n_distractors=3)
    problems = generate_problems(params, 300, seed=9, split="train")
    assert {p.n_steps for p in problems} == set(range(1, 7))
    for problem in problems:
        assert len(solve(problem)) == problem.n_steps
        assert len(set(quantities(problem)) - needed_names(problem)) == 3


def test_params_validation() -> None:
    for bad in (
        {"modulus": 21},
        {"modulus": 2},
        {"min_steps": 0},
        {"min_steps": 5, "max_steps": 4},
        {"n_distractors": -1},
        {"max_steps": 12, "n_distractors": 2},
    ):
        with pytest.raises(ValueError):
            EmbeddedParams(**bad)


def test_from_spec_round_trip_and_rejects_tampering(problems: list[EmbeddedProblem]) -> None:
    for problem in problems[:50]:
        assert EmbeddedProblem.from_spec(problem.problem_id, problem.spec) == problem
    spec = json.loads(problems[0].spec)
    derived = next(q for q in spec["quantities"] if q["op"] != "given")
    derived["value"] = (derived["value"] + 1) % P
    with pytest.raises(ValueError):
        EmbeddedProblem.from_spec("x", json.dumps(spec))
    with pytest.raises(ValueError):
        EmbeddedProblem.from_spec("x", "{not json")


def test_oracle_without_noise_is_the_minimal_solution(problems: list[EmbeddedProblem]) -> None:
    rng = random.Random(0)
    for problem in problems:
        text = oracle_solution(problem, rng=rng)
        assert text == "\n".join([*solve(problem), f"The answer is {problem.answer}."])
        assert final_answer_line(problem.answer) == text.split("\n")[-1]


def test_oracle_is_seeded(problems: list[EmbeddedProblem]) -> None:
    def texts(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [
            oracle_solution(p, rng=rng, spurious_rate=0.5, slip_rate=0.5) for p in problems[:40]
        ]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def test_slip_always(problems: list[EmbeddedProblem]) -> None:
    rng = random.Random(1)
    for problem in problems:
        text = oracle_solution(problem, rng=rng, slip_rate=1.0)
        names, wrong, answer = replay(problem, text)
        assert wrong == 1, text
        assert str(answer) != problem.answer
        assert len(names) == problem.n_steps


def test_slip_rate_fraction(problems: list[EmbeddedProblem]) -> None:
    more = generate_problems(PARAMS, 200, seed=8, split="train")
    rng = random.Random(2)
    outcomes = []
    for problem in problems + more:
        names, wrong, answer = replay(problem, oracle_solution(problem, rng=rng, slip_rate=0.3))
        assert wrong == (str(answer) != problem.answer)
        outcomes.append(wrong)
    assert 0.22 < sum(outcomes) / len(outcomes) < 0.38


def spurious_frequency(problems: list[EmbeddedProblem], rate: float) -> float:
    rng = random.Random(3)
    extra = positions = 0
    for problem in problems:
        text = oracle_solution(problem, rng=rng, spurious_rate=rate)
        names, wrong, answer = replay(problem, text)
        assert wrong == 0 and str(answer) == problem.answer
        needed = needed_names(problem)
        spurious = [n for n in names if n not in needed]
        assert len(spurious) == len(names) - problem.n_steps
        assert [n for n in names if n in needed] == [line.split(" ")[0] for line in solve(problem)]
        extra += len(spurious)
        positions += problem.n_steps
    return extra / positions


def test_spurious_steps_respond_to_the_knob(problems: list[EmbeddedProblem]) -> None:
    frequencies = [spurious_frequency(problems, rate) for rate in (0.0, 0.1, 0.5, 1.0)]
    assert frequencies[0] == 0.0
    assert 0.0 < frequencies[1] < frequencies[2] < frequencies[3]
    assert frequencies[1] <= 0.1 and frequencies[2] <= 0.5


def test_spurious_and_slip_together(problems: list[EmbeddedProblem]) -> None:
    rng = random.Random(4)
    for problem in problems:
        text = oracle_solution(problem, rng=rng, spurious_rate=1.0, slip_rate=1.0)
        names, wrong, answer = replay(problem, text)
        assert wrong == 1 and str(answer) != problem.answer


def test_oracle_rejects_bad_rates(problems: list[EmbeddedProblem]) -> None:
    with pytest.raises(ValueError):
        oracle_solution(problems[0], rng=random.Random(0), slip_rate=1.5)


def test_other_modulus() -> None:
    params = EmbeddedParams(modulus=7, min_steps=3, max_steps=5, n_distractors=4)
    rng = random.Random(5)
    for problem in generate_problems(params, 100, seed=0, split="train"):
        assert problem.question.endswith("Count modulo 7.")
        assert 0 <= int(problem.answer) < 7
        names, wrong, answer = replay(problem, oracle_solution(problem, rng=rng, slip_rate=1.0))
        assert wrong == 1 and str(answer) != problem.answer


def test_pretraining_facts() -> None:
    facts = pretraining_facts(PARAMS, seed=0, n=400)
    assert facts == pretraining_facts(PARAMS, seed=0, n=400)
    assert facts != pretraining_facts(PARAMS, seed=1, n=400)
    assert facts[:50] == pretraining_facts(PARAMS, seed=0, n=50)
    single = toys = 0
    for text in facts:
        lines = text.split("\n")
        if len(lines) == 1:
            single += 1
            match = STEP_RE.match(lines[0])
            assert match, text
            _, a, op, b, result, _ = match.groups()
            assert compute(op, int(a), int(b), P) == int(result) and int(result) < P
        else:
            toys += 1
            question, step, last = lines
            assert question.endswith(f"Count modulo {P}.")
            match = STEP_RE.match(step)
            assert match, text
            _, a, op, b, result, _ = match.groups()
            assert compute(op, int(a), int(b), P) == int(result)
            assert last == f"The answer is {result}."
    assert single > 100 and toys > 100


def test_slip_that_would_cancel_moves_to_the_last_step() -> None:
    """Bob reaches Dee along two paths: Dee = Bob + 22 * Bob = 0 mod 23 whatever Bob is."""

    def given(name: str, value: int) -> dict:
        return {"name": name, "op": "given", "args": [], "const": None, "value": value}

    def derived(name: str, op: str, args: list[str], const: int | None, value: int) -> dict:
        return {"name": name, "op": op, "args": args, "const": const, "value": value}

    spec = {
        "item": "coins",
        "modulus": 23,
        "order": ["Dee", "Ann", "Eve", "Cid", "Bob"],
        "quantities": [
            given("Ann", 5),
            derived("Bob", "add", ["Ann"], 2, 7),
            derived("Cid", "mul", ["Bob"], 22, 16),
            derived("Dee", "sum", ["Bob", "Cid"], None, 0),
            derived("Eve", "add", ["Dee"], 3, 3),
        ],
        "target": "Eve",
    }
    problem = EmbeddedProblem.from_spec("hand-0", json.dumps(spec))
    assert problem.answer == "3" and problem.n_steps == 4
    assert problem.question.startswith("Dee has as many coins as Bob and Cid together. Ann has 5")
    slipped_lines = set()
    for seed in range(60):
        text = oracle_solution(problem, rng=random.Random(seed), slip_rate=1.0)
        names, wrong, answer = replay(problem, text)
        assert wrong == 1 and answer != 3, text
        slipped_lines.update(
            line.split(" ")[0]
            for line in text.split("\n")[:-1]
            if (m := STEP_RE.match(line)) and compute(m[3], int(m[2]), int(m[4]), 23) != int(m[5])
        )
    assert slipped_lines == {"Cid", "Dee", "Eve"}
