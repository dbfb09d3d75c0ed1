"""The endpoint teacher (synthdata_assets/teacher.py): teacher solutions from an
OpenAI-compatible server.

Against tests/test_openai_backend.py's stub server (here answering with a right or a wrong
solution by the request's seed) everywhere; against a real vLLM server on a tiny trained
checkpoint with marker ``vllm`` (``make test-vllm``).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

# The stub server and the vLLM helpers of the backend's tests (tests/ is on sys.path).
import test_openai_backend
from test_openai_backend import Stub, _tiny_trained_checkpoint, needs_vllm, vllm_server
from test_openai_backend import stub as stub  # the fixture

from synthdata_assets import problems as pool_lib
from synthdata_assets.config import load_config
from synthdata_assets.tasks import embedded
from synthdata_assets.teacher import SOLUTION_SCHEMA, endpoint_teacher_solutions
from synthdata_assets.verify import grade_many
from training.generation import prompt_seed
from training.generation.openai_engine import OpenAIBackendError
from training.prompts import format_prompt


@pytest.fixture(scope="module")
def pool() -> pl.DataFrame:
    return pool_lib.problem_pool(load_config("tiny").task)


def _teacher(stub: Stub, problems: pl.DataFrame, cache_path: Path | None, **kwargs):
    options = {
        "base_url": stub.url,
        "model": None,
        "n": 2,
        "temperature": 0.7,
        "max_new_tokens": 64,
        "seed": 3,
        "answer_format": "embedded",
        "cache_path": cache_path,
        "concurrency": 2,
        "log": lambda _line: None,
        **kwargs,
    }
    return endpoint_teacher_solutions(problems, **options)


@pytest.fixture
def teacher_stub(stub: Stub, pool: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> Stub:
    """The stub server answering like a teacher: the oracle's solution to the prompt's problem,
    right for even seeds and with the answer off by one for odd ones."""
    by_prompt = {
        format_prompt(row["question"]): row
        for row in pool.filter(pl.col("split") == "train").iter_rows(named=True)
    }

    def answer(body: dict) -> dict:
        row = by_prompt[body["prompt"]]
        problem = embedded.EmbeddedProblem.from_spec(row["problem_id"], row["spec"])
        lines = embedded.solve(problem)
        given = int(row["answer"]) + (body.get("seed") or 0) % 2
        text = "\n".join([*lines, embedded.final_answer_line(given)]) + "\n"
        return {
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"completion_tokens": 5 * len(lines) + 6},
        }

    # _handler looks `canned` up in its module at every request.
    monkeypatch.setattr(test_openai_backend, "canned", answer)
    return stub


def test_solutions_follow_the_contract_and_are_graded(
    teacher_stub: Stub, pool: pl.DataFrame
) -> None:
    subset = pool_lib.training_subset(pool, 8, seed=0)
    table = _teacher(teacher_stub, subset, None)
    assert table.schema == pl.Schema(SOLUTION_SCHEMA)
    assert table.height == 16 and teacher_stub.requests == 16
    ids = [f"{pid}/teacher/3/{j}" for pid in subset["problem_id"] for j in range(2)]
    assert table["solution_id"].to_list() == ids
    assert (table["teacher"] == "endpoint").all()
    # One seeded request per solution, prompted as the learner is.
    questions = dict(zip(subset["problem_id"], subset["question"], strict=True))
    prompts = {format_prompt(q): pid for pid, q in questions.items()}
    bodies = {(prompts[b["prompt"]], b["seed"]) for b in teacher_stub.bodies}
    assert bodies == {
        (pid, prompt_seed(3, prompt) + j) for prompt, pid in prompts.items() for j in range(2)
    }
    body = teacher_stub.bodies[0]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("stub-model", 64, 0.7)
    assert body["stop"] == ["\nQuestion:"]
    # Graded by the verifier: right exactly where the stub gave the gold answer.
    gold = dict(zip(subset["problem_id"], subset["answer"], strict=True))
    for row in table.iter_rows(named=True):
        pid, j = row["problem_id"], int(row["solution_id"].rsplit("/", 1)[1])
        right = (prompt_seed(3, format_prompt(questions[pid])) + j) % 2 == 0
        assert row["is_correct"] is right
        assert row["answer"] == gold[pid]
        assert row["final_answer"] == str(int(gold[pid]) + (0 if right else 1))
        assert row["n_lines"] == len(row["solution"].splitlines()) >= 2
    assert 0 < table["is_correct"].sum() < table.height


def test_a_crash_then_a_rerun_requests_only_what_is_missing(
    teacher_stub: Stub, pool: pl.DataFrame, tmp_path: Path
) -> None:
    subset = pool_lib.training_subset(pool, 8, seed=0)
    expected = _teacher(teacher_stub, subset, None)
    cache = tmp_path / "teacher" / "seed=3.jsonl"
    # The server goes away after 5 completions: the run fails, the 5 are kept.
    teacher_stub.reset(lambda _body, _attempt, served: 400 if served >= 5 else None)
    with pytest.raises(OpenAIBackendError):
        _teacher(teacher_stub, subset, cache, concurrency=1)
    assert len(cache.read_text().splitlines()) == 5
    teacher_stub.reset()
    assert _teacher(teacher_stub, subset, cache).equals(expected)
    assert teacher_stub.requests == 16 - 5
    # All written: nothing is requested.
    teacher_stub.reset()
    assert _teacher(teacher_stub, subset, cache).equals(expected)
    assert teacher_stub.requests == 0
    # A larger nested data size sharing the file requests only its new problems, and its
    # first problems get the same solutions.
    larger = pool_lib.training_subset(pool, 12, seed=0)
    table = _teacher(teacher_stub, larger, cache)
    assert teacher_stub.requests == (12 - 8) * 2
    assert table.head(16).equals(expected)
    # More solutions per problem: only the new ones.
    teacher_stub.reset()
    assert _teacher(teacher_stub, subset, cache, n=3).height == 24
    assert teacher_stub.requests == 8


def test_greedy_teacher_asks_once_per_problem(teacher_stub: Stub, pool: pl.DataFrame) -> None:
    subset = pool_lib.training_subset(pool, 4, seed=0)
    table = _teacher(teacher_stub, subset, None, temperature=0.0, n=3, model="stub-model")
    assert teacher_stub.requests == 4 and table.height == 12
    assert all("seed" not in body for body in teacher_stub.bodies)


# ---------------------------------------------------------------------------------------------
# Against a real vLLM server (make test-vllm)


@needs_vllm
def test_teacher_solutions_from_a_vllm_server(tmp_path: Path) -> None:
    import torch

    from training.checkpoint import load_checkpoint
    from training.generation import SamplingParams
    from training.generation.transformers_engine import TransformersGenerator

    folder = _tiny_trained_checkpoint(tmp_path / "ckpt")
    # Problems of the family the checkpoint was trained on (tests/test_openai_backend.py's).
    params = embedded.EmbeddedParams()
    problems = embedded.generate_problems(params, 48, seed=0, split="train")[:6]
    subset = pl.DataFrame(
        {
            "problem_id": [p.problem_id for p in problems],
            "question": [p.question for p in problems],
            "answer": [p.answer for p in problems],
        }
    )
    cache = tmp_path / "teacher.jsonl"
    lines: list[str] = []
    options = {
        "n": 3,
        "temperature": 0.7,
        "max_new_tokens": 96,
        "seed": 0,
        "answer_format": "embedded",
        "cache_path": cache,
        "concurrency": 4,
        "log": lines.append,
    }
    with vllm_server(folder, tmp_path / "server.log") as url:
        sampled = endpoint_teacher_solutions(subset, base_url=url, model=None, **options)
        greedy = endpoint_teacher_solutions(
            subset, base_url=url, model=None, **{**options, "temperature": 0.0, "n": 1}
        )
    assert any("endpoint teacher tiny at" in line for line in lines)
    assert sampled.schema == pl.Schema(SOLUTION_SCHEMA)
    assert sampled.height == 18 and sampled["solution_id"].n_unique() == 18
    assert sampled.group_by("problem_id").len()["len"].to_list() == [3] * 6
    # Graded as the verifier grades. The checkpoint writes the task's format (an answer line
    # to extract) but is too small to get the arithmetic right.
    grades = grade_many(sampled["solution"].to_list(), sampled["answer"].to_list(), "embedded")
    assert sampled["is_correct"].to_list() == [g.is_correct for g in grades]
    assert sampled["final_answer"].to_list() == [g.extracted for g in grades]
    assert sampled["final_answer"].is_not_null().sum() >= 9, sampled["solution"].to_list()
    assert all("<eos>" not in s and "Question:" not in s for s in sampled["solution"])
    # Greedy: what the transformers backend decodes on the same checkpoint.
    model, tokenizer = load_checkpoint(folder, device="cpu", dtype=torch.float32)
    reference = TransformersGenerator(model, tokenizer, batch_size=8).generate(
        [format_prompt(q) for q in subset["question"]],
        SamplingParams(max_new_tokens=96, stop=("\nQuestion:",)),
    )
    assert greedy["solution"].to_list() == [r[0].text for r in reference]
    # The server is gone: the cache answers everything.
    again = endpoint_teacher_solutions(subset, base_url=url, model="tiny", **options)
    assert again.equals(sampled)
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 18 + 6


def test_teacher_solutions_asset_with_an_endpoint_teacher(
    teacher_stub: Stub, tmp_path: Path
) -> None:
    """`teacher.kind: endpoint` in the configuration: the asset asks the server, caches the
    answers under the warehouse, and a larger data size asks only for its new problems."""
    import dagster as dg

    from synthdata_assets.defs import build_definitions
    from synthdata_assets.defs.study import partition_key
    from warehouse import Warehouse

    warehouse = Warehouse(tmp_path / "home").ensure()
    config = load_config(
        "tiny", overrides={"teacher": {"kind": "endpoint", "base_url": teacher_stub.url}}
    )
    defs = build_definitions(config, warehouse)

    def run(names: list[str], key=None) -> None:
        result = dg.materialize(
            list(defs.assets or []),
            selection=names,
            partition_key=str(key) if key is not None else None,
            resources=defs.resources,
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success

    run(["problems"])
    run(["teacher_solutions"], partition_key(32, 0))
    assert teacher_stub.requests == 32
    table = pl.read_parquet(warehouse.partition_file("teacher_solutions", 32, 0))
    assert table.height == 32 and (table["teacher"] == "endpoint").all()
    assert 0 < table["is_correct"].sum() < table.height
    run(["teacher_solutions"], partition_key(64, 0))
    assert teacher_stub.requests == 64  # the first 32 problems came from the cache
