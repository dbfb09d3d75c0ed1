"""Tests for synthdata_assets.verify: extraction, equivalence, real-data bars, garbage, timing."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from synthdata_assets import verify
from synthdata_assets.verify import (
    FORMATS,
    Grade,
    answers_match,
    extract_answer,
    gold_from_reference,
    grade,
    grade_many,
    infer_format,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
MATH_SAMPLE = DATA / "math" / "math500_sample.jsonl"

# Slack over ANSWER_TIMEOUT_S for a helper start-up and a loaded test machine.
SLACK_S = 3.0


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (expected the shared data checkout)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --------------------------------------------------------------------------- real-data bars


def test_gsm8k_reference_answers_grade_correct():
    rows = _rows(GSM8K_TEST)
    assert len(rows) == 1319
    golds = [gold_from_reference(r["answer"], "gsm8k") for r in rows]
    grades = grade_many([r["answer"] for r in rows], golds, "gsm8k")
    wrong = [(r["answer"][-40:], g) for r, g in zip(rows, grades, strict=True) if not g.is_correct]
    assert wrong == []


def test_gsm8k_shuffled_golds_grade_wrong():
    rows = _rows(GSM8K_TEST)
    golds = [gold_from_reference(r["answer"], "gsm8k") for r in rows]
    order = list(range(len(rows)))
    random.Random(1234).shuffle(order)
    grades = grade_many([r["answer"] for r in rows], [golds[i] for i in order], "gsm8k")
    # Only rows whose borrowed gold happens to equal their own may pass.
    assert [i for i, j in enumerate(order) if grades[i].is_correct and golds[i] != golds[j]] == []
    assert sum(g.is_correct for g in grades) / len(rows) < 0.03


def test_math_reference_solutions_grade_correct():
    rows = _rows(MATH_SAMPLE)
    assert len(rows) == 100
    grades = [grade(r["solution"], r["answer"], "math") for r in rows]
    failures = [
        (r["unique_id"], g.extracted, r["answer"])
        for r, g in zip(rows, grades, strict=True)
        if not g.is_correct
    ]
    print("MATH rows graded wrong (unique_id, extracted, gold):", failures)
    assert len(failures) <= 2


def test_math_shuffled_golds_grade_wrong():
    # Goes through math_verify for nearly every pair, so it also guards against false positives.
    rows = _rows(MATH_SAMPLE)
    order = list(range(len(rows)))
    random.Random(1234).shuffle(order)
    grades = grade_many([r["solution"] for r in rows], [rows[j]["answer"] for j in order], "math")
    passed = [
        (rows[i]["unique_id"], rows[i]["answer"], rows[j]["answer"])
        for i, j in enumerate(order)
        if rows[i]["answer"] != rows[j]["answer"] and grades[i].is_correct
    ]
    assert passed == []


# --------------------------------------------------------------------------- equivalence

HALF_FORMS = ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac12", "\\tfrac{1}{2}"]


@pytest.mark.parametrize("predicted", HALF_FORMS)
@pytest.mark.parametrize("gold", HALF_FORMS)
def test_forms_of_one_half_match(predicted, gold):
    assert answers_match(predicted, gold, "math")


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("x+1", "1+x"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
        ("90", "90^\\circ"),
        ("\\text{Evelyn}", "Evelyn"),
        ("2\\sqrt{13}", "\\sqrt{52}"),
        ("1,-2", "-2, 1"),
        ("5", "x=5"),
        ("10,\\!000", "10000"),
        (
            "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
            "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\end{pmatrix}",
        ),
        ("(-\\infty, 3]", "(-\\infty,3]"),
    ],
)
def test_math_equivalent_forms(predicted, gold):
    assert answers_match(predicted, gold, "math")


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [("3", "4"), ("0.333", "\\frac13"), ("x+1", "x-1"), ("[1,2)", "(1,2)"), ("\\sqrt{2}", "2")],
)
def test_math_different_answers_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold, "math")


def test_math_grade_uses_last_balanced_box():
    completion = "First \\boxed{7}, then finally $\\boxed{\\frac{1}{\\sqrt{4}}}$."
    assert extract_answer(completion, "math") == "\\frac{1}{\\sqrt{4}}"
    assert grade("so \\boxed{0.5}", "\\frac12", "math") == Grade("0.5", True)
    assert grade("\\fbox{\\{1, 2\\}} and a dangling \\boxed{3", "\\{1,2\\}", "math").is_correct


def test_math_falls_back_to_math_verify_extraction():
    grade_ = grade("So the final answer is $\\frac{3}{4}$.", "0.75", "math")
    assert grade_.is_correct and grade_.extracted is not None


@pytest.mark.parametrize(
    ("completion", "gold", "extracted"),
    [
        ("He pays 2*500 = $1,000\n#### 1,000", "1000", "1000"),
        ("#### $18", "18.00", "18"),
        ("Tom has 3 apples. The answer is 18.", "18", "18"),
        ("We get \\boxed{18} dollars", "18", "18"),
        ("3 + 4 = 7 and then 18 dollars.", "18", "18"),
        ("The answer is 50%.", "50", "50"),
        ("#### -5", "-5", "-5"),
    ],
)
def test_gsm8k_extraction_and_match(completion, gold, extracted):
    assert grade(completion, gold, "gsm8k") == Grade(extracted, True)


def test_gsm8k_number_forms():
    assert answers_match("1,000", "1000", "gsm8k")
    assert answers_match("$18", "18.00", "gsm8k")
    assert answers_match("18 dollars.", "18", "gsm8k")
    assert not answers_match("3", "4", "gsm8k")
    assert not answers_match("17 or 18", "18", "gsm8k")


def test_gsm8k_prefers_hashes_over_later_numbers():
    assert extract_answer("#### 12\nThe answer is 13. Also 14", "gsm8k") == "12"
    assert extract_answer("The answer is 13. Also 14", "gsm8k") == "13"


def test_embedded():
    solution = "Step 1: 3 + 4 = 7 (mod 23)\nThe answer is 7."
    assert grade(solution, "7", "embedded") == Grade("7", True)
    assert grade(solution, "8", "embedded") == Grade("7", False)
    assert grade("Step 1: 3 + 4 = 7 (mod 23)", "7", "embedded") == Grade(None, False)
    assert extract_answer("The answer is 3.\nThe answer is 5.", "embedded") == "5"
    assert grade(solution, 7, "embedded").is_correct  # int golds are accepted as their text


# --------------------------------------------------------------------------- garbage

GARBAGE = [
    "",
    "   ",
    "\\boxed{",
    "\\frac{",
    "\\boxed{\\frac{",
    "}}}{{{\\boxed{}",
    "9^{9^{9^{9^9}}}",
    "1/0",
    "\\boxed{1/0}",
    "nan",
    "\\boxed{nan}",
    "(" * 5000 + "1" + ")" * 5000,
    "x" * 1_000_000,
    "\\boxed{" * 100_000,
    "\\boxed{1}" * 50_000,
    "\x00\x01\udc80\ufffd\x7f" * 1000,
    "".join(chr(random.Random(7).randrange(0x20, 0x2FFF)) for _ in range(3000)),
    "#### ",
    "The answer is",
    "\\[" * 10_000,
    "#### " + "9" * 5000,
    "The answer is " + "9" * 5000,
    "\\boxed{" + "9" * 5000 + "}",
    "\\boxed{1}+\\boxed{2",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_is_graded_wrong_without_raising(fmt):
    for completion in GARBAGE:
        result = grade(completion, "271828", fmt)
        assert isinstance(result, Grade)
        assert not result.is_correct, (fmt, completion[:60])
        assert not answers_match(completion, "271828", fmt)
    for not_text in (None, b"\\boxed{3}", 3.0, ["3"]):
        assert grade(not_text, "3", fmt) == Grade(None, False)
        assert not answers_match(not_text, "3", fmt)
        assert not answers_match("3", not_text, fmt)


def test_pathological_math_is_bounded_and_wrong():
    # Each of these makes sympy run until math_verify's soft timeout fires.
    for completion in ("\\boxed{9^{9^{9^{9^9}}}}", "\\boxed{100000000!}"):
        started = time.monotonic()
        assert grade(completion, "3", "math") == Grade(completion[7:-1], False)
        assert time.monotonic() - started < verify.ANSWER_TIMEOUT_S + SLACK_S


# --------------------------------------------------------------------------- threads and time

PATHOLOGICAL = "\\boxed{9^{9^{9^{9^9}}}}"


def test_pathological_answer_in_a_thread_is_bounded():
    def timed() -> tuple[Grade, float]:
        started = time.monotonic()
        return grade(PATHOLOGICAL, "3", "math"), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        result, elapsed = pool.submit(timed).result()
    assert result == Grade("9^{9^{9^{9^9}}}", False)
    assert elapsed < verify.ANSWER_TIMEOUT_S + SLACK_S


def test_hard_deadline_kills_a_stuck_helper(monkeypatch):
    # A budget below math_verify's 2 s soft timeout forces the kill-and-replace path.
    assert grade("\\boxed{x+1}", "1+x", "math").is_correct  # leaves a warm helper idle
    monkeypatch.setattr(verify, "ANSWER_TIMEOUT_S", 0.5)
    outcome: list[tuple[Grade, float]] = []

    def run() -> None:
        started = time.monotonic()
        outcome.append((grade(PATHOLOGICAL, "3", "math"), time.monotonic() - started))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    ((result, elapsed),) = outcome
    assert not result.is_correct
    assert elapsed < 0.5 + 1.0
    monkeypatch.setattr(verify, "ANSWER_TIMEOUT_S", 5.0)
    assert grade("\\boxed{x+1}", "1+x", "math").is_correct  # a fresh helper took over


NORMAL_CASES = [
    ("\\boxed{x+1}", "1+x", "math"),
    ("\\boxed{\\frac{\\sqrt2}{2}}", "\\sqrt{2}/2", "math"),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", "math"),
    ("\\boxed{2\\sqrt{13}}", "\\sqrt{52}", "math"),
    ("\\boxed{3}", "4", "math"),
    ("\\boxed{p-q}", "q-p", "math"),
    ("The final answer is $\\frac{14}{3}$", "\\frac{14}{3}", "math"),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", "math"),
    ("#### 1,000", "1000", "gsm8k"),
    ("The answer is 17", "18", "gsm8k"),
    ("The answer is 7.", "7", "embedded"),
    ("no answer", "7", "embedded"),
] * 3


def test_threads_give_the_same_grades_as_the_main_thread():
    expected = [grade(c, g, f) for c, g, f in NORMAL_CASES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda case: grade(*case), NORMAL_CASES))
    assert got == expected
    assert [g.is_correct for g in expected[:12]] == [True] * 4 + [False] * 2 + [True] * 3 + [
        False,
        True,
        False,
    ]


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize(
    "call",
    [
        lambda: extract_answer("x", "latex"),
        lambda: answers_match("1", "1", "GSM8K"),
        lambda: grade("x", "1", "mat"),
        lambda: grade_many(["x"], ["1"], "nope"),
        lambda: grade_many(["x", "y"], ["1", "2"], ["math", None]),
        lambda: gold_from_reference("#### 1", "gsm"),
    ],
)
def test_unknown_format_raises_value_error_naming_formats(call):
    with pytest.raises(ValueError, match="embedded.*gsm8k.*math"):
        call()


def test_grade_many():
    grades = grade_many(
        ["#### 5", "The answer is 3.", "\\boxed{\\frac12}"],
        ["5", "4", "0.5"],
        ["gsm8k", "embedded", "math"],
    )
    assert grades == [Grade("5", True), Grade("3", False), Grade("\\frac12", True)]
    assert grade_many(["#### 1", "#### 2"], ["1", "3"], "gsm8k") == [
        Grade("1", True),
        Grade("2", False),
    ]
    with pytest.raises(ValueError, match="equally long"):
        grade_many(["#### 1"], ["1", "2"], "gsm8k")


@pytest.mark.parametrize(
    ("completion", "gold", "fmt"),
    [
        ("She earns 9 * 2 = 18\n#### 18", "18", "gsm8k"),
        ("so 18", "#### 18", "gsm8k"),
        ("thus \\boxed{\\frac{1}{2}}", "\\frac12", "math"),
        ("it is 5", "\\frac{1}{2}", "math"),
        ("3 + 4 = 7 (mod 23)\nThe answer is 7.", "7", "embedded"),
        ("The total is $1,200", "1,200", "gsm8k"),
        ("The answer is 7.", "seven", "math"),
        (None, None, "math"),
    ],
)
def test_infer_format(completion, gold, fmt):
    assert infer_format(completion, gold) == fmt


def test_gold_from_reference():
    assert gold_from_reference("a\nb\n#### 1,080", "gsm8k") == "1080"
    assert gold_from_reference("so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", "math") == (
        "\\left( 3, \\frac{\\pi}{2} \\right)"
    )
    assert gold_from_reference("x\nThe answer is 22.", "embedded") == "22"
    for reference, fmt in [("no hashes 12", "gsm8k"), ("\\boxed{1", "math"), ("7", "embedded")]:
        with pytest.raises(ValueError, match="reference solution has no"):
            gold_from_reference(reference, fmt)
