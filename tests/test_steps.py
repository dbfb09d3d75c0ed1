"""Step splitting: exact round trip for any string, and each rule's step boundaries."""

import random

import pytest

from synthdata_assets.steps import STEP_RULES, default_rule, prefix, split_steps

ALPHABET = list("ab .!?$\\[]()\n\n\n\r\t") + ["é", "√", "∑", "\u2028", "😀", "$$", "\\[", "\\]"]


def random_texts(n: int, seed: int = 0):
    rng = random.Random(seed)
    yield from ["", "\n", "\n\n\n", "\r\n", "\r\n\r\n", " ", "a", "a\n", "\n\na\n\n", "é😀"]
    for _ in range(n):
        yield "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 60)))


@pytest.mark.parametrize("rule", STEP_RULES)
def test_round_trip_any_string(rule):
    for text in random_texts(3000, seed=STEP_RULES.index(rule)):
        steps = split_steps(text, rule)
        assert "".join(steps) == text, (rule, text, steps)
        assert all(steps), "no empty step"
        assert (steps == []) == (text == "")
        if len(steps) > 1:
            assert all(s.strip() for s in steps), "a blank step only when it is the whole text"
        for i in range(len(steps) + 1):
            assert text.startswith(prefix(steps, i))


def test_lines_rule():
    text = "Bob has 7 + 3 = 10 apples.\nCid has 10 - 4 = 6 apples.\nThe answer is 6."
    steps = split_steps(text)
    assert steps == [
        "Bob has 7 + 3 = 10 apples.\n",
        "Cid has 10 - 4 = 6 apples.\n",
        "The answer is 6.",
    ]
    assert prefix(steps, 0) == ""
    assert prefix(steps, 2) == "Bob has 7 + 3 = 10 apples.\nCid has 10 - 4 = 6 apples.\n"
    assert prefix(steps, 3) == text
    assert split_steps("\n\na\n\n \nb\n\n", "lines") == ["\n\na\n\n \n", "b\n\n"]
    assert split_steps("a\r\nb\r\n", "lines") == ["a\r\n", "b\r\n"]
    assert split_steps("\n\n", "lines") == ["\n\n"]
    assert split_steps("", "lines") == []


def test_lines_rule_one_nonblank_line_per_step_and_newline_ends():
    for text in random_texts(2000, seed=7):
        steps = split_steps(text, "lines")
        for s in steps:
            assert sum(1 for line in s.split("\n") if line.strip()) <= 1
        for s in steps[:-1]:
            assert s.endswith("\n")


def test_blank_lines_rule():
    text = "\nPara one\nstill one\n\n\nPara two\n\nPara three"
    assert split_steps(text, "blank_lines") == [
        "\nPara one\nstill one\n\n\n",
        "Para two\n\n",
        "Para three",
    ]
    assert split_steps("a\n \nb", "blank_lines") == ["a\n \n", "b"]


def test_sentences_rule_basic():
    text = "First we add. Then we multiply!  Is it 3?\nYes it is."
    assert split_steps(text, "sentences") == [
        "First we add. ",
        "Then we multiply!  ",
        "Is it 3?\n",
        "Yes it is.",
    ]
    # decimals and a trailing period followed by nothing do not split
    assert split_steps("Pi is 3.14 roughly.", "sentences") == ["Pi is 3.14 roughly."]
    assert split_steps("Done.  \n", "sentences") == ["Done.  \n"]


def test_sentences_keep_math_whole():
    text = (
        "We have $x = 1. y = 2$ here. Then $$a. b$$ follows. "
        "Also \\[p. q\\] and \\(r. s\\) stay. Cost is \\$5. Next."
    )
    assert split_steps(text, "sentences") == [
        "We have $x = 1. y = 2$ here. ",
        "Then $$a. b$$ follows. ",
        "Also \\[p. q\\] and \\(r. s\\) stay. ",
        "Cost is \\$5. ",
        "Next.",
    ]
    # an escaped dollar does not open math; an unbalanced opener is an ordinary character
    assert split_steps("A \\$ b. C.", "sentences") == ["A \\$ b. ", "C."]
    assert split_steps("Open $ x. y", "sentences") == ["Open $ x. ", "y"]
    # a LaTeX line break \\ inside display math does not close \[ early
    assert split_steps("\\[a \\\\ b. c\\] d. e", "sentences") == ["\\[a \\\\ b. c\\] d. ", "e"]


def test_sentences_never_split_inside_generated_math():
    rng = random.Random(3)
    for _ in range(500):
        pieces, spans, pos = [], [], 0
        for _ in range(rng.randrange(1, 8)):
            if rng.random() < 0.4:
                o, c = rng.choice([("$", "$"), ("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)")])
                body = "".join(rng.choice("xy1. !?\n") for _ in range(rng.randrange(1, 10)))
                piece = o + body + c
                spans.append((pos, pos + len(piece)))
            else:
                piece = "".join(rng.choice("ab. !?\n") for _ in range(rng.randrange(1, 12)))
                piece = piece.replace("$", "")
            pieces.append(piece)
            pos += len(piece)
        text = "".join(pieces)
        steps = split_steps(text, "sentences")
        assert "".join(steps) == text
        cuts = {len(prefix(steps, i)) for i in range(1, len(steps))}
        for lo, hi in spans:
            assert not any(lo < c < hi for c in cuts), (text, steps)


def test_unknown_rule_and_default_rule():
    with pytest.raises(ValueError, match="lines.*blank_lines.*sentences"):
        split_steps("a", "words")
    assert default_rule("embedded") == "lines"
    assert default_rule("gsm8k") == "lines"
    assert default_rule("math") == "sentences"
    with pytest.raises(ValueError, match="no default step rule"):
        default_rule("aime")
    with pytest.raises(ValueError, match="out of range"):
        prefix(["a\n", "b"], 3)
    with pytest.raises(TypeError):
        split_steps(None)  # type: ignore[arg-type]
