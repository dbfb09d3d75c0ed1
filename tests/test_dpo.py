"""Tests for the DPO trainer (training/dpo.py): exact token masks, the frozen reference, weights,
the distance from the reference; and the preference models built on it (preference.py), with
their KL to pi_sft on held-out test problems.

Everything runs offline on a model with one layer of width 32; the file takes seconds.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: nothing may download

import copy
import dataclasses
import math
import random

import polars as pl
import pytest
import torch
from rounding import assert_trained_alike
from transformers import PreTrainedTokenizerBase

from synthdata_assets.config import TaskConfig
from synthdata_assets.preference import (
    PREFERENCE_SCHEMA,
    control_training,
    held_out_texts,
    kl_texts,
    kl_to_sft,
    movement_metadata,
    train_preference_model,
    without_negatives,
)
from synthdata_assets.problems import PROBLEM_SCHEMA, problem_pool
from synthdata_assets.tasks.embedded import (
    EmbeddedParams,
    generate_problems,
    oracle_solution,
    step_labels,
)
from training import dpo as dpo_module
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.dpo import (
    DPOStats,
    PreferenceExample,
    encode_response,
    encode_responses,
    sequence_logprobs,
    token_kl,
    train_dpo,
)
from training.model import build_tiny_llama
from training.prompts import format_example, format_prompt
from training.sft import IGNORE_INDEX, TrainStats, encode_example
from training.tokenizer import build_tokenizer

PARAMS = EmbeddedParams()
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_seq_len=256)
CONFIG = TrainingConfig(bf16=False, warmup_ratio=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs() -> list[PreferenceExample]:
    """Correct solutions over wrong ones: even pairs are per-step (cut, no EOS), odd ones full."""
    problems = generate_problems(PARAMS, 16, seed=2, split="train")
    rng = random.Random(2)
    out = []
    for i, problem in enumerate(problems):
        prompt, chosen = format_example(problem.question, oracle_solution(problem, rng=rng))
        _, wrong = format_example(
            problem.question, oracle_solution(problem, rng=rng, slip_rate=1.0)
        )
        if i % 2:
            out.append(PreferenceExample(prompt, chosen, wrong))
        else:
            good, bad = chosen.splitlines(), wrong.splitlines()
            first_wrong = next(k for k, (a, b) in enumerate(zip(good, bad, strict=True)) if a != b)
            cut = "\n".join(bad[: first_wrong + 1]) + "\n"
            out.append(PreferenceExample(prompt, chosen, cut, rejected_has_eos=False))
    return out


@pytest.fixture(scope="module")
def problems() -> pl.DataFrame:
    """An embedded problems table (16 train, 8 test) and three real-data rows: a test problem
    with a worked solution, a test problem without one and a training problem."""
    real = [
        ("real-test-0", "test", "What is 2 + 3?", "2 + 3 = 5\n#### 5"),
        ("real-test-1", "test", "What is 1 + 1?", None),
        ("real-train-0", "train", "What is 4 + 4?", "4 + 4 = 8\n#### 8"),
    ]
    rows = [
        {"problem_id": pid, "split": split, "question": q, "answer": "0", "source": "gsm8k"}
        | {"n_steps": 1, "reference_solution": solution}
        for pid, split, q, solution in real
    ]
    embedded = problem_pool(TaskConfig(n_train_pool=16, n_test=8))
    return pl.concat([embedded, pl.DataFrame(rows, schema=PROBLEM_SCHEMA)])


@pytest.fixture(scope="module")
def tokenizer(pairs: list[PreferenceExample]) -> PreTrainedTokenizerBase:
    return build_tokenizer([p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs])


def _train(model, tokenizer, pairs, **kwargs) -> DPOStats:
    options = {
        "beta": 0.5,
        "learning_rate": 3e-3,
        "epochs": 1,
        "batch_size": 8,
        "config": CONFIG,
        "seed": 0,
        "max_seq_len": 256,
    }
    return train_dpo(model, tokenizer, pairs, **{**options, **kwargs})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_token_masks_are_exact(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    pair = pairs[0]
    prompt_ids = tokenizer(pair.prompt)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id
    body = tokenizer(pair.rejected, add_special_tokens=False)["input_ids"]
    with_eos = encode_response(tokenizer, pair.prompt, pair.rejected, has_eos=True)
    without = encode_response(tokenizer, pair.prompt, pair.rejected, has_eos=False)
    assert with_eos == encode_example(tokenizer, pair.prompt, pair.rejected, max_seq_len=10**6)
    assert without.input_ids == [*prompt_ids, *body]
    assert without.labels == [IGNORE_INDEX] * len(prompt_ids) + body
    assert with_eos.input_ids == [*prompt_ids, *body, tokenizer.eos_token_id]
    assert (
        encode_response(tokenizer, pair.prompt, pair.rejected, has_eos=True, max_seq_len=8) is None
    )
    with pytest.raises(ValueError, match="no token to score"):
        encode_response(tokenizer, pair.prompt, "", has_eos=False)

    # The summed log-prob is exactly the completion tokens' (+ EOS), padding and batching aside.
    model = build_tiny_llama(TINY, tokenizer, seed=1).eval()
    prompts = [p.prompt for p in pairs[:5]]
    completions = [p.rejected for p in pairs[:5]]
    for has_eos in (True, False):
        got = sequence_logprobs(model, tokenizer, prompts, completions, has_eos, batch_size=3)
        for prompt, completion, value in zip(prompts, completions, got, strict=True):
            start = len(tokenizer(prompt)["input_ids"])
            ids = (
                tokenizer(prompt)["input_ids"]
                + tokenizer(completion, add_special_tokens=False)["input_ids"]
            )
            ids += [tokenizer.eos_token_id] * has_eos
            with torch.no_grad():
                logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            manual = sum(logps[t - 1, ids[t]].item() for t in range(start, len(ids)))
            assert value == pytest.approx(manual, abs=1e-4)

    # A cut negative differs from the same text with EOS by exactly log p(EOS | text).
    no_eos, eos = (
        sequence_logprobs(model, tokenizer, [pair.prompt], [pair.rejected], flag)[0]
        for flag in (False, True)
    )
    with torch.no_grad():
        last = model(torch.tensor([without.input_ids])).logits[0, -1]
    assert eos - no_eos == pytest.approx(
        torch.log_softmax(last, -1)[tokenizer.eos_token_id].item(), abs=1e-4
    )
    assert not model.training


def test_train_dpo_learns_the_preference(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    initial = copy.deepcopy(model)
    lines: list[str] = []
    reports: list[tuple[int, int, dict[str, float]]] = []
    stats = _train(
        model,
        tokenizer,
        pairs,
        epochs=6,
        log=lines.append,
        progress=lambda done, total, **figures: reports.append((done, total, figures)),
    )
    assert isinstance(stats, TrainStats)
    assert stats.steps == 12 == len(stats.losses) and stats.epochs == pytest.approx(6.0)
    # The policy starts as the reference: every implicit reward is 0 and the loss log 2.
    assert stats.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert stats.mean_loss_last_10pct < 0.4, stats.losses
    assert stats.reward_accuracy > 0.9 and stats.mean_margin > 1.0
    assert stats.examples == 16 and stats.dropped == 0 and stats.zero_weight == 0
    assert stats.tokens > 0 and stats.tokens_per_second > 0
    assert not _same_weights(model, initial)
    assert not model.training
    # Progress after every update; the log: the reference pass, the start and the end.
    assert [(done, total) for done, total, _ in reports] == [(n, 12) for n in range(1, 13)]
    assert [figures["loss"] for _, _, figures in reports] == stats.losses
    figures = reports[-1][2]
    assert set(figures) == {"loss", "lr", "tokens_per_s", "reward_accuracy"}
    assert 0.0 <= figures["reward_accuracy"] <= 1.0 and figures["tokens_per_s"] > 0
    assert [line.split(" ")[0] for line in lines] == ["reference", "DPO", "DPO", "policy"]
    assert lines[2].startswith("DPO done: 12 updates") and "reward accuracy" in lines[2]

    # Measured afresh: the chosen-vs-rejected margin over the reference rose for most pairs.
    def scores(policy) -> dict[str, list[float]]:
        return {
            side: sequence_logprobs(
                policy,
                tokenizer,
                [p.prompt for p in pairs],
                [getattr(p, side) for p in pairs],
                [getattr(p, f"{side}_has_eos") for p in pairs],
            )
            for side in ("chosen", "rejected")
        }

    before, after = scores(initial), scores(model)
    margins = [
        (ac - ar) - (bc - br)
        for ac, ar, bc, br in zip(
            after["chosen"], after["rejected"], before["chosen"], before["rejected"], strict=True
        )
    ]
    assert sum(m > 0 for m in margins) >= 14
    # The reported change of each side is that side's mean log pi - log ref over the pairs.
    for side in ("chosen", "rejected"):
        change = [a - b for a, b in zip(after[side], before[side], strict=True)]
        assert getattr(stats, f"{side}_logp_change") == pytest.approx(
            sum(change) / len(change), abs=1e-3
        )
    assert stats.chosen_logp_change > stats.rejected_logp_change


def test_token_kl_is_the_exact_per_token_kl_over_the_completions(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    policy = build_tiny_llama(TINY, tokenizer, seed=0)
    reference = build_tiny_llama(TINY, tokenizer, seed=1).train()
    prompts = [p.prompt for p in pairs[:5]]
    completions = [p.rejected for p in pairs[:5]]
    flags = [p.rejected_has_eos for p in pairs[:5]]
    same, n = token_kl(policy, copy.deepcopy(policy), tokenizer, prompts, completions, flags)
    assert same == pytest.approx(0.0, abs=1e-6)
    expected_tokens = sum(
        len(encode_response(tokenizer, p, c, has_eos=e).input_ids) - len(tokenizer(p)["input_ids"])
        for p, c, e in zip(prompts, completions, flags, strict=True)
    )
    assert n == expected_tokens
    kl, n = token_kl(policy, reference, tokenizer, prompts, completions, flags, batch_size=2)
    # By hand: KL(p || q) of the next-token distributions at every completion position.
    total = 0.0
    for prompt, completion, eos in zip(prompts, completions, flags, strict=True):
        ids = encode_response(tokenizer, prompt, completion, has_eos=eos).input_ids
        start = len(tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            log_p, log_q = (
                torch.log_softmax(m.eval()(torch.tensor([ids])).logits[0].double(), -1)
                for m in (policy, reference)
            )
        for t in range(start - 1, len(ids) - 1):
            total += float((log_p[t].exp() * (log_p[t] - log_q[t])).sum())
    assert kl == pytest.approx(total / n, rel=1e-4) and kl > 0
    reference.train()
    token_kl(policy, reference, tokenizer, prompts, completions, flags)
    assert reference.training  # modes restored


def test_held_out_texts_are_test_problems_with_their_reference_solutions(
    problems: pl.DataFrame,
) -> None:
    held_out = held_out_texts(problems)
    test = problems.filter(pl.col("split") == "test")
    embedded_test = test.filter(pl.col("spec").is_not_null())
    assert embedded_test.height == 8
    # Every test problem with a reference text, in order; the one without is left out.
    assert held_out["problem_id"].to_list() == [*embedded_test["problem_id"], "real-test-0"]
    # Never a training problem: no held-out prompt is a training question's.
    train = problems.filter(pl.col("split") == "train")
    assert train.height == 17
    assert not {format_prompt(q) for q in train["question"]} & set(held_out["prompt"])
    questions = dict(zip(test["problem_id"], test["question"], strict=True))
    for r in held_out.iter_rows(named=True):
        assert r["prompt"] == format_prompt(questions[r["problem_id"]])
    # The embedded texts are correct minimal solutions, by the task's ground truth.
    for spec, completion in zip(embedded_test["spec"], held_out["completion"].head(8), strict=True):
        labels = step_labels(spec, completion)
        assert labels[-1] == "answer" and set(labels[:-1]) == {"needed"}
        assert completion.endswith(".\n")
    assert held_out["completion"][-1] == "2 + 3 = 5\n#### 5\n"
    assert held_out_texts(train).height == 0


def test_kl_to_sft_on_held_out_texts_is_0_for_pi_sft_and_grows_with_dpo(
    tmp_path,
    problems: pl.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferenceExample],
) -> None:
    held_out = held_out_texts(problems)
    no_pairs = pl.DataFrame(schema={"prompt": pl.String, "chosen": pl.String})
    texts, measured_on = kl_texts(no_pairs, held_out, tokenizer, max_seq_len=256)
    assert measured_on == "test problems (n=9)"
    assert texts["completion"].to_list() == held_out["completion"].to_list()
    assert texts["has_eos"].all()
    # Only the texts that fit in max_seq_len tokens.
    lengths = [
        len(encode_response(tokenizer, p, c, has_eos=True).input_ids)
        for p, c in zip(texts["prompt"], texts["completion"], strict=True)
    ]
    cutoff = sorted(lengths)[len(lengths) // 2]
    short, measured_on = kl_texts(no_pairs, held_out, tokenizer, max_seq_len=cutoff)
    assert short.height == sum(n <= cutoff for n in lengths) < 9
    assert measured_on == f"test problems (n={short.height})"

    sft = save_checkpoint(build_tiny_llama(TINY, tokenizer, seed=0), tokenizer, tmp_path, {})
    policy, _ = load_checkpoint(sft)  # an untrained copy: pi == pi_sft
    assert kl_to_sft(policy, tokenizer, str(sft), texts) == pytest.approx(0.0, abs=1e-12)
    _train(policy, tokenizer, pairs, max_steps=3)
    after_three = kl_to_sft(policy, tokenizer, str(sft), texts)
    assert after_three > 1e-4
    _train(policy, tokenizer, pairs, max_steps=6)
    assert kl_to_sft(policy, tokenizer, str(sft), texts) > after_three


def test_reference_is_computed_once_from_the_start_policy(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    base = build_tiny_llama(TINY, tokenizer, seed=0)
    calls = []
    runs = {}
    for epochs in (1, 3):
        reference = copy.deepcopy(base)
        handle = reference.register_forward_hook(lambda *args: calls.append(1))
        model = copy.deepcopy(base)
        runs[epochs] = (_train(model, tokenizer, pairs, epochs=epochs, reference_model=reference),)
        handle.remove()
        assert _same_weights(reference, base)  # the reference is never trained
        # 16 pairs, each one packed row, scored 16 (two micro-batches of pairs) per forward
        # pass: one pass.
        assert len(calls) == 1
        calls.clear()
        runs[epochs] += (model,)
    # Without a reference model, the policy's own starting weights are the reference.
    model = copy.deepcopy(base)
    stats = _train(model, tokenizer, pairs, epochs=3)
    assert stats.losses == runs[3][0].losses
    assert _same_weights(model, runs[3][1])


def test_zero_weight_pairs_do_not_count(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    kept, extra = pairs[:12], pairs[12:]
    plain = build_tiny_llama(TINY, tokenizer, seed=0)
    expected = _train(plain, tokenizer, kept, epochs=2)
    weighted = build_tiny_llama(TINY, tokenizer, seed=0)
    stats = _train(
        weighted, tokenizer, kept + extra, epochs=2, weights=[1.0] * 12 + [0.0] * len(extra)
    )
    assert stats.losses == expected.losses
    assert stats.examples == 12 and stats.zero_weight == 4
    assert _same_weights(weighted, plain)

    # Weights are normalised per update: scaling them all changes nothing...
    scaled = build_tiny_llama(TINY, tokenizer, seed=0)
    again = _train(scaled, tokenizer, kept, epochs=2, weights=[2.0] * 12)
    assert again.losses == pytest.approx(expected.losses, rel=1e-6)
    # ...and over the whole batch, not per micro-batch.
    uneven = [0.25 + i % 4 for i in range(12)]
    whole = _train(build_tiny_llama(TINY, tokenizer, seed=0), tokenizer, kept, weights=uneven)
    split = _train(
        build_tiny_llama(TINY, tokenizer, seed=0),
        tokenizer,
        kept,
        weights=uneven,
        micro_batch_size=3,
    )
    assert split.losses == pytest.approx(whole.losses, rel=1e-4)
    with pytest.raises(ValueError, match="weight"):
        _train(build_tiny_llama(TINY, tokenizer), tokenizer, kept, weights=[-1.0] * 12)
    with pytest.raises(ValueError, match="weight 0"):
        _train(build_tiny_llama(TINY, tokenizer), tokenizer, kept, weights=[0.0] * 12)


def test_train_dpo_is_seeded(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    runs = []
    for seed in (0, 0, 1):
        model = build_tiny_llama(TINY, tokenizer, seed=0)
        runs.append((_train(model, tokenizer, pairs, seed=seed, max_steps=3, batch_size=4), model))
    assert runs[0][0].losses == runs[1][0].losses
    assert _same_weights(runs[0][1], runs[1][1])
    assert runs[0][0].losses != runs[2][0].losses
    assert runs[0][0].steps == 3


def test_long_pairs_drop_and_edge_cases(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    lengths = [
        max(
            len(encode_response(tokenizer, p.prompt, p.chosen, has_eos=p.chosen_has_eos).input_ids),
            len(
                encode_response(
                    tokenizer, p.prompt, p.rejected, has_eos=p.rejected_has_eos
                ).input_ids
            ),
        )
        for p in pairs
    ]
    cutoff = sorted(lengths)[len(lengths) // 2]
    stats = _train(
        build_tiny_llama(TINY, tokenizer), tokenizer, pairs, max_seq_len=cutoff, max_steps=1
    )
    assert stats.dropped == sum(n > cutoff for n in lengths) > 0
    assert stats.examples == 16 - stats.dropped
    with pytest.raises(ValueError, match="max_seq_len=8"):
        _train(build_tiny_llama(TINY, tokenizer), tokenizer, pairs, max_seq_len=8)
    assert _train(build_tiny_llama(TINY, tokenizer), tokenizer, pairs, max_steps=0).steps == 0
    with pytest.raises(ValueError, match="no token to score"):
        _train(
            build_tiny_llama(TINY, tokenizer),
            tokenizer,
            [PreferenceExample("Question: x\nSolution:\n", "a\n", "", rejected_has_eos=False)],
        )
    # bf16 autocast runs (the tiny model's weights stay float32).
    model = build_tiny_llama(TINY, tokenizer)
    stats = _train(model, tokenizer, pairs, config=TrainingConfig(bf16=True), max_steps=2)
    assert stats.steps == 2 and all(math.isfinite(x) for x in stats.losses)
    assert model.dtype == torch.float32


def test_both_preference_methods_train_on_the_same_pairs_and_report_how_far_they_moved(
    tmp_path,
    problems: pl.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferenceExample],
) -> None:
    """Per-step pairs (cut negatives) and their outcome twins (whole negatives), with a
    max_seq_len that only some outcome pairs exceed: both methods leave those negatives out,
    and both measure their KL to pi_sft on the same held-out test problems."""
    sft = save_checkpoint(build_tiny_llama(TINY, tokenizer, seed=0), tokenizer, tmp_path / "s", {})
    train_problems = generate_problems(PARAMS, 12, seed=5, split="train")
    rng = random.Random(5)
    rows = {"per_step": [], "outcome": []}
    for i, problem in enumerate(train_problems):
        prompt, chosen = format_example(problem.question, oracle_solution(problem, rng=rng))
        _, wrong = format_example(
            problem.question, oracle_solution(problem, rng=rng, slip_rate=1.0)
        )
        cut = wrong.splitlines()[0]
        wrong = wrong * (1 + i % 2)  # every other negative rambles on: twice the text
        common = {"sample_id": f"n{i}", "prompt": prompt, "chosen": chosen, "chosen_has_eos": True}
        rows["per_step"].append(common | {"rejected": cut, "rejected_has_eos": False})
        rows["outcome"].append(common | {"rejected": wrong, "rejected_has_eos": True})
    frames = {kind: pl.DataFrame(r) for kind, r in rows.items()}

    def length(r: dict) -> int:
        return max(
            len(encode_response(tokenizer, r["prompt"], r[s], has_eos=r[f"{s}_has_eos"]).input_ids)
            for s in ("chosen", "rejected")
        )

    cutoff = max(length(r) for r in rows["per_step"])  # every per-step pair fits
    too_long = sum(length(r) > cutoff for r in rows["outcome"])
    assert 0 < too_long < len(train_problems)
    held_out = held_out_texts(problems)
    n_held_out = kl_texts(frames["per_step"], held_out, tokenizer, cutoff)[0].height
    assert n_held_out > 0
    training = TrainingConfig(bf16=False, warmup_ratio=0.0, batch_size=4, dpo_epochs=2)
    frames["control"] = without_negatives(frames["per_step"])
    trained = {}
    for method, own, twin in (
        ("per_step_dpo", "per_step", "outcome"),
        ("dpo", "outcome", "per_step"),
        ("nll_control", "control", "outcome"),
    ):
        trained[method] = train_preference_model(
            control_training(training) if method == "nll_control" else training,
            method,
            str(sft),
            frames[own],
            tmp_path / method,
            seed=0,
            max_seq_len=cutoff,
            log=lambda _message: None,
            twins=frames[twin],
            held_out=held_out,
        )
        assert trained[method].schema == pl.Schema(PREFERENCE_SCHEMA)
    per_step, dpo = (trained[m].row(0, named=True) for m in ("per_step_dpo", "dpo"))
    assert per_step["train_examples"] == dpo["train_examples"] == len(train_problems) - too_long
    assert per_step["train_steps"] == dpo["train_steps"] == 2 * math.ceil((12 - too_long) / 4)
    assert per_step["pairs_too_long"] == dpo["pairs_too_long"] == too_long
    for row in (per_step, dpo):
        assert 0.0 <= row["reward_accuracy"] <= 1.0
        assert math.isfinite(row["chosen_logp_change"]) and math.isfinite(
            row["rejected_logp_change"]
        )
        assert row["chosen_logp_change"] > row["rejected_logp_change"]
        assert row["kl_to_sft_per_token"] > 0
        assert row["kl_measured_on"] == f"test problems (n={n_held_out})"
        shown = movement_metadata(row)
        assert shown["kl_to_sft_per_token_on_test"] == row["kl_to_sft_per_token"]
        assert shown["kl_measured_on"] == row["kl_measured_on"]
    # Without a held-out text that fits, the KL falls back to the chosen sides, named so.
    fallback = train_preference_model(
        training,
        "dpo",
        str(sft),
        frames["outcome"],
        tmp_path / "fallback",
        seed=0,
        max_seq_len=cutoff,
        log=lambda _message: None,
        twins=frames["per_step"],
        held_out=held_out.clear(),
    ).row(0, named=True)
    assert fallback["kl_measured_on"] == f"chosen sides (n={len(train_problems) - too_long})"
    assert fallback["kl_to_sft_per_token"] > 0
    assert set(movement_metadata(fallback)) >= {"kl_to_sft_per_token_on_chosen", "kl_measured_on"}
    # No pair: the model stays pi_sft, with the same columns and null figures.
    empty = train_preference_model(
        training,
        "dpo",
        str(sft),
        frames["outcome"].clear(),
        tmp_path / "e",
        seed=0,
        max_seq_len=cutoff,
        log=lambda _message: None,
    ).row(0, named=True)
    assert empty["train_examples"] == 0 and empty["kl_to_sft_per_token"] is None
    assert empty["kl_measured_on"] is None
    # The control without negatives: per-step DPO's pairs and updates, each rejected side its
    # chosen side, so the DPO term has no gradient and the chosen side's NLL (weight 1 where
    # dpo_sft_weight is 0) raises both alike.
    control = trained["nll_control"].row(0, named=True)
    assert (control["train_examples"], control["train_steps"]) == (
        per_step["train_examples"],
        per_step["train_steps"],
    )
    assert control["chosen_logp_change"] == pytest.approx(control["rejected_logp_change"])
    assert control["chosen_logp_change"] > 0
    assert training.dpo_sft_weight == 0 and control_training(training).dpo_sft_weight == 1.0
    rpo = training.model_copy(update={"dpo_sft_weight": 0.5})
    assert control_training(rpo).dpo_sft_weight == 0.5
    assert frames["control"]["rejected"].to_list() == frames["per_step"]["chosen"].to_list()


def test_the_chosen_nll_term_starts_at_log_2_plus_alpha_nll_and_holds_the_chosen_side_up(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferenceExample]
) -> None:
    start = build_tiny_llama(TINY, tokenizer, seed=0)
    chosen_logps = sequence_logprobs(
        start,
        tokenizer,
        [p.prompt for p in pairs],
        [p.chosen for p in pairs],
        [p.chosen_has_eos for p in pairs],
    )
    lengths = [
        len(tokenizer(p.chosen, add_special_tokens=False)["input_ids"]) + p.chosen_has_eos
        for p in pairs
    ]
    plain, rpo = copy.deepcopy(start), copy.deepcopy(start)
    alpha = 0.5
    # One update over the whole batch: its loss is the batch's mean pair loss.
    plain_stats = _train(plain, tokenizer, pairs, epochs=4, batch_size=16)
    rpo_stats = _train(rpo, tokenizer, pairs, epochs=4, batch_size=16, sft_weight=alpha)
    nll = -sum(lp / n for lp, n in zip(chosen_logps, lengths, strict=True)) / len(pairs)
    assert plain_stats.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert rpo_stats.losses[0] == pytest.approx(math.log(2) + alpha * nll, rel=1e-3)
    assert rpo_stats.chosen_logp_change > plain_stats.chosen_logp_change
    with pytest.raises(ValueError, match="sft_weight"):
        _train(copy.deepcopy(start), tokenizer, pairs, sft_weight=-1.0)


def test_pairs_whose_rejected_side_is_their_chosen_side_are_scored_once_for_the_same_training(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferenceExample],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The nll_control method's pairs: every rejected side its chosen side. Scored once, they
    # must train as scoring both copies does (the DPO term cancels), up to float rounding.
    mirrored = [
        dataclasses.replace(p, rejected=p.chosen, rejected_has_eos=p.chosen_has_eos) for p in pairs
    ]
    start = build_tiny_llama(TINY, tokenizer, seed=0)
    once, twice = copy.deepcopy(start), copy.deepcopy(start)
    messages: list[str] = []
    fast = _train(once, tokenizer, mirrored, epochs=3, sft_weight=1.0, log=messages.append)
    assert any("scored once" in m for m in messages)
    monkeypatch.setattr(dpo_module, "_mirrored", lambda _pairs: False)
    monkeypatch.setattr(dpo_module, "_custom_masks", lambda *_models: None)  # two rows a pair
    slow = _train(twice, tokenizer, mirrored, epochs=3, sft_weight=1.0)
    assert fast.steps == slow.steps and fast.examples == slow.examples
    assert fast.losses == pytest.approx(slow.losses, rel=1e-4)
    assert fast.chosen_logp_change == fast.rejected_logp_change > 0
    assert fast.chosen_logp_change == pytest.approx(slow.chosen_logp_change, rel=1e-3)
    assert (fast.reward_accuracy, fast.mean_margin) == (0.0, 0.0)
    # Adam divides by the gradient's scale, so a weight whose gradient is near 0 shows the
    # rounding of the two copies' cancelled gradients.
    assert_trained_alike(once, twice, rtol=1e-4, atol=1e-4)
    # One pair whose sides differ takes the usual path.
    mixed = [mirrored[0], pairs[1]]
    monkeypatch.undo()
    assert not dpo_module._mirrored(dpo_module._encode_pairs(tokenizer, mixed, None, 256)[0])


def test_a_pair_packed_into_one_row_shares_the_tokens_its_sides_begin_with() -> None:
    ignore = IGNORE_INDEX
    chosen = dpo_module.EncodedExample([1, 5, 6, 7, 8, 2], [ignore, ignore, ignore, 7, 8, 2])
    rejected = dpo_module.EncodedExample([1, 5, 6, 7, 9], [ignore, ignore, ignore, 7, 9])
    packed = dpo_module._Pair(chosen, rejected, 1.0).packed
    # Both begin with [1, 5, 6, 7]: the rejected side adds its last token only, at position 4.
    assert packed.input_ids == [1, 5, 6, 7, 8, 2, 9]
    assert packed.position_ids == [0, 1, 2, 3, 4, 5, 4]
    assert packed.segments == [0, 0, 0, 0, 1, 1, 2]
    # Each scored token is predicted where it was in its own sequence: 7 by position 2 on both
    # sides, the rejected 9 by the shared 7 at position 3.
    assert list(zip(packed.sources, packed.targets, packed.sides, strict=True)) == [
        (2, 7, 0),
        (3, 8, 0),
        (4, 2, 0),
        (2, 7, 1),
        (3, 9, 1),
    ]
    # A rejected side that is the start of its chosen side adds no token.
    cut = dpo_module.EncodedExample([1, 5, 6, 7], [ignore, ignore, ignore, 7])
    assert dpo_module._Pair(chosen, cut, 1.0).packed.input_ids == chosen.input_ids
    batch = dpo_module._collate_packed(
        [packed, dpo_module._Pair(chosen, cut, 1.0).packed], 0, "bool"
    )
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 7, 7)
    # The rejected token sees the shared part and itself, not the chosen side's tail.
    assert mask[0, 0, 6].tolist() == [True] * 4 + [False, False, True]
    assert mask[1, 0, 6].tolist() == [True] * 4 + [False, False, True]  # padding: no empty row
    assert batch["chosen_tokens"].tolist() == [3, 3] and int(batch["tokens"]) == 13


@pytest.mark.parametrize(("attention", "chunk"), [("sdpa", None), ("eager", None), ("sdpa", 3)])
def test_pairs_packed_into_one_row_train_as_two_rows_do(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferenceExample],
    monkeypatch: pytest.MonkeyPatch,
    attention: str,
    chunk: int | None,
) -> None:
    # Each pair as one row (its prompt once, 4D mask, positions continued) must train as its
    # chosen and rejected sequences as two rows do, up to float rounding, under either mask
    # kind and with the output head run in chunks.
    start = build_tiny_llama(TINY, tokenizer, seed=0)
    start.config._attn_implementation = attention
    packed_model, rows_model = copy.deepcopy(start), copy.deepcopy(start)
    config = CONFIG.model_copy(update={"logprob_chunk": chunk})
    messages: list[str] = []
    options = {"epochs": 2, "sft_weight": 1.0, "config": config}
    packed = _train(packed_model, tokenizer, pairs, log=messages.append, **options)
    assert any("each pair one row" in m for m in messages)
    monkeypatch.setattr(dpo_module, "_custom_masks", lambda *_models: None)
    rows = _train(rows_model, tokenizer, pairs, **options)
    assert packed.steps == rows.steps and packed.examples == rows.examples
    assert packed.losses == pytest.approx(rows.losses, rel=1e-5)
    for figure in ("reward_accuracy", "mean_margin", "chosen_logp_change", "rejected_logp_change"):
        assert getattr(packed, figure) == pytest.approx(getattr(rows, figure), rel=1e-4)
    # Fewer tokens through the model for the same pairs: each prompt once, not twice.
    assert packed.tokens < 0.8 * rows.tokens
    # Adam divides by the gradient's scale: a weight whose gradient is near 0 shows the rounding.
    assert_trained_alike(packed_model, rows_model, rtol=1e-4, atol=1e-4)


def test_models_without_4d_masks_get_their_pairs_as_two_rows(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    sdpa, eager = (build_tiny_llama(TINY, tokenizer, seed=0) for _ in range(2))
    eager.config._attn_implementation = "eager"
    assert dpo_module._custom_masks(sdpa, None) == "bool"
    assert dpo_module._custom_masks(eager) == "additive"
    assert dpo_module._custom_masks(sdpa, eager) is None  # one layout must serve both
    flash = copy.deepcopy(sdpa)
    flash.config._attn_implementation = "flash_attention_2"
    assert dpo_module._custom_masks(flash) is None


def test_responses_encoded_together_are_encoded_as_one_at_a_time(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferenceExample],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [
        (p.prompt, text, eos)
        for p in pairs
        for text, eos in ((p.chosen, True), (p.rejected, False), (p.rejected, True))
    ]
    lengths = sorted(
        len(encode_response(tokenizer, p, c, has_eos=e).input_ids) for p, c, e in items
    )
    limit = lengths[len(lengths) // 2]
    one_by_one = [
        encode_response(tokenizer, p, c, has_eos=e, max_seq_len=limit) for p, c, e in items
    ]
    calls = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(
        type(tokenizer),
        "__call__",
        lambda self, *a, **k: calls.append(a) or original(self, *a, **k),
    )
    together = encode_responses(tokenizer, items, max_seq_len=limit)
    assert together == one_by_one
    assert 0 < sum(e is None for e in together) < len(items)  # some too long, some not
    # Two calls: the distinct prompts, then the distinct completions, each once.
    assert [len(texts) for (texts,) in calls] == [len(pairs), len({i[1] for i in items})]
    with pytest.raises(ValueError, match="no token to score"):
        encode_responses(tokenizer, [*items[:2], (pairs[0].prompt, "", False)])
    assert encode_responses(tokenizer, []) == []


def test_the_movement_is_measured_on_an_even_sample_and_training_stays_the_same(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferenceExample],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert dpo_module.movement_sample(5) == [0, 1, 2, 3, 4]
    assert dpo_module.movement_sample(4130) == list(range(0, 4130, 9))
    assert len(dpo_module.movement_sample(1024)) == dpo_module.MOVEMENT_PAIRS
    mirrored = [
        dataclasses.replace(p, rejected=p.chosen, rejected_has_eos=p.chosen_has_eos) for p in pairs
    ]
    start = build_tiny_llama(TINY, tokenizer, seed=0)
    for kind, batch in (("pairs", pairs), ("mirrored pairs", mirrored)):
        runs = []
        for cap in (len(batch), 4):
            monkeypatch.setattr(dpo_module, "MOVEMENT_PAIRS", cap)
            model, messages = copy.deepcopy(start), []
            stats = _train(model, tokenizer, batch, epochs=2, sft_weight=1.0, log=messages.append)
            runs.append((model, stats, messages))
        (whole, all_pairs, _), (sampled, four, messages) = runs
        # The same training to the bit, the control's without most of its reference pass.
        assert all_pairs.losses == four.losses, kind
        assert _same_weights(whole, sampled), kind
        assert (all_pairs.movement_pairs, four.movement_pairs) == (16, 4), kind
        assert any("after training, 4 of 16 pairs" in m for m in messages), kind
        reference = next(m for m in messages if m.startswith("reference log-probs"))
        assert reference.startswith(f"reference log-probs of {4 if batch is mirrored else 16}")
        # The sample's changes: its pairs' own, scored apart.
        policy, ref = sampled.eval(), copy.deepcopy(start).eval()
        picked = [batch[i] for i in dpo_module.movement_sample(16)[:4]]
        assert len(picked) == 4 and picked[0] is batch[0]
        changes = []
        for side in ("chosen", "rejected"):
            texts = [getattr(p, side) for p in picked]
            eos = [getattr(p, f"{side}_has_eos") for p in picked]
            prompts = [p.prompt for p in picked]
            after = sequence_logprobs(policy, tokenizer, prompts, texts, eos)
            before = sequence_logprobs(ref, tokenizer, prompts, texts, eos)
            changes.append(sum(a - b for a, b in zip(after, before, strict=True)) / 4)
        assert four.chosen_logp_change == pytest.approx(changes[0], abs=1e-3), kind
        assert four.rejected_logp_change == pytest.approx(changes[1], abs=1e-3), kind
