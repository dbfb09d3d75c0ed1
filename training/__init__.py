"""The model library of synthdata: plain torch/transformers code, no Dagster.

- :mod:`training.prompts`: the one prompt format every stage trains and samples with.
- :mod:`training.tokenizer`: the byte-level BPE tokenizer of the tiny from-scratch model.
- :mod:`training.model`: builds the tiny Llama-architecture learner.
- :mod:`training.checkpoint`: atomic Hugging Face checkpoint folders, and loading real models.
- :mod:`training.sft`: the supervised trainer (pretraining, SFT, RFT), on ``accelerate``.
- :mod:`training.generation`: one sampling interface with a transformers backend and an
  optional vLLM backend (:mod:`training.vllm_backend`, imported only when chosen).

The same code runs a ~1M-parameter model on a 2-core laptop and a 7B model on GPUs.
"""
