"""Split a solution into steps, and build step prefixes.

Per-step credit assignment (:mod:`synthdata_assets.rollouts`,
:mod:`synthdata_assets.advantages`) rolls the policy out from every step prefix of a sample,
so "what is a step" is the one definition that the rollouts, the advantages and the
preference pairs must share. It lives here: pure string functions, and the two table helpers
the credit stages share (:func:`clean_samples`, :func:`sample_steps`).

The round-trip invariant
------------------------
Every step keeps its trailing separator (the newline, the blank lines, the space after a
sentence), so ``"".join(split_steps(text, rule)) == text`` holds EXACTLY for any string and
any rule: nothing is stripped, normalized or lost, and ``prefix(steps, i)`` is a literal
prefix of the original text. A rollout from ``prefix(steps, i)`` therefore continues exactly
where the sample continued, and with the ``lines`` rule a prefix ``i < L`` ends with ``"\\n"``,
so the rollout starts on a fresh line. Whitespace that would form an empty step (leading
blank lines, blank lines between steps, trailing whitespace) is attached to a neighbouring
step instead; only the empty string has no steps, and a whitespace-only text is one step.

Rules (``STEP_RULES``)
----------------------
``lines`` (embedded task, GSM8K)
    A step is a line with its ``"\\n"``. Blank (whitespace-only) lines attach to the
    preceding step; leading blank lines attach to the first step. ``"\\r\\n"`` needs no
    special case: the ``"\\r"`` is part of the line and the ``"\\n"`` ends it. Only ``"\\n"``
    separates lines (not ``str.splitlines``'s ``\\v``, ``\\f``, ``\\u2028``, ...), because
    the model's line break is ``"\\n"``.
``blank_lines``
    A step is a paragraph: a run of non-blank lines, plus the blank lines that follow it.
``sentences`` (MATH, LaTeX prose)
    A step ends after ``.``, ``!`` or ``?`` followed by whitespace; the whole whitespace run
    belongs to that step. Math is kept whole: nothing splits inside display math
    ``$$...$$`` or ``\\[...\\]``, or inline math ``$...$`` or ``\\(...\\)``. A backslash
    escapes the next character (``\\$`` is a dollar sign, ``\\\\`` a LaTeX line break), and
    an opening delimiter with no closing one is an ordinary character (model output is
    often unbalanced; treating the rest of the text as math would make it one huge step).
    Deliberately simple: ``"e.g. x"`` splits after ``"e.g. "``, and punctuation followed by
    a closing bracket or quote does not end a sentence. MATH's display equations usually
    end their sentence, so a step is "a sentence with its equations".

``default_rule(task)`` picks the rule for a task name of the config (``embedded``, ``gsm8k``,
``star_graph`` -> ``lines``; ``math`` -> ``sentences``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

STEP_RULES: tuple[str, ...] = ("lines", "blank_lines", "sentences")

_DEFAULT_RULES = {
    "embedded": "lines",
    "gsm8k": "lines",
    "math": "sentences",
    "star_graph": "lines",
}


def default_rule(task: str) -> str:
    """The step rule for a task name: embedded/gsm8k/star_graph -> ``lines``, math ->
    ``sentences``."""
    try:
        return _DEFAULT_RULES[task]
    except KeyError:
        raise ValueError(
            f"no default step rule for task {task!r}; known tasks: {sorted(_DEFAULT_RULES)} "
            f"(or pass one of the rules {STEP_RULES} explicitly)"
        ) from None


def split_steps(text: str, rule: str = "lines") -> list[str]:
    """Split ``text`` into steps by ``rule``; ``"".join(result) == text`` always holds.

    The empty string has no steps; any other text has at least one.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_steps needs a str, got {type(text).__name__}")
    try:
        splitter = _SPLITTERS[rule]
    except KeyError:
        raise ValueError(f"unknown step rule {rule!r}; allowed: {STEP_RULES}") from None
    if not text:
        return []
    steps = splitter(text)
    if not steps:  # whitespace only: one step, so the text is never lost
        return [text]
    return steps


def prefix(steps: Sequence[str], i: int) -> str:
    """The text of the first ``i`` steps; ``prefix(steps, 0) == ""`` (the problem alone)."""
    if not 0 <= i <= len(steps):
        raise ValueError(f"prefix index {i} out of range: the solution has {len(steps)} steps")
    return "".join(steps[:i])


# --------------------------------------------------------------------------------------------
# rules


def _keep_ends(text: str) -> list[str]:
    """``text`` cut after every ``"\\n"`` (the last piece may lack one, or be dropped if empty)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _group_lines(text: str, *, paragraphs: bool) -> list[str]:
    steps: list[str] = []
    pending = ""  # leading blank lines, before the first step exists
    previous_blank = False
    for line in _keep_ends(text):
        blank = not line.strip()
        if blank:
            if steps:
                steps[-1] += line
            else:
                pending += line
        elif steps and paragraphs and not previous_blank:
            steps[-1] += line  # same paragraph
        else:
            steps.append(pending + line)
            pending = ""
        previous_blank = blank and bool(steps)
    return steps


def _split_lines(text: str) -> list[str]:
    return _group_lines(text, paragraphs=False)


def _split_blank_lines(text: str) -> list[str]:
    return _group_lines(text, paragraphs=True)


def _find_close(text: str, start: int, closer: str) -> int:
    """Index just past the first unescaped ``closer`` at or after ``start``, or -1."""
    n = len(text)
    j = start
    while j < n:
        if text.startswith(closer, j):
            return j + len(closer)
        # a backslash escapes the next character, except when the closer itself starts with
        # one (\] and \)): that case was matched above
        j += 2 if text[j] == "\\" else 1
    return -1


def _split_sentences(text: str) -> list[str]:
    steps: list[str] = []
    n = len(text)
    start = 0
    i = 0
    while i < n:
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt in ("[", "("):
                end = _find_close(text, i + 2, "\\]" if nxt == "[" else "\\)")
                i = end if end != -1 else i + 2
            else:
                i += 2  # escaped character (\$, \\, \., a command's first letter)
            continue
        if ch == "$":
            opener = "$$" if text.startswith("$$", i) else "$"
            end = _find_close(text, i + len(opener), opener)
            i = end if end != -1 else i + len(opener)
            continue
        if ch in ".!?" and i + 1 < n and text[i + 1].isspace():
            j = i + 1
            while j < n and text[j].isspace():
                j += 1
            if j >= n:  # only whitespace left: it belongs to this last sentence
                break
            steps.append(text[start:j])  # never blank: it holds the punctuation mark
            start = j
            i = j
            continue
        i += 1
    if start < n:
        steps.append(text[start:])  # the last sentence, with or without its punctuation
    return steps


_SPLITTERS: dict[str, Callable[[str], list[str]]] = {
    "lines": _split_lines,
    "blank_lines": _split_blank_lines,
    "sentences": _split_sentences,
}


def resolve_rule(rule: str, task: str) -> str:
    """The configured ``credit.step_rule``, with ``auto`` meaning the task's default."""
    return default_rule(task) if rule == "auto" else rule


def clean_samples(samples: pl.DataFrame) -> pl.DataFrame:
    """Policy samples as the credit stages see them: the trailing newline a sampled solution
    ends with (the model emits EOS after it) dropped, and empty solutions left out (they have
    no step to credit)."""
    return samples.with_columns(pl.col("solution").str.strip_chars_end("\n")).filter(
        pl.col("solution").str.len_chars() > 0
    )


def sample_steps(samples: pl.DataFrame, rule: str) -> pl.DataFrame:
    """One row per step of each sample: sample_id, problem_id, step_idx (1..L), step_text,
    sample_is_correct."""
    rows = []
    for sid, pid, solution, ok in samples.select(
        "sample_id", "problem_id", "solution", "is_correct"
    ).iter_rows():
        for i, text in enumerate(split_steps(solution, rule), start=1):
            rows.append((sid, pid, i, text, ok))
    return pl.DataFrame(
        rows,
        schema={
            "sample_id": pl.String,
            "problem_id": pl.String,
            "step_idx": pl.Int64,
            "step_text": pl.String,
            "sample_is_correct": pl.Boolean,
        },
        orient="row",
    )
