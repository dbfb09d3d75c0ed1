"""Training stages over several data-parallel ranks (synthdata_assets/ranks.py,
``execution.train_processes``): two CPU ranks over gloo make the updates one process makes,
as DDP ranks and as FSDP ranks (``execution.train_sharding: fsdp``, training/fsdp.py), with
the chunked log-probs on; rank 0 alone saves a full model, and a failing rank fails the stage
with a clear error.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from synthdata_assets import models, preference, ranks
from synthdata_assets.config import ConfigError, load_config
from synthdata_assets.tasks.embedded import EmbeddedParams, generate_problems, oracle_solution
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.model import build_tiny_llama, count_parameters
from training.prompts import format_example
from training.tokenizer import build_tokenizer

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_seq_len=256)
TRAINING = TrainingConfig(
    batch_size=8, micro_batch_size=2, epochs=1, bf16=False, warmup_ratio=0.0, learning_rate=3e-3
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def examples() -> list[tuple[str, str]]:
    problems = generate_problems(EmbeddedParams(), 24, seed=5, split="train")
    rng = random.Random(5)
    return [(p.question, oracle_solution(p, rng=rng)) for p in problems]


@pytest.fixture(scope="module")
def start(examples, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [prompt + completion for prompt, completion in map(_example, examples)]
    tokenizer = build_tokenizer(texts)
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("start") / "base", {})


def _example(pair: tuple[str, str]) -> tuple[str, str]:
    return format_example(*pair)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(folder, dtype=torch.float32)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _both(
    train, tmp_path: Path, sharding: str = "ddp"
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """``train`` in one process and over two ``sharding`` ranks, each into its own folder."""
    rows, lines = [], []
    for processes in (1, 2):
        models.seeded(0)
        rows.append(
            ranks.call(
                train,
                processes=processes,
                folder=tmp_path / f"ranks{processes}",
                seed=0,
                log=lines.append,
                progress=lambda *_a, **_k: None,
                sharding=sharding,
            )
        )
    return rows[0], rows[1], lines


def _assert_same_weights(tmp_path: Path) -> None:
    single, ranked = _weights(tmp_path / "ranks1"), _weights(tmp_path / "ranks2")
    for name, tensor in single.items():
        torch.testing.assert_close(ranked[name], tensor, rtol=1e-4, atol=1e-5)


def _stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The tensors of a folder's ``model.safetensors``, as stored, and their shapes."""
    stored = load_file(folder / "model.safetensors")
    return {name: tuple(tensor.shape) for name, tensor in stored.items()}


def _sharded_elements(lines: list[str]) -> tuple[int, int]:
    """Rank 0's parameter elements and the model's, from the FSDP ranks' log line."""
    (line,) = [line for line in lines if line.startswith("FSDP over 2 ranks")]
    kept, _, total = line.partition("rank 0 keeps ")[2].partition(" parameter")[0].partition(" of ")
    return int(kept.replace(",", "")), int(total.replace(",", ""))


def test_sft_over_two_ranks_makes_the_updates_of_one_process(examples, start, tmp_path) -> None:
    train = functools.partial(
        models.fine_tune, TRAINING, "sft", str(start), examples, max_seq_len=256
    )
    one, two, lines = _both(train, tmp_path)
    assert two["path"][0] == str(tmp_path / "ranks2")
    assert two["train_steps"][0] == one["train_steps"][0] == 3
    assert two["train_loss"][0] == pytest.approx(one["train_loss"][0], rel=1e-4)
    assert any("(2 process(es) x 2 x <= 2)" in line for line in lines)  # the ranks' own log
    single, ranked = _weights(tmp_path / "ranks1"), _weights(tmp_path / "ranks2")
    moved = max(float((single[k] - _weights(start)[k]).abs().max()) for k in single)
    assert moved > 1e-3
    for name, tensor in single.items():
        torch.testing.assert_close(ranked[name], tensor, rtol=1e-4, atol=1e-5)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no spec, result or partial checkpoint left behind


def test_dpo_over_two_ranks_makes_the_updates_of_one_process(examples, start, tmp_path) -> None:
    pairs = pl.DataFrame(
        [
            {
                "sample_id": f"sample-{i}",
                "prompt": _example(pair)[0],
                "chosen": _example(pair)[1],
                "rejected": _example(examples[(i + 3) % len(examples)])[1],
                "chosen_has_eos": True,
                "rejected_has_eos": True,
            }
            for i, pair in enumerate(examples[:16])
        ]
    )
    training = TRAINING.model_copy(update={"dpo_learning_rate": 3e-3, "dpo_epochs": 1})
    train = functools.partial(
        preference.train_preference_model, training, "dpo", str(start), pairs, max_seq_len=256
    )
    one, two, _ = _both(train, tmp_path)
    for column in ("train_loss", "reward_accuracy", "chosen_logp_change", "kl_to_sft_per_token"):
        assert two[column][0] == pytest.approx(one[column][0], rel=1e-3, abs=1e-6), column
    single, ranked = _weights(tmp_path / "ranks1"), _weights(tmp_path / "ranks2")
    for name, tensor in single.items():
        torch.testing.assert_close(ranked[name], tensor, rtol=1e-4, atol=1e-5)


def test_a_failing_rank_fails_the_stage_with_its_output(examples, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    train = functools.partial(
        models.fine_tune, TRAINING, "sft", str(missing), examples, max_seq_len=256
    )
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="training over 2 ranks failed"):
        ranks.call(
            train,
            processes=2,
            folder=tmp_path / "model",
            seed=0,
            log=lines.append,
            progress=lambda *_a, **_k: None,
        )
    assert any(str(missing) in line for line in lines)  # the ranks' traceback, in the log
    assert list(tmp_path.iterdir()) == []


# Chunks of 8 scored positions: several per micro-batch, so the head runs outside forward
# many times, in the forward and the recomputing backward pass.
CHUNKED = TRAINING.model_copy(update={"logprob_chunk": 8, "gradient_checkpointing": True})


def test_sft_over_two_fsdp_ranks_makes_the_updates_of_one_process(
    examples, start, tmp_path
) -> None:
    train = functools.partial(
        models.fine_tune, CHUNKED, "sft", str(start), examples, max_seq_len=256
    )
    one, two, lines = _both(train, tmp_path, "fsdp")
    assert any(line.startswith("training over 2 ranks (fsdp)") for line in lines)
    kept, total = _sharded_elements(lines)
    assert total == count_parameters(load_checkpoint(start)[0])
    assert kept < 0.6 * total  # rank 0 keeps about half: the parameters are sharded
    assert two["train_steps"][0] == one["train_steps"][0] == 3
    assert two["train_loss"][0] == pytest.approx(one["train_loss"][0], rel=1e-4)
    single = _weights(tmp_path / "ranks1")
    moved = max(float((single[k] - _weights(start)[k]).abs().max()) for k in single)
    assert moved > 1e-3
    _assert_same_weights(tmp_path)
    # Rank 0 saved the full model, every tensor whole, as a plain Hugging Face folder.
    assert _stored_shapes(tmp_path / "ranks2") == _stored_shapes(start)
    assert sorted(p.name for p in (tmp_path / "ranks2").iterdir()) == sorted(
        p.name for p in (tmp_path / "ranks1").iterdir()
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_lora_over_two_fsdp_ranks_makes_the_updates_of_one_process(
    examples, start, tmp_path
) -> None:
    """The paper preset's shape: LoRA on a base stored in bf16, so each FSDP unit holds frozen
    bf16 weights beside float32 adapters; the merged model is saved in bf16."""
    model, tokenizer = load_checkpoint(start)
    bf16_start = save_checkpoint(model, tokenizer, tmp_path / "base", {}, dtype=torch.bfloat16)
    training = CHUNKED.model_copy(update={"lora_rank": 4})
    train = functools.partial(
        models.fine_tune, training, "sft", str(bf16_start), examples, max_seq_len=256
    )
    one, two, lines = _both(train, tmp_path, "fsdp")
    assert sum("LoRA rank 4" in line for line in lines) == 2
    kept, total = _sharded_elements(lines)
    assert kept < 0.6 * total
    assert two["train_loss"][0] == pytest.approx(one["train_loss"][0], rel=1e-4)
    single, ranked = _weights(tmp_path / "ranks1"), _weights(tmp_path / "ranks2")
    moved = max(float((single[k] - _weights(bf16_start)[k]).abs().max()) for k in single)
    assert moved > 5e-3
    for name, tensor in single.items():  # within a bf16 rounding step, far below the movement
        torch.testing.assert_close(ranked[name], tensor, rtol=0, atol=1e-3)
    saved = load_file(tmp_path / "ranks2" / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.bfloat16}
    assert _stored_shapes(tmp_path / "ranks2") == _stored_shapes(start)


def _preference_pairs(examples: list[tuple[str, str]], per_step: bool) -> pl.DataFrame:
    """15 pairs (an odd number: one rank scores a pair more): whole wrong solutions with EOS,
    or (per-step DPO) wrong solutions cut after their second line, without EOS."""
    rows = []
    for i, pair in enumerate(examples[:15]):
        prompt, chosen = _example(pair)
        rejected = _example(examples[(i + 3) % len(examples)])[1]
        if per_step:
            rejected = "\n".join(rejected.split("\n")[:2]) + "\n"
        rows.append(
            {
                "sample_id": f"sample-{i}",
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_has_eos": True,
                "rejected_has_eos": not per_step,
            }
        )
    return pl.DataFrame(rows)


@pytest.mark.parametrize("method", ["dpo", "per_step_dpo"])
def test_dpo_over_two_fsdp_ranks_makes_the_updates_of_one_process(
    examples, start, tmp_path, method: str
) -> None:
    per_step = method == "per_step_dpo"
    pairs = _preference_pairs(examples, per_step)
    training = CHUNKED.model_copy(update={"dpo_learning_rate": 3e-3, "dpo_epochs": 1})
    # The advantage-weighted variant's hook: unequal pair weights.
    weights = [0.5 + (i % 3) / 2 for i in range(pairs.height)] if per_step else None
    train = functools.partial(
        preference.train_preference_model,
        training,
        method,
        str(start),
        pairs,
        max_seq_len=256,
        weights=weights,
    )
    one, two, lines = _both(train, tmp_path, "fsdp")
    assert any(line.startswith("FSDP over 2 ranks") for line in lines)
    assert one["train_steps"][0] == two["train_steps"][0] == 2
    for column in ("train_loss", "reward_accuracy", "chosen_logp_change", "kl_to_sft_per_token"):
        assert two[column][0] == pytest.approx(one[column][0], rel=1e-3, abs=1e-6), column
    assert one["kl_to_sft_per_token"][0] > 1e-4  # the policy moved
    _assert_same_weights(tmp_path)
    assert _stored_shapes(tmp_path / "ranks2") == _stored_shapes(start)


def test_an_unknown_sharding_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"execution\.train_sharding"):
        load_config("tiny", overrides={"execution": {"train_sharding": "zero3"}})
    config = load_config("tiny", overrides={"execution": {"train_sharding": "fsdp"}})
    assert config.execution.train_sharding == "fsdp"
    assert load_config("paper").execution.train_sharding == "ddp"
