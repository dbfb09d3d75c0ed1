"""The probes of probe.py and errors.py with step lines that restate the step's sentence:

    After Hal, Fay has 1 fewer: 18 - 1 = 17.

instead of ``After Hal, Fay has 18 - 1 = 17.`` Hypothesis: the operator and constant are then
copied right after the bigram ``Fay has`` that only the step's own sentence contains (an
induction-head copy), where the plain line needs them looked up across the value just
written, and the base learned that lookup by the quantity read (the first sentence after
``After Hal,``), which a dead end stated first defeats.

    python docs/experiments/restate.py pretrain OUT [recipe overrides ...]
    python docs/experiments/restate.py sft BASE SIZE OUT [epochs=3 lr=5e-4 ...]
    python docs/experiments/restate.py errors MODEL
    python docs/experiments/restate.py lookups MODEL

With ``operand_lookups=true`` phase 1 drills the restated amount (constant, then its first
word) on questions whose dead ends are stated anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import errors  # noqa: E402
import probe  # noqa: E402

from synthdata_assets import pretrain  # noqa: E402
from synthdata_assets.tasks import embedded  # noqa: E402
from training.prompts import format_prompt  # noqa: E402

AMOUNT = {"add": "more", "sub": "fewer", "mul": "times as many"}


def restated_step_line(q, values, world) -> str:
    a, b = embedded._operands(q, values)
    symbol = embedded._SYMBOL[q.op]
    return (
        f"After {q.args[0]}, {q.name} has {q.const} {AMOUNT[q.op]}: "
        f"{a} {symbol} {b} = {values[q.name]}."
    )


def restated_lookup_drill(params, *, seed, n, kinds=("name", "read")):
    """pretrain.lookup_drill for restated lines: ``constant`` completes ``After Hal, Fay has``
    and ``operator`` completes ``After Hal, Fay has 1`` with the first word of the amount."""
    out = []
    problems = embedded.generate_problems(params, n, seed=seed, split="lookup")
    for i, problem in enumerate(problems):
        lines = embedded.solve(problem)
        j = i % len(lines) if i % 3 else 0
        head, tail = lines[j].removeprefix("After ").split(" has ")
        read, name = head.split(", ")
        const, word = tail.split(" ")[:2]
        context = format_prompt(problem.question) + "".join(line + "\n" for line in lines[:j])
        kind = kinds[i % len(kinds)]
        completion = {
            "name": (f"After {read},", f" {name}"),
            "read": ("After", f" {read}"),
            "constant": (f"After {read}, {name} has", f" {const}"),
            "operator": (f"After {read}, {name} has {const}", f" {word.rstrip(':')}"),
        }[kind]
        out.append((context + completion[0], completion[1]))
    return out


embedded._step_line = restated_step_line
pretrain.lookup_drill = restated_lookup_drill

if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "errors":
        errors.main(*args)
    elif command == "lookups":
        import lookups  # after the patch: it binds pretrain.lookup_drill on import

        lookups.main(*args)
    else:
        {"pretrain": probe.cmd_pretrain, "sft": probe.cmd_sft}[command](*args)
