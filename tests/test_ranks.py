"""Training stages over several data-parallel ranks (synthdata_assets/ranks.py,
``execution.train_processes``): two CPU ranks over gloo make the updates one process makes,
rank 0 alone saves, and a failing rank fails the stage with a clear error.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import polars as pl
import pytest
import torch

from synthdata_assets import models, preference, ranks
from synthdata_assets.tasks.embedded import EmbeddedParams, generate_problems, oracle_solution
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.model import build_tiny_llama
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


def _both(train, tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """``train`` in one process and over two ranks, each into its own folder."""
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
            )
        )
    return rows[0], rows[1], lines


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
