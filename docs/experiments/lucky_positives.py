"""How clean are the positives? pi_sft's correct samples and the per-step pairs against the
task's ground truth.

The verifier grades a sample by its final answer, and Monte Carlo credit looks only inside
negatives, so nothing in the pipeline checks the steps of a correct sample. This script
labels them with the task's solver (``embedded.step_labels``):

- per partition, the share of correct samples with a ``wrong`` step, split into those whose
  every step has the needed arithmetic (only a name is off: ``After Uma, Uma has 4 + 5 = 9.``
  for ``After Uma, Zed has ...``) and the rest (another route that lands on the right value);
- per partition, for the ``per_step`` pairs: the share whose chosen side has a ``wrong``
  step, whose pit step (the rejected side's last line) is true, and whose rejected side has a
  wrong step before its pit.

    python docs/experiments/lucky_positives.py HOME

HOME is a warehouse of the chain task. Prints one line per partition and table.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import polars as pl

from synthdata_assets.tasks import embedded
from warehouse import Warehouse

# A step line's arithmetic, "14 + 3 = 17", as cue_followed reads it.
_ARITHMETIC = embedded._ARITHMETIC_RE


def main(home: str) -> None:
    warehouse = Warehouse(Path(home))
    problems = pl.read_parquet(warehouse.table_file("problems"))
    spec = dict(zip(problems["problem_id"], problems["spec"], strict=True))
    samples = pl.read_parquet(warehouse.tables / "policy_samples" / "**/*.parquet")
    for (size, seed), group in sorted(samples.group_by("data_size", "seed")):
        counts = Counter()
        for pid, text in group.filter(pl.col("is_correct")).select("problem_id", "solution").rows():
            counts["positives"] += 1
            if "wrong" not in embedded.step_labels(spec[pid], text):
                continue
            needed = [
                _ARITHMETIC.search(line).group(1)
                for line in embedded.solve(embedded.EmbeddedProblem.from_spec(pid, spec[pid]))
            ]
            written = [m.group(1) for line in text.splitlines() if (m := _ARITHMETIC.search(line))]
            counts["names only" if written == needed else "other route"] += 1
        n = counts["positives"]
        print(
            f"samples {size}|{seed}: {n} positives ({n / group.height:.0%} of samples); with a "
            f"wrong step {(counts['names only'] + counts['other route']) / n:.1%}: numbers all "
            f"right, a name off {counts['names only'] / n:.1%}; another route "
            f"{counts['other route'] / n:.1%}"
        )
    pairs = pl.read_parquet(warehouse.tables / "preference_pairs" / "**/*.parquet")
    for (size, seed), group in sorted(
        pairs.filter(pl.col("kind") == "per_step").group_by("data_size", "seed")
    ):
        counts = Counter()
        for pid, chosen, rejected in group.select("problem_id", "chosen", "rejected").rows():
            labels = embedded.step_labels(spec[pid], rejected)
            counts["chosen wrong"] += "wrong" in embedded.step_labels(spec[pid], chosen)
            counts["pit true"] += labels[-1] in ("needed", "spurious")
            counts["wrong before pit"] += "wrong" in labels[:-1]
        n = group.height
        print(
            f"per_step pairs {size}|{seed}: {n}; chosen side with a wrong step "
            f"{counts['chosen wrong'] / n:.1%}; pit step true {counts['pit true'] / n:.1%}; "
            f"a wrong step before the pit {counts['wrong before pit'] / n:.1%}"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
