"""Step rollouts: early stop at the first pit (a fake policy whose successes are known),
grading on the completion alone, and rollout seeds apart from the policy samples'."""

from __future__ import annotations

import polars as pl
import pytest

from synthdata_assets import advantages, rollouts, samples
from synthdata_assets.config import load_config
from training.config import ModelConfig
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
    table, stats = _generate(policy, config, samples, problems, previous)
    return config, samples, table, stats, policy


def _generate(
    policy, config, samples: pl.DataFrame, problems: pl.DataFrame, previous=None, journal=None
):
    """``generate_rollouts`` of ``samples`` with the preset's rollout settings, seed 0."""
    return rollouts.generate_rollouts(
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
        journal=journal,
    )


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


@pytest.mark.parametrize("request_seeds", [True, False])
def test_vllm_engines_get_their_execution_settings(monkeypatch, request_seeds) -> None:
    from synthdata_assets.defs import resources

    built = []
    monkeypatch.setattr(
        resources, "make_generator", lambda backend, folder, **kw: built.append(kw) or policy
    )
    policy = ScriptedPolicy("x")
    generator = resources.GeneratorResource(
        backend="vllm", request_seeds=request_seeds, data_parallel_size=2, max_model_len=512
    )
    generator.over("ckpt", print).generate(["p"], SamplingParams(seed=7))
    (kwargs,) = built
    assert kwargs["request_seeds"] is request_seeds
    assert kwargs["data_parallel_size"] == 2 and kwargs["max_model_len"] == 512
    # Unseeded requests draw from the engine's stream, seeded by the stage's first call.
    assert kwargs.get("seed") == (None if request_seeds else 7)


class ScriptedPolicy:
    """Completes every prompt with the same text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def generate(self, prompts, params: SamplingParams, progress=None) -> list[list[Completion]]:
        return [[Completion(self.text, 3, "stop")] * params.n for _ in prompts]


def _roll_with(policy, solutions: dict[str, tuple[str, bool]], credit: dict):
    config = load_config("tiny", overrides={"credit": {"rollout_policy": "pi_sft", **credit}})
    problems, _ = _inputs()
    table = pl.DataFrame(
        {
            "sample_id": list(solutions),
            "problem_id": ["p1"] * len(solutions),
            "solution": [text for text, _ in solutions.values()],
            "is_correct": [ok for _, ok in solutions.values()],
        }
    )
    rolled, _ = _generate(policy, config, table, problems)
    return config, table, rolled


def test_a_rollout_is_graded_on_its_completion_alone() -> None:
    # The negative states the right answer (5), then overrides it with a wrong one (0).
    negative = "The answer is 5.\nThe answer is 0.\n"
    # A rollout that writes no answer of its own is wrong, even after the right answer line.
    _, _, rolled = _roll_with(ScriptedPolicy("Done."), {"neg": (negative, False)}, {})
    at_1 = rolled.filter(pl.col("step_idx") == 1)
    assert at_1.height > 0 and not at_1["is_correct"].any()
    assert at_1["final_answer"].to_list() == [None] * at_1.height
    # A rollout that writes the right answer is right, from any prefix.
    _, _, rolled = _roll_with(ScriptedPolicy("The answer is 5."), {"neg": (negative, False)}, {})
    assert rolled["is_correct"].all()


class PathPolicy:
    """Writes the rest of the true path 19, 14 after the prefix's nodes, or 14 alone after a
    wrong first node: the continuation a model that knows the goal writes."""

    def generate(self, prompts, params: SamplingParams, progress=None) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            written = prompt[len(format_prompt(STAR_QUESTION)) :].split()
            rest = ["19", "14"][len(written) :] if written in ([], ["19"]) else ["14"]
            out.append([Completion("".join(f"{n}\n" for n in rest), 2, "stop")] * params.n)
        return out


STAR_QUESTION = "2,10|19,14|12,19|12,2|3,1|12,3/12,14="


def test_a_star_graph_rollout_is_graded_on_the_whole_path() -> None:
    # The path is the answer: "14" after the prefix "19" is the path 19, 14, which is right.
    credit = {"rollout_policy": "pi_sft", "max_negatives_per_problem": 2}
    config = load_config("didactic", overrides={"credit": credit})
    problems = pl.DataFrame({"problem_id": ["s"], "question": [STAR_QUESTION], "answer": ["19,14"]})
    negatives = pl.DataFrame(
        {
            "sample_id": ["slip", "wrong_arm"],
            "problem_id": ["s", "s"],
            "solution": ["19\n9\n", "18\n14\n"],  # the goal missed; the other arm
            "is_correct": [False, False],
        }
    )
    rolled, _ = _generate(PathPolicy(), config, negatives, problems)
    q = rolled.group_by("sample_id", "step_idx").agg(pl.col("is_correct").mean())
    assert {(sid, step): value for sid, step, value in q.rows()} == {
        ("slip", 0): 1.0,
        ("slip", 1): 1.0,  # graded on its completion alone ("14"), this was 0
        ("wrong_arm", 0): 1.0,
        ("wrong_arm", 1): 0.0,  # 18, 14 is not the path
    }
    assert set(rolled.filter(pl.col("step_idx") == 1)["final_answer"]) == {"19,14", "18,14"}
    # So the first pits are the true first wrong steps: the goal, and the wrong arm.
    adv = advantages.from_rollouts(config.credit, "lines", negatives, rolled)
    pits = adv.filter(pl.col("is_first_pit")).select("sample_id", "step_idx").rows()
    assert sorted(pits) == [("slip", 2), ("wrong_arm", 1)]
    # Rows graded on the completion alone have other keys, so they are never reused.
    params = rollouts.rollout_params(config.credit, config.sampling, seed=0)
    alone = rollouts.rollout_key("ckpt@run", "x", params)
    assert rollouts.rollout_key("ckpt@run", "x", params, whole_solution=True) != alone


def test_the_full_prefix_is_valued_by_the_samples_own_grade() -> None:
    """Prefix L is never rolled out: Q_L is the sample's grade, whatever the rollouts do."""
    positive = "Bob has 3 + 2 = 5 pens.\nThe answer is 5.\n"
    config, table, rolled = _roll_with(
        ScriptedPolicy(""),  # every rollout stops at once: no answer, graded wrong
        {"neg": ("Bob has 3 + 2 = 6 pens.\nThe answer is 6.\n", False), "pos": (positive, True)},
        {"rollout_positives": True},
    )
    assert sorted(rolled["step_idx"].unique().to_list()) == [0, 1]  # prefixes 0..L-1 only
    assert not rolled["is_correct"].any()
    adv = advantages.from_rollouts(config.credit, "lines", table, rolled)
    last = dict(adv.filter(pl.col("step_idx") == 2).select("sample_id", "q_value").iter_rows())
    assert last == {"neg": 0.0, "pos": 1.0}


def test_rollout_seeds_are_apart_from_the_policy_sample_seeds() -> None:
    seeds = [rollouts.rollout_seed(s) for s in range(200)]
    assert all(r != s for s, r in enumerate(seeds)) and len(set(seeds)) == len(seeds)
    assert all(0 <= r < 2**31 for r in seeds)
    config = load_config("tiny")
    assert rollouts.rollout_params(config.credit, config.sampling, seed=7).seed == seeds[7]


def test_rollouts_of_prefix_0_do_not_replay_the_policy_samples() -> None:
    """With a real (random, tiny) model: both draw sample j of a prompt from (seed, prompt,
    j), and prefix 0's prompt is the policy samples' prompt."""
    import torch

    from training.generation.transformers_engine import TransformersGenerator
    from training.model import build_tiny_llama
    from training.tokenizer import build_tokenizer

    config = load_config(
        "tiny",
        overrides={
            "sampling": {"max_new_tokens": 6, "temperature": 1.0},
            "credit": {
                "rollout_policy": "pi_sft",
                "rollouts_per_prefix": 2,
                "max_negatives_per_problem": 2,
            },
        },
    )
    problems, _ = _inputs()
    tokenizer = build_tokenizer(
        [format_prompt(q) + "The answer is 5.\n" for q, _ in QUESTIONS.values()]
    )
    tiny = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = TransformersGenerator(build_tiny_llama(tiny, tokenizer, seed=0), tokenizer)
        seed, n = 3, config.credit.rollouts_per_prefix
        policy = samples.sampling_params(
            config.sampling, n=n, temperature=config.sampling.temperature, seed=seed
        )
        drawn = samples.sample_solutions(
            generator, problems, policy, id_prefix="policy", answer_format=config.answer_format
        ).with_columns(pl.lit(False).alias("is_correct"))  # all negatives: all rolled out
        # The hazard is real: the policy's own parameters would replay its samples.
        again = samples.sample_solutions(
            generator, problems, policy, id_prefix="policy", answer_format=config.answer_format
        )
        assert again["solution"].to_list() == drawn["solution"].to_list()
        params = rollouts.rollout_params(config.credit, config.sampling, seed)
        assert (params.n, params.temperature) == (policy.n, policy.temperature)
        rolled, _ = rollouts.generate_rollouts(
            generator,
            config.credit,
            params,
            step_rule="lines",
            answer_format=config.answer_format,
            checkpoint_id="ckpt@run",
            samples=drawn,
            problems=problems,
            previous=None,
            log=lambda _message: None,
        )
    finally:
        torch.set_num_threads(threads)
    prefix_0 = rolled.filter(pl.col("step_idx") == 0).unique(["problem_id", "rollout_idx"])
    rollout_text = {
        (r["problem_id"], r["rollout_idx"]): r["completion"] for r in prefix_0.iter_rows(named=True)
    }
    sample_text = {
        (r["problem_id"], int(r["sample_id"].rsplit("/", 1)[1])): r["solution"]
        for r in drawn.iter_rows(named=True)
    }
    shared = sorted(set(rollout_text) & set(sample_text))
    assert shared  # prefix 0 of every problem with a non-empty sample
    assert all(rollout_text[k] != sample_text[k] for k in shared), shared


class Killed(Exception):
    """The stage dies in the middle of a generation call."""


class DyingPolicy(PitPolicy):
    """PitPolicy that dies in its ``calls_before_death + 1``-th call."""

    def __init__(self, calls_before_death: int) -> None:
        super().__init__()
        self.left = calls_before_death

    def generate(self, prompts, params: SamplingParams, progress=None):
        if self.left == 0:
            raise Killed
        self.left -= 1
        return super().generate(prompts, params, progress)


def test_a_killed_rollout_stage_resumes_from_its_journal(tmp_path) -> None:
    config = load_config("tiny", overrides={"credit": {"rollout_positives": True}})
    problems, samples = _inputs()
    whole, _ = _generate(PitPolicy(), config, samples, problems)
    prompts = whole["rollout_key"].n_unique()
    assert prompts > 4

    def roll(policy, previous=None, previous_written=None):
        journal = rollouts.Journal(tmp_path / "journal", 2, previous_written=previous_written)
        return _generate(policy, config, samples, problems, previous, journal)

    # Two calls of two prompts each finish, the third dies: their rollouts are in the journal.
    with pytest.raises(Killed):
        roll(DyingPolicy(calls_before_death=2))
    assert len(list((tmp_path / "journal").glob("*.parquet"))) == 2
    # The rerun generates only the prompts that were not finished, and gets the same table.
    policy = PitPolicy()
    table, stats = roll(policy)
    assert sum(policy.calls) == prompts - 4 and max(policy.calls) <= 2
    assert stats["reused"] == 4 * config.credit.rollouts_per_prefix
    assert table.equals(whole)
    # Once the stage's file is written, the journal is folded into it and goes at the next run.
    table.write_parquet(tmp_path / "previous.parquet")
    written = (tmp_path / "previous.parquet").stat().st_mtime
    again, stats = roll(PitPolicy(), previous=table, previous_written=written)
    assert stats["generated"] == 0 and again.equals(whole)
    assert not list((tmp_path / "journal").glob("*.parquet"))


def test_stop_strings_reach_every_generating_stage_and_the_rollout_keys() -> None:
    from training.config import SamplingConfig

    plain = samples.sampling_params(SamplingConfig(), n=2, temperature=0.7, seed=0)
    stopped = samples.sampling_params(
        SamplingConfig(stop=("\nQuestion:",)), n=2, temperature=0.7, seed=0
    )
    assert plain.stop == () and stopped.stop == ("\nQuestion:",)
    credit = load_config("tiny").credit
    assert rollouts.rollout_params(credit, SamplingConfig(stop=("\nQ",)), 0).stop == ("\nQ",)
    # Other stop strings make other rollouts; none keeps the keys made before stop strings.
    before = rollouts.rollout_key("ckpt", "prompt", plain)
    assert rollouts.rollout_key("ckpt", "prompt", stopped) != before
    assert before == rollouts.rollout_key("ckpt", "prompt", SamplingParams(**{
        "n": 2, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 160, "seed": 0,
    }))  # fmt: skip
