"""Q-values of step prefixes, advantages, pit rules and spurious steps."""

import math
import random

import polars as pl
import pytest

from synthdata_assets.advantages import (
    CREDIT_VS_TRUTH_SCHEMA,
    NO_GROUND_TRUTH,
    PIT_RULES,
    Q_SCHEMA,
    STEP_ADVANTAGE_SCHEMA,
    TABLE_SCHEMA,
    credit_vs_truth,
    first_pits,
    from_rollouts,
    ground_truth,
    q_values,
    step_advantages,
    truth_metadata,
)
from synthdata_assets.config import CreditConfig
from synthdata_assets.steps import prefix, split_steps
from synthdata_assets.tasks import embedded
from warehouse import Warehouse
from warehouse.parquet import write_parquet_atomic
from warehouse.query import run_query

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


# --------------------------------------------------------------------------------------------
# credit assignment against ground truth


def truth_table(samples: dict[str, tuple[bool, list[str | None], int | None, list[bool]]]):
    """A step_advantages table (TABLE_SCHEMA) from {sample_id: (is_correct, true labels of
    steps 1..L (None: no ground truth), MC pit step or None, spurious flags of steps 1..L)},
    the same under both rollout policies."""
    rows = []
    for sid, (ok, labels, pit, flags) in samples.items():
        wrong = [i for i, label in enumerate(labels, 1) if label in ("wrong", "wrong_answer")]
        labelled = labels[0] is not None
        for i in range(len(labels) + 1):
            row = {
                "sample_id": sid,
                "problem_id": f"prob-{sid}",
                "step_idx": i,
                "sample_is_correct": ok,
                "is_first_pit": i == pit,
                "is_spurious": bool(i and flags[i - 1]),
                "true_label": labels[i - 1] if i else None,
                "is_true_first_wrong": (bool(wrong) and i == wrong[0]) if labelled else None,
            }
            for policy in ("pi_sft", "best_of_k"):
                row[f"is_first_pit_{policy}"] = row["is_first_pit"]
                row[f"is_spurious_{policy}"] = row["is_spurious"]
            rows.append(row)
    return (
        pl.DataFrame(rows)
        .with_columns(
            step_text=pl.lit(""), q_value=pl.lit(0.0), advantage=pl.lit(0.0), n_rollouts=pl.lit(5)
        )
        .select(TABLE_SCHEMA.names())
        .cast(dict(TABLE_SCHEMA))
    )


N, W, A, X, S = "needed", "wrong", "answer", "wrong_answer", "spurious"
TRUTH = {
    "exact": (False, [N, W, X], 2, [False] * 3),  # pit at the true first wrong step
    "before": (False, [N, N, W, X], 2, [False] * 4),  # one step early: within one, not exact
    "early": (False, [N, N, N, W], 1, [False] * 4),  # three steps early
    "late": (False, [W, N, X], 3, [False] * 3),
    "cut": (False, [N, N], 2, [False] * 2),  # cut off before its answer: no wrong step
    "no_pit": (False, [N, W], None, [False] * 2),  # not judged: no MC pit
    "pos1": (True, [N, S, N, A], None, [False, True, False, False]),  # a hit
    "pos2": (True, [S, N, A], None, [False, True, False]),  # a miss and a false alarm
}


def test_credit_vs_truth_counts_exact_within_one_and_the_rest():
    out = credit_vs_truth(truth_table(TRUTH))
    assert out.schema == CREDIT_VS_TRUTH_SCHEMA
    assert out["rollout_policy"].to_list() == ["best_of_k", "pi_sft"]
    row = out.row(0, named=True)
    assert row["ground_truth"] and row["negatives"] == 6 and row["negatives_with_pit"] == 5
    assert row["share_pit_exact"] == pytest.approx(1 / 5)  # "exact" only
    assert row["share_pit_within_one"] == pytest.approx(2 / 5)  # "exact" and "before"
    assert row["share_pit_early"] == row["share_pit_late"] == pytest.approx(1 / 5)
    assert row["share_no_true_wrong"] == pytest.approx(1 / 5)
    assert (row["positive_steps"], row["true_spurious"], row["flagged_spurious"]) == (7, 2, 2)
    assert row["spurious_precision"] == row["spurious_recall"] == pytest.approx(1 / 2)


def test_a_run_summarises_credit_vs_truth_where_no_negative_has_a_pit():
    # largest_drop finds no pit where a negative's Q never drops (a tiny model: Q is 0)
    from synthdata_assets.cli import _pit_shares

    keep = {"no_pit": TRUTH["no_pit"], "pos1": TRUTH["pos1"]}
    row = credit_vs_truth(truth_table(keep)).row(0, named=True)
    assert row["negatives_with_pit"] == 0 and row["share_pit_exact"] is None
    assert _pit_shares(row) == "no pit in any of 1 negatives"
    row = credit_vs_truth(truth_table(TRUTH)).row(0, named=True)
    assert _pit_shares(row) == "exact 20%, at or one before 40% of 5 negatives"


def test_credit_vs_truth_per_policy_and_group():
    table = truth_table(TRUTH).with_columns(
        # best-of-K puts "before"'s pit on the true first wrong step and flags nothing
        (
            pl.col("is_first_pit")
            ^ (pl.col("sample_id") == "before") & pl.col("step_idx").is_in([2, 3])
        ).alias("is_first_pit_best_of_k"),
        pl.lit(False).alias("is_spurious_best_of_k"),
        data_size=pl.lit(100),
    )
    out = credit_vs_truth(table, by=["data_size"])
    assert out.columns[:2] == ["data_size", "rollout_policy"]
    bok, sft = out.rows_by_key("rollout_policy", named=True, unique=True).values()
    assert bok["share_pit_exact"] == pytest.approx(2 / 5) and sft["share_pit_exact"] == 0.2
    assert bok["spurious_precision"] is None and bok["spurious_recall"] == 0.0
    assert sft["spurious_recall"] == 0.5
    # a policy without flags (best-of-K with M < K) has no row
    unknown = table.with_columns(pl.lit(None, dtype=pl.Boolean).alias("is_first_pit_best_of_k"))
    assert credit_vs_truth(unknown)["rollout_policy"].to_list() == ["pi_sft"]


def test_without_ground_truth_the_summary_says_so():
    specless = {
        sid: (ok, [None] * len(labels), pit, flags)
        for sid, (ok, labels, pit, flags) in TRUTH.items()
    }
    out = credit_vs_truth(truth_table(specless))
    assert out.height == 2 and not out["ground_truth"].any()
    assert out["negatives_with_pit"].to_list() == [5, 5]  # the MC side is still counted
    for column in (
        "share_pit_exact",
        "share_pit_within_one",
        "spurious_precision",
        "true_spurious",
    ):
        assert out[column].null_count() == 2
    assert truth_metadata(truth_table(specless)) == {"credit_vs_truth": NO_GROUND_TRUTH}
    metadata = truth_metadata(truth_table(TRUTH))
    assert metadata["best_of_k/share_pit_exact"] == pytest.approx(0.2)
    assert metadata["credit_vs_truth"] != NO_GROUND_TRUTH
    assert truth_metadata(truth_table(TRUTH).clear()) == {"credit_vs_truth": NO_GROUND_TRUTH}


def embedded_partition():
    """One chain problem, a negative with a wrong step 2 and wrong answer, a positive with a
    spurious step, and their rollouts (M = K = 5): the negative's prefixes 0..3 succeed
    5, 1, 0, 0 times; the positive's prefix ending at its spurious step 1 time in 5."""
    params = embedded.EmbeddedParams(graph="chain", min_steps=3, max_steps=3, n_distractors=2)
    problems = embedded.generate_problems(params, 20, seed=0, split="train")
    rng = random.Random(0)
    for problem in problems:
        positive = embedded.oracle_solution(problem, rng=rng, spurious_rate=1.0)
        needed = embedded.solve(problem)
        lines = positive.split("\n")
        if len(lines) > len(needed) + 1:
            break
    expected = [N if line in needed else S for line in lines[:-1]] + [A]
    wrong_answer = embedded.final_answer_line((int(problem.answer) + 1) % 23)
    negative = "\n".join([needed[0], "Zz has 1 + 1 = 2 x.", *needed[1:], wrong_answer])
    samples = pl.DataFrame(
        {
            "problem_id": [problem.problem_id] * 2,
            "sample_id": ["neg", "pos"],
            "solution": [negative + "\n", positive + "\n"],
            "is_correct": [False, True],
        }
    )
    spurious_at = expected.index(S) + 1
    outcomes = {("neg", i): [j < c for j in range(5)] for i, c in enumerate([5, 1, 0, 0, 0])}
    outcomes.update(
        {("pos", i): [i != spurious_at or j < 1 for j in range(5)] for i in range(len(lines))}
    )
    table = pl.DataFrame({"problem_id": [problem.problem_id], "spec": [problem.spec]})
    return samples, rollouts_frame(outcomes), table, expected, spurious_at


def test_from_rollouts_labels_every_step_from_the_spec():
    samples, rolled, problems, expected, spurious_at = embedded_partition()
    credit = CreditConfig(rollout_positives=True, pit_rule="largest_drop")
    table = from_rollouts(credit, "lines", samples, rolled, problems)
    assert table.schema == TABLE_SCHEMA
    neg = table.filter(pl.col("sample_id") == "neg")
    assert neg["true_label"].to_list() == [None, N, W, N, N, X]
    assert neg["is_true_first_wrong"].to_list() == [False, False, True, False, False, False]
    pos = table.filter(pl.col("sample_id") == "pos")
    assert pos["true_label"].to_list() == [None, *expected]
    assert not pos["is_true_first_wrong"].any()
    # Largest drop: pi_sft's Q 1, .2, 0 drops most at step 1; best-of-K's 1, 1, 0 at step 2.
    assert (
        neg["is_first_pit_pi_sft"].arg_max() == 1 and neg["is_first_pit_best_of_k"].arg_max() == 2
    )
    assert table["is_first_pit"].equals(table["is_first_pit_best_of_k"])  # the configured one
    assert (
        pos["is_spurious_pi_sft"].arg_max() == spurious_at
        and not pos["is_spurious_best_of_k"].any()
    )
    out = credit_vs_truth(table).rows_by_key("rollout_policy", named=True, unique=True)
    assert out["best_of_k"]["share_pit_exact"] == 1.0
    assert out["pi_sft"]["share_pit_exact"] == 0.0 and out["pi_sft"]["share_pit_within_one"] == 1.0
    assert out["pi_sft"]["spurious_precision"] == out["pi_sft"]["spurious_recall"] == 1.0
    assert out["best_of_k"]["spurious_recall"] == 0.0


def test_from_rollouts_without_ground_truth():
    samples, rolled, problems, expected, _ = embedded_partition()
    credit = CreditConfig(rollout_policy="pi_sft", rollouts_per_prefix=5)
    specless = problems.with_columns(pl.lit(None, dtype=pl.String).alias("spec"))
    for table in (
        from_rollouts(credit, "lines", samples, rolled),  # no problems passed
        from_rollouts(credit, "lines", samples, rolled, specless),  # gsm8k, math
        from_rollouts(credit, "lines", samples, rolled, problems.drop("spec")),
    ):
        assert table.schema == TABLE_SCHEMA
        assert (
            table["true_label"].null_count()
            == table["is_true_first_wrong"].null_count()
            == table.height
        )
        assert truth_metadata(table) == {"credit_vs_truth": NO_GROUND_TRUTH}
    assert ground_truth(samples, problems, "lines").height == 5 + len(expected)
    assert ground_truth(samples, problems, "blank_lines").height == 0  # labels are per line
    with pytest.raises(ValueError, match="problems lacks problem"):
        from_rollouts(credit, "lines", samples, rolled, problems.clear())
    # pi_sft with fewer than K rollouts: best-of-K cannot be estimated, its flags are null
    few = rolled.filter(pl.col("rollout_idx") < 3)
    table = from_rollouts(credit, "lines", samples, few, problems)
    assert table["is_first_pit_best_of_k"].null_count() == table.height
    assert table["is_first_pit_pi_sft"].null_count() == 0
    assert credit_vs_truth(table)["rollout_policy"].to_list() == ["pi_sft"]


def test_credit_vs_truth_sql_matches_the_function(warehouse: Warehouse):
    specless = {
        sid: (ok, [None] * len(labels), pit, flags)
        for sid, (ok, labels, pit, flags) in TRUTH.items()
    }
    partitions = {(100, 0): truth_table(TRUTH), (100, 1): truth_table(specless)}
    partitions[(200, 0)] = truth_table(TRUTH).with_columns(
        pl.lit(None, dtype=pl.Boolean).alias(c)
        for c in ("is_first_pit_best_of_k", "is_spurious_best_of_k")
    )
    frames = []
    for (size, seed), frame in partitions.items():
        frame = frame.with_columns(data_size=pl.lit(size), seed=pl.lit(seed))
        path = warehouse.partition_file("step_advantages", size, seed)
        write_parquet_atomic(frame, path)
        frames.append(frame)
    expected = credit_vs_truth(pl.concat(frames), by=["data_size", "seed"])
    result = run_query("@credit_vs_truth", warehouse)
    assert result.columns == expected.columns
    assert len(result.rows) == expected.height == 5
    for got, want in zip(result.rows, expected.rows(), strict=True):
        assert got == pytest.approx(want, abs=1e-4)
