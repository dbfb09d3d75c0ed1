"""Tests for synthdata_assets.tasks.realdata: the real files and every malformed-row case."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from synthdata_assets.tasks.realdata import (
    DataFormatError,
    RealProblem,
    iter_jsonl,
    load_gsm8k,
    load_math,
    strip_calculator_notes,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (expected the shared data checkout)")
    return path


def _write(tmp_path: Path, lines: list[object], name: str = "rows.jsonl") -> Path:
    """Write rows (dicts/lists are JSON-encoded, str lines are written verbatim)."""
    path = tmp_path / name
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


GOOD_GSM8K = {"question": "How many?", "answer": "2 + 3 = <<2+3=5>>5\nSo 5.\n#### 5"}
GOOD_MATH = {
    "problem": "Find $x$.",
    "solution": "We have $x = 2$.\n\nSo $x = \\boxed{2}$.",
    "answer": "2",
    "subject": "Algebra",
    "level": 1,
    "unique_id": "test/algebra/1.json",
}


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize(("split", "rows"), [("train", 7473), ("test", 1319)])
def test_load_real_gsm8k(split, rows):
    problems = load_gsm8k(_real(f"gsm8k/{split}.jsonl"), split=split)
    assert len(problems) == rows
    assert len({p.problem_id for p in problems}) == rows
    assert problems[16].problem_id == f"gsm8k-{split}-000016"
    for p in problems:
        assert p.source == "gsm8k"
        assert "<<" not in p.solution and ">>" not in p.solution
        assert p.steps and all(s and "####" not in s for s in p.steps)
        assert p.answer.lstrip("-").replace(".", "", 1).isdigit()
        assert p.solution.rstrip().endswith(p.answer) or "," in p.solution.split("####")[-1]


def test_real_gsm8k_first_row():
    first = load_gsm8k(_real("gsm8k/test.jsonl"), split="test")[0]
    assert first.question.startswith("Janet")
    assert first.answer == "18"
    assert first.steps == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
    )
    assert first.solution.endswith("\n#### 18")


def test_real_gsm8k_strips_thousands_commas():
    problems = load_gsm8k(_real("gsm8k/test.jsonl"), split="test")
    with_commas = [p for p in problems if "," in p.solution.split("####")[-1]]
    assert with_commas
    assert all("," not in p.answer for p in with_commas)


def test_load_real_math():
    problems = load_math(_real("math/math500_sample.jsonl"), split="test")
    assert len(problems) == 100
    assert len({p.problem_id for p in problems}) == 100
    first = problems[0]
    assert first.problem_id == "math-test-precalculus-807"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.meta == {
        "subject": "Precalculus",
        "level": 2,
        "unique_id": "test/precalculus/807.json",
    }
    for p in problems:
        assert p.source == "math" and p.steps and p.question and p.answer
        assert all(s and s == s.strip() and s in p.solution for s in p.steps)


# --------------------------------------------------------------------------- helpers


def test_strip_calculator_notes():
    assert strip_calculator_notes("16 - 3 - 4 = <<16-3-4=9>>9") == "16 - 3 - 4 = 9"
    assert strip_calculator_notes("a <<1+1=2>>2 and <<2*3=6>>6") == "a 2 and 6"
    assert strip_calculator_notes("no notes") == "no notes"


def test_iter_jsonl_skips_blank_lines_and_numbers_lines(tmp_path):
    path = _write(tmp_path, [{"a": 1}, "", "   ", {"b": 2}])
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"b": 2})]


def test_problems_are_hashable_and_frozen(tmp_path):
    problem = load_gsm8k(_write(tmp_path, [GOOD_GSM8K]), split="test")[0]
    assert isinstance(problem, RealProblem)
    assert problem == RealProblem(
        problem_id="gsm8k-test-000000",
        question="How many?",
        answer="5",
        solution="2 + 3 = 5\nSo 5.\n#### 5",
        steps=("2 + 3 = 5", "So 5."),
        source="gsm8k",
        meta={},
    )
    hash(problem)
    with pytest.raises(AttributeError):
        problem.answer = "6"


def test_math_answer_falls_back_to_last_box_and_ids_fall_back_to_index(tmp_path):
    row = {"problem": "P?", "solution": "First \\boxed{1}.\n\nThen \\boxed{\\frac{1}{2}}."}
    (problem,) = load_math(_write(tmp_path, [row]), split="test")
    assert problem.answer == "\\frac{1}{2}"
    assert problem.problem_id == "math-test-000000"
    assert problem.steps == ("First \\boxed{1}.", "Then \\boxed{\\frac{1}{2}}.")


def test_bad_split_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_gsm8k(_write(tmp_path, [GOOD_GSM8K]), split="te st")


# --------------------------------------------------------------------------- malformed rows


def _expect_error(path: Path, line: int, reason: str, loader) -> None:
    with pytest.raises(DataFormatError) as caught:
        loader(path, split="test")
    error = caught.value
    assert (error.path, error.line) == (str(path), line)
    assert reason in error.reason
    assert str(error) == f"{path}:{line}: {error.reason}"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.reason, str(copy)) == (
        error.path,
        error.line,
        error.reason,
        str(error),
    )


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"question": "q", "answer": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"answer": "1\n#### 1"}, "missing field 'question'"),
        ({"question": "q"}, "missing field 'answer'"),
        ({"question": 7, "answer": "1\n#### 1"}, "field 'question' must be a string, got int"),
        ({"question": "  ", "answer": "1\n#### 1"}, "field 'question' is empty"),
        ({"question": "q", "answer": ["1"]}, "field 'answer' must be a string, got list"),
        ({"question": "q", "answer": "So 5."}, "answer has no '####' line"),
        ({"question": "q", "answer": "So 5.\n#### five"}, "non-numeric final answer 'five'"),
        ({"question": "q", "answer": "So 5.\n#### "}, "non-numeric final answer ''"),
        ({"question": "q", "answer": "#### 5"}, "no solution steps before '####'"),
    ],
)
def test_gsm8k_malformed_rows(tmp_path, bad_line, reason):
    path = _write(tmp_path, [GOOD_GSM8K, "", bad_line, GOOD_GSM8K])
    _expect_error(path, 3, reason, load_gsm8k)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("not json", "invalid JSON"),
        ('"a string"', "expected a JSON object, got str"),
        ({**GOOD_MATH, "problem": None}, "field 'problem' must be a string, got NoneType"),
        ({k: v for k, v in GOOD_MATH.items() if k != "problem"}, "missing field 'problem'"),
        ({**GOOD_MATH, "problem": ""}, "field 'problem' is empty"),
        ({k: v for k, v in GOOD_MATH.items() if k != "solution"}, "missing field 'solution'"),
        ({**GOOD_MATH, "answer": 2}, "field 'answer' must be a string, got int"),
        (
            {"problem": "P", "solution": "no box here", "unique_id": "x"},
            "solution has no \\boxed{} and there is no 'answer' field",
        ),
        (
            {"problem": "P", "solution": "\\boxed{2", "answer": ""},
            "solution has no \\boxed{} and there is no 'answer' field",
        ),
        ({**GOOD_MATH, "unique_id": 5}, "field 'unique_id' is not a usable id"),
        (GOOD_MATH, "duplicate problem id 'math-test-algebra-1'"),
    ],
)
def test_math_malformed_rows(tmp_path, bad_line, reason):
    other = {**GOOD_MATH, "unique_id": "test/algebra/0.json"}
    path = _write(tmp_path, [GOOD_MATH, other, bad_line])
    _expect_error(path, 3, reason, load_math)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD_GSM8K).encode() + b"\n\xff\xfe\n")
    _expect_error(path, 2, "not valid UTF-8", load_gsm8k)


def test_error_message_uses_the_given_path(tmp_path):
    path = _write(tmp_path, [GOOD_GSM8K] * 16 + [{"question": "q"}], name="test.jsonl")
    with pytest.raises(DataFormatError, match=r"test\.jsonl:17: missing field 'answer'$"):
        load_gsm8k(str(path), split="test")
