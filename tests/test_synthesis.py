"""The problem writer (synthdata_assets/synthesis.py, ``synthdata synthesize``).

Against tests/test_openai_backend.py's stub server, here a teacher that writes and solves
simple problems and, by the request's seed, writes garbage, copies a seed problem, writes a
problem its solvers disagree on, or writes a wrong answer of its own; on both APIs. Against a
real vLLM server on a tiny checkpoint with marker ``vllm`` (``make test-vllm``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

# The stub server of the backend's tests (tests/ is on sys.path).
import test_openai_backend
from test_openai_backend import Stub, needs_vllm, vllm_server
from test_openai_backend import stub as stub  # the fixture

from synthdata_assets import cli
from synthdata_assets.synthesis import (
    SOLVE_REQUEST,
    WRITE_REQUEST,
    SynthesisSettings,
    synthesize_pool,
)
from synthdata_assets.tasks.realdata import RealProblem, load_gsm8k
from training.generation.openai_engine import OpenAIBackendError, OpenAIGenerator

_ASKED = re.compile(r"Question: (.*?)\n", re.S)
_NUMBERS = re.compile(r"has (\d+) pens and finds (\d+) more")


@pytest.fixture
def seeds(shared_data: Path) -> list[RealProblem]:
    return load_gsm8k(shared_data / "gsm8k" / "train.jsonl", split="seed")[:12]


def _teacher(body: dict) -> dict:
    """The stub's teacher: writes by ``seed % 10`` (0 garbage, 1 a seed problem's copy, 2 a
    problem solvers disagree on, 3 a wrong answer of its own, else a right one) and solves
    right, except the disagreeing kind, whose votes cycle through three answers."""
    chat = "messages" in body
    prompt = body["messages"][0]["content"] if chat else body["prompt"]
    seed = body["seed"]
    writing = WRITE_REQUEST in prompt if chat else prompt.endswith("\n\nQuestion:")
    if writing:
        a, b = seed % 1000, (seed // 1000) % 100
        question = f"Ann has {a} pens and finds {b} more. How many pens does Ann have?"
        kind, answer = seed % 10, a + b
        if kind == 0:
            text = " Lorem ipsum, no answer here."
        elif kind == 1:
            text = f" {_ASKED.search(prompt)[1]}\nAnswer: It is 3 + 4 = 7.\n#### 7"
        else:
            question += " (Hard.)" if kind == 2 else ""
            answer += kind == 3
            text = f" {question}\nAnswer: Ann has {a} + {b} = {answer} pens.\n#### {answer}\n"
            text += "Then more text after the answer line."
        text = "Question:" + text if chat else text
    else:
        assert (SOLVE_REQUEST in prompt) if chat else prompt.endswith("\nAnswer:")
        asked = _ASKED.findall(prompt + "\n")[-1]
        a, b = map(int, _NUMBERS.search(asked).groups())
        answer = a + b + (seed % 3 if "(Hard.)" in asked else 0)
        text = f" Ann has {a} + {b} = {answer} pens.\n#### {answer}"
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    return {
        "choices": [{**choice, "finish_reason": "stop"}],
        "usage": {"completion_tokens": len(text.split())},
    }


@pytest.fixture
def teacher(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> Stub:
    # The stub's handler looks `canned` up in its module at every request.
    monkeypatch.setattr(test_openai_backend, "canned", _teacher)
    return stub


def _generator(stub: Stub, tmp_path: Path | None = None, **kwargs) -> OpenAIGenerator:
    cache = tmp_path / "cache.jsonl" if tmp_path is not None else None
    return OpenAIGenerator(stub.url, max_concurrency=4, backoff_s=0.001, cache_path=cache, **kwargs)


def _pool(generator: OpenAIGenerator, seeds, **settings):
    options = {"size": 10, "seed": 1, **settings}
    return synthesize_pool(seeds, generator, SynthesisSettings(**options), log=lambda _: None)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_pool_keeps_new_agreed_problems_and_says_why_others_went(
    teacher: Stub, seeds: list[RealProblem], api: str
) -> None:
    rows, report = _pool(_generator(teacher, api=api), seeds, size=20)
    paths = {body["path"] for body in teacher.bodies}
    assert paths == {"/v1/chat/completions" if api == "chat" else "/v1/completions"}
    counts = report.counts()
    assert len(rows) == 20 <= counts["kept"]  # a round may keep more than the pool needs
    kept_at = [i for i, outcome in enumerate(report.outcomes) if outcome == "kept"]
    assert [row["candidate"] for row in rows] == kept_at[:20]
    assert all(counts[o] > 0 for o in ("unparsable", "duplicate", "disagreed")), counts
    assert sum(counts.values()) == len(report.outcomes)
    seed_questions = {p.question for p in seeds}
    assert len({r["question"] for r in rows}) == 20
    assert not seed_questions & {r["question"] for r in rows}
    for row in rows:
        a, b = map(int, _NUMBERS.search(row["question"]).groups())
        assert "(Hard.)" not in row["question"]
        assert row["answer"].endswith(f"#### {a + b}")  # the votes' answer, cut after its line
        assert row["agreement"] == 1.0 and row["votes"] == [str(a + b)] * 4
        assert row["writer_agrees"] == (row["writer_answer"] == str(a + b))
    assert not all(row["writer_agrees"] for row in rows)  # the writer was outvoted
    assert report.write_tokens > 0 and report.solve_tokens > 0
    # Every request was seeded, and a candidate's votes are distinct samples.
    assert all(isinstance(body["seed"], int) for body in teacher.bodies)
    assert len(
        {(json.dumps(b.get("messages")), b.get("prompt"), b["seed"]) for b in teacher.bodies}
    ) == len(teacher.bodies)


def test_pools_are_nested_and_a_rerun_is_served_from_the_cache(
    teacher: Stub, seeds: list[RealProblem], tmp_path: Path
) -> None:
    small, _ = _pool(_generator(teacher), seeds, size=5)
    large, _ = _pool(_generator(teacher, tmp_path), seeds, size=12)
    assert large[:5] == small
    teacher.reset()
    again, report = _pool(_generator(teacher, tmp_path), seeds, size=12)
    assert again == large and teacher.requests == 0
    assert report.write_tokens > 0  # cached completions still count


def test_a_run_killed_by_a_failing_server_resumes_where_it_stopped(
    teacher: Stub, seeds: list[RealProblem], tmp_path: Path
) -> None:
    whole, _ = _pool(_generator(teacher), seeds)
    total = teacher.requests
    teacher.reset(fail=lambda _body, _attempt, served: 400 if served >= total // 2 else None)
    with pytest.raises(OpenAIBackendError, match="HTTP 400"):
        _pool(_generator(teacher, tmp_path), seeds)
    served = teacher.served
    teacher.reset()
    resumed, _ = _pool(_generator(teacher, tmp_path), seeds)
    assert resumed == whole
    assert teacher.requests == total - served


def test_too_few_candidates_give_a_short_pool(teacher: Stub, seeds: list[RealProblem]) -> None:
    rows, report = _pool(_generator(teacher), seeds, size=10, max_candidates=10)
    assert len(report.outcomes) == 10 and len(rows) == report.counts()["kept"] < 10


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", 0, "size must be >= 1"),
        ("votes", 1, "votes must be >= 2"),
        ("min_agreement", 0.0, "min_agreement must be in"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("max_candidates", 3, "max_candidates must be >= size"),
    ],
)
def test_bad_settings_name_their_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthesisSettings(**{"size": 5, field: value})


def test_the_command_writes_a_pool_the_gsm8k_loader_reads(
    teacher: Stub, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    seeds = shared_data / "gsm8k" / "train.jsonl"
    out = tmp_path / "synthetic.jsonl"
    common = ["synthesize", str(seeds), str(out), "--base-url", teacher.url, "--seed", "1"]
    assert cli.main([*common, "--size", "6"]) == 0
    problems = load_gsm8k(out, split="train")
    assert len(problems) == 6
    assert all(p.meta["agreement"] >= 0.75 and p.meta["teacher"] == "stub-model" for p in problems)
    summary = json.loads((tmp_path / "synthetic.summary.json").read_text())
    assert summary["kept_in_pool"] == 6 and summary["api"] == "completions"
    assert summary["candidates"] == sum(
        summary[o] for o in ("kept", "unparsable", "duplicate", "disagreed")
    )
    assert (tmp_path / "synthetic.cache.jsonl").stat().st_size > 0
    # Not enough candidates: the pool is written, short, and the exit status says so.
    assert cli.main([*common, "--size", "20", "--max-candidates", "20"]) == 1
    assert "only" in capsys.readouterr().err
    # Bad input: the field, or the file and line, before any request.
    teacher.reset()
    assert cli.main([*common, "--size", "6", "--votes", "1"]) == 2
    assert "--votes must be >= 2" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}\n{"question": "q"}\n')
    assert (
        cli.main(["synthesize", str(broken), str(out), "--base-url", teacher.url, "--size", "1"])
        == 2
    )
    assert f"{broken}:2: missing field 'answer'" in capsys.readouterr().err
    assert teacher.requests == 0


@needs_vllm
def test_pools_from_a_real_vllm_server_on_both_apis(tmp_path: Path) -> None:
    """Completions: a tiny model that learned 16 problems by heart, given 8 of them as seeds,
    writes problems that are not seeds and solves them as it learned to: kept, with
    agreement. Chat: the same server through its chat template; the tiny model cannot follow
    the instructions, so this checks the API (requests, replies, seeds, the cache), not keeps.
    """
    folder, known = _memorising_checkpoint(tmp_path / "ckpt")
    seeds = known[:8]
    seed_questions = {p.question for p in seeds}
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    settings = SynthesisSettings(size=3, shots=2, max_new_tokens=96, max_candidates=40)
    pools = {}
    with vllm_server(folder, tmp_path / "server.log", ["--chat-template", str(template)]) as url:
        for api in ("completions", "chat"):
            generator = OpenAIGenerator(url, api=api, cache_path=tmp_path / f"{api}.jsonl")
            pools[api] = synthesize_pool(seeds, generator, settings, log=lambda _: None)
    rows, report = pools["completions"]
    assert rows, report.counts()
    for row in rows:  # written back, or recombined ("Bob has 14 pens" where Dee had)
        assert row["question"] not in seed_questions and _NUMBERS.search(row["question"])
        assert row["agreement"] >= 0.75
        assert row["answer"].endswith(f"#### {Counter(row['votes']).most_common(1)[0][0]}")
    _, chat = pools["chat"]
    assert len(chat.outcomes) == 40 and chat.write_tokens > 0
    # Served again from the caches alone, with the server gone.
    for api, (rows, report) in pools.items():
        cached = OpenAIGenerator(url, model="tiny", api=api, cache_path=tmp_path / f"{api}.jsonl")
        again = synthesize_pool(seeds, cached, settings, log=lambda _: None)
        assert again[0] == rows and again[1].outcomes == report.outcomes


def _memorising_checkpoint(folder: Path) -> tuple[Path, list[RealProblem]]:
    """A one-layer model trained until it recites 16 GSM8K-format problems, one block after
    another as the few-shot prompts show them."""
    import random

    import torch

    from training.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainingConfig
    from training.model import build_tiny_llama
    from training.sft import train_sft
    from training.tokenizer import build_tokenizer

    names = ["Ann", "Bob", "Cy", "Dee"]
    known = [
        RealProblem(
            problem_id=f"p{i}",
            question=f"{names[i % 4]} has {i + 3} pens and finds {i % 5 + 1} more. How many?",
            answer=str(i + 3 + i % 5 + 1),
            solution=f"{i + 3} + {i % 5 + 1} = {i + 3 + i % 5 + 1}\n#### {i + 3 + i % 5 + 1}",
            steps=(),
            source="test",
        )
        for i in range(16)
    ]
    blocks = [f"Question: {p.question}\nAnswer: {p.solution}" for p in known]
    rng = random.Random(0)
    texts = ["\n\n".join(rng.sample(blocks, 3)) for _ in range(400)]
    tokenizer = build_tokenizer(texts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # A context long enough for the chat prompt's instructions, whose words are unknown.
        tiny = ModelConfig(
            hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, max_seq_len=1024
        )
        model = build_tiny_llama(tiny, tokenizer, seed=0)
        # float32 on every CPU (bf16 autocast, where the CPU has it, learnt other texts) and 600
        # updates: with 300 in float32 the model wrote back only seeds or disagreeing answers.
        config = TrainingConfig(batch_size=16, learning_rate=1e-2, warmup_ratio=0.0, bf16=False)
        examples = [("", text, False) for text in texts]
        train_sft(model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=600)
        return save_checkpoint(model, tokenizer, folder, {}), known
    finally:
        torch.set_num_threads(threads)
