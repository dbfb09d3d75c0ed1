"""The tiny learner: a from-scratch Llama-architecture causal LM sized by ``ModelConfig``.

``build_tiny_llama(model_config, tokenizer, seed=...)`` gives a ``LlamaForCausalLM`` with

- ``hidden_size``, ``num_layers``, ``num_heads`` (full multi-head attention, no grouped KV
  heads) and ``intermediate_size`` from the config;
- the vocabulary of ``tokenizer`` (:func:`training.tokenizer.build_tokenizer`) and its
  ``<bos>``/``<eos>``/``<pad>`` ids, so that ``generate`` and the trainer agree on them;
- tied input and output embeddings (at this size the embedding matrix is a large share of
  the parameters; tying halves it and helps small-data training);
- ``max_position_embeddings = max_seq_len``: the trainer truncates to it and generation
  never runs past it;
- float32 weights: bf16, where wanted, comes from autocast in the trainer, because a model
  this small trained with bf16 master weights loses most updates to rounding.

Initialisation is a pure function of ``seed`` and leaves the global torch RNG untouched.
Because it is an ordinary transformers model, ``save_pretrained`` / ``from_pretrained``,
``generate`` and vLLM (which supports Llama) all work on it unchanged.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from training.config import ModelConfig


def build_tiny_llama(
    model_config: ModelConfig, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0
) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by ``model_config`` (see the module docstring)."""
    if model_config.hidden_size % model_config.num_heads:
        raise ValueError(
            f"model.hidden_size ({model_config.hidden_size}) must be a multiple of "
            f"model.num_heads ({model_config.num_heads})"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_config.hidden_size,
        intermediate_size=model_config.intermediate_size,
        num_hidden_layers=model_config.num_layers,
        num_attention_heads=model_config.num_heads,
        num_key_value_heads=model_config.num_heads,
        max_position_embeddings=model_config.max_seq_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
