"""Credit assignment: Q estimators, advantages, pit rules, spurious steps, preference pairs."""

import math
import random

import polars as pl
import pytest

from synthdata_assets.credit import (
    PAIR_KINDS,
    PAIR_SCHEMA,
    PIT_RULES,
    Q_SCHEMA,
    STEP_ADVANTAGE_SCHEMA,
    first_pits,
    levenshtein,
    preference_pairs,
    q_values,
    step_advantages,
)
from synthdata_assets.steps import prefix, split_steps
from training.prompts import format_prompt

# --------------------------------------------------------------------------------------------
# builders


def rollouts_frame(outcomes: dict[tuple[str, int], list[bool]]) -> pl.DataFrame:
    rows = [
        {"sample_id": sid, "step_idx": step, "rollout_idx": j, "is_correct": ok}
        for (sid, step), oks in outcomes.items()
        for j, ok in enumerate(oks)
    ]
    return pl.DataFrame(
        rows,
        schema={
            "sample_id": pl.String,
            "step_idx": pl.Int64,
            "rollout_idx": pl.Int64,
            "is_correct": pl.Boolean,
        },
    )


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
    empty = step_advantages(
        pl.DataFrame(schema=Q_SCHEMA),
        pl.DataFrame(
            schema={
                "sample_id": pl.String,
                "problem_id": pl.String,
                "step_idx": pl.Int64,
                "step_text": pl.String,
                "sample_is_correct": pl.Boolean,
            }
        ),
    )
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


# --------------------------------------------------------------------------------------------
# preference pairs


S1 = "A has 1 + 1 = 2.\nB has 2 + 2 = 4.\nThe answer is 4.\n"
S2 = "A has 2.\nThe answer is 4.\n"
S3 = "A has 1 + 1 = 3.\nB has 3 + 2 = 5.\nThe answer is 5.\n"  # pit at 1
S4 = "A has 1 + 1 = 2.\nB has 2 + 3 = 5.\nThe answer is 5.\n"  # pit at 2
S5 = "C has 5.\nThe answer is 5.\n"  # P2: no correct solution anywhere
S6 = "X.\nY.\nThe answer is 9.\n"  # P3: pit at 2, only the teacher is correct
T3 = "Z.\nThe answer is 8."  # teacher solution: no trailing newline
PITS = {"s3": 1, "s4": 2, "s5": 1, "s6": 2}


@pytest.fixture
def pair_inputs():
    problems = pl.DataFrame(
        {"problem_id": ["P1", "P2", "P3", "P4"], "question": ["Q1?", "Q2?", "Q3?", "Q4?"]}
    )
    samples = pl.DataFrame(
        [
            ("P1", "s1", S1, True),
            ("P1", "s2", S2, True),
            ("P1", "s3", S3, False),
            ("P1", "s4", S4, False),
            ("P2", "s5", S5, False),
            ("P3", "s6", S6, False),
            ("P4", "s7", "abc", True),
            ("P4", "s8", "abd", False),
            ("P4", "s9", "xyz", False),
            ("P4", "s9b", "zyx", False),  # ties with s9 (distance 3 from "abc")
            ("P4", "s11", "xyq", True),
        ],
        schema=["problem_id", "sample_id", "solution", "is_correct"],
        orient="row",
    )
    adv_rows = []
    for sid, text in [("s3", S3), ("s4", S4), ("s5", S5), ("s6", S6)]:
        for i, step in enumerate([""] + split_steps(text)):
            adv_rows.append((sid, i, step, i == PITS[sid]))
    adv = pl.DataFrame(
        adv_rows, schema=["sample_id", "step_idx", "step_text", "is_first_pit"], orient="row"
    )
    rollouts = pl.DataFrame(
        [
            ("s3", 0, 0, "A has 1 + 1 = 3.\nThe answer is 3.\n", False),
            ("s3", 0, 1, "A has 1 + 1 = 2.\nB has 2 + 2 = 4.\nThe answer is 4.\n", True),
            ("s3", 0, 2, "A has 1 + 1 = 3.\nThe answer is 4.\n", True),  # same step as pit
            ("s3", 1, 0, "The answer is 4.\n", True),  # wrong prefix: not used
            ("s4", 1, 0, "B has 2 + 9 = 11.\nThe answer is 11.\n", False),
            ("s6", 1, 0, "Z.\nThe answer is 8.\n", True),
        ],
        schema=["sample_id", "step_idx", "rollout_idx", "completion", "is_correct"],
        orient="row",
    )
    teacher = pl.DataFrame(
        [
            ("P1", "t1", "T1 text\nThe answer is 4.", True),
            ("P3", "t3", T3, True),
            ("P3", "t3x", "wrong\nThe answer is 1.", False),
        ],
        schema=["problem_id", "solution_id", "solution", "is_correct"],
        orient="row",
    )
    return problems, samples, adv, rollouts, teacher


def make_pairs(inputs, kinds=PAIR_KINDS, seed=0):
    return preference_pairs(*inputs, kinds=kinds, seed=seed, prompt_fn=format_prompt)


def by_kind(pairs: pl.DataFrame, kind: str) -> dict[str, dict]:
    return {r["sample_id"]: r for r in pairs.filter(pl.col("kind") == kind).iter_rows(named=True)}


def test_per_step_pairs(pair_inputs):
    pairs = make_pairs(pair_inputs)
    assert pairs.schema == PAIR_SCHEMA
    ps = by_kind(pairs, "per_step")
    assert sorted(ps) == ["s3", "s4", "s6"]  # s5's problem has no correct solution
    assert ps["s3"]["rejected"] == "A has 1 + 1 = 3."
    assert ps["s4"]["rejected"] == "A has 1 + 1 = 2.\nB has 2 + 3 = 5."
    assert ps["s6"]["rejected"] == "X.\nY."
    for sid, row in ps.items():
        assert row["pit_step_idx"] == PITS[sid]
        assert row["prompt"] == format_prompt({"s6": "Q3?"}.get(sid, "Q1?"))
        assert row["chosen_has_eos"] and not row["rejected_has_eos"]
        assert row["pair_id"] == f"per_step/{sid}/0"
    # the policy's own correct samples first; the teacher only where there are none
    assert ps["s3"]["chosen_id"] in {"s1", "s2"} and ps["s4"]["chosen_id"] in {"s1", "s2"}
    assert ps["s3"]["chosen"] == {"s1": S1, "s2": S2}[ps["s3"]["chosen_id"]]
    assert ps["s6"]["chosen_id"] == "t3"
    assert ps["s6"]["chosen"] == T3 + "\n"  # EOS side normalized like format_example


def test_outcome_pairs(pair_inputs):
    pairs = make_pairs(pair_inputs)
    oc, ps = by_kind(pairs, "outcome"), by_kind(pairs, "per_step")
    assert sorted(oc) == ["s3", "s4", "s6", "s8", "s9", "s9b"]  # every negative with a chosen
    assert oc["s3"]["rejected"] == S3 and oc["s6"]["rejected"] == S6
    assert oc["s9"]["rejected"] == "xyz\n" and oc["s9"]["chosen_id"] in {"s7", "s11"}
    for sid, row in oc.items():
        assert row["chosen_has_eos"] and row["rejected_has_eos"]
        assert row["pit_step_idx"] is None
        if sid in ps:  # the same correct solution as the per_step pair of that negative
            assert row["chosen_id"] == ps[sid]["chosen_id"]


def test_edit_distance_pairs(pair_inputs):
    pairs = make_pairs(pair_inputs, kinds=["edit_distance"])
    rows = {r["chosen_id"]: r for r in pairs.iter_rows(named=True)}
    assert set(rows) == {"s1", "s2", "s7", "s11"}
    assert rows["s7"]["sample_id"] == "s9"  # "xyz" and "zyx" are both 3 from "abc": lowest id
    assert rows["s11"]["sample_id"] == "s8"  # "xyq" vs "abd": 3, vs "xyz": 1, vs "zyx": 2
    assert rows["s11"]["pair_id"] == "edit_distance/s8/s11"
    for pos in ("s1", "s2"):
        d3, d4 = (
            levenshtein({"s1": S1, "s2": S2}[pos], S3),
            levenshtein({"s1": S1, "s2": S2}[pos], S4),
        )
        expected = "s3" if d3 >= d4 else "s4"
        assert rows[pos]["sample_id"] == expected
    assert all(r["chosen_has_eos"] and r["rejected_has_eos"] for r in rows.values())
    assert rows["s7"]["chosen"] == "abc\n" and rows["s7"]["rejected"] == "xyz\n"


def test_shared_prefix_pairs(pair_inputs):
    pairs = make_pairs(pair_inputs, kinds=["shared_prefix"])
    sp = by_kind(pairs, "shared_prefix")
    assert sorted(sp) == ["s3", "s6"]  # s4: no successful rollout; s5: none at all
    s3 = sp["s3"]
    assert s3["prompt"] == format_prompt("Q1?")  # pit at 1: the prefix before it is empty
    assert s3["rejected"] == "A has 1 + 1 = 3."
    assert s3["chosen"] == "A has 1 + 1 = 2."  # rollout 2 repeats the pit step: excluded
    assert s3["chosen_id"] == "s3/rollout/0/1"
    s6 = sp["s6"]
    assert s6["prompt"] == format_prompt("Q3?") + "X.\n"
    assert s6["prompt"].endswith(prefix(split_steps(S6), PITS["s6"] - 1))
    assert (s6["chosen"], s6["rejected"]) == ("Z.", "Y.")
    for row in sp.values():
        assert not row["chosen_has_eos"] and not row["rejected_has_eos"]
        assert row["chosen"] != row["rejected"]


def test_pairs_deterministic_and_ordered(pair_inputs):
    a, b = make_pairs(pair_inputs, seed=3), make_pairs(pair_inputs, seed=3)
    assert a.equals(b)
    assert a["pair_id"].is_unique().all()
    kinds_seen = a["kind"].unique(maintain_order=True).to_list()
    assert kinds_seen == list(PAIR_KINDS)
    reordered = make_pairs(pair_inputs, kinds=["outcome", "per_step"], seed=3)
    assert reordered["kind"].unique(maintain_order=True).to_list() == ["outcome", "per_step"]
    # the pick depends on the seed: over many seeds both correct samples get chosen
    picks = {make_pairs(pair_inputs, kinds=["outcome"], seed=s)["chosen_id"][0] for s in range(20)}
    assert picks == {"s1", "s2"}


def test_pairs_errors_and_empty(pair_inputs):
    with pytest.raises(ValueError, match="unknown pair kind.*per_step"):
        make_pairs(pair_inputs, kinds=["per_token"])
    problems, samples, adv, rollouts, teacher = pair_inputs
    bad_adv = adv.with_columns(
        pl.when(pl.col("sample_id") == "s3")
        .then(pl.col("step_text") + "!")
        .otherwise(pl.col("step_text"))
        .alias("step_text")
    )
    with pytest.raises(ValueError, match="same step rule"):
        make_pairs((problems, samples, bad_adv, rollouts, teacher), kinds=["per_step"])
    with pytest.raises(ValueError, match="unknown problems"):
        make_pairs((problems.filter(pl.col("problem_id") != "P4"), samples, adv, rollouts, teacher))
    empty = pl.DataFrame()
    out = preference_pairs(
        empty, empty, empty, empty, empty, kinds=PAIR_KINDS, seed=0, prompt_fn=format_prompt
    )
    assert out.height == 0 and out.schema == PAIR_SCHEMA
    assert make_pairs(pair_inputs, kinds=[]).schema == PAIR_SCHEMA


def test_levenshtein_matches_plain_dp():
    def dp(a: str, b: str) -> int:
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    rng = random.Random(11)
    for _ in range(1500):
        a = "".join(rng.choice("ab c\n😀") for _ in range(rng.randrange(0, 25)))
        b = "".join(rng.choice("ab c\n😀") for _ in range(rng.randrange(0, 90)))
        assert levenshtein(a, b) == dp(a, b) == levenshtein(b, a)
    assert levenshtein("kitten", "sitting") == 3
