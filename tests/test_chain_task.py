"""The embedded task's chain graph: dead-end choices, the shortcut cue, per-step ground truth."""

from __future__ import annotations

import json
import random

import pytest

from synthdata_assets.tasks.embedded import (
    NAMES,
    EmbeddedParams,
    cue_followed,
    first_wrong_step,
    generate_problems,
    misleading_cues,
    oracle_solution,
    solve,
    step_labels,
    step_name,
)

CHAIN = EmbeddedParams(graph="chain", n_distractors=2, min_steps=2, max_steps=4)


def test_chain_structure() -> None:
    for problem in generate_problems(CHAIN, 200, seed=1, split="train"):
        spec = json.loads(problem.spec)
        quantities = spec["quantities"]
        assert [q["op"] for q in quantities].count("given") == 1
        assert all(q["op"] in ("add", "sub", "mul") for q in quantities[1:])
        assert len(quantities) == 1 + problem.n_steps + 2
        # Every needed step reads the step before it; every dead end is read by nothing.
        steps = solve(problem)
        assert len(steps) == problem.n_steps
        read = {arg for q in quantities for arg in q["args"]}
        needed = {step_name(line) for line in steps}
        dead_ends = [q["name"] for q in quantities[1:] if q["name"] not in needed]
        assert len(dead_ends) == 2 and not read & set(dead_ends)


def test_cue_holds_at_its_rate_in_training_and_not_at_test() -> None:
    cued = EmbeddedParams(graph="chain", n_distractors=2, cue_rate=0.9)

    def misleading_share(split: str) -> float:
        problems = generate_problems(cued, 600, seed=2, split=split)
        choices = sum(_choices(p.spec) for p in problems)
        return sum(len(misleading_cues(p.spec)) for p in problems) / choices

    assert misleading_share("train") == pytest.approx(0.1, abs=0.03)
    assert misleading_share("test") > 0.4


def _choices(spec: str) -> int:
    quantities = json.loads(spec)["quantities"]
    parents = [q["args"][0] for q in quantities if q["op"] != "given"]
    return sum(parents.count(p) > 1 for p in set(parents))


def test_cue_needs_the_chain_graph() -> None:
    with pytest.raises(ValueError, match="chain"):
        EmbeddedParams(graph="dag", cue_rate=0.5)
    with pytest.raises(ValueError, match="cue_rate"):
        EmbeddedParams(graph="chain", cue_rate=1.5)


def test_dead_end_names_are_reserved_and_otherwise_change_nothing() -> None:
    reserved = EmbeddedParams(graph="chain", n_distractors=2, dead_end_names=6)
    problems = generate_problems(reserved, 300, seed=4, split="train")
    dead_end_names, step_names = set(), set()
    for problem in problems:
        needed = {step_name(line) for line in solve(problem)}
        for q in json.loads(problem.spec)["quantities"][1:]:
            (step_names if q["name"] in needed else dead_end_names).add(q["name"])
    assert dead_end_names == set(NAMES[-6:])
    assert not step_names & dead_end_names and len(step_names) > 6
    # The same draws as without the knob, but for the names.
    plain = generate_problems(CHAIN, 300, seed=4, split="train")
    assert [p.n_steps for p in plain] == [p.n_steps for p in problems]
    assert [p.answer for p in plain] == [p.answer for p in problems]


def test_dead_end_names_are_checked() -> None:
    with pytest.raises(ValueError, match="chain"):
        EmbeddedParams(graph="dag", dead_end_names=4)
    with pytest.raises(ValueError, match="n_distractors"):
        EmbeddedParams(graph="chain", n_distractors=3, dead_end_names=2)
    with pytest.raises(ValueError, match="max_steps"):
        EmbeddedParams(graph="chain", max_steps=4, dead_end_names=22)


def test_labels_of_oracle_solutions() -> None:
    rng = random.Random(0)
    slips = spurious = 0
    for problem in generate_problems(CHAIN, 300, seed=3, split="train"):
        clean = oracle_solution(problem, rng=rng)
        assert step_labels(problem.spec, clean) == ["needed"] * problem.n_steps + ["answer"]
        assert first_wrong_step(problem.spec, clean) is None
        noisy = oracle_solution(problem, rng=rng, spurious_rate=0.5, slip_rate=0.5)
        labels = step_labels(problem.spec, noisy)
        spurious += labels.count("spurious")
        if labels[-1] == "wrong_answer":
            slips += 1
            # The slipped step is the first wrong one; every needed step after it carries the
            # wrong value (a dead end off an earlier quantity can still be true).
            first = first_wrong_step(problem.spec, noisy)
            assert first is not None and labels[first - 1] == "wrong"
            assert "needed" not in labels[first - 1 :]
    assert 100 < slips < 200 and spurious > 50


def test_labels_of_model_garbage() -> None:
    problem = generate_problems(CHAIN, 1, seed=4, split="test")[0]
    assert step_labels(problem.spec, "") == []
    assert step_labels(problem.spec, "Zz has 1 + 1 = 2 x.\nThe answer is 99.") == [
        "wrong",
        "wrong_answer",
    ]
    assert first_wrong_step(problem.spec, "blah") == 1


def test_cue_followed_counts_the_first_listed_sibling() -> None:
    cued = EmbeddedParams(graph="chain", n_distractors=2, cue_rate=0.0)
    problem = next(
        p for p in generate_problems(cued, 50, seed=5, split="train") if misleading_cues(p.spec)
    )
    (needed, first), *_ = misleading_cues(problem.spec)
    right = oracle_solution(problem, rng=random.Random(0))
    assert cue_followed(problem.spec, right)[1] == 0
    spec = json.loads(problem.spec)
    values = {q["name"]: q["value"] for q in spec["quantities"]}
    wrong = f"After Ann, {first} has 1 + 1 = {values[first]} {spec['item']}.\n" + right
    n_points, followed = cue_followed(problem.spec, wrong)
    assert followed == 1 and n_points >= 1
    # The dead end's arithmetic under another name follows it too.
    dead_end = next(q for q in spec["quantities"] if q["name"] == first)
    read = values[dead_end["args"][0]]
    symbol = {"add": "+", "sub": "-", "mul": "*"}[dead_end["op"]]
    line = f"After Ann, Zzz has {read} {symbol} {dead_end['const']} = {values[first]}."
    assert cue_followed(problem.spec, line + "\n" + right)[1] == 1


def test_chain_sentences_and_steps_name_the_quantity_read_first() -> None:
    problem = generate_problems(CHAIN, 1, seed=6, split="test")[0]
    spec = json.loads(problem.spec)
    first_step = solve(problem)[0]
    given = spec["quantities"][0]["name"]
    assert first_step.startswith(f"After {given}, ")
    assert f"After {given}, {step_name(first_step)} has " in problem.question
    assert step_name("Bob has 1 + 2 = 3 pens.") == "Bob"
    assert step_name("The answer is 3.") is None
