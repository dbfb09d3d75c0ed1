"""Tests for the tokenizer, the tiny model, the SFT trainer and checkpoints (training/).

Everything runs offline on a model with one layer of width 32; the file takes seconds.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: nothing may download

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from synthdata_assets.tasks.embedded import (
    EmbeddedParams,
    generate_problems,
    oracle_solution,
    pretraining_facts,
)
from training.checkpoint import (
    load_checkpoint,
    load_for_training,
    load_model_reference,
    read_meta,
    save_checkpoint,
)
from training.config import ModelConfig, TrainingConfig
from training.folders import remove_partial_checkpoints
from training.model import build_tiny_llama, count_parameters
from training.prompts import format_example, format_prompt
from training.sft import IGNORE_INDEX, collate_examples, encode_example, train_sft
from training.tokenizer import build_tokenizer
from training.trainer import lr_factor

PARAMS = EmbeddedParams()
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_seq_len=256)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    problems = generate_problems(PARAMS, 200, seed=0, split="train")
    rng = random.Random(0)
    solutions = [oracle_solution(p, rng=rng, spurious_rate=0.3, slip_rate=0.3) for p in problems]
    return (
        [p.question for p in problems]
        + solutions
        + pretraining_facts(PARAMS, seed=0, n=300)
        + [format_prompt(p.question) + s for p, s in zip(problems, solutions, strict=True)]
    )


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]) -> PreTrainedTokenizerBase:
    return build_tokenizer(texts)


@pytest.fixture(scope="module")
def examples() -> list[tuple[str, str]]:
    problems = generate_problems(PARAMS, 64, seed=1, split="train")
    rng = random.Random(1)
    return [format_example(p.question, oracle_solution(p, rng=rng)) for p in problems]


def test_prompt_format() -> None:
    assert format_prompt("Q?") == "Question: Q?\nSolution:\n"
    assert format_example("Q?", "A\nThe answer is 1.") == (
        "Question: Q?\nSolution:\n",
        "A\nThe answer is 1.\n",
    )
    # A sampled completion (ending with its newline) round-trips to the same example.
    assert format_example("Q?", "A\nThe answer is 1.\n") == format_example(
        "Q?", "A\nThe answer is 1."
    )


def test_tokenizer_round_trips_task_text(
    tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> None:
    for text in [*texts, "  two spaces\n\n\ttab é ünïcode 999 ", ""]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.unk_token_id not in ids


def test_tokenizer_numbers_are_single_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    for number in range(PARAMS.modulus):
        ids = tokenizer(f" {number}", add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (number, tokenizer.convert_ids_to_tokens(ids))
    step = tokenizer("Gus has 14 + 22 = 13 cards.\n", add_special_tokens=False)["input_ids"]
    assert len(step) == 10  # Gus, has, 14, +, 22, =, 13, cards, ., \n


def test_tokenizer_special_tokens_and_determinism(
    tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> None:
    assert tokenizer.is_fast
    assert tokenizer.padding_side == "left"
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token] == [
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    ]
    assert len(tokenizer) <= 512
    assert build_tokenizer(texts).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(texts, vocab_size=100)


def test_tokenizer_saves_and_loads_offline(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], tmp_path: Path
) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.is_fast
    assert loaded.padding_side == "left"
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    for text in texts[:50]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text


def test_build_tiny_llama(tokenizer: PreTrainedTokenizerBase) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=3)
    config = model.config
    assert config.vocab_size == len(tokenizer)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 1, 2)
    assert config.max_position_embeddings == 256
    assert config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert model.dtype == torch.float32
    same = build_tiny_llama(TINY, tokenizer, seed=3)
    other = build_tiny_llama(TINY, tokenizer, seed=4)
    state, same_state = model.state_dict(), same.state_dict()
    assert all(torch.equal(state[k], same_state[k]) for k in state)
    assert not torch.equal(
        state["model.embed_tokens.weight"], other.state_dict()["model.embed_tokens.weight"]
    )
    assert count_parameters(model) == len(tokenizer) * 32 + 1 * (4 * 32 * 32 + 3 * 32 * 64) + (
        2 * 32 + 32
    )


def test_labels_mask_prompt_and_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    short = encode_example(tokenizer, "Question: a\nSolution:\n", "b\n", max_seq_len=64)
    long = encode_example(tokenizer, "Question: a b c d\nSolution:\n", "x y z\n", max_seq_len=64)
    assert short is not None and long is not None
    prompt_len = len(tokenizer("Question: a\nSolution:\n")["input_ids"])
    completion = tokenizer("b\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert short.input_ids[prompt_len:] == completion
    assert short.labels == [IGNORE_INDEX] * prompt_len + completion

    batch = collate_examples([short, long], tokenizer.pad_token_id)
    width = len(long.input_ids)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    n = len(short.input_ids)
    # Right padding: real tokens first, then pad with mask 0 and label -100.
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert batch["input_ids"][0, n:].eq(tokenizer.pad_token_id).all()
    expected = torch.tensor(short.labels + [IGNORE_INDEX] * (width - n))
    assert torch.equal(batch["labels"][0], expected)
    masked = batch["labels"][0].eq(IGNORE_INDEX)
    positions = torch.arange(width)
    assert torch.equal(masked, (positions < prompt_len) | (positions >= n))
    assert batch["labels"][0, n - 1] == tokenizer.eos_token_id
    assert batch["attention_mask"][1].all()

    # Pretraining: an empty prompt masks only <bos>.
    text = encode_example(tokenizer, "", "Ann has 3 + 4 = 7 pens.", max_seq_len=64)
    assert text is not None
    assert text.labels[0] == IGNORE_INDEX and IGNORE_INDEX not in text.labels[1:]
    assert text.input_ids[0] == tokenizer.bos_token_id

    assert encode_example(tokenizer, "Question: a\nSolution:\n", "b\n", max_seq_len=5) is None


def test_train_sft_reduces_loss(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines: list[str] = []
    reports: list[tuple[int, int, dict[str, float]]] = []
    config = TrainingConfig(epochs=8, batch_size=16, learning_rate=3e-3, warmup_ratio=0.1)
    stats = train_sft(
        model,
        tokenizer,
        examples,
        config=config,
        seed=0,
        max_seq_len=256,
        log=lines.append,
        progress=lambda done, total, **figures: reports.append((done, total, figures)),
    )
    assert stats.steps == 32 == len(stats.losses)  # 8 epochs x 4 updates
    assert stats.epochs == pytest.approx(8.0)
    assert all(math.isfinite(loss) for loss in stats.losses)
    first = sum(stats.losses[:3]) / 3
    assert first > 5.0  # about ln(vocab) at initialisation
    assert stats.mean_loss_last_10pct < first - 1.5, stats.losses
    assert stats.final_loss == stats.losses[-1]
    assert stats.tokens > 0 and stats.tokens_per_second > 0 and stats.seconds > 0
    assert stats.examples == 64 and stats.dropped == 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert not model.training
    # Progress after every update; the log says only when training starts and ends.
    assert [(done, total) for done, total, _ in reports] == [(n, 32) for n in range(1, 33)]
    assert [figures["loss"] for _, _, figures in reports] == stats.losses
    assert all(set(figures) == {"loss", "lr", "tokens_per_s"} for _, _, figures in reports)
    assert all(figures["tokens_per_s"] > 0 for _, _, figures in reports)
    lrs = [figures["lr"] for _, _, figures in reports]
    assert max(lrs) == pytest.approx(3e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert len(lines) == 2
    assert lines[0].startswith("training on 64 examples") and "bf16 autocast: " in lines[0]
    assert lines[1].startswith("training done: 32 updates") and "tokens/s" in lines[1]


def test_train_sft_is_seeded(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    config = TrainingConfig(batch_size=8, bf16=False)
    runs = []
    for seed in (0, 0, 1):
        model = build_tiny_llama(TINY, tokenizer, seed=0)
        runs.append(
            train_sft(
                model, tokenizer, examples, config=config, seed=seed, max_seq_len=256, max_steps=3
            ).losses
        )
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_max_steps_overrides_epochs_and_long_examples_drop(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    config = TrainingConfig(epochs=1, batch_size=16, bf16=False)
    # max_steps runs past one epoch (4 updates) by reshuffling.
    stats = train_sft(
        build_tiny_llama(TINY, tokenizer),
        tokenizer,
        examples[:40],
        config=config,
        seed=0,
        max_seq_len=256,
        max_steps=7,
    )
    assert stats.steps == 7 and stats.epochs == pytest.approx(7 / 3)

    lengths = [
        len(encode_example(tokenizer, p, c, max_seq_len=10**6).input_ids) for p, c in examples
    ]
    cutoff = sorted(lengths)[len(lengths) // 2]
    stats = train_sft(
        build_tiny_llama(TINY, tokenizer),
        tokenizer,
        examples,
        config=config,
        seed=0,
        max_seq_len=cutoff,
        max_steps=1,
    )
    assert stats.dropped == sum(n > cutoff for n in lengths) > 0
    assert stats.examples == 64 - stats.dropped
    with pytest.raises(ValueError, match="max_seq_len"):
        train_sft(
            build_tiny_llama(TINY, tokenizer),
            tokenizer,
            examples,
            config=config,
            seed=0,
            max_seq_len=8,
        )
    assert (
        train_sft(
            build_tiny_llama(TINY, tokenizer),
            tokenizer,
            examples,
            config=config,
            seed=0,
            max_seq_len=256,
            max_steps=0,
        ).steps
        == 0
    )


class _PlainSGD(torch.optim.SGD):
    """SGD in AdamW's place: after one update at lr 1, weight - new weight is the (clipped)
    gradient itself, so two runs' gradients compare through their weights."""

    def __init__(self, params, lr, betas=None):
        super().__init__(params, lr=lr)


def _one_sgd_update(tokenizer, examples, monkeypatch, **kwargs) -> tuple[list[torch.Tensor], list]:
    monkeypatch.setattr("training.trainer.torch.optim.AdamW", _PlainSGD)
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    lines: list[str] = []
    config = TrainingConfig(batch_size=16, learning_rate=1.0, warmup_ratio=0.0, bf16=False)
    stats = train_sft(
        model,
        tokenizer,
        examples,
        config=kwargs.pop("config", config),
        seed=0,
        max_seq_len=256,
        max_steps=1,
        log=lines.append,
        **kwargs,
    )
    steps = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    return steps, [stats, lines]


def test_micro_batches_give_the_whole_batch_gradient(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole, (whole_stats, _) = _one_sgd_update(tokenizer, examples, monkeypatch)
    # Micro-batches of 4 and of 3 (uneven: 3+3+3+3+2+2): examples differ in length, so a mean
    # of per-micro-batch means would weight their tokens unequally.
    for micro in (4, 3):
        split, (stats, lines) = _one_sgd_update(
            tokenizer, examples, monkeypatch, micro_batch_size=micro
        )
        assert f"x {math.ceil(16 / micro)} x <= {micro})" in lines[0]
        assert stats.tokens == whole_stats.tokens
        assert stats.losses[0] == pytest.approx(whole_stats.losses[0], rel=1e-5)
        for a, b in zip(split, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # training.micro_batch_size is the default of the argument.
    config = TrainingConfig(
        batch_size=16, learning_rate=1.0, warmup_ratio=0.0, bf16=False, micro_batch_size=8
    )
    split, (_, lines) = _one_sgd_update(tokenizer, examples, monkeypatch, config=config)
    assert "x 2 x <= 8)" in lines[0]
    for a, b in zip(split, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_updates(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    models, runs = [], []
    for checkpointing in (False, True):
        model = build_tiny_llama(TINY, tokenizer, seed=0)
        config = TrainingConfig(
            batch_size=16, bf16=False, gradient_checkpointing=checkpointing, micro_batch_size=8
        )
        runs.append(
            train_sft(
                model, tokenizer, examples, config=config, seed=0, max_seq_len=256, max_steps=3
            )  # fmt: skip
        )
        models.append(model)
    assert runs[1].losses == pytest.approx(runs[0].losses, rel=1e-5)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not models[1].is_gradient_checkpointing  # switched off when the run ends


def test_a_bf16_stored_model_trains_float32_master_weights(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]], tmp_path: Path
) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=0).to(torch.bfloat16)
    save_checkpoint(model, tokenizer, tmp_path / "bf16", {"method": "base"})
    config = TrainingConfig(batch_size=16, learning_rate=1e-6, warmup_ratio=0.0, bf16=True)
    kwargs = {"config": config, "seed": 0, "max_seq_len": 256, "max_steps": 10}

    def changed(trained: torch.nn.Module) -> float:
        """The share of the matrices' weights that training changed."""
        pairs = [
            (a, b)
            for a, b in zip(trained.parameters(), model.parameters(), strict=True)
            if a.ndim == 2
        ]
        moved = sum(int((a.float() != b.float()).sum()) for a, b in pairs)
        return moved / sum(a.numel() for a, _ in pairs)

    master, tok, stored = load_for_training(tmp_path / "bf16")
    assert stored == torch.bfloat16 and master.dtype == torch.float32
    train_sft(master, tok, examples, **kwargs)
    assert changed(master) > 0.99
    # The same ten updates on the bf16 weights themselves are mostly rounded away.
    plain, tok = load_checkpoint(tmp_path / "bf16", dtype="auto")
    assert plain.dtype == torch.bfloat16
    train_sft(plain, tok, examples, **kwargs)
    assert changed(plain) < 0.2
    # Saved back in the dtype it was stored in.
    save_checkpoint(master, tok, tmp_path / "trained", {"method": "sft"}, dtype=stored)
    again, _ = load_checkpoint(tmp_path / "trained", dtype="auto")
    assert again.dtype == torch.bfloat16


def test_learning_rate_schedule() -> None:
    factors = [lr_factor(update, 4, 20) for update in range(20)]
    assert factors[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]  # linear warmup, then cosine from the top
    assert all(a > b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[-1] < 0.01
    assert lr_factor(0, 0, 10) == 1.0


def test_pretraining_with_empty_prompts(tokenizer: PreTrainedTokenizerBase) -> None:
    texts = pretraining_facts(PARAMS, seed=0, n=32)
    stats = train_sft(
        build_tiny_llama(TINY, tokenizer),
        tokenizer,
        [("", t) for t in texts],
        config=TrainingConfig(batch_size=8),
        seed=0,
        max_seq_len=256,
        max_steps=4,
    )
    assert stats.steps == 4 and all(math.isfinite(x) for x in stats.losses)


@pytest.fixture(scope="module")
def saved(tokenizer: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory):
    model = build_tiny_llama(TINY, tokenizer, seed=5)
    folder = tmp_path_factory.mktemp("ckpt") / "sft"
    save_checkpoint(model, tokenizer, folder, {"stage": "sft", "seed": 5, "loss": 1.25})
    return model, folder


def test_checkpoint_loads_with_plain_transformers(
    tokenizer: PreTrainedTokenizerBase, saved
) -> None:
    model, folder = saved
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "meta.json").read_text()) == {
        "stage": "sft",
        "seed": 5,
        "loss": 1.25,
    }
    assert read_meta(folder)["stage"] == "sft"
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert loaded_tokenizer.is_fast
    text = format_prompt("Ann has 3 pens. How many pens does Ann have? Count modulo 23.")
    ids = loaded_tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tokenizer(text)["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    again, again_tokenizer = load_checkpoint(folder, dtype="float32")
    assert not again.training and again_tokenizer.eos_token_id == tokenizer.eos_token_id
    with torch.no_grad():
        assert torch.equal(again(ids).logits, loaded(ids).logits)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(folder.parent / "missing")


def test_checkpoint_overwrite_and_crash(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    folder = tmp_path / "ckpts" / "rft"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the tokenizer")

    # A crash after the weights are written leaves nothing under the final name.
    with monkeypatch.context() as patch:
        patch.setattr(type(tokenizer), "save_pretrained", crash)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(model, tokenizer, folder, {"version": 1})
    assert not folder.exists()
    assert list(folder.parent.iterdir()) == []  # the partial folder was cleaned up

    save_checkpoint(model, tokenizer, folder, {"version": 1})
    # A crash while replacing a checkpoint leaves the old one intact.
    with monkeypatch.context() as patch:
        patch.setattr(type(tokenizer), "save_pretrained", crash)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(model, tokenizer, folder, {"version": 2})
    assert read_meta(folder) == {"version": 1}
    save_checkpoint(model, tokenizer, folder, {"version": 2})
    assert read_meta(folder) == {"version": 2}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["rft"]


def test_checkpoint_files_get_the_usual_permissions(saved) -> None:
    _, folder = saved
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        p.name: 0o666 & ~umask for p in folder.iterdir()
    }


def test_leftover_partial_checkpoints_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sft" / "data_size=32" / ".seed=0.partial-123-abc").mkdir(parents=True)
    (tmp_path / "base" / ".base.old-9-x").mkdir(parents=True)
    (tmp_path / "sft" / "data_size=32" / "seed=1").mkdir()
    removed = remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == [".base.old-9-x", ".seed=0.partial-123-abc"]
    assert (tmp_path / "sft" / "data_size=32" / "seed=1").is_dir()


def test_load_model_reference(saved, tmp_path: Path) -> None:
    _, folder = saved
    model, tokenizer = load_model_reference(folder, allow_hub_download=False)
    assert model.config.hidden_size == 32 and tokenizer.is_fast
    missing = tmp_path / "deepseek-math-7b-base"
    with pytest.raises(FileNotFoundError) as info:
        load_model_reference(missing, allow_hub_download=False)
    message = str(info.value)
    assert "not a local folder" in message
    assert "set model.name to its path" in message
    assert "model.allow_hub_download: true" in message


def test_fine_tune_stage_trains_a_bf16_model_in_float32_and_saves_it_in_bf16(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]], tmp_path: Path
) -> None:
    from synthdata_assets.models import fine_tune

    base = build_tiny_llama(TINY, tokenizer, seed=0).to(torch.bfloat16)
    save_checkpoint(base, tokenizer, tmp_path / "base", {"method": "base"})
    lines: list[str] = []
    training = TrainingConfig(epochs=1, batch_size=16, micro_batch_size=4, learning_rate=1e-6)
    problems = generate_problems(PARAMS, len(examples), seed=1, split="train")
    rng = random.Random(1)
    pairs = [(p.question, oracle_solution(p, rng=rng)) for p in problems]
    row = fine_tune(
        training, "sft", str(tmp_path / "base"), pairs, tmp_path / "sft", seed=0,
        max_seq_len=256, log=lines.append,
    ).row(0, named=True)  # fmt: skip
    assert row["train_steps"] == math.ceil(len(examples) / 16)
    assert any("x 4 x <= 4)" in line for line in lines)  # training.micro_batch_size reached it
    sft, _ = load_checkpoint(tmp_path / "sft", dtype="auto")
    assert sft.dtype == torch.bfloat16
    moved = [
        float((a.float() != b.float()).float().mean())
        for a, b in zip(sft.parameters(), base.parameters(), strict=True)
        if a.ndim == 2
    ]
    # lr 1e-6 moves float32 master weights; back in bf16, some of the moves survive rounding.
    assert max(moved) > 0.0


def test_train_sft_keeps_the_epoch_with_the_best_validation_score(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    seen: list[dict[str, torch.Tensor]] = []
    modes: list[bool] = []
    scores = iter([0.2, 0.7, 0.7, 0.4])  # epoch 2 best; epoch 3 ties it and loses the tie

    def validate(trained: torch.nn.Module) -> float:
        modes.append(trained.training)
        seen.append({k: v.detach().clone() for k, v in trained.state_dict().items()})
        return next(scores)

    lines: list[str] = []
    config = TrainingConfig(epochs=4, batch_size=16, learning_rate=3e-3, bf16=False)
    stats = train_sft(
        model, tokenizer, examples, config=config, seed=0, max_seq_len=256,
        log=lines.append, validate=validate,
    )  # fmt: skip
    assert stats.steps == 16  # all 4 epochs trained, scored after each
    assert stats.validation == [0.2, 0.7, 0.7, 0.4] and stats.chosen_epoch == 2
    assert modes == [True] * 4  # scored during training; its own code switches to eval mode
    kept = model.state_dict()
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], seen[3][k]) for k in kept)
    assert any(line.startswith("kept epoch 2 of 4") for line in lines)
    assert not model.training


def test_train_sft_stops_after_patience_epochs_without_a_better_score(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    seen: list[dict[str, torch.Tensor]] = []
    scores = iter([0.3, 0.5, 0.5, 0.4, 0.9, 0.9])  # epochs 3 and 4 no better than epoch 2

    def validate(trained: torch.nn.Module) -> float:
        seen.append({k: v.detach().clone() for k, v in trained.state_dict().items()})
        return next(scores)

    lines: list[str] = []
    config = TrainingConfig(
        epochs=6, batch_size=16, learning_rate=3e-3, bf16=False, validation_patience=2
    )
    stats = train_sft(
        model, tokenizer, examples, config=config, seed=0, max_seq_len=256,
        log=lines.append, validate=validate,
    )  # fmt: skip
    assert stats.steps == 16 and stats.epochs == pytest.approx(4.0)  # epochs 5 and 6 not run
    assert stats.validation == [0.3, 0.5, 0.5, 0.4] and stats.chosen_epoch == 2
    kept = model.state_dict()
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert any(line.startswith("stopped after epoch 4: 2 epochs without") for line in lines)
    assert any(line.startswith("kept epoch 2 of 4") for line in lines)


def test_train_sft_keeps_the_last_epoch_when_it_scores_best(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]]
) -> None:
    scored, plain = (build_tiny_llama(TINY, tokenizer, seed=0) for _ in range(2))
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=3e-3, bf16=False)
    scores = iter([0.1, 0.3])
    stats = train_sft(
        scored, tokenizer, examples, config=config, seed=0, max_seq_len=256,
        validate=lambda _model: next(scores),
    )  # fmt: skip
    train_sft(plain, tokenizer, examples, config=config, seed=0, max_seq_len=256)
    assert stats.chosen_epoch == 2
    # Scoring between epochs changes nothing of the training itself.
    assert all(
        torch.equal(a, b)
        for a, b in zip(scored.state_dict().values(), plain.state_dict().values(), strict=True)
    )


def test_fine_tune_stage_records_the_epoch_chosen_on_validation_problems(
    tokenizer: PreTrainedTokenizerBase, examples: list[tuple[str, str]], tmp_path: Path
) -> None:
    import polars as pl

    from synthdata_assets.config import config_from_dict, preset_dict
    from synthdata_assets.models import fine_tune
    from synthdata_assets.problems import problem_pool, validation_split

    config = config_from_dict(
        preset_dict("tiny") | {"training": {"epochs": 2, "select_epoch": "validation"}}
    )
    pool = problem_pool(config.task)
    validation = validation_split(config.task, 12, pool)
    assert validation.height == 12
    assert not set(validation["question"]) & set(pool["question"])
    assert validation.equals(validation_split(config.task, 12, pool))  # the same every time
    save_checkpoint(build_tiny_llama(TINY, tokenizer, seed=0), tokenizer, tmp_path / "base", {})
    problems = generate_problems(PARAMS, len(examples), seed=1, split="train")
    rng = random.Random(1)
    pairs = [(p.question, oracle_solution(p, rng=rng)) for p in problems]
    frame = fine_tune(
        config.training, "sft", str(tmp_path / "base"), pairs, tmp_path / "sft", seed=0,
        max_seq_len=256, log=lambda _m: None, validation=validation, scoring=config,
    )  # fmt: skip
    row = frame.row(0, named=True)
    assert frame.schema["validation_curve"] == pl.List(pl.Float64)
    assert len(row["validation_curve"]) == 2 and row["chosen_epoch"] in (1, 2)
    assert row["validation_accuracy"] == row["validation_curve"][row["chosen_epoch"] - 1]
    assert all(0.0 <= score <= 1.0 for score in row["validation_curve"])
