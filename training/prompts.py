"""The single prompt format shared by every stage (SFT, sampling, RFT, DPO, evaluation).

A training example is a ``(prompt, completion)`` pair::

    Question: Max has 12 cards. ... How many cards does Lea have? Count modulo 23.
    Solution:
    Gus has 14 + 22 = 13 cards.
    Lea has 13 + 19 = 9 cards.
    The answer is 9.

The prompt ends with the newline after ``Solution:``; the completion is the solution's lines
plus a final newline. The trainer appends the tokenizer's EOS token after the completion, so
the model learns to end a solution by emitting EOS after the answer line, and generation stops
there: a sampled solution's text ends with that last newline. Every stage must build its text
through these two functions: a prompt that differs by one character between training and
sampling is a different task for a small model.
"""

from __future__ import annotations


def format_prompt(question: str) -> str:
    """The text the model is conditioned on for ``question``."""
    return f"Question: {question}\nSolution:\n"


def format_example(question: str, solution: str) -> tuple[str, str]:
    """The ``(prompt, completion)`` pair that teaches ``solution`` for ``question``.

    The completion is the solution plus one newline. A sampled completion already ends with
    that newline (the model emits EOS after it), so trailing newlines are dropped first: a
    self-generated solution trains exactly like a teacher's.
    """
    return format_prompt(question), solution.rstrip("\n") + "\n"
