"""Tests for the generation interface (training/generation/) and its transformers engine,
offline, on tiny models."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: nothing may download

import copy
import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthdata_assets.tasks.embedded import (
    EmbeddedParams,
    generate_problems,
    oracle_solution,
    pretraining_facts,
)
from training.checkpoint import save_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.generation import Completion, Generator, SamplingParams, interface, make_generator
from training.generation import transformers_engine as engine
from training.generation.decode_batch import choose_tokens, sample_uniforms
from training.generation.transformers_engine import TransformersGenerator
from training.model import build_tiny_llama
from training.prompts import format_example, format_prompt
from training.sft import train_sft
from training.tokenizer import build_tokenizer

PARAMS = EmbeddedParams()
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_seq_len=256)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def problems():
    return generate_problems(PARAMS, 48, seed=0, split="train")


@pytest.fixture(scope="module")
def prompts(problems) -> list[str]:
    return [format_prompt(p.question) for p in problems[:12]]


@pytest.fixture(scope="module")
def tokenizer(problems):
    rng = random.Random(0)
    texts = [p.question for p in problems] + [oracle_solution(p, rng=rng) for p in problems]
    return build_tokenizer(texts + pretraining_facts(PARAMS, seed=0, n=200))


@pytest.fixture(scope="module")
def generator(tokenizer, problems) -> TransformersGenerator:
    """A model trained briefly on the task. Its attention depends on content and position, so a
    wrong position or a visible pad token changes what it generates (at initialisation
    attention is nearly uniform and the next-token distribution nearly flat, which would hide
    such bugs), and it has learned to end solutions with EOS."""
    rng = random.Random(0)
    examples = [format_example(p.question, oracle_solution(p, rng=rng)) for p in problems]
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    config = TrainingConfig(batch_size=16, learning_rate=1e-2, warmup_ratio=0.0)
    train_sft(model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=150)
    return TransformersGenerator(model, tokenizer, batch_size=4)


def texts(results: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in samples] for samples in results]


def test_sampling_params_validate() -> None:
    for bad in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=("",))


def test_the_interface_imports_no_engine() -> None:
    """``training.generation`` loads without torch, transformers or vLLM: an engine (and its
    heavy dependencies) is imported only when ``make_generator`` picks it."""
    code = (
        "import sys, training.generation\n"
        "from training.generation import SamplingParams, Completion, Generator, prompt_seed\n"
        "heavy = {'torch', 'transformers', 'vllm'} & set(sys.modules)\n"
        "engines = [m for m in sys.modules if m.endswith('_engine')]\n"
        "assert not heavy and not engines, (heavy, engines)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Checks every engine passes (tests/test_vllm_backend.py runs them on the vLLM engine)


def check_seeded_samples(generator: Generator, prompts: list[str]) -> None:
    """The same seed gives the same samples, ``n`` distinct samples per prompt, and another
    seed other samples."""
    assert isinstance(generator, Generator)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=11)
    first = generator.generate(prompts, params)
    assert len(first) == len(prompts) and all(len(samples) == 3 for samples in first)
    assert first == generator.generate(prompts, params)
    # n independent samples per prompt, not copies.
    assert all(len(set(samples)) > 1 for samples in texts(first))
    other = generator.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 12}))
    assert sum(a != b for a, b in zip(texts(other), texts(first), strict=True)) >= len(prompts) - 1


def check_tiny_top_p_is_greedy(generator: Generator, prompts: list[str]) -> None:
    greedy = generator.generate(prompts, SamplingParams(max_new_tokens=12))
    nucleus = SamplingParams(n=2, temperature=1.5, top_p=1e-6, max_new_tokens=12, seed=9)
    assert texts(generator.generate(prompts, nucleus)) == [s * 2 for s in texts(greedy)]


def check_stop_strings_truncate(generator: Generator, prompts: list[str]) -> None:
    full = generator.generate(prompts[:1], SamplingParams(max_new_tokens=24))[0][0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut = generator.generate(prompts[:1], SamplingParams(max_new_tokens=24, stop=(stop, "@@")))
    completion = cut[0][0]
    assert completion.finish_reason == "stop"
    assert completion.text == full.text[: full.text.index(stop)]
    assert completion.num_tokens < full.num_tokens


def check_max_new_tokens(generator: Generator, prompts: list[str]) -> None:
    results = generator.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=5))
    for completion in (c for samples in results for c in samples):
        assert completion.num_tokens <= 5
        assert completion.finish_reason in ("stop", "length")
        if completion.finish_reason == "length":
            assert completion.num_tokens == 5
    assert any(c.finish_reason == "length" for samples in results for c in samples)


def check_eos_stops(generator: Generator, prompts: list[str]) -> list[Completion]:
    """Most solutions end at EOS, which ``num_tokens`` counts and the text does not show; the
    completions that stopped."""
    results = generator.generate(prompts, SamplingParams(max_new_tokens=96))
    stopped = [samples[0] for samples in results if samples[0].finish_reason == "stop"]
    assert len(stopped) >= 6, texts(results)
    for completion in stopped:
        # The model learned to end a solution line with EOS.
        assert completion.text.endswith(".\n")
        assert "<eos>" not in completion.text
        tokens = generator.tokenizer(completion.text, add_special_tokens=False)
        assert completion.num_tokens == len(tokens["input_ids"]) + 1
    return stopped


def check_left_truncation(generator: Generator, lines: list[str]) -> tuple[str, Completion]:
    """A prompt longer than the context allows is cut with a warning (``lines``: what the
    generator has logged); the prompt and its completion."""
    prompt = format_prompt(" ".join(["Ann has 3 pens."] * 80))
    assert len(generator.tokenizer(prompt)["input_ids"]) > 256
    completion = generator.generate([prompt], SamplingParams(max_new_tokens=8))[0][0]
    assert 1 <= completion.num_tokens <= 8
    assert any("left-truncated" in line for line in lines)
    with pytest.raises(ValueError, match="no room"):
        generator.generate([prompt], SamplingParams(max_new_tokens=256))
    return prompt, completion


# ---------------------------------------------------------------------------------------------
# The transformers engine


def test_same_seed_same_samples_and_n_per_prompt(generator, prompts) -> None:
    check_seeded_samples(generator, prompts)


def test_tiny_top_p_is_greedy(generator, prompts) -> None:
    check_tiny_top_p_is_greedy(generator, prompts)


def test_samples_do_not_depend_on_the_batch(generator, prompts) -> None:
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=10, seed=3)
    together = generator.generate(prompts, params)
    alone = TransformersGenerator(generator.model, generator.tokenizer, batch_size=1).generate(
        prompts[::-1], params
    )[::-1]
    assert together == alone


def test_greedy_is_deterministic_and_matches_unbatched(generator, prompts) -> None:
    lengths = {len(generator.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 3  # batches really are left-padded
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
    batched = generator.generate(prompts, params)
    assert batched == generator.generate(prompts, params)
    assert all(samples[0] == samples[1] for samples in batched)
    for prompt, samples in zip(prompts, batched, strict=True):
        assert generator.generate([prompt], SamplingParams(max_new_tokens=16))[0][0] == samples[0]
    # The KV-cache loop decodes what transformers' own generate() decodes.
    tokenizer = generator.tokenizer
    for prompt, samples in zip(prompts[:3], batched[:3], strict=True):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        reference = generator.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=16,
            min_new_tokens=16,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert tokenizer.decode(reference[0, ids.shape[1] :]) == samples[0].text


@pytest.mark.parametrize("share_prompts_from", [0, 10**6])
def test_sampling_equals_a_naive_reference(
    generator, prompts, share_prompts_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched KV-cache loop samples what a full forward pass per token samples, given the
    same random numbers: catches cache, position and padding bugs that argmax would hide.
    Both ways of holding the prompts' cache: shared by a prompt's samples, copied per row."""
    monkeypatch.setattr(engine, "_SHARE_PROMPTS_FROM", share_prompts_from)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=4)
    one_prefill = TransformersGenerator(generator.model, generator.tokenizer, batch_size=64)
    results = one_prefill.generate(prompts, params)
    tokenizer, model = generator.tokenizer, generator.model
    for prompt, samples in zip(prompts[:4], results[:4], strict=True):
        uniforms = sample_uniforms([prompt], params.n, params)
        for j, completion in enumerate(samples):
            ids, new = tokenizer(prompt)["input_ids"], []
            with torch.no_grad():
                for step in range(params.max_new_tokens):
                    logits = model(torch.tensor([ids + new])).logits[:, -1]
                    new.append(int(choose_tokens(logits, uniforms[j : j + 1, step], params)))
            assert tokenizer.decode(new, skip_special_tokens=True) == completion.text


@pytest.mark.parametrize(("slow_lane_after", "share_prompts_from"), [(96, 64), (2, 64), (2, 10**6)])
def test_step_prefixes_share_their_prefill(
    generator,
    problems,
    slow_lane_after: int,
    share_prompts_from: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step-rollout prompts (every step prefix of a solution, plus duplicates) are prefilled
    once per solution and sampled through continuous batching (with rows moving to the slow
    lane after 2 tokens, in the later cases; in the last, rows hold copies of their prompts'
    cache whenever the call fits in one prefill); every completion is what the prompt gets
    alone, with no other prompt to share or batch with."""
    monkeypatch.setattr(engine, "_SLOW_LANE_AFTER", slow_lane_after)
    monkeypatch.setattr(engine, "_SHARE_PROMPTS_FROM", share_prompts_from)
    rng = random.Random(1)
    prompts = []
    for problem in problems[20:26]:
        lines = oracle_solution(problem, rng=rng, slip_rate=1.0).splitlines(keepends=True)
        head = format_prompt(problem.question)
        prompts += [head + "".join(lines[:j]) for j in range(len(lines))]
    prompts += prompts[:3]  # duplicates
    random.Random(2).shuffle(prompts)
    ids = [generator.tokenizer(p)["input_ids"] for p in prompts]
    order = engine.prefix_family_order(ids)
    assert sorted(order) == list(range(len(prompts)))
    source = engine.extended_by(ids)
    assert len(set(source)) == 6  # one prefill per solution
    assert all(ids[source[i]][: len(ids[i])] == ids[i] for i in range(len(ids)))
    sampled = SamplingParams(n=3, temperature=1.5, max_new_tokens=40, seed=8)
    greedy = SamplingParams(max_new_tokens=14)
    alone = TransformersGenerator(generator.model, generator.tokenizer, batch_size=1)
    for batch_size in (5, 64):  # refills in place, and one group sharing everything
        shared = TransformersGenerator(generator.model, generator.tokenizer, batch_size=batch_size)
        for params in (sampled, greedy):
            assert shared.generate(prompts, params) == [
                alone.generate([p], params)[0] for p in prompts
            ]


def test_bfloat16_model_in_both_layouts(
    generator, prompts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bfloat16 model (what GPUs run) samples through the shared-prompt attention (bfloat16
    products, float32 softmax) and through the copied layout's SDPA. Rounding makes long
    greedy answers drift from the float32 model's, so the first tokens are compared: they
    agree on most prompts (a near-tie may flip)."""
    model = copy.deepcopy(generator.model).to(torch.bfloat16)
    params = SamplingParams(max_new_tokens=3)
    reference = texts(generator.generate(prompts, params))
    for share_prompts_from in (0, 10**6):
        monkeypatch.setattr(engine, "_SHARE_PROMPTS_FROM", share_prompts_from)
        bf16 = TransformersGenerator(model, generator.tokenizer, batch_size=64)
        answers = texts(bf16.generate(prompts, params))
        same = sum(a == b for a, b in zip(answers, reference, strict=True))
        assert same >= len(prompts) * 3 // 4


def test_progress_counts_finished_prompts(
    generator, prompts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``progress`` hears of prompts as all their samples finish, always once at the end, and
    at most once per interval otherwise; it changes no sample."""
    calls: list[tuple[int, int, dict[str, float]]] = []

    def progress(done: int, total: int, **figures: float) -> None:
        calls.append((done, total, figures))

    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=4)
    monkeypatch.setattr(interface, "PROGRESS_INTERVAL_S", 0.0)
    assert generator.generate(prompts, params, progress=progress) == generator.generate(
        prompts, params
    )
    done = [d for d, _, _ in calls]
    assert len(calls) > 1 and done == sorted(done) and done[-1] == len(prompts)
    assert all(t == len(prompts) and f["new_tokens_per_s"] > 0 for _, t, f in calls)
    calls.clear()
    monkeypatch.setattr(interface, "PROGRESS_INTERVAL_S", 1e9)
    generator.generate(prompts, params, progress=progress)
    assert 1 <= len(calls) <= 2 and calls[-1][:2] == (len(prompts), len(prompts))


def test_stop_strings_truncate(generator, prompts) -> None:
    check_stop_strings_truncate(generator, prompts)


def test_max_new_tokens(generator, prompts) -> None:
    check_max_new_tokens(generator, prompts)


def test_eos_stops_generation(generator, problems) -> None:
    stopped = check_eos_stops(generator, [format_prompt(p.question) for p in problems[:8]])
    assert all(c.text.splitlines()[-1].startswith("The answer is") for c in stopped)


def test_long_prompts_are_left_truncated(generator) -> None:
    lines: list[str] = []
    logged = TransformersGenerator(generator.model, generator.tokenizer, log=lines.append)
    check_left_truncation(logged, lines)


def test_make_generator_loads_a_checkpoint(generator, prompts, tmp_path: Path) -> None:
    folder = save_checkpoint(generator.model, generator.tokenizer, tmp_path / "ckpt", {})
    loaded = make_generator("transformers", folder, batch_size=3)
    assert isinstance(loaded, TransformersGenerator)
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=5)
    assert loaded.generate(prompts, params) == generator.generate(prompts, params)
    with pytest.raises(ValueError, match="unknown sampling backend"):
        make_generator("tgi", folder)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_missing_gives_install_hint(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        make_generator("vllm", tmp_path)
