"""LoRA (training/lora.py): adapters train, merge into a plain folder, and DPO's reference is
the model with its adapters at zero. A one-layer model; the file takes seconds."""

from __future__ import annotations

import math
import random
from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from synthdata_assets.models import fine_tune
from synthdata_assets.preference import train_preference_model
from synthdata_assets.tasks.embedded import EmbeddedParams, generate_problems, oracle_solution
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.dpo import PreferenceExample, train_dpo
from training.lora import merged, with_lora
from training.model import build_tiny_llama
from training.prompts import format_example
from training.sft import train_sft
from training.tokenizer import build_tokenizer

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_seq_len=256)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def solved() -> list[tuple[str, str, str]]:
    """(question, right solution, solution with a slip) of 24 training problems."""
    problems = generate_problems(EmbeddedParams(), 24, seed=3, split="train")
    rng = random.Random(3)
    return [
        (p.question, oracle_solution(p, rng=rng), oracle_solution(p, rng=rng, slip_rate=1.0))
        for p in problems
    ]


@pytest.fixture(scope="module")
def tokenizer(solved) -> PreTrainedTokenizerBase:
    return build_tokenizer([q + "\n" + a + "\n" + b for q, a, b in solved])


def _linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.ndim == 2}


def test_lora_sft_trains_adapters_and_saves_a_plain_folder_in_the_stored_dtype(
    tokenizer, solved, tmp_path: Path
) -> None:
    base = build_tiny_llama(TINY, tokenizer, seed=0).to(torch.bfloat16)
    save_checkpoint(base, tokenizer, tmp_path / "base", {"method": "base"})
    lines: list[str] = []
    training = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-2, lora_rank=4)
    row = fine_tune(
        training, "sft", str(tmp_path / "base"), [(q, a) for q, a, _ in solved],
        tmp_path / "sft", seed=0, max_seq_len=256, log=lines.append,
    ).row(0, named=True)  # fmt: skip
    assert any("LoRA rank 4:" in line for line in lines)
    assert row["train_steps"] == 2 * math.ceil(len(solved) / 8)
    assert row["parameters"] == sum(p.numel() for p in base.parameters())  # merged: no adapters
    folder = tmp_path / "sft"
    assert not (folder / "adapter_config.json").exists()
    sft = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="auto")
    assert sft.dtype == torch.bfloat16
    before, after = _linear_weights(base), _linear_weights(sft)
    assert before.keys() == after.keys()
    # The adapted projections moved; the embedding (tied to the head, not adapted) did not.
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert "model.embed_tokens.weight" not in moved
    assert any("q_proj" in n for n in moved) and any("down_proj" in n for n in moved)


def test_the_merged_model_computes_what_the_adapted_one_did(tokenizer, solved) -> None:
    model = with_lora(build_tiny_llama(TINY, tokenizer, seed=0), rank=4)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = [format_example(q, a) for q, a, _ in solved]
    config = TrainingConfig(batch_size=8, learning_rate=1e-2, bf16=False)
    train_sft(model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=4)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    ids = tokenizer(examples[0][0] + examples[0][1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        plain = merged(model)
        assert type(plain).__name__ == "LlamaForCausalLM"
        torch.testing.assert_close(plain(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)


def test_lora_dpo_starts_from_its_reference_and_prefers_the_chosen_side(
    tokenizer, solved, tmp_path: Path
) -> None:
    pairs = [
        PreferenceExample(*format_example(q, a), format_example(q, b)[1]) for q, a, b in solved
    ]
    model = with_lora(build_tiny_llama(TINY, tokenizer, seed=0), rank=4)
    stats = train_dpo(
        model, tokenizer, pairs, beta=0.5, learning_rate=1e-2, epochs=3, batch_size=8,
        config=TrainingConfig(bf16=False, warmup_ratio=0.0), seed=0, max_seq_len=256,
    )  # fmt: skip
    # The reference log-probs come from the model before its first update: adapters at zero,
    # so the first loss is exactly log 2.
    assert stats.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert stats.chosen_logp_change > stats.rejected_logp_change
    assert stats.reward_accuracy > 0.5

    # The preference stage with LoRA: trained, merged and saved as a plain folder.
    sft = save_checkpoint(build_tiny_llama(TINY, tokenizer, seed=0), tokenizer, tmp_path / "s", {})
    frame = pl.DataFrame(
        [
            {"sample_id": f"n{i}", "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            | {"chosen_has_eos": True, "rejected_has_eos": True}
            for i, p in enumerate(pairs)
        ]
    )
    lines: list[str] = []
    training = TrainingConfig(bf16=False, batch_size=8, dpo_learning_rate=1e-2, lora_rank=4)
    row = train_preference_model(
        training, "dpo", str(sft), frame, tmp_path / "dpo", seed=0, max_seq_len=256,
        log=lines.append,
    ).row(0, named=True)  # fmt: skip
    assert any("LoRA rank 4:" in line for line in lines)
    assert row["chosen_logp_change"] > row["rejected_logp_change"]
    assert row["kl_to_sft_per_token"] > 0
    assert not (tmp_path / "dpo" / "adapter_config.json").exists()
    dpo, _ = load_checkpoint(tmp_path / "dpo")
    assert sum(p.numel() for p in dpo.parameters()) == row["parameters"]
