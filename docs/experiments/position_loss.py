"""Where a model's loss sits inside a step line: mean loss per token role on gold solutions.

    python docs/experiments/position_loss.py MODEL [n_distractors=0] [n=200]

Scores the gold solutions of test problems under teacher forcing and averages the loss by
the token's role in its step line (chain grammar: ``After`` ``read`` ``,`` ``name`` ``has``
``a`` ``op`` ``b`` ``=`` ``c`` ``item`` ``.``; the answer line is ``answer``). A role near
0 nats is solved; one near ln(choices) is guessed. This is how the chain grammar was chosen:
under the older grammar (``Max has 4 fewer cards than Fay.``) every role but ``name`` was
near 0 and ``name`` sat at 1.6 nats.
"""

from __future__ import annotations

import collections
import json
import sys

import torch

from synthdata_assets.tasks import embedded
from training.checkpoint import load_checkpoint
from training.prompts import format_example

ROLES = ("After", "read", ",", "name", "has", "a", "op", "b", "=", "c", "item", ".")


def role_losses(folder: str, n_distractors: int = 0, n: int = 200) -> dict[str, float]:
    params = embedded.EmbeddedParams(
        graph="chain", max_constant=5, shuffle=False, n_distractors=n_distractors
    )
    problems = embedded.generate_problems(params, n, seed=7, split="test")
    model, tokenizer = load_checkpoint(folder)
    losses = collections.defaultdict(list)
    for p in problems:
        solution = "\n".join([*embedded.solve(p), embedded.final_answer_line(p.answer)])
        prompt, completion = format_example(p.question, solution)
        head = tokenizer(prompt)["input_ids"]
        tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
        nll = -torch.log_softmax(logits.float(), -1)[range(len(tail)), tail]
        k = 0
        for token, loss in zip(tail, nll.tolist(), strict=True):
            text = tokenizer.decode([token])
            if text == "\n":
                k = 0
                continue
            role = ROLES[k] if k < len(ROLES) else "other"
            losses["answer" if text.strip() == "The" or k >= len(ROLES) else role].append(loss)
            k = len(ROLES) if text.strip() == "The" else k + 1
    return {role: round(sum(v) / len(v), 3) for role, v in losses.items()}


if __name__ == "__main__":
    opts = dict(arg.split("=") for arg in sys.argv[2:])
    out = role_losses(sys.argv[1], int(opts.get("n_distractors", 0)), int(opts.get("n", 200)))
    print(json.dumps({"model": sys.argv[1], **opts, "loss_by_role": out}))
