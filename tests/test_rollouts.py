"""Step rollouts with a fake policy whose successes are known: early stop at the first pit."""

from __future__ import annotations

import polars as pl
import pytest

from synthdata_assets import advantages, rollouts
from synthdata_assets.config import load_config
from training.generation import Completion, SamplingParams
from training.prompts import format_prompt

QUESTIONS = {
    "p1": ("Ann has 3 pens. Bob has 2 more pens than Ann. How many pens does Bob have?", "5"),
    "p2": ("Cy has 4 cups. Di has 1 fewer cup than Cy. How many cups does Di have?", "3"),
}
# Rollouts succeed from a prefix with fewer than PIT[problem] steps and fail from the others.
PIT = {"p1": 2, "p2": 1}


class PitPolicy:
    """Completes with the right answer while the prefix has fewer than PIT steps."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, prompts, params: SamplingParams, progress=None) -> list[list[Completion]]:
        self.calls.append(len(prompts))
        out = []
        for prompt in prompts:
            pid, (question, gold) = next(
                (pid, qa)
                for pid, qa in QUESTIONS.items()
                if prompt.startswith(format_prompt(qa[0]))
            )
            steps = prompt[len(format_prompt(question)) :].count("\n")
            answer = gold if steps < PIT[pid] else "0"
            completion = Completion(f"The answer is {answer}.", 5, "stop")
            out.append([completion] * params.n)
        return out


def _inputs() -> tuple[pl.DataFrame, pl.DataFrame]:
    problems = pl.DataFrame(
        {
            "problem_id": list(QUESTIONS),
            "question": [q for q, _ in QUESTIONS.values()],
            "answer": [a for _, a in QUESTIONS.values()],
        }
    )
    wrong = "Step one.\nStep two.\nStep three.\nThe answer is 0.\n"
    samples = pl.DataFrame(
        {
            "sample_id": ["p1-neg", "p1-pos", "p2-neg"],
            "problem_id": ["p1", "p1", "p2"],
            "solution": [wrong, "Bob has 3 + 2 = 5 pens.\nThe answer is 5.\n", wrong],
            "is_correct": [False, True, False],
        }
    )
    return problems, samples


def _roll(early_stop: bool, previous: pl.DataFrame | None = None):
    config = load_config(
        "tiny", overrides={"credit": {"early_stop": early_stop, "rollout_positives": True}}
    )
    problems, samples = _inputs()
    policy = PitPolicy()
    table, stats = rollouts.generate_rollouts(
        policy,
        config.credit,
        rollouts.rollout_params(config.credit, config.sampling, seed=0),
        step_rule="lines",
        answer_format=config.answer_format,
        checkpoint_id="ckpt@run",
        samples=samples,
        problems=problems,
        previous=previous,
        log=lambda _message: None,
    )
    return config, samples, table, stats, policy


def _prefixes(table: pl.DataFrame) -> dict[str, list[int]]:
    return {
        sid: sorted(group["step_idx"].unique().to_list())
        for (sid,), group in table.group_by("sample_id")
    }


def test_early_stop_rolls_out_up_to_the_first_pit_only() -> None:
    config_full, samples, full, full_stats, _ = _roll(early_stop=False)
    config, _, early, stats, policy = _roll(early_stop=True)
    # Negatives stop at their first pit (p1: prefix 2; p2: prefix 1); the positive goes on
    # through its failing prefix 1, since positives have no pit.
    assert _prefixes(full) == {"p1-neg": [0, 1, 2, 3], "p1-pos": [0, 1], "p2-neg": [0, 1, 2, 3]}
    assert _prefixes(early) == {"p1-neg": [0, 1, 2], "p1-pos": [0, 1], "p2-neg": [0, 1]}
    assert stats["skipped_prefixes"] == 3 and full_stats["skipped_prefixes"] == 0
    m = config.credit.rollouts_per_prefix
    assert stats["generated"] < full_stats["generated"]
    # One batched call per round of prefixes, not one per prefix (prefix 0 of p1 is shared).
    assert policy.calls == [2, 3, 1]
    # The rows it did generate are the full run's rows.
    key = ["sample_id", "step_idx", "rollout_idx"]
    assert early.sort(key).equals(full.join(early.select(key), on=key).sort(key))
    # Same pits, and Q unknown (null) after them rather than 0.
    adv_early = advantages.from_rollouts(config.credit, "lines", samples, early)
    adv_full = advantages.from_rollouts(config_full.credit, "lines", samples, full)

    def pits(adv: pl.DataFrame) -> dict[str, int]:
        rows = adv.filter(pl.col("is_first_pit")).select("sample_id", "step_idx").rows()
        return dict(rows)

    assert pits(adv_early) == pits(adv_full) == {"p1-neg": 2, "p2-neg": 1}
    after = adv_early.filter((pl.col("sample_id") == "p2-neg") & (pl.col("step_idx") == 2))
    assert after["q_value"].to_list() == [None]
    # Turning early stop off later generates only the skipped prefixes.
    _, _, again, again_stats, _ = _roll(early_stop=False, previous=early)
    assert again_stats["reused"] == stats["generated"]
    assert again_stats["generated"] == full_stats["generated"] - stats["generated"]
    assert again.sort(key).equals(full.sort(key))
    assert m * 3 == full_stats["generated"] - stats["generated"]


def test_early_stop_needs_the_first_zero_pit_rule() -> None:
    with pytest.raises(ValueError, match="early_stop needs pit_rule 'first_zero'"):
        load_config("tiny", overrides={"credit": {"early_stop": True, "pit_rule": "largest_drop"}})


def test_rollout_backend_auto_follows_sampling_without_a_gpu(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rollouts.rollout_backend("auto", "transformers") == "transformers"
    assert rollouts.rollout_backend("vllm", "transformers") == "vllm"
    assert rollouts.rollout_backend("transformers", "vllm") == "transformers"


def test_the_rollout_generator_uses_credit_rollout_backend(monkeypatch) -> None:
    from synthdata_assets.defs import resources

    built = []
    monkeypatch.setattr(
        resources, "make_generator", lambda backend, folder, **kw: built.append(backend)
    )
    generator = resources.GeneratorResource(backend="transformers", rollout_backend="vllm")
    lazy = generator.for_rollouts("ckpt", print)
    assert built == []  # nothing is loaded before the first generate
    with pytest.raises(AttributeError):
        lazy.generate(["p"], SamplingParams())
    assert built == ["vllm"]
