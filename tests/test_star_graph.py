"""The didactic path-star task: generator, oracle teacher, ground truth and verifier."""

import random

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
