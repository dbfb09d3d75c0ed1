"""Preference pairs of every kind, the edit distance behind edit_distance pairs, and the
weights of the advantage-weighted variant."""

import math
import random

import polars as pl
import pytest

from synthdata_assets.pairs import PAIR_KINDS, PAIR_SCHEMA, levenshtein, preference_pairs
from synthdata_assets.preference import MIN_PIT_WEIGHT, pair_weights
from synthdata_assets.steps import prefix, split_steps
from training.prompts import format_prompt

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


def test_outcome_pairs_use_exactly_the_per_step_negatives(pair_inputs):
    pairs = make_pairs(pair_inputs)
    oc, ps = by_kind(pairs, "outcome"), by_kind(pairs, "per_step")
    # s8, s9, s9b have a correct solution but no pit (not rolled out): no pair of either kind
    assert sorted(oc) == sorted(ps) == ["s3", "s4", "s6"]
    assert oc["s3"]["rejected"] == S3 and oc["s6"]["rejected"] == S6
    for sid, row in oc.items():
        assert row["chosen_has_eos"] and row["rejected_has_eos"]
        assert row["pit_step_idx"] is None
        # the same chosen side: the two kinds differ only in the rejected side
        assert (row["chosen_id"], row["chosen"]) == (ps[sid]["chosen_id"], ps[sid]["chosen"])
        assert row["rejected"].startswith(ps[sid]["rejected"])
    # asked alone, outcome pairs are the same pairs
    alone = make_pairs(pair_inputs, kinds=["outcome"])
    assert alone.equals(pairs.filter(pl.col("kind") == "outcome"))


def test_a_negative_without_a_per_step_pair_gets_no_outcome_pair(pair_inputs):
    problems, samples, adv, rollouts, teacher = pair_inputs
    # s4 loses its pit; s3 becomes a blank solution whose cut at its pit is empty
    samples = samples.with_columns(
        pl.when(pl.col("sample_id") == "s3")
        .then(pl.lit(" "))
        .otherwise("solution")
        .alias("solution")
    )
    adv = pl.concat(
        [
            adv.filter(~pl.col("sample_id").is_in(["s3", "s4"])),
            pl.DataFrame(
                [("s3", 0, "", False), ("s3", 1, " ", True)],
                schema=adv.columns,
                orient="row",
            ),
        ]
    )
    pairs = make_pairs((problems, samples, adv, rollouts, teacher), kinds=["per_step", "outcome"])
    assert sorted(by_kind(pairs, "per_step")) == sorted(by_kind(pairs, "outcome")) == ["s6"]


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


def test_pairs_read_only_the_tables_their_kinds_need(pair_inputs):
    """edit_distance reads neither adv, rollouts nor teacher: bad ones are not checked."""
    problems, samples, adv, rollouts, teacher = pair_inputs
    expected = make_pairs(pair_inputs, kinds=["edit_distance"])
    bad = (problems, samples, adv.drop("is_first_pit"), rollouts.drop("completion"), teacher)
    assert make_pairs(bad, kinds=["edit_distance"]).equals(expected)
    with pytest.raises(ValueError, match="adv lacks column"):
        make_pairs(bad, kinds=["per_step"])
    with pytest.raises(ValueError, match="rollouts lacks column"):
        make_pairs(
            (problems, samples, adv, rollouts.drop("completion"), teacher), kinds=["shared_prefix"]
        )


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


def test_advantage_weights_are_the_value_lost_at_the_pit():
    # a loses all of its value at its pit, b half, c none (Q was already 0); d has no pit
    # and e no rows at all
    adv = pl.DataFrame(
        [
            ("a", 0, None, False),
            ("a", 1, -1.0, True),
            ("b", 0, None, False),
            ("b", 1, 0.0, False),
            ("b", 2, -0.5, True),
            ("c", 1, 0.0, True),
            ("d", 1, -0.25, False),
        ],
        schema={
            "sample_id": pl.String,
            "step_idx": pl.Int64,
            "advantage": pl.Float64,
            "is_first_pit": pl.Boolean,
        },
        orient="row",
    )
    pairs = pl.DataFrame({"sample_id": ["e", "b", "a", "c", "d", "a"]})
    weights = pair_weights(pairs, adv)
    w = dict(zip(pairs["sample_id"], weights, strict=True))
    assert all(math.isfinite(x) and x > 0 for x in weights)
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    assert w["a"] > w["b"] > w["c"] == w["d"] == w["e"]  # a larger drop, a larger weight
    assert w["a"] / w["b"] == pytest.approx(2.0)
    assert max(weights) / min(weights) == pytest.approx(1 / MIN_PIT_WEIGHT)
    # Binary Q (best-of-K with M == K): two values, 10 : 1, not e^10 : 1.
    binary = pair_weights(pl.DataFrame({"sample_id": ["a", "c"]}), adv)
    assert binary[0] / binary[1] == pytest.approx(1 / MIN_PIT_WEIGHT)
    assert pair_weights(pairs, adv, floor=1.0) == [1.0] * len(pairs)
    with pytest.raises(ValueError, match="floor"):
        pair_weights(pairs, adv, floor=0.0)
