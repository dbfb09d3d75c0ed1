"""What every engine of :mod:`training.generation` shares: the sampling parameters, the
completion record, the :class:`Generator` protocol, and the rules more than one engine applies
(prompt encoding and truncation, per-prompt seeds, rate-limited progress).

Imports no engine, nor anything beyond the standard library and :mod:`training.progress`, so
that an engine module can import it without importing the others.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from training.progress import Progress

BACKENDS: tuple[str, ...] = ("transformers", "vllm", "openai")
PROGRESS_INTERVAL_S = 0.5  # at most two progress calls a second, plus the final one


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` completions per prompt, at ``temperature`` (0: greedy) within the
    ``top_p`` nucleus, each at most ``max_new_tokens`` long and ending at the first ``stop``
    string; ``seed`` picks the random streams. :mod:`training.generation` has the exact
    semantics."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass(frozen=True)
class Completion:
    """One generated continuation of a prompt."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_new_tokens)


@runtime_checkable
class Generator(Protocol):
    """Anything that samples completions for prompts. The engines also have ``close()``,
    which frees what they hold (a vLLM engine, a model on the GPU)."""

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: Progress | None = None
    ) -> list[list[Completion]]: ...


def prompt_seed(seed: int, prompt: str) -> int:
    """The seed of ``prompt``'s samples in the served engines (vLLM, OpenAI-compatible): 62
    bits of SHA-256 of ``(seed, prompt)``, so that prompts do not share one random stream and
    ``seed + j`` (sample ``j``) stays a signed 64-bit integer."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def encode_prompts(
    tokenizer: Any,
    prompts: list[str],
    context: int,
    max_new_tokens: int,
    log: Callable[[str], None],
) -> list[list[int]]:
    """The prompts' token ids, with the tokenizer's special tokens (``<bos>``), each
    left-truncated (keeping ``<bos>``) to ``context - max_new_tokens`` tokens so that prompt
    and completion fit the context; a warning through ``log`` says how many were cut."""
    room = context - max_new_tokens
    if room < 1:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the "
            f"model's context of {context} tokens"
        )
    # One batched call: the tokenizer encodes in parallel, many times faster than per prompt.
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
    bos, truncated, fitted = tokenizer.bos_token_id, 0, []
    for ids in encoded:
        if len(ids) > room:
            head = ids[:1] if ids[0] == bos else []
            ids = head + ids[len(ids) - (room - len(head)) :]
            truncated += 1
        fitted.append(list(ids))
    if truncated:
        log(
            f"warning: {truncated} prompt(s) longer than {room} tokens (context "
            f"{context} - max_new_tokens {max_new_tokens}) were left-truncated"
        )
    return fitted


class RateLimitedProgress:
    """Reports ``(prompts done, total, new_tokens_per_s=...)`` to a :class:`Progress` at most
    every :data:`PROGRESS_INTERVAL_S` seconds, and always once all prompts are done."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.start = time.perf_counter()
        self.last = -float("inf")

    def __call__(self, done: int, new_tokens: int) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if done < self.total and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        rate = new_tokens / max(now - self.start, 1e-9)
        self.progress(done, self.total, new_tokens_per_s=rate)
