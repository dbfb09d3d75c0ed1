"""The didactic path-star task: generator, oracle teacher, ground truth and verifier."""

import random

import polars as pl
import pytest

from synthdata_assets import tasks
from synthdata_assets.config import ConfigError, load_config
from synthdata_assets.problems import problem_pool
from synthdata_assets.steps import split_steps
from synthdata_assets.tasks import star_graph as sg
from synthdata_assets.verify import extract_answer, grade

PARAMS = sg.StarGraphParams(degree=3, path_length=4, n_nodes=40)
PROBLEMS = sg.generate_problems(PARAMS, 200, seed=7, split="train")


def _walk(problem: sg.StarProblem, first: int) -> list[int]:
    nxt = dict(problem.edges)
    walk = [first]
    while walk[-1] in nxt:
        walk.append(nxt[walk[-1]])
    return walk


def test_every_arm_has_path_length_nodes_and_labels_are_distinct():
    for p in PROBLEMS:
        arms = p.arms()
        assert len(arms) == PARAMS.degree
        assert all(len(arm) == PARAMS.path_length for arm in arms)
        nodes = [p.start] + [n for arm in arms for n in arm]
        assert len(set(nodes)) == PARAMS.nodes_per_graph
        assert all(0 <= n < PARAMS.n_nodes for n in nodes)
        assert len(p.edges) == PARAMS.degree * PARAMS.path_length


def test_the_goal_is_reached_through_exactly_one_arm_which_is_the_path():
    for p in PROBLEMS:
        outgoing = [v for u, v in p.edges if u == p.start]
        reaching = [first for first in outgoing if p.goal in _walk(p, first)]
        assert len(reaching) == 1
        assert tuple(_walk(p, reaching[0])) == p.path
        assert p.path[-1] == p.goal
        assert p.goal not in [arm[-1] for arm in p.arms() if arm != p.path]


def test_edge_order_is_shuffled():
    # In a generated (unshuffled) order the start's edges would come first, arm by arm.
    orders = {tuple(u == p.start for u, _ in p.edges) for p in PROBLEMS}
    assert len(orders) > 20
    first_edge_at_start = sum(p.edges[0][0] == p.start for p in PROBLEMS) / len(PROBLEMS)
    assert 0.1 < first_edge_at_start < 0.5  # degree / edges = 3/12 on average
    # ... and the true arm is not always listed first among the start's edges.
    first_listed = [next(v for u, v in p.edges if u == p.start) for p in PROBLEMS]
    share = sum(f == p.path[0] for f, p in zip(first_listed, PROBLEMS, strict=True)) / len(PROBLEMS)
    assert 0.15 < share < 0.55


def test_question_format_and_spec_round_trip():
    p = PROBLEMS[0]
    edges, query = p.question.split("/")
    assert query == f"{p.start},{p.goal}="
    assert [tuple(map(int, e.split(","))) for e in edges.split("|")] == list(p.edges)
    assert sg.StarProblem.from_spec(p.problem_id, p.spec) == p
    assert sg.is_spec(p.spec)
    assert not sg.is_spec('{"item": "cards"}') and not sg.is_spec("not json")


def test_generation_is_deterministic_and_nested():
    again = sg.generate_problems(PARAMS, 50, seed=7, split="train")
    assert again == PROBLEMS[:50]
    assert sg.generate_problems(PARAMS, 50, seed=8, split="train") != again


def test_oracle_paths_grade_correct_and_slips_take_a_wrong_first_step():
    rng = random.Random(0)
    for p in PROBLEMS:
        solution = sg.oracle_solution(p, rng=rng, slip_rate=0.0)
        assert grade(solution + "\n", p.answer, "star_graph").is_correct
        assert tasks.first_wrong_step(p.spec, solution) is None
        assert tasks.step_labels(p.spec, solution) == ["needed"] * (len(p.path) - 1) + ["answer"]
        slipped = sg.oracle_solution(p, rng=rng, slip_rate=1.0)
        assert not grade(slipped, p.answer, "star_graph").is_correct
        assert tasks.first_wrong_step(p.spec, slipped) == 1


def test_a_wrong_step_later_on_is_located_and_a_short_path_has_no_wrong_step():
    p = PROBLEMS[1]
    path = [str(n) for n in p.path]
    detour = "\n".join(path[:2] + [str(p.start)] + path[3:]) + "\n"
    assert tasks.first_wrong_step(p.spec, detour) == 3
    assert tasks.step_labels(p.spec, detour)[:3] == ["needed", "needed", "wrong"]
    assert tasks.first_wrong_step(p.spec, "\n".join(path[:2]) + "\n") is None
    assert tasks.first_wrong_step(p.spec, "\n".join([*path, "5"])) == len(path) + 1
    # Steps are lines: step i of the ground truth is line i of the lines rule.
    assert len(split_steps(detour, "lines")) == len(tasks.step_labels(p.spec, detour))


def test_the_verifier_accepts_exactly_the_true_path():
    p = PROBLEMS[2]
    true = sg.solution_text(p.path)
    assert grade(true, p.answer, "star_graph").is_correct
    assert grade(true + "\n\n", p.answer, "star_graph").is_correct
    for arm in p.arms():
        if arm != p.path:
            assert not grade(sg.solution_text(arm), p.answer, "star_graph").is_correct
    wrong = [
        sg.solution_text(p.path[:-1]),  # stops before the goal
        sg.solution_text([*p.path, p.start]),  # runs on
        sg.solution_text([p.start, *p.path]),  # repeats the start
        sg.solution_text(reversed(p.path)),
        true.replace("\n", ","),
        "",
        "\x00garbage\n" * 3,
        true + "\nThe answer is 3.",
    ]
    for text in wrong:
        assert not grade(text, p.answer, "star_graph").is_correct, text
    assert extract_answer("3\n 9 \n30\n", "star_graph") == "3,9,30"
    assert sg.first_step_correct(p.spec, true) and not sg.first_step_correct(p.spec, "")


def test_the_problem_pool_keeps_test_apart_and_gold_answers_parse():
    config = load_config(
        "tiny",
        overrides={
            "task": {"name": "star_graph", "star_graph": {"degree": 2, "path_length": 3}},
            "teacher": {"spurious_rate": 0.0},
        },
    )
    pool = problem_pool(config.task)
    train, test = pool.filter(pool["split"] == "train"), pool.filter(pool["split"] == "test")
    assert train.height == config.task.n_train_pool and test.height == config.task.n_test
    assert not set(train["question"]) & set(test["question"])
    assert (pool["source"] == "star_graph").all()
    from synthdata_assets.problems import gold_answers_parse

    assert gold_answers_parse(pool, "star_graph") == []
    assert config.chance_rate is None and config.first_step_baseline == (0.5, "1/degree")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"star_graph": {"degree": 5, "path_length": 10, "n_nodes": 40}}, "task.star_graph"),
        ({"star_graph": {"degree": 1}}, "task.star_graph.degree"),
    ],
)
def test_invalid_star_graph_knobs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(
            "tiny",
            overrides={
                "task": {"name": "star_graph", **overrides},
                "teacher": {"spurious_rate": 0},
            },
        )


def test_spurious_steps_are_refused_on_star_graph():
    with pytest.raises(ConfigError, match="spurious_rate"):
        load_config("tiny", overrides={"task": {"name": "star_graph"}})


def test_one_goal_arm_draws_the_same_problems_as_before_the_knob():
    # Digests of the specs drawn by the code before goal_arms existed: the didactic preset's
    # graphs (degree 2, arms of 2) and this module's PARAMS, with their gold answers.
    import hashlib

    def digest(params, n, seed, answers):
        problems = sg.generate_problems(params, n, seed=seed, split="train")
        text = "\n".join(p.spec + (p.answer if answers else "") for p in problems)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    preset = sg.StarGraphParams(degree=2, path_length=2, n_nodes=20, goal_arms=1)
    assert digest(preset, 300, 0, answers=False) == "aecfa4bef3c6cdd6"
    assert digest(PARAMS, 200, 7, answers=True) == "676bfc5fe5d9a2fe"


MERGED = sg.StarGraphParams(degree=4, path_length=3, n_nodes=30, goal_arms=3)
MERGED_PROBLEMS = sg.generate_problems(MERGED, 200, seed=3, split="train")


def test_several_arms_end_at_the_goal_and_each_is_a_true_path():
    for p in MERGED_PROBLEMS:
        arms = p.arms()
        assert len(arms) == MERGED.degree and all(len(a) == MERGED.path_length for a in arms)
        reaching = sorted(a for a in arms if a[-1] == p.goal)
        assert reaching == sorted(p.paths) and len(p.paths) == MERGED.goal_arms
        assert len(p.edges) == MERGED.degree * MERGED.path_length
        nodes = {p.start} | {n for arm in arms for n in arm}
        assert len(nodes) == MERGED.nodes_per_graph == 1 + 4 * 3 - 2
        assert sg.StarProblem.from_spec(p.problem_id, p.spec) == p
    # Which listed edge out of the start is a true path's is not given away by its position.
    first_listed = [next(v for u, v in p.edges if u == p.start) for p in MERGED_PROBLEMS]
    share = sum(
        any(f == path[0] for path in p.paths)
        for f, p in zip(first_listed, MERGED_PROBLEMS, strict=True)
    ) / len(MERGED_PROBLEMS)
    assert 0.6 < share < 0.9  # 3 of 4 arms


def test_every_true_path_grades_right_and_the_teacher_writes_each():
    rng = random.Random(0)
    written = set()
    for p in MERGED_PROBLEMS[:50]:
        for path in p.paths:
            text = sg.solution_text(path)
            assert grade(text, p.answer, "star_graph").is_correct
            assert tasks.step_labels(p.spec, text) == ["needed"] * (len(path) - 1) + ["answer"]
            assert sg.first_step_correct(p.spec, text)
        wrong = [a for a in p.arms() if a not in p.paths]
        assert len(wrong) == 1
        assert not grade(sg.solution_text(wrong[0]), p.answer, "star_graph").is_correct
        assert tasks.first_wrong_step(p.spec, sg.solution_text(wrong[0])) == 1
        assert not sg.first_step_correct(p.spec, sg.solution_text(wrong[0]))
        for _ in range(12):
            written.add(
                p.paths.index(
                    tuple(map(int, sg.parse_path(sg.oracle_solution(p, rng=rng, slip_rate=0.0))))
                )
            )
        slipped = sg.oracle_solution(p, rng=rng, slip_rate=1.0)
        assert sg.parse_path(slipped) == [str(n) for n in wrong[0]]
    assert written == {0, 1, 2}


def test_a_solution_that_jumps_between_true_paths_is_wrong_where_it_jumps():
    p = MERGED_PROBLEMS[0]
    a, b = p.paths[0], p.paths[1]
    jump = sg.solution_text([a[0], b[1], b[2]])
    assert tasks.step_labels(p.spec, jump) == ["needed", "wrong", "wrong"]
    assert not grade(jump, p.answer, "star_graph").is_correct
    assert not grade(
        sg.solution_text(a), sg.solution_text(b).replace("\n", ","), "star_graph"
    ).is_correct


def test_a_pool_with_several_goal_arms_reads_back_and_sets_the_baseline():
    config = load_config(
        "tiny",
        overrides={
            "task": {
                "name": "star_graph",
                "star_graph": {"degree": 3, "path_length": 2, "n_nodes": 20, "goal_arms": 2},
            },
            "teacher": {"spurious_rate": 0.0},
        },
    )
    from synthdata_assets.problems import gold_answers_parse

    pool = problem_pool(config.task)
    assert pool["answer"].str.contains("|", literal=True).all()
    assert gold_answers_parse(pool, "star_graph") == []
    assert gold_answers_parse(pool.with_columns(answer=pl.lit("3,9|x")), "star_graph") == list(
        pool["problem_id"]
    )
    assert config.first_step_baseline == (2 / 3, "2/degree")


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"degree": 3, "goal_arms": 3}, "below degree"),
        ({"degree": 3, "path_length": 1, "goal_arms": 2}, "path_length"),
        ({"degree": 3, "path_length": 2, "n_nodes": 5, "goal_arms": 2}, r"goal_arms - 1\) \(6\)"),
    ],
)
def test_invalid_goal_arms_name_the_field(knobs, message):
    with pytest.raises(ConfigError, match=rf"task\.star_graph(.|\n)*{message}"):
        load_config(
            "tiny",
            overrides={
                "task": {"name": "star_graph", "star_graph": knobs},
                "teacher": {"spurious_rate": 0},
            },
        )
    with pytest.raises(ValueError, match=message):
        sg.StarGraphParams(**{"path_length": 2, "n_nodes": 50, **knobs})


HINTED = sg.StarGraphParams(
    degree=4, path_length=3, n_nodes=30, goal_arms=2, hint_rate=0.4, hint_labels=3
)


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_hint_decides_a_hinted_problem_and_no_other_arm_starts_with_a_hint_label(split):
    problems = sg.generate_problems(HINTED, 400, seed=2, split=split)
    hint = HINTED.hint_set
    assert hint == {27, 28, 29}
    deeper = 0
    for p in problems:
        arms = p.arms()
        assert len(arms) == HINTED.degree and all(len(a) == HINTED.path_length for a in arms)
        assert sorted(a for a in arms if a[-1] == p.goal) == sorted(p.paths)
        nodes = {p.start} | {n for a in arms for n in a}
        assert len(nodes) == HINTED.nodes_per_graph
        assert sg.StarProblem.from_spec(p.problem_id, p.spec) == p
        # The rule: the arms out of the start that begin with a hint label are exactly the
        # true paths in a hinted problem, and there are none in any other.
        by_rule = sorted(a for a in arms if a[0] in hint)
        assert by_rule == (sorted(p.paths) if p.hinted else [])
        deeper += any(n in hint for a in arms for n in a[1:])
    # The share hinted is hint_rate in either split, and hint labels also sit deeper in arms,
    # so "a hint label anywhere" is not the rule.
    assert 0.33 < sum(p.hinted for p in problems) / len(problems) < 0.47
    assert deeper > len(problems) / 4


def test_the_hint_rule_grades_right_on_hinted_problems_only_as_often_as_chance_elsewhere():
    problems = sg.generate_problems(HINTED, 400, seed=5, split="test")
    rng = random.Random(0)
    right = {True: [], False: []}
    for p in problems:
        hinted_arms = [a for a in p.arms() if a[0] in HINTED.hint_set]
        arm = rng.choice(hinted_arms or p.arms())
        right[p.hinted].append(grade(sg.solution_text(arm), p.answer, "star_graph").is_correct)
    assert all(right[True])
    assert 0.35 < sum(right[False]) / len(right[False]) < 0.65  # 2 of 4 arms


def test_without_the_hint_the_draws_are_those_from_before_the_knob():
    for labels in (1, 2, 5):
        params = sg.StarGraphParams(degree=3, path_length=4, n_nodes=40, hint_labels=labels)
        assert params.hint_set == frozenset()
        drawn = sg.generate_problems(params, 200, seed=7, split="train")
        assert drawn == PROBLEMS and not any(p.hinted for p in drawn)
        assert all('"hinted"' not in p.spec for p in drawn)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"degree": 3, "path_length": 1, "hint_rate": 0.5}, "path_length"),
        ({"degree": 3, "goal_arms": 2, "hint_rate": 0.5, "hint_labels": 1}, r"hint_labels \(1\)"),
        ({"degree": 3, "n_nodes": 12, "hint_rate": 0.5, "hint_labels": 10}, r"hint_labels \(2\)"),
        ({"degree": 3, "hint_rate": 1.5}, "hint_rate"),
    ],
)
def test_invalid_hint_knobs_name_the_field(knobs, message):
    with pytest.raises(ConfigError, match=rf"task\.star_graph(.|\n)*{message}"):
        load_config(
            "tiny",
            overrides={
                "task": {"name": "star_graph", "star_graph": {"path_length": 2, **knobs}},
                "teacher": {"spurious_rate": 0},
            },
        )
    with pytest.raises(ValueError, match=message):
        sg.StarGraphParams(**{"path_length": 2, "n_nodes": 50, **knobs})
