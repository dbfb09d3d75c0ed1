"""LoRA through peft: low-rank adapters trained in place of the full weights, merged on save.

``training.lora_rank`` > 0 switches it on for SFT, RFT and both DPO variants:

- :func:`load_trainable` loads the starting checkpoint. Full fine-tuning gets float32 master
  weights (:func:`training.checkpoint.load_for_training`); with LoRA the frozen base keeps the
  dtype it is stored in (a 7B model in bf16 is 14 GB, not 28) and peft creates the adapters in
  float32 (its ``autocast_adapter_dtype``), so the trained weights still keep every update.
- Adapters go on every linear layer of the decoder (peft's ``"all-linear"``: the attention
  and MLP projections, not the output head), with ``lora_alpha = 2 x rank`` and no dropout.
  ``B`` starts at zero, so the adapted model starts exactly at its checkpoint: DPO's reference
  log-probabilities, computed by the model before its first update, are those of the adapter
  switched off, and no second copy of the model is needed for them.
- :func:`merged` folds the adapters into the base weights (``merge_and_unload``), so every
  checkpoint stays a plain Hugging Face folder that transformers and vLLM load as it is; it
  is saved in the dtype its starting checkpoint was stored in.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.checkpoint import load_checkpoint, load_for_training
from training.config import TrainingConfig


def load_trainable(
    folder: str | os.PathLike[str],
    training: TrainingConfig,
    log: Callable[[str], None] = lambda _message: None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, torch.dtype]:
    """The checkpoint at ``folder`` ready to train as ``training`` says (full or LoRA; ``log``
    gets a line on the adapters), its tokenizer, and the dtype to save the result in."""
    if not training.lora_rank:
        return load_for_training(folder)
    model, tokenizer = load_checkpoint(folder, dtype="auto")
    stored = model.dtype
    adapted = with_lora(model, training.lora_rank)
    log(lora_summary(adapted))
    return adapted, tokenizer, stored


def with_lora(model: PreTrainedModel, rank: int) -> PeftModel:
    """``model`` with rank-``rank`` adapters on its linear layers; only they train."""
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", bias="none"
    )
    return get_peft_model(model, config)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A trained model as a plain transformers model: LoRA adapters folded into the weights
    (and removed); any other model as it is."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def lora_summary(model: torch.nn.Module) -> str:
    """For the log: the adapters' rank and the share of the parameters that train."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rank = model.peft_config["default"].r if isinstance(model, PeftModel) else None
    return f"LoRA rank {rank}: {trained:,} of {total:,} parameters train ({trained / total:.2%})"
