"""The library's own settings: the learner model, sampling budgets and training budgets.

Small typed sections that the trainers and generators in :mod:`training` read. The study's
configuration (:mod:`synthdata_assets.config`) composes them as its ``model``, ``sampling``
and ``training`` sections, so a YAML file sets them under those names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A settings section: unknown keys are errors and values are frozen."""

    # A typo in a YAML override must not run a different experiment than the one asked for.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    """The learner. ``tiny-llama`` is built and pretrained here; anything else is a
    Hugging Face model folder (or hub id when ``allow_hub_download`` is set)."""

    name: str = Field("tiny-llama", min_length=1)
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1, description="Heads; head size 32 or more runs on vLLM.")
    intermediate_size: int = Field(256, ge=8)
    max_seq_len: int = Field(384, ge=32)
    arithmetic_steps: int = Field(
        5000,
        ge=0,
        description="tiny-llama pretraining, phase 1: arithmetic-table updates (see "
        "docs/calibration.md for how the default was chosen).",
    )
    pretrain_steps: int = Field(
        2500,
        ge=0,
        description="tiny-llama pretraining, phase 2: easier-problem updates (see "
        "docs/calibration.md); on star_graph, updates on walks through graphs (0: untrained).",
    )
    allow_hub_download: bool = False
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                f"({self.num_heads})"
            )
        return self


class SamplingConfig(Section):
    """Generation budgets and the engine that spends them."""

    backend: Literal["transformers", "vllm"] = "transformers"
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(160, ge=1)
    stop: tuple[str, ...] = Field(
        (),
        description="Policy samples, rollouts and evaluation end at the first of these strings "
        "(the string itself dropped). A base model that was never fine-tuned to stop runs on "
        "into a made-up next question: the GPU presets stop at '\\nQuestion:'.",
    )
    batch_size: int = Field(128, ge=1, description="Prompts in flight per generation call.")
    request_seeds: bool = Field(
        True,
        description="vLLM: each sampled request carries a seed of its own (from the stage's "
        "seed and the prompt), so a sample does not depend on which prompts share its batch "
        "and a rerun writes the same samples. False: the stage's engine is seeded once and "
        "requests draw from its stream, which lets vLLM sample a batch at once (no measurable "
        "gain on CPUs: docs/benchmarks.md) and makes samples depend on the batches.",
    )
    samples_per_problem: int = Field(
        4, ge=1, description="K self-generated samples per training problem."
    )
    eval_samples: int = Field(
        4,
        ge=0,
        description="n samples per test problem for pass@k; 0: the greedy answers alone.",
    )


class TrainingConfig(Section):
    """Optimisation budgets shared by SFT, RFT and the DPO variants."""

    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, ge=1)
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Examples (DPO: pairs) per forward pass; gradients accumulate over the "
        "micro-batches of an update, which keeps batch_size and the gradient of the whole batch. "
        "None: the whole batch in one pass.",
    )
    lora_rank: int = Field(
        0,
        ge=0,
        description="LoRA (peft) on every linear layer with this rank, merged into the weights "
        "on save (training/lora.py); 0: full fine-tuning.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them: "
        "less memory for one more forward pass per micro-batch, the same gradients.",
    )
    logprob_chunk: int | None = Field(
        None,
        ge=1,
        description="Compute log-probabilities (SFT loss, DPO, KL) from the output head on "
        "scored positions only, this many at a time, each recomputed in the backward pass "
        "(training/logprobs.py): float32 logits of at most this many positions at once. None: "
        "the model's own logits over every position (for a 152k vocabulary, 5 GB per 8 x 1024 "
        "positions).",
    )
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    bf16: bool | None = Field(
        None,
        description="bf16 autocast of the forward passes. None: where the hardware computes bf16 "
        "natively (a CUDA GPU with bf16, a CPU with avx512_bf16 or amx_bf16), else float32; "
        "true/false force it.",
    )
    select_epoch: Literal["last", "validation"] = Field(
        "last",
        description="SFT and RFT: the weights a stage keeps. 'last': those at the end of "
        "training. 'validation': after every epoch, the greedy accuracy on "
        "validation_problems held-out problems (a generated task's validation stream, none of "
        "them in the pool), and the best epoch's weights (the earliest of ties); epochs is "
        "then the most it trains, on the schedule of that many. One training process.",
    )
    validation_problems: int = Field(
        500, ge=1, description="Held-out problems that select_epoch: validation scores."
    )
    validation_patience: int | None = Field(
        None,
        ge=1,
        description="select_epoch: validation: stop training once this many epochs in a row "
        "have scored no better than the best so far (the schedule stays that of epochs). "
        "None: train every epoch.",
    )
    rft_max_per_problem: int = Field(4, ge=1, description="RFT: distinct positives kept.")
    rft_init: Literal["base", "sft"] = "base"
    dpo_beta: float = Field(0.1, gt=0.0)
    dpo_learning_rate: float = Field(2e-4, gt=0.0)
    dpo_epochs: int = Field(2, ge=1)
    dpo_batch_size: int | None = Field(
        None, ge=1, description="Pairs per DPO update (None: batch_size)."
    )
    dpo_sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="Both DPO variants: alpha times the chosen side's per-token NLL added to "
        "each pair's loss (RPO, TRL's rpo_alpha); 0 is plain DPO.",
    )
