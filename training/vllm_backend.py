"""The vLLM backend of :mod:`training.generation` (GPU machines; ``pip install -e ".[vllm]"``).

Imported only by ``make_generator("vllm", folder)``, so that nothing else needs vLLM. The
engine loads the checkpoint folder like any Hugging Face folder, with prefix caching on: the
``n`` samples of a prompt, and the step rollouts that share a solution prefix, reuse the
prefix's KV cache. :class:`training.generation.SamplingParams` maps one to one onto vLLM's
(``max_new_tokens`` is ``max_tokens``); each request is seeded from ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import vllm

from training.generation import Completion, SamplingParams


class VLLMGenerator:
    """Sampling with a ``vllm.LLM`` engine over a checkpoint folder.

    ``dtype``, ``gpu_memory_utilization``, ``max_model_len`` and any other keyword go to
    ``vllm.LLM``; ``batch_size`` is accepted for interface parity and ignored (vLLM schedules
    its own batches).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        batch_size: int | None = None,
        log: Callable[[str], None] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        del batch_size
        self.log = log or (lambda _message: None)
        self.llm = vllm.LLM(
            model=str(folder),
            tokenizer=str(folder),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            **engine_kwargs,
        )

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        sampling = vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
        )
        self.log(f"vLLM: sampling {len(prompts)} prompts x {params.n}")
        outputs = self.llm.generate(list(prompts), sampling, use_tqdm=False)
        return [
            [
                Completion(
                    text=sample.text,
                    num_tokens=len(sample.token_ids),
                    finish_reason="length" if sample.finish_reason == "length" else "stop",
                )
                for sample in output.outputs
            ]
            for output in outputs
        ]
