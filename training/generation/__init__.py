"""One sampling interface for every stage: policy samples, step rollouts, evaluation.

.. code-block:: python

    generator = make_generator("transformers", checkpoint_folder, batch_size=64, log=print)
    params = SamplingParams(n=4, temperature=0.7, max_new_tokens=160, seed=0)
    completions = generator.generate([format_prompt(q) for q in questions], params)
    completions[i][j].text  # sample j of prompt i; also .num_tokens and .finish_reason

Semantics shared by every engine
--------------------------------
- ``generate`` returns one list of ``n`` :class:`Completion` per prompt, in prompt order.
- ``temperature == 0`` is greedy decoding (the ``n`` completions of a prompt are then equal);
  otherwise softmax sampling at ``temperature`` restricted to the ``top_p`` nucleus.
- Generation stops at the EOS token or at the first occurrence of any ``stop`` string
  (``finish_reason == "stop"``; the text ends before the stop string, and holds no EOS), or
  after ``max_new_tokens`` tokens (``"length"``). ``num_tokens`` counts the generated tokens,
  the EOS or the token that completed a stop string included.
- Prompts are encoded with the tokenizer's special tokens (``<bos>``), exactly as the trainer
  encodes them (:func:`training.sft.encode_example`).
- ``generate(..., progress=...)`` takes a :class:`training.progress.Progress`, called with
  (prompts finished, prompts, ``new_tokens_per_s=...``) as the call goes, at most about twice
  a second, and once when every prompt is done.

The engines
-----------
Each is a module of this package, imported by :func:`make_generator` only when chosen; they
share :mod:`training.generation.interface` and nothing else.

- ``"transformers"``: :mod:`training.generation.transformers_engine`, a hand-written decoding
  loop over a transformers model (continuous batching, shared prompt caches, prefix sharing).
- ``"vllm"``: :mod:`training.generation.vllm_engine`, a ``vllm.LLM`` engine; vLLM is the
  optional extra ``pip install -e ".[vllm]"`` (GPU machines; ``make vllm-env`` elsewhere).
  With ``data_parallel_size=N`` (N > 1), :mod:`training.generation.vllm_replicas`: N engines
  in as many processes, each on its own GPUs, sharing every call's prompts.
- ``"openai"``: :mod:`training.generation.openai_engine`, requests to an OpenAI-compatible
  ``/v1/completions`` server (``folder`` is then the server's URL).

Every engine seeds each sample from ``(seed, prompt text, sample index)``, so a completion does
not depend on the other prompts of the call. The vLLM and OpenAI engines seed alike
(:func:`prompt_seed`) and give the same samples on the same checkpoint; the transformers
engine's random streams are its own, so it gives other samples for the same seed.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from training.generation.interface import (
    BACKENDS,
    Completion,
    Generator,
    SamplingParams,
    prompt_seed,
)

__all__ = [
    "BACKENDS",
    "Completion",
    "Generator",
    "SamplingParams",
    "make_generator",
    "prompt_seed",
]


def make_generator(backend: str, folder: str | os.PathLike[str], **kwargs: Any) -> Generator:
    """The generator of ``backend`` (one of :data:`BACKENDS`) over a checkpoint folder, or for
    ``"openai"`` over the server at the URL ``folder``.

    ``kwargs`` go to the engine: ``device``, ``dtype``, ``batch_size``, ``log`` for
    transformers; see :class:`training.generation.vllm_engine.VLLMGenerator` and
    :class:`training.generation.openai_engine.OpenAIGenerator` for the others.
    """
    if backend == "transformers":
        module = importlib.import_module("training.generation.transformers_engine")
        return module.TransformersGenerator.from_pretrained(folder, **kwargs)
    if backend == "vllm":
        try:
            module = importlib.import_module("training.generation.vllm_engine")
        except ImportError as exc:
            raise ImportError(
                f"sampling.backend 'vllm' needs the vLLM engine, which is not installed ({exc}). "
                "On a GPU machine run: pip install -e '.[vllm]'; "
                "otherwise set sampling.backend: transformers"
            ) from exc
        replicas = kwargs.pop("data_parallel_size", 1)
        if replicas > 1:
            from training.generation.vllm_replicas import VLLMReplicas

            return VLLMReplicas(folder, replicas=replicas, **kwargs)
        return module.VLLMGenerator(folder, **kwargs)
    if backend == "openai":
        module = importlib.import_module("training.generation.openai_engine")
        return module.OpenAIGenerator(folder, **kwargs)
    raise ValueError(f"unknown sampling backend {backend!r} (allowed: {', '.join(BACKENDS)})")
