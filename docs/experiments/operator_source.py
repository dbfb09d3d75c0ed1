"""Which sentence does a base read a step's operator from?

    python docs/experiments/operator_source.py FOLDER ...

For the gold solutions of the first 300 test problems of pool 0 (teacher forcing), takes the
model's argmax at each step line's operator ("After Ray, Uma has 12 [-] 2 = 10.") and splits
the operator positions by what the question says about the quantity the line reads (Ray):

- ``no sibling``: Uma's sentence is the only one reading Ray;
- ``sibling after``: another sentence reads Ray (a dead end), stated after Uma's;
- ``sibling before``: such a sentence is stated before Uma's. A model that finds a step's
  sentence by the quantity it reads, rather than by the name it has just written, takes the
  operator from the first of these, the dead end's.

Prints one markdown row per model: the share right in each case, how many of the wrong
operators after a sibling stated before are that sibling's, and how many of the wrong ones
without a sibling are the operator of the read quantity's own sentence (the line before's).
Run with one torch thread.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
import sft_forgetting  # noqa: E402

from synthdata_assets.tasks import embedded  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.prompts import format_example  # noqa: E402

OPERATORS = {"more": "+", "fewer": "-", "times": "*"}
SENTENCE = re.compile(r"After (\w+), (\w+) has \d+ (more|fewer|times)")
CASES = ("no sibling", "sibling after", "sibling before")
# The operator is the 7th token of a step line: After, Ray, ",", Uma, has, 12, "-".
OPERATOR_TOKEN = 6


def sources(folder: str, n: int = 300) -> Counter:
    model, tokenizer = load_checkpoint(folder)
    test = sft_forgetting._problems(0).filter(pl.col("split") == "test").head(n)
    counts: Counter = Counter()
    for pid, spec in test.select("problem_id", "spec").iter_rows():
        problem = embedded.EmbeddedProblem.from_spec(pid, spec)
        # name -> (position of its sentence, the quantity it reads, its operator)
        sentence = {
            name: (i, read, OPERATORS[word])
            for i, (read, name, word) in enumerate(SENTENCE.findall(problem.question))
        }
        lines = embedded.solve(problem)
        prompt, completion = format_example(
            problem.question, "\n".join([*lines, embedded.final_answer_line(problem.answer)])
        )
        head = tokenizer(prompt)["input_ids"]
        tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
        k = line = 0
        for i, token in enumerate(tail):
            if tokenizer.decode([token]) == "\n":
                k, line = 0, line + 1
                continue
            if k == OPERATOR_TOKEN and line < len(lines):
                name = lines[line].split(", ", 1)[1].split(" ", 1)[0]
                at, read, operator = sentence[name]
                siblings = [(j, op) for other, (j, r, op) in sentence.items()
                            if r == read and other != name]  # fmt: skip
                before = [op for j, op in siblings if j < at]
                case = CASES[2] if before else CASES[1] if siblings else CASES[0]
                predicted = tokenizer.decode([int(logits[i].argmax())]).strip()
                counts[case, "n"] += 1
                counts[case, "right"] += predicted == operator
                counts[case, "sibling's"] += predicted != operator and predicted in before
                # The sentence that defines the quantity read (the previous step's own).
                own = sentence[read][2] if read in sentence else None
                counts[case, "read's own"] += predicted != operator and predicted == own
            k += 1
    return counts


def main(*folders: str) -> None:
    print(
        "| base | " + " | ".join(CASES) + " | wrong after a sibling before: the sibling's "
        "| wrong with no sibling: the read quantity's own |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for folder in folders:
        c = sources(folder)
        right = [
            f"{100 * c[case, 'right'] / c[case, 'n']:.0f}% of {c[case, 'n']}" for case in CASES
        ]
        wrong = c[CASES[2], "n"] - c[CASES[2], "right"]
        theirs = c[CASES[2], "sibling's"]
        alone = c[CASES[0], "n"] - c[CASES[0], "right"]
        owns = c[CASES[0], "read's own"]
        print(
            f"| {folder} | " + " | ".join(right) + f" | {theirs} of {wrong} | {owns} of {alone} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
