"""Would pi_sft write its negatives' wrong token greedily?

    python docs/experiments/negative_margins.py HOME CONFIG_YAML SIZE SEED [mc|truth]

Per-step DPO contrasts each negative, cut after its first pit, with a correct solution of the
problem. Where the two part (the first token of the negative that differs from the correct
solution), pi_sft saw the same prefix on both sides. A negative can change greedy accuracy only
where its token there is pi_sft's greedy choice; where pi_sft already prefers the correct
token, the negative is a sampling accident that greedy decoding would not make, and pushing
it further down changes no greedy answer. Where the wrong token is the greedy choice, the NLL
on the correct side already pushes it down by its probability: then the negative says little
that the positive does not.

For the per-step pairs of a materialized partition (Monte Carlo pits, or the true first wrong
steps), prints the number of pairs that part in their pit step, and of those: how many have
the wrong token as pi_sft's argmax, the correct token as its argmax, or neither; and the
median probability pi_sft gives each, and both together. Then, for the first ``COSINES`` of
them, the cosine in parameter space between the gradient that raises the correct token's
log-probability there (what the NLL on the chosen side does at that position) and the one
that lowers the wrong token's (what the negative adds): near 1, the negative moves the model
the way the positive already does. Appends a row to ``negative_margins.jsonl``. Run with one
torch thread.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from base_recipe import _cpu  # noqa: E402
from oracle_pits import Partition  # noqa: E402

from training.checkpoint import load_checkpoint  # noqa: E402
from training.trainer import encode_response  # noqa: E402

OUT = Path(__file__).with_name("negative_margins.jsonl")
COSINES = 300


def _gradient(model, ids: list[int], token: int, sign: float) -> torch.Tensor:
    model.zero_grad()
    logp = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)[token]
    (sign * logp).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main(home: str, config_yaml: str, size: str, seed: str, pits: str = "mc") -> None:
    part = Partition(home, config_yaml, size, seed)
    chosen, _, _ = part.pairs(pits)
    model, tokenizer = load_checkpoint(part.table("sft_model")["path"][0])
    counts = {"pairs": chosen.height, "part_in_pit_step": 0}
    counts |= {"wrong_is_argmax": 0, "right_is_argmax": 0, "neither": 0}
    p_wrong, p_right = [], []
    cosines: dict[str, list[float]] = {"wrong_is_argmax": [], "right_is_argmax": [], "neither": []}
    for row in chosen.iter_rows(named=True):
        good = encode_response(tokenizer, row["prompt"], row["chosen"], has_eos=True)
        bad = encode_response(tokenizer, row["prompt"], row["rejected"], has_eos=False)
        n = len(bad.input_ids)
        k = next(
            (
                i
                for i, (a, b) in enumerate(zip(bad.input_ids, good.input_ids, strict=False))
                if a != b
            ),
            n,
        )
        pit_line = row["rejected"].count("\n")  # the rejected side ends with its pit step
        prompt_len = len(tokenizer(row["prompt"])["input_ids"])
        if k >= n or tokenizer.decode(bad.input_ids[prompt_len:k]).count("\n") < pit_line:
            continue
        counts["part_in_pit_step"] += 1
        with torch.no_grad():
            probs = model(torch.tensor([bad.input_ids[:k]])).logits[0, -1].softmax(-1)
        wrong, right = bad.input_ids[k], good.input_ids[k]
        top = int(probs.argmax())
        key = (
            "wrong_is_argmax" if top == wrong else "right_is_argmax" if top == right else "neither"
        )
        counts[key] += 1
        p_wrong.append(float(probs[wrong]))
        p_right.append(float(probs[right]))
        if sum(map(len, cosines.values())) < COSINES:
            up = _gradient(model, bad.input_ids[:k], right, 1.0)
            down = _gradient(model, bad.input_ids[:k], wrong, -1.0)
            cosines[key].append(float(torch.nn.functional.cosine_similarity(up, down, dim=0)))
    out = {
        "home": home,
        "size": part.size,
        "seed": part.seed,
        "pool_seed": part.config.task.pool_seed,
        "pits": pits,
        **counts,
        "median_p_wrong": round(statistics.median(p_wrong), 3),
        "median_p_right": round(statistics.median(p_right), 3),
        "median_p_both": round(statistics.median(map(sum, zip(p_wrong, p_right, strict=True))), 3),
        "cosine_up_down": {
            key: [len(v), round(statistics.median(v), 3)] for key, v in cosines.items() if v
        },
        "cpu_model": _cpu(),
    }
    with OUT.open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
