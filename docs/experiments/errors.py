"""Where a model's chain solutions first go wrong, by kind (one model, greedy, test split).

    python docs/experiments/errors.py MODEL [task overrides as key=value ...]

Kinds of the first line that is not a needed step line, in order of the solution:
``dead_end`` names a dead-end sibling of the step to take; ``other_name`` names a quantity
that is not the next step (a later step, a name not in the problem, a wrong quantity read);
a line naming the right step is wrong in the value it reads (``read``), in the operator
(``operator``) or constant (``constant``) it takes from the question, or in its result
(``table``); ``stopped`` gives an answer before the target is computed; ``overran`` writes
a step after the target instead of the answer; ``answer`` writes a wrong number on the
answer line after a right chain; ``right`` is a solution with no such line. Appends one
row to probe_results.jsonl.
"""

from __future__ import annotations

import collections
import re
import sys

from synthdata_assets.steps import split_steps
from synthdata_assets.tasks import embedded

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from probe import TASK, _kv, _record  # noqa: E402

from training.checkpoint import load_checkpoint  # noqa: E402
from training.generation import SamplingParams  # noqa: E402
from training.generation.transformers_engine import TransformersGenerator  # noqa: E402
from training.prompts import format_prompt  # noqa: E402


def first_error(problem: embedded.EmbeddedProblem, text: str) -> str:
    world = embedded._parse(problem.spec)
    lines = [s.strip() for s in split_steps(text, "lines")]
    right_answer = embedded.final_answer_line(world.values[world.target])
    for i, step in enumerate(world.steps):
        if i >= len(lines):
            return "stopped"
        line = lines[i]
        if line == embedded._step_line(step, world.values, world):
            continue
        if embedded._ANSWER_LINE_RE.match(line):
            return "stopped"
        name = embedded.step_name(line)
        siblings = {q.name for q in world.spurious if q.args and q.args[0] == step.args[0]}
        if name in siblings:
            return "dead_end"
        if name == step.name:
            return _arithmetic_kind(step, world, line)
        return "other_name"
    if len(lines) == len(world.steps):
        return "stopped"
    line = lines[len(world.steps)]
    if not embedded._ANSWER_LINE_RE.match(line):
        return "overran"
    return "right" if line == right_answer else "answer"


# The plain step line, or one that restates the sentence first (restate.py).
_LINE_RE = re.compile(r"After \w+, \w+ has (?:\d+ [a-z ]+: )?(\d+) ([-+*]) (\d+) = (\d+)\.$")


def _arithmetic_kind(step, world, line: str) -> str:
    """Which part of a step line with the right name is wrong: the value read (``read``),
    the operator or constant taken from the question (``constant``), or the result given
    right operands (``table``)."""
    match = _LINE_RE.match(line)
    if not match:
        return "malformed"
    a, op, b, c = match.groups()
    want = embedded._step_line(step, world.values, world)
    want_a, want_op, want_b, _ = _LINE_RE.match(want).groups()
    if a != want_a:
        return "read"
    if op != want_op:
        return "operator"
    if b != want_b:
        return "constant"
    return "table"


def main(folder: str, *overrides: str) -> None:
    task = _kv(list(overrides))
    params = embedded.EmbeddedParams(**{**TASK, **task})
    problems = embedded.generate_problems(params, 400, seed=12345, split="test")
    model, tokenizer = load_checkpoint(folder)
    outs = TransformersGenerator(model, tokenizer, batch_size=256).generate(
        [format_prompt(p.question) for p in problems], SamplingParams(max_new_tokens=120)
    )
    pairs = list(zip(problems, outs, strict=True))
    kinds = collections.Counter(first_error(p, o[0].text) for p, o in pairs)
    # Each choice point reached with the chain right so far: did it take the needed step?
    reached = taken = 0
    for p, o in pairs:
        world = embedded._parse(p.spec)
        lines = [s.strip() for s in split_steps(o[0].text, "lines")]
        for i, step in enumerate(world.steps):
            siblings = [q for q in world.spurious if q.args and q.args[0] == step.args[0]]
            if i >= len(lines):
                break
            if siblings:
                reached += 1
                taken += embedded.step_name(lines[i]) == step.name
            if lines[i] != embedded._step_line(step, world.values, world):
                break
    _record(
        {
            "cmd": "errors",
            "model": folder,
            "task": task,
            "first_error": dict(kinds.most_common()),
            "choices_reached": reached,
            "choice_accuracy": taken / reached if reached else None,
        }
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
