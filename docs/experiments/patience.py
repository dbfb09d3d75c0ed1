"""What training.validation_patience would have chosen, replayed on the validation curves of
full runs (rows of sft_beyond.jsonl made under ``training.select_epoch: validation``).

    python docs/experiments/patience.py [CONFIG] [PATIENCE ...]

For each (size, seed) row of CONFIG (default ``docs/experiments/demo_select.yaml``): the
epoch the full run kept, its test accuracy and training seconds, and for each patience
(default 2 3 4) the epoch at which training would have stopped and the epoch it would have
kept (the same rule as training/sft.py: the earliest best, stop once PATIENCE epochs in a row
score no better). Prints a Markdown table and, per patience, the cells whose choice differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = Path(__file__).with_name("sft_beyond.jsonl")


def replay(curve: list[float], patience: int) -> tuple[int, int]:
    """(epochs trained, epoch kept) under ``patience`` on a run's validation curve."""
    best = 0
    for epoch, score in enumerate(curve, start=1):
        if best == 0 or score > curve[best - 1]:
            best = epoch
        if epoch - best >= patience:
            return epoch, best
    return len(curve), best


def main(argv: list[str]) -> None:
    config = argv[0] if argv else "docs/experiments/demo_select.yaml"
    patiences = [int(p) for p in argv[1:]] or [2, 3, 4]
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    rows = sorted(
        (r for r in rows if r["config"] == config and r.get("validation_curve")),
        key=lambda r: (r["size"], r["seed"]),
    )
    header = ["size", "seed", "kept", "test %", "train s"]
    header += [f"patience {p}: stop / kept" for p in patiences]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" for _ in header) + " |")
    differ = {p: 0 for p in patiences}
    for r in rows:
        cells = [r["size"], r["seed"], r["chosen_epoch"], r["accuracy"], r["train_seconds"]]
        for p in patiences:
            stop, kept = replay(r["validation_curve"], p)
            differ[p] += kept != r["chosen_epoch"]
            cells.append(f"{stop} / {kept}")
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print()
    for p in patiences:
        print(f"patience {p}: another epoch kept in {differ[p]} of {len(rows)} cells")


if __name__ == "__main__":
    main(sys.argv[1:])
