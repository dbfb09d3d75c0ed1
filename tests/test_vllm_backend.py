"""Conformance tests of the vLLM engine (training/generation/vllm_engine.py) on a tiny trained
Llama.

They need vLLM, which lives in its own virtualenv: ``make test-vllm`` (it builds
``.venv-vllm`` first). In the main venv the whole module is skipped. The checks are those the
transformers engine passes (tests/test_generation.py), plus agreement with that engine on
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

# What vLLM runs with on CPUs and the checkpoint (tests/ is on sys.path; that module imports
# neither torch nor vLLM).
from test_openai_backend import VLLM_CPU_ENV, _tiny_trained_checkpoint

# Only where vLLM is (the environment of the main venv's other tests stays untouched), before
# torch and vLLM read them: nothing may download; on CPUs an in-process engine with an
# explicit KV cache and one unpinned thread (`make test-vllm` sets the same).
os.environ["HF_HUB_OFFLINE"] = "1"
for key, value in VLLM_CPU_ENV.items():
    os.environ.setdefault(key, value)

import torch

# The checks every engine passes, and the problems and prompts they run on (fixtures).
from test_generation import (
    check_eos_stops,
    check_left_truncation,
    check_max_new_tokens,
    check_seeded_samples,
    check_stop_strings_truncate,
    check_tiny_top_p_is_greedy,
)
from test_generation import problems as problems
from test_generation import prompts as prompts

from synthdata_assets.tasks.embedded import (
    oracle_solution,
)
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import ModelConfig
from training.generation import SamplingParams, make_generator, prompt_seed
from training.generation.transformers_engine import TransformersGenerator
from training.generation.vllm_engine import VLLMGenerator, on_cpu
from training.generation.vllm_replicas import ReplicaError, VLLMReplicas
from training.model import build_tiny_llama
from training.prompts import format_example, format_prompt
from training.tokenizer import build_tokenizer

pytestmark = [
    pytest.mark.vllm,
    # vLLM's and torch's own deprecation notices, nothing of ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A model trained briefly on the task, as in tests/test_generation.py (with head_dim 32,
    which vLLM's CPU attention supports): its attention depends on content and position, and
    it has learned to end solutions with EOS."""
    return _tiny_trained_checkpoint(tmp_path_factory.mktemp("vllm") / "ckpt")


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


def test_same_seed_same_samples_and_n_per_prompt(generator, prompts) -> None:
    check_seeded_samples(generator, prompts)


def test_samples_do_not_depend_on_the_batch(generator, prompts) -> None:
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=10, seed=3)
    together = generator.generate(prompts, params)
    assert generator.generate(prompts[::-1], params)[::-1] == together
    assert generator.generate(prompts[5:7], params) == together[5:7]
    # Distinct prompts get distinct seeds: they do not share one random stream.
    assert len({prompt_seed(3, p) for p in prompts}) == len(prompts)


def test_unseeded_requests_draw_from_the_engine_stream(generator, prompts) -> None:
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=3)
    generator.request_seeds = False
    try:
        first, again = generator.generate(prompts, params), generator.generate(prompts, params)
    finally:
        generator.request_seeds = True
    assert [len(samples) for samples in first] == [2] * len(prompts)
    # No request carries a seed: the second call draws on from where the first stopped.
    assert first != again
    seeded = generator.generate(prompts, params)
    assert seeded == generator.generate(prompts, params) != first


def test_greedy_matches_the_transformers_backend(generator, reference, prompts) -> None:
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
    results = generator.generate(prompts, params)
    assert all(samples[0] == samples[1] for samples in results)
    assert results == reference.generate(prompts, params)


def test_tiny_top_p_is_greedy(generator, prompts) -> None:
    check_tiny_top_p_is_greedy(generator, prompts)


def test_stop_strings_truncate(generator, prompts) -> None:
    check_stop_strings_truncate(generator, prompts)


def test_max_new_tokens(generator, prompts) -> None:
    check_max_new_tokens(generator, prompts)


def test_eos_stops_generation(generator, reference, problems) -> None:
    # (This model's arithmetic may be garbled: tests/test_generation.py checks answer lines.)
    prompts = [format_prompt(p.question) for p in problems[:8]]
    check_eos_stops(generator, prompts)
    params = SamplingParams(max_new_tokens=96)
    assert generator.generate(prompts, params) == reference.generate(prompts, params)


def test_long_prompts_are_left_truncated(generator, reference) -> None:
    lines: list[str] = []
    generator.log, log = lines.append, generator.log
    try:
        prompt, completion = check_left_truncation(generator, lines)
        # Truncated exactly as the transformers engine truncates.
        assert [[completion]] == reference.generate([prompt], SamplingParams(max_new_tokens=8))
    finally:
        generator.log = log


def test_progress_is_called_once_at_the_end(generator, prompts) -> None:
    calls: list[tuple[int, int, dict[str, float]]] = []

    def progress(done: int, total: int, **figures: float) -> None:
        calls.append((done, total, figures))

    generator.generate(prompts, SamplingParams(max_new_tokens=8), progress=progress)
    assert [c[:2] for c in calls] == [(len(prompts), len(prompts))]
    assert calls[0][2]["new_tokens_per_s"] > 0


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


def test_replicas_share_the_prompts_and_give_one_engines_samples(
    generator, checkpoint, prompts
) -> None:
    lines: list[str] = []
    replicas = make_generator(
        "vllm", checkpoint, dtype="float32", data_parallel_size=2, log=lines.append
    )
    assert isinstance(replicas, VLLMReplicas)
    try:
        for params in (
            SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=5),
            SamplingParams(max_new_tokens=16),
        ):
            assert replicas.generate(prompts, params) == generator.generate(prompts, params)
        assert replicas.generate(prompts[:1], SamplingParams(max_new_tokens=4)) == (
            generator.generate(prompts[:1], SamplingParams(max_new_tokens=4))
        )
        assert any(line.startswith("replica 1: vLLM engine started") for line in lines)
        # A replica's error is raised here, and leaves no answer behind for the next call.
        with pytest.raises(ReplicaError, match="leaves no room"):
            replicas.generate(prompts, SamplingParams(max_new_tokens=100_000))
        greedy = SamplingParams(max_new_tokens=8)
        assert replicas.generate(prompts, greedy) == generator.generate(prompts, greedy)
    finally:
        processes = list(replicas._processes)
        replicas.close()
    assert not any(p.is_alive() for p in processes)


def test_a_replica_that_fails_to_start_fails_the_call(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReplicaError, match="replica 0 failed to start"):
        VLLMReplicas(tmp_path, replicas=2)
