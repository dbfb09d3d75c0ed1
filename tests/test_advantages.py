"""Q-values of step prefixes, advantages, pit rules and spurious steps."""

import math
import random

import polars as pl
import pytest

from synthdata_assets.advantages import (
    PIT_RULES,
    Q_SCHEMA,
    STEP_ADVANTAGE_SCHEMA,
    first_pits,
    q_values,
    step_advantages,
)
from synthdata_assets.steps import prefix, split_steps

# --------------------------------------------------------------------------------------------
# builders


def rollouts_frame(outcomes: dict[tuple[str, int], list[bool]]) -> pl.DataFrame:
    rows = [(sid, step, j, ok) for (sid, step), oks in outcomes.items() for j, ok in enumerate(oks)]
    columns = ["sample_id", "step_idx", "rollout_idx", "is_correct"]
    dtypes = [pl.String, pl.Int64, pl.Int64, pl.Boolean]
    return pl.DataFrame(rows, schema=list(zip(columns, dtypes, strict=True)), orient="row")


def terminal_frame(rows: list[tuple[str, int, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"sample_id": pl.String, "n_steps": pl.Int64, "is_correct": pl.Boolean},
        orient="row",
    )


def q_of(q: pl.DataFrame, sid: str) -> list[float]:
    return q.filter(pl.col("sample_id") == sid).sort("step_idx")["q_value"].to_list()


def hand_q(samples: dict[str, tuple[bool, list[float]]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """q and steps frames from {sample_id: (is_correct, [q_0, ..., q_L])}."""
    q_rows, step_rows = [], []
    for sid, (ok, qs) in samples.items():
        for i, v in enumerate(qs):
            q_rows.append({"sample_id": sid, "step_idx": i, "q_value": v, "n_rollouts": 4})
            if i:
                step_rows.append(
                    {
                        "sample_id": sid,
                        "problem_id": f"prob-{sid}",
                        "step_idx": i,
                        "step_text": f"{sid} step {i}\n",
                        "sample_is_correct": ok,
                    }
                )
    return pl.DataFrame(q_rows), pl.DataFrame(step_rows)


# --------------------------------------------------------------------------------------------
# q_values


def test_fake_policy_estimates_converge():
    """Prefix i succeeds with known probability p_i; both estimators recover their target."""
    rng = random.Random(2024)
    p = [0.9, 0.6, 0.3, 0.1, 0.0]
    m, k = 4000, 5
    outcomes = {("s", i): [rng.random() < pi for _ in range(m)] for i, pi in enumerate(p)}
    terminal = terminal_frame([("s", len(p), False)])
    pi_sft = q_of(q_values(rollouts_frame(outcomes), terminal, policy="pi_sft"), "s")
    bok = q_of(q_values(rollouts_frame(outcomes), terminal, policy="best_of_k", k=k), "s")
    for i, pi in enumerate(p):
        assert pi_sft[i] == pytest.approx(pi, abs=0.03)  # sd <= 0.008
        assert bok[i] == pytest.approx(1 - (1 - pi) ** k, abs=0.05)  # sd <= 0.016
    assert pi_sft[-1] == bok[-1] == 0.0


def test_fake_policy_any_of_k_is_unbiased():
    """With M == K each prefix's Q is 0/1, and its mean over many prefixes is 1-(1-p)^K."""
    rng = random.Random(7)
    p, k, n = 0.3, 5, 1500
    outcomes = {(f"s{j:04d}", 0): [rng.random() < p for _ in range(k)] for j in range(n)}
    terminal = terminal_frame([(f"s{j:04d}", 1, True) for j in range(n)])
    q = q_values(rollouts_frame(outcomes), terminal, policy="best_of_k", k=k)
    rolled = q.filter(pl.col("step_idx") == 0)["q_value"]
    assert set(rolled.to_list()) <= {0.0, 1.0}
    assert rolled.mean() == pytest.approx(1 - (1 - p) ** k, abs=0.03)  # sd ~ 0.0097


def test_q_values_exact_small_cases():
    outcomes = {
        ("a", 0): [False, False, True, False, False],  # M == K, one success -> 1
        ("a", 1): [False] * 5,  # M == K, none -> 0
        ("b", 0): [True] * 5 + [False] * 5,  # M = 10 > K: 1 - C(5,5)/C(10,5)
        ("b", 1): [True, False, False, False] * 5,  # M = 20, c = 5: 1 - C(15,5)/C(20,5)
    }
    terminal = terminal_frame([("a", 2, False), ("b", 2, True)])
    q = q_values(rollouts_frame(outcomes), terminal, policy="best_of_k", k=5)
    assert q.schema == Q_SCHEMA
    assert q_of(q, "a") == [1.0, 0.0, 0.0]
    assert q_of(q, "b") == pytest.approx(
        [1 - math.comb(5, 5) / math.comb(10, 5), 1 - math.comb(15, 5) / math.comb(20, 5), 1.0]
    )
    b = q.filter(pl.col("sample_id") == "b").sort("step_idx")
    assert b["n_rollouts"].to_list() == [10, 20, 0]
    assert b["n_correct"].to_list() == [5, 5, 0]
    assert b["success_rate"].to_list() == [0.5, 0.25, 1.0]
    assert b["is_terminal"].to_list() == [False, False, True]
    # pi_sft: plain success rates; terminal rows identical under both policies
    q2 = q_values(rollouts_frame(outcomes), terminal, policy="pi_sft")
    assert q_of(q2, "a") == [0.2, 0.0, 0.0]
    assert q_of(q2, "b") == [0.5, 0.25, 1.0]


def test_best_of_k_needs_k_rollouts():
    outcomes = {("a", 0): [True, False, True]}
    terminal = terminal_frame([("a", 1, True)])
    with pytest.raises(ValueError, match="at least 5 rollouts per prefix.*'a' step 0 has 3"):
        q_values(rollouts_frame(outcomes), terminal, policy="best_of_k", k=5)
    # fine under pi_sft, or with a smaller k
    assert q_of(q_values(rollouts_frame(outcomes), terminal, policy="pi_sft"), "a")[0] == 2 / 3
    assert q_of(q_values(rollouts_frame(outcomes), terminal, k=3), "a") == [1.0, 1.0]


def test_q_values_missing_and_bad_inputs():
    terminal = terminal_frame([("a", 3, False)])
    full = {("a", 0): [True] * 5, ("a", 1): [True] * 5, ("a", 2): [False] * 5}
    missing = {key: v for key, v in full.items() if key != ("a", 1)}
    with pytest.raises(ValueError, match="no rollouts for sample 'a' at step_idx 1"):
        q_values(rollouts_frame(missing), terminal)
    with pytest.raises(ValueError, match="sample 'a' at step_idx 3.*finished sample"):
        q_values(rollouts_frame({**full, ("a", 3): [True] * 5}), terminal)
    with pytest.raises(ValueError, match="sample 'zz' have no terminal row"):
        q_values(rollouts_frame({**full, ("zz", 0): [True] * 5}), terminal)
    dup = pl.concat([rollouts_frame(full), rollouts_frame({("a", 0): [True]})])
    with pytest.raises(ValueError, match="duplicated key"):
        q_values(dup, terminal)
    with pytest.raises(ValueError, match="unknown rollout policy"):
        q_values(rollouts_frame(full), terminal, policy="greedy")
    with pytest.raises(ValueError, match="at least one step"):
        q_values(rollouts_frame({}), terminal_frame([("e", 0, False)]))
    with pytest.raises(ValueError, match="lacks column"):
        q_values(rollouts_frame(full).drop("rollout_idx"), terminal)
    empty = q_values(rollouts_frame({}), terminal_frame([]))
    assert empty.height == 0 and empty.schema == Q_SCHEMA


def test_q_values_stopped_at_pit():
    """With early stop, the prefixes after the first all-failing prefix i >= 1 may be missing:
    their Q is null, never 0; any other gap still raises."""
    terminal = terminal_frame([("a", 4, False), ("b", 3, False)])
    stopped = {
        ("a", 0): [True] * 5,
        ("a", 1): [True, False, False, False, False],
        ("a", 2): [False] * 5,  # the first pit: prefixes 3 is never rolled out
        ("b", 0): [False] * 5,  # q_0 == 0 is not a pit: b goes on
        ("b", 1): [True] * 5,
        ("b", 2): [True] * 5,
    }
    with pytest.raises(ValueError, match="no rollouts for sample 'a' at step_idx 3"):
        q_values(rollouts_frame(stopped), terminal)
    for policy in ("pi_sft", "best_of_k"):
        q = q_values(rollouts_frame(stopped), terminal, policy=policy, stopped_at_pit=True)
        assert q_of(q, "a")[2:] == [0.0, None, 0.0]
        assert (
            q.filter((pl.col("sample_id") == "a") & (pl.col("step_idx") == 3)).row(0, named=True)[
                "n_rollouts"
            ]
            == 0
        )
        assert None not in q_of(q, "b")
    gap = {key: v for key, v in stopped.items() if key != ("a", 1)}
    with pytest.raises(ValueError, match="step_idx 1.*up to the first one whose rollouts all"):
        q_values(rollouts_frame(gap), terminal, stopped_at_pit=True)
    adv = step_advantages(
        q_values(rollouts_frame(stopped), terminal, stopped_at_pit=True),
        pl.DataFrame(
            {
                "sample_id": ["a"] * 4 + ["b"] * 3,
                "problem_id": ["p"] * 7,
                "step_idx": [1, 2, 3, 4, 1, 2, 3],
                "step_text": ["x"] * 7,
                "sample_is_correct": [False] * 7,
            }
        ),
    )
    assert pits_of(adv) == {"a": 2, "b": 3}
    assert adv.filter(pl.col("sample_id") == "a")["advantage"].to_list()[3:] == [None, None]
    q, steps = hand_q({"n": (False, [0.5, 0.0, 0.0])})
    q = q.with_columns(
        pl.when(pl.col("step_idx") == 1).then(None).otherwise(pl.col("q_value")).alias("q_value")
    )
    with pytest.raises(ValueError, match="null q_value from 4 rollouts"):
        step_advantages(q, steps)


# --------------------------------------------------------------------------------------------
# advantages and pits


HAND = {
    "n1": (False, [0.5, 0.75, 0.25, 0.0, 0.0]),  # adv +.25 -.5 -.25 0
    "n2": (False, [0.5, 0.5, 0.25, 0.5]),  # no zero; largest drop at 2
    "n3": (False, [0.25, 0.5, 0.5]),  # no zero and no drop: no pit under either rule
    "n4": (False, [1.0, 0.5, 1.0, 0.5]),  # tie in largest drop: steps 1 and 3 -> 1
    "n5": (False, [0.0, 0.0, 0.0]),  # q_0 == 0: step 0 is never a pit -> 1
    "p1": (True, [0.5, 0.75, 0.5, 1.0]),  # positive with a -0.25 step
    "p2": (True, [0.0, 0.0, 1.0]),  # positive with zeros: never a pit
}


def pits_of(adv: pl.DataFrame) -> dict[str, int]:
    return dict(first_pits(adv).iter_rows())


def test_advantage_arithmetic_exact():
    q, steps = hand_q(HAND)
    adv = step_advantages(q, steps)
    assert adv.schema == STEP_ADVANTAGE_SCHEMA
    n1 = adv.filter(pl.col("sample_id") == "n1").sort("step_idx")
    assert n1["advantage"].to_list() == [None, 0.25, -0.5, -0.25, 0.0]
    assert n1["q_value"].to_list() == HAND["n1"][1]
    assert n1["step_text"].to_list() == [
        "",
        "n1 step 1\n",
        "n1 step 2\n",
        "n1 step 3\n",
        "n1 step 4\n",
    ]
    assert n1["problem_id"].unique().to_list() == ["prob-n1"]
    assert n1["n_rollouts"].to_list() == [4] * 5
    assert adv.height == sum(len(qs) for _, qs in HAND.values())
    assert adv.filter(pl.col("step_idx") == 0)["advantage"].null_count() == len(HAND)


def test_pit_rule_first_zero():
    q, steps = hand_q(HAND)
    adv = step_advantages(q, steps, pit_rule="first_zero")
    assert pits_of(adv) == {"n1": 3, "n5": 1}
    assert adv.group_by("sample_id").agg(pl.col("is_first_pit").sum())["is_first_pit"].max() == 1


def test_pit_rule_largest_drop():
    q, steps = hand_q(HAND)
    adv = step_advantages(q, steps, pit_rule="largest_drop")
    assert pits_of(adv) == {"n1": 2, "n2": 2, "n4": 1}
    assert "n3" not in pits_of(adv) and "n5" not in pits_of(adv)  # no negative advantage


def test_spurious_steps_only_on_positives():
    q, steps = hand_q(HAND)
    adv = step_advantages(q, steps)
    spurious = adv.filter(pl.col("is_spurious")).select("sample_id", "step_idx").rows()
    assert spurious == [("p1", 2)]  # n1 step 2 has -0.5 but is a negative
    adv = step_advantages(q, steps, spurious_threshold=-0.3)
    assert adv.filter(pl.col("is_spurious")).height == 0
    adv = step_advantages(q, steps, spurious_threshold=0.1)  # 0.0 < 0.1 counts too
    assert adv.filter(pl.col("is_spurious")).select("sample_id", "step_idx").rows() == [
        ("p1", 2),
        ("p2", 1),
    ]


def test_step_advantages_errors_and_empty():
    q, steps = hand_q(HAND)
    with pytest.raises(ValueError, match="unknown pit rule.*first_zero"):
        step_advantages(q, steps, pit_rule="last_zero")
    with pytest.raises(ValueError, match="'n1'.*q needs exactly 0..3"):
        step_advantages(
            q, steps.filter(~((pl.col("sample_id") == "n1") & (pl.col("step_idx") == 4)))
        )
    with pytest.raises(ValueError, match="numbered 1..L without gaps"):
        step_advantages(
            q, steps.filter(~((pl.col("sample_id") == "n1") & (pl.col("step_idx") == 2)))
        )
    with pytest.raises(ValueError, match="has q-values but no steps"):
        step_advantages(q, steps.filter(pl.col("sample_id") != "n1"))
    no_steps = pl.DataFrame(schema=STEP_ADVANTAGE_SCHEMA).select(
        "sample_id", "problem_id", "step_idx", "step_text", "sample_is_correct"
    )
    empty = step_advantages(pl.DataFrame(schema=Q_SCHEMA), no_steps)
    assert empty.height == 0 and empty.schema == STEP_ADVANTAGE_SCHEMA
    assert first_pits(empty).height == 0
    assert set(PIT_RULES) == {"first_zero", "largest_drop"}


def test_q_values_to_advantages_end_to_end():
    """Rollout outcomes -> q -> advantages, with steps from split_steps."""
    text = "A has 1 + 1 = 3 apples.\nB has 3 + 1 = 4 apples.\nThe answer is 4."
    steps = split_steps(text)
    outcomes = {("s", 0): [True] * 5, ("s", 1): [False] * 5, ("s", 2): [False] * 5}
    q = q_values(rollouts_frame(outcomes), terminal_frame([("s", 3, False)]))
    step_rows = pl.DataFrame(
        {
            "sample_id": ["s"] * 3,
            "problem_id": ["p"] * 3,
            "step_idx": [1, 2, 3],
            "step_text": steps,
            "sample_is_correct": [False] * 3,
        }
    )
    adv = step_advantages(q, step_rows)
    assert adv["advantage"].to_list() == [None, -1.0, 0.0, 0.0]
    assert pits_of(adv) == {"s": 1}
    assert prefix(steps, pits_of(adv)["s"]) == "A has 1 + 1 = 3 apples.\n"
