"""Conformance tests of the vLLM backend (training/vllm_backend.py) on a tiny trained Llama.

They need vLLM, which lives in its own virtualenv: ``make test-vllm`` (it builds
``.venv-vllm`` first). In the main venv the whole module is skipped. The checks are those the
transformers backend passes (tests/test_generation.py), plus agreement with that backend on
the same checkpoint: greedy completions equal, prompt log-probs within 1e-4.
"""

# ruff: noqa: E402 (imports after the skip and the environment)
from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed here; run `make test-vllm` (its own .venv-vllm)",
        allow_module_level=True,
    )

# Only where vLLM is (the environment of the main venv's other tests stays untouched), before
# torch and vLLM read them: nothing may download; on CPUs an in-process engine with an
# explicit KV cache and one unpinned thread (`make test-vllm` sets the same).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch

from training.config import ModelConfig, TrainingConfig
from synthdata_assets.tasks.embedded import (
    EmbeddedParams,
    generate_problems,
    oracle_solution,
    pretraining_facts,
)
from training.checkpoint import load_checkpoint, save_checkpoint
from training.generation import (
    Completion,
    Generator,
    SamplingParams,
    TransformersGenerator,
    make_generator,
)
from training.model import build_tiny_llama
from training.prompts import format_example, format_prompt
from training.sft import train_sft
from training.tokenizer import build_tokenizer
from training.vllm_backend import VLLMGenerator, on_cpu, prompt_seed

pytestmark = [
    pytest.mark.vllm,
    # vLLM's and torch's own deprecation notices, nothing of ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

PARAMS = EmbeddedParams()
# tests/test_generation.py's model has head_dim 16, which vLLM's CPU attention does not
# support (32, 64, 80, ...): the same model with hidden_size 64 over 2 heads (head_dim 32).
TINY = ModelConfig(
    hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, max_seq_len=256
)


@pytest.fixture(scope="module")
def problems():
    return generate_problems(PARAMS, 48, seed=0, split="train")


@pytest.fixture(scope="module")
def prompts(problems) -> list[str]:
    return [format_prompt(p.question) for p in problems[:12]]


@pytest.fixture(scope="module")
def checkpoint(problems, tmp_path_factory) -> Path:
    """A model trained briefly on the task, as in tests/test_generation.py: its attention
    depends on content and position, and it has learned to end solutions with EOS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = random.Random(0)
        texts_ = [p.question for p in problems] + [oracle_solution(p, rng=rng) for p in problems]
        tokenizer = build_tokenizer(texts_ + pretraining_facts(PARAMS, seed=0, n=200))
        rng = random.Random(0)
        examples = [format_example(p.question, oracle_solution(p, rng=rng)) for p in problems]
        model = build_tiny_llama(TINY, tokenizer, seed=0)
        config = TrainingConfig(batch_size=16, learning_rate=1e-2, warmup_ratio=0.0)
        train_sft(model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=150)
        return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("vllm") / "ckpt", {})
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(checkpoint) -> TransformersGenerator:
    """The transformers backend over the same checkpoint, in float32 on the CPU."""
    model, tokenizer = load_checkpoint(checkpoint, device="cpu", dtype=torch.float32)
    return TransformersGenerator(model, tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def generator(checkpoint) -> VLLMGenerator:
    # One engine for the module (an in-process engine is not meant to be started twice).
    # Stats on, for the prefix-cache counters.
    made = make_generator("vllm", checkpoint, dtype="float32", disable_log_stats=False)
    assert isinstance(made, VLLMGenerator)
    return made


def texts(results: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in samples] for samples in results]


def test_same_seed_same_samples_and_n_per_prompt(generator, prompts) -> None:
    assert isinstance(generator, Generator)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=11)
    first = generator.generate(prompts, params)
    assert len(first) == len(prompts) and all(len(samples) == 3 for samples in first)
    assert first == generator.generate(prompts, params)
    # n independent samples per prompt, not copies.
    assert all(len(set(samples)) > 1 for samples in texts(first))
    other = generator.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 12}))
    assert sum(a != b for a, b in zip(texts(other), texts(first), strict=True)) >= len(prompts) - 1


def test_samples_do_not_depend_on_the_batch(generator, prompts) -> None:
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=10, seed=3)
    together = generator.generate(prompts, params)
    assert generator.generate(prompts[::-1], params)[::-1] == together
    assert generator.generate(prompts[5:7], params) == together[5:7]
    # Distinct prompts get distinct seeds: they do not share one random stream.
    assert len({prompt_seed(3, p) for p in prompts}) == len(prompts)


def test_greedy_matches_the_transformers_backend(generator, reference, prompts) -> None:
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
    results = generator.generate(prompts, params)
    assert all(samples[0] == samples[1] for samples in results)
    assert results == reference.generate(prompts, params)


def test_tiny_top_p_is_greedy(generator, prompts) -> None:
    greedy = generator.generate(prompts, SamplingParams(max_new_tokens=12))
    nucleus = SamplingParams(n=2, temperature=1.5, top_p=1e-6, max_new_tokens=12, seed=9)
    assert texts(generator.generate(prompts, nucleus)) == [s * 2 for s in texts(greedy)]


def test_stop_strings_truncate(generator, prompts) -> None:
    full = generator.generate(prompts[:1], SamplingParams(max_new_tokens=24))[0][0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut = generator.generate(prompts[:1], SamplingParams(max_new_tokens=24, stop=(stop, "@@")))
    completion = cut[0][0]
    assert completion.finish_reason == "stop"
    assert completion.text == full.text[: full.text.index(stop)]
    assert completion.num_tokens < full.num_tokens


def test_max_new_tokens(generator, prompts) -> None:
    results = generator.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=5))
    for completion in (c for samples in results for c in samples):
        assert completion.num_tokens <= 5
        assert completion.finish_reason in ("stop", "length")
        if completion.finish_reason == "length":
            assert completion.num_tokens == 5
    assert any(c.finish_reason == "length" for samples in results for c in samples)


def test_eos_stops_generation(generator, reference, problems) -> None:
    prompts = [format_prompt(p.question) for p in problems[:8]]
    results = generator.generate(prompts, SamplingParams(max_new_tokens=96))
    assert results == reference.generate(prompts, SamplingParams(max_new_tokens=96))
    stopped = [samples[0] for samples in results if samples[0].finish_reason == "stop"]
    assert len(stopped) >= 6, texts(results)
    for completion in stopped:
        # The model learned to end a solution line with EOS (this smaller-headed model less
        # well than tests/test_generation.py's: its arithmetic may be garbled).
        assert completion.text.endswith(".\n")
        assert "<eos>" not in completion.text
        # The EOS token is counted, not shown.
        tokens = generator.tokenizer(completion.text, add_special_tokens=False)
        assert completion.num_tokens == len(tokens["input_ids"]) + 1


def test_long_prompts_are_left_truncated(generator, reference) -> None:
    lines: list[str] = []
    generator.log, log = lines.append, generator.log
    try:
        prompt = format_prompt(" ".join(["Ann has 3 pens."] * 80))
        assert len(generator.tokenizer(prompt)["input_ids"]) > 256
        results = generator.generate([prompt], SamplingParams(max_new_tokens=8))
        assert 1 <= results[0][0].num_tokens <= 8
        assert any("left-truncated" in line for line in lines)
        # Truncated exactly as the transformers backend truncates.
        assert results == reference.generate([prompt], SamplingParams(max_new_tokens=8))
        with pytest.raises(ValueError, match="no room"):
            generator.generate([prompt], SamplingParams(max_new_tokens=256))
    finally:
        generator.log = log


def test_token_logprobs_match_a_transformers_forward_pass(generator, reference, problems):
    tokenizer, model = reference.tokenizer, reference.model
    rng = random.Random(1)
    pairs = [format_example(p.question, oracle_solution(p, rng=rng)) for p in problems[:6]]
    # As the DPO trainer encodes: prompt with <bos>, completion, EOS.
    sequences = [
        tokenizer(prompt)["input_ids"]
        + tokenizer(completion, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for prompt, completion in pairs
    ]
    scored = generator.token_logprobs(sequences)
    # A string is encoded as a prompt, like the ids above.
    prompt_only = generator.token_logprobs([prompt for prompt, _ in pairs[:2]])
    for row, got in zip(scored[:2], prompt_only, strict=True):
        assert got == pytest.approx(row[: len(got)], abs=1e-6)
    with torch.no_grad():
        for seq, got in zip(sequences, scored, strict=True):
            logits = model(torch.tensor([seq])).logits[0].float()
            expected = torch.log_softmax(logits, dim=-1)[:-1].gather(
                -1, torch.tensor(seq[1:])[:, None]
            )[:, 0]
            assert len(got) == len(seq) - 1
            assert torch.allclose(torch.tensor(got), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cannot be scored"):
        generator.token_logprobs([[1] * 256])


def _prefix_cache_hits(generator: VLLMGenerator) -> float:
    return sum(
        metric.value
        for metric in generator.llm.get_metrics()
        if metric.name == "vllm:prefix_cache_hits"
    )


def test_rollout_batch_with_prefix_caching(generator, reference, problems) -> None:
    """Step rollouts: every prefix of a solution, several samples each. The prompts share long
    prefixes, which the KV cache reuses; the completions are those without reuse."""
    rng = random.Random(2)
    prompts = []
    for p in problems[8:24]:
        lines = oracle_solution(p, rng=rng).splitlines(keepends=True)
        prompts += [format_prompt(p.question) + "".join(lines[:k]) for k in range(len(lines))]
    assert len(prompts) >= 40
    hits = _prefix_cache_hits(generator)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=5)
    rollouts = generator.generate(prompts, params)
    assert [len(samples) for samples in rollouts] == [4] * len(prompts)
    assert _prefix_cache_hits(generator) > hits  # the shared prefixes were reused
    # Against a cold cache: each prompt alone after a reset gives the same samples.
    assert generator.llm.reset_prefix_cache()
    for i in range(0, len(prompts), 9):
        assert generator.generate([prompts[i]], params)[0] == rollouts[i]
    # Greedy rollouts through the cache decode what the transformers backend decodes.
    greedy = SamplingParams(max_new_tokens=24)
    assert generator.generate(prompts, greedy) == reference.generate(prompts, greedy)


@pytest.mark.skipif(not on_cpu(), reason="the head-size limit is vLLM's CPU attention's")
def test_unsupported_head_size_fails_early(problems, tmp_path: Path) -> None:
    tokenizer = build_tokenizer([p.question for p in problems])
    small = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    folder = save_checkpoint(
        build_tiny_llama(small, tokenizer, seed=0), tokenizer, tmp_path / "small", {}
    )
    with pytest.raises(ValueError, match="head_dim 16"):
        VLLMGenerator(folder)
