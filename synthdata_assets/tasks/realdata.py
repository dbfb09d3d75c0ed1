"""Loaders for the real GSM8K and MATH data sets, read from local JSONL files.

Both loaders turn each JSON line into a ``RealProblem``; a malformed row stops the load
with a ``DataFormatError`` naming the file, the 1-based line number and the reason
(``gsm8k/test.jsonl:17: missing field 'answer'``). Blank lines are skipped.

GSM8K (``load_gsm8k``) rows hold ``question`` and ``answer``; the answer is a worked
solution, one step per line, with ``<<48/2=24>>`` calculator notes inline and a last line
``#### 72``.

- ``problem_id``: ``gsm8k-<split>-<row>``, the row being the 0-based index among the
  file's records (``gsm8k-test-000016``).
- ``answer``: the number after ``####`` with thousands commas removed (``"1,080"`` ->
  ``"1080"``). The text after ``####`` must be a plain number.
- ``solution``: the reference answer text as-is, ``#### N`` line included, with only the
  calculator notes removed.
- ``steps``: the solution's lines before the ``####`` line, notes removed, stripped, empty
  lines dropped; at least one is required.

MATH (``load_math``) rows hold ``problem``, ``solution`` (answer in ``\\boxed{...}``) and
usually ``answer``, ``subject``, ``level``, ``unique_id``.

- ``problem_id``: ``math-`` + ``unique_id`` without its ``.json`` ending, every character
  other than letters, digits, ``_`` and ``-`` turned into ``-``
  (``test/precalculus/807.json`` -> ``math-test-precalculus-807``); without a
  ``unique_id``, ``math-<split>-<row>``.
- ``answer``: the ``answer`` field; when it is absent, null or blank, the content of the
  last balanced ``\\boxed{}``/``\\fbox{}`` of the solution (the verifier's own rule).
- ``steps``: the solution's paragraphs (split on blank lines) - a simple default; step rules
  for MATH prose are a separate design choice made elsewhere.

For both, ``question`` must be a non-empty string, every other field a row has goes to
``meta`` (MATH: ``subject``, ``level``, ``unique_id``), and ids must be unique within a file.
The last-box rule comes from ``synthdata_assets.verify`` (imported here; importing it loads
only the standard library), so loader golds and verifier extraction never disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synthdata_assets.verify import gold_from_reference


class DataFormatError(ValueError):
    """A malformed row in a data file; ``str()`` is ``"<path>:<line>: <reason>"``."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")

    def __reduce__(self) -> tuple:
        # Rebuild from the fields so the error survives pickling (e.g. across processes).
        return type(self), (self.path, self.line, self.reason)


@dataclass(frozen=True)
class RealProblem:
    """One problem of a real data set with its reference solution and gold answer."""

    problem_id: str
    question: str
    answer: str
    solution: str
    steps: tuple[str, ...]
    source: str
    # Excluded from hashing so that problems stay hashable despite the dict.
    meta: dict = field(default_factory=dict, hash=False)


_CALCULATOR_NOTE = re.compile(r"<<[^\n]*?>>")
_GSM8K_FINAL = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_NOT_ID_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def strip_calculator_notes(text: str) -> str:
    """Remove GSM8K calculator notes: ``"16 - 3 - 4 = <<16-3-4=9>>9"`` -> ``"16 - 3 - 4 = 9"``."""
    return _CALCULATOR_NOTE.sub("", text)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(1-based line number, object)`` per non-blank line.

    Raises ``DataFormatError`` for a line that is not UTF-8, not JSON, or not a JSON object.
    """
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(path, number, f"not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, number, f"invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                kind = type(obj).__name__
                raise DataFormatError(path, number, f"expected a JSON object, got {kind}")
            yield number, obj


def _check_split(split: str) -> str:
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split must be a name of letters, digits or '_', got {split!r}")
    return split


def _text_field(path: str | Path, line: int, row: dict, name: str) -> str:
    if name not in row:
        raise DataFormatError(path, line, f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        kind = type(value).__name__
        raise DataFormatError(path, line, f"field {name!r} must be a string, got {kind}")
    return value


def _question(path: str | Path, line: int, row: dict, name: str) -> str:
    question = _text_field(path, line, row, name)
    if not question.strip():
        raise DataFormatError(path, line, f"field {name!r} is empty")
    return question


def _check_unique(path: str | Path, line: int, problem_id: str, seen: set[str]) -> None:
    if problem_id in seen:
        raise DataFormatError(path, line, f"duplicate problem id {problem_id!r}")
    seen.add(problem_id)


def gsm8k_answer(solution: str) -> tuple[str, tuple[str, ...]]:
    """The final answer (commas removed) and the steps of a GSM8K worked solution without
    calculator notes; ``ValueError`` says what is wrong with one that breaks the rules above."""
    lines = solution.split("\n")
    final_at = next((i for i, t in enumerate(lines) if t.lstrip().startswith("####")), None)
    if final_at is None:
        raise ValueError("answer has no '####' line")
    final = lines[final_at].lstrip()[4:].strip()
    if not _GSM8K_FINAL.fullmatch(final):
        raise ValueError(f"non-numeric final answer {final!r} after '####'")
    steps = tuple(text.strip() for text in lines[:final_at] if text.strip())
    if not steps:
        raise ValueError("answer has no solution steps before '####'")
    return final.replace(",", ""), steps


def load_gsm8k(path: str | Path, *, split: str) -> list[RealProblem]:
    """Load a GSM8K JSONL file (``question``, ``answer``) as ``RealProblem`` rows."""
    split = _check_split(split)
    problems: list[RealProblem] = []
    for index, (line, row) in enumerate(iter_jsonl(path)):
        question = _question(path, line, row, "question")
        solution = strip_calculator_notes(_text_field(path, line, row, "answer"))
        try:
            final, steps = gsm8k_answer(solution)
        except ValueError as exc:
            raise DataFormatError(path, line, str(exc)) from None
        problems.append(
            RealProblem(
                problem_id=f"gsm8k-{split}-{index:06d}",
                question=question,
                answer=final,
                solution=solution,
                steps=steps,
                source="gsm8k",
                meta={k: v for k, v in row.items() if k not in ("question", "answer")},
            )
        )
    return problems


def load_math(path: str | Path, *, split: str) -> list[RealProblem]:
    """Load a MATH JSONL file (``problem``, ``solution``, ``answer``, ...) as ``RealProblem``."""
    split = _check_split(split)
    problems: list[RealProblem] = []
    seen: set[str] = set()
    for index, (line, row) in enumerate(iter_jsonl(path)):
        question = _question(path, line, row, "problem")
        solution = _text_field(path, line, row, "solution")
        if row.get("answer") is not None and _text_field(path, line, row, "answer").strip():
            answer = row["answer"]
        else:
            try:
                answer = gold_from_reference(solution, "math")
            except ValueError:
                raise DataFormatError(
                    path, line, "solution has no \\boxed{} and there is no 'answer' field"
                ) from None
        unique_id = row.get("unique_id")
        if unique_id is None:
            problem_id = f"math-{split}-{index:06d}"
        elif isinstance(unique_id, str) and unique_id.strip():
            problem_id = "math-" + _NOT_ID_SAFE.sub("-", unique_id.strip().removesuffix(".json"))
        else:
            raise DataFormatError(
                path, line, f"field 'unique_id' is not a usable id: {unique_id!r}"
            )
        _check_unique(path, line, problem_id, seen)
        paragraphs = (p.strip() for p in re.split(r"\n\s*\n", solution))
        problems.append(
            RealProblem(
                problem_id=problem_id,
                question=question,
                answer=answer,
                solution=solution,
                steps=tuple(p for p in paragraphs if p),
                source="math",
                meta={k: v for k, v in row.items() if k not in ("problem", "solution", "answer")},
            )
        )
    return problems
