"""Chunked completion log-probabilities (training/logprobs.py, ``training.logprob_chunk``):
the values and gradients of the model's own full logits, with the head run on at most
``chunk`` scored positions at a time; and SFT, DPO and the KL giving the same results with it.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from rounding import assert_trained_alike
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from synthdata_assets.tasks.embedded import EmbeddedParams, generate_problems, oracle_solution
from training.config import ModelConfig, TrainingConfig
from training.dpo import PreferenceExample, token_kl, train_dpo
from training.logprobs import completion_kl, completion_logprobs
from training.lora import with_lora
from training.model import build_tiny_llama
from training.prompts import format_example
from training.sft import IGNORE_INDEX, collate_examples, encode_example, train_sft
from training.tokenizer import build_tokenizer

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_seq_len=256)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def examples() -> list[tuple[str, str]]:
    problems = generate_problems(EmbeddedParams(), 24, seed=3, split="train")
    rng = random.Random(3)
    return [format_example(p.question, oracle_solution(p, rng=rng)) for p in problems]


@pytest.fixture(scope="module")
def tokenizer(examples: list[tuple[str, str]]) -> PreTrainedTokenizerBase:
    return build_tokenizer([prompt + completion for prompt, completion in examples])


def _llama(tokenizer) -> torch.nn.Module:
    return build_tiny_llama(TINY, tokenizer, seed=0)


def _qwen2(tokenizer) -> torch.nn.Module:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def _batch(tokenizer, examples) -> dict[str, torch.Tensor]:
    encoded = [encode_example(tokenizer, p, c, max_seq_len=256) for p, c in examples[:6]]
    return collate_examples(encoded, tokenizer.pad_token_id)


def _full_logprobs(model, batch) -> torch.Tensor:
    """What the trainers compute without chunks: the model's own logits at every position."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets.ne(IGNORE_INDEX)
    picked = logits.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked - torch.logsumexp(logits, -1), 0.0)


@pytest.mark.parametrize("build", [_llama, _qwen2, lambda t: with_lora(_llama(t), 4)])
def test_chunks_give_the_full_logits_values_and_gradients(tokenizer, examples, build) -> None:
    model = build(tokenizer)
    if hasattr(model, "peft_config"):  # adapters that do something: B away from zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter.data, std=0.1)
    batch = _batch(tokenizer, examples)
    full = _full_logprobs(model, batch)
    full.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    head = model.get_output_embeddings()
    rows_per_call: list[int] = []
    hook = head.register_forward_hook(lambda _m, args, _out: rows_per_call.append(args[0].shape[0]))
    chunked = completion_logprobs(model, batch, chunk=7)
    chunked.sum().backward()
    hook.remove()
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert chunked.ne(0).sum() == batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()
    for name, parameter in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-4, atol=1e-6)
    # The model's own forward asked for one position per row; every other head call (the
    # forward and the backward's recomputation) saw at most 7 positions.
    rows = batch["input_ids"].shape[0]
    assert rows_per_call[0] == rows and max(rows_per_call[1:]) <= 7 < rows_per_call[0] * 20


def test_sft_with_chunks_makes_the_same_updates(tokenizer, examples) -> None:
    models, runs = [], []
    for chunk in (None, 5):
        model = _llama(tokenizer)
        config = TrainingConfig(
            batch_size=8, micro_batch_size=3, bf16=False, warmup_ratio=0.0, logprob_chunk=chunk
        )
        runs.append(
            train_sft(
                model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=3
            )  # fmt: skip
        )
        models.append(model)
    assert runs[1].losses == pytest.approx(runs[0].losses, rel=1e-5)
    assert_trained_alike(models[0], models[1], rtol=1e-4, atol=1e-6)
    # One micro-batch per update: the model's own mean loss, and the chunks' mean.
    single = []
    for chunk in (None, 5):
        config = TrainingConfig(batch_size=8, bf16=False, warmup_ratio=0.0, logprob_chunk=chunk)
        stats = train_sft(
            _llama(tokenizer), tokenizer, examples, config=config, seed=0, max_seq_len=256,
            max_steps=2,
        )  # fmt: skip
        single.append(stats.losses)
    assert single[1] == pytest.approx(single[0], rel=1e-5)


def test_dpo_and_kl_with_chunks_match(tokenizer, examples) -> None:
    pairs = [
        PreferenceExample(prompt, chosen, examples[(i + 1) % len(examples)][1])
        for i, (prompt, chosen) in enumerate(examples[:12])
    ]
    results = []
    for chunk in (None, 4):
        model = _llama(tokenizer)
        config = TrainingConfig(
            bf16=False, warmup_ratio=0.0, micro_batch_size=3, logprob_chunk=chunk
        )
        stats = train_dpo(
            model, tokenizer, pairs, beta=0.5, learning_rate=3e-3, epochs=1, batch_size=6,
            config=config, seed=0, max_seq_len=256, sft_weight=0.5,
        )  # fmt: skip
        results.append((model, stats))
    (plain, plain_stats), (chunked, chunked_stats) = results
    assert chunked_stats.losses == pytest.approx(plain_stats.losses, rel=1e-5)
    assert chunked_stats.chosen_logp_change == pytest.approx(
        plain_stats.chosen_logp_change, rel=1e-4
    )
    # Adam divides by the gradients' own size: rounding in a near-zero gradient moves a weight.
    assert_trained_alike(plain, chunked, rtol=1e-4, atol=1e-5)
    reference = _llama(tokenizer)
    prompts, completions = [p for p, _ in examples[:5]], [c for _, c in examples[:5]]
    expected, tokens = token_kl(plain, reference, tokenizer, prompts, completions)
    got, chunk_tokens = token_kl(plain, reference, tokenizer, prompts, completions, chunk=3)
    # A mean of log-probability differences: its rounding is float32's on the log-probabilities
    # (a few units), not on the small difference, so the tolerance is absolute.
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6) and chunk_tokens == tokens
    assert got > 1e-4
    batch = _batch(tokenizer, examples)
    same, count = completion_kl(plain, copy.deepcopy(plain), batch, chunk=5)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert count == batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()
