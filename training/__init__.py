"""The model library of synthdata: plain torch/transformers code. It imports nothing from the
pipeline (``synthdata_assets``) and nothing from Dagster; the pipeline's configuration
composes its settings (:mod:`training.config`).

- :mod:`training.config`: the ``model``, ``sampling`` and ``training`` settings sections.
- :mod:`training.prompts`: the one prompt format every stage trains and samples with.
- :mod:`training.tokenizer`: the byte-level BPE tokenizer of the tiny from-scratch model.
- :mod:`training.model`: builds the tiny Llama-architecture learner.
- :mod:`training.checkpoint`: atomic Hugging Face checkpoint folders, and loading real models.
- :mod:`training.trainer`: what the trainers share (encoding, batch plan, schedule, the
  accelerate loop); :mod:`training.sft` (pretraining, SFT, RFT) and :mod:`training.dpo`.
- :mod:`training.precision`: bf16 autocast where the hardware computes bf16 natively.
- :mod:`training.progress`: the callback long loops report their progress through.
- :mod:`training.generation`: one sampling interface (:mod:`training.generation.interface`)
  and one module per engine (transformers, vLLM, an OpenAI-compatible server), each imported
  only when chosen.

The same code runs a ~1M-parameter model on a 2-core laptop and a 7B model on GPUs.

Importing the package caps oneDNN's caches of CPU kernels before any kernel is built
(:func:`training.memory.bound_kernel_caches`).
"""

from training.memory import bound_kernel_caches

bound_kernel_caches()
