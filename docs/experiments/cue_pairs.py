"""Which of per-step DPO's pairs meet the shortcut cue: on training problems with a
misleading choice, how often the rejected side follows the cue where its chosen side does not.

The cue study (docs/results/cue-chain.md) asks whether per-step DPO's negatives or its chosen
sides unlearn the cue. This counts, per size (over all seeds of a cue study's warehouse), the
per-step pairs whose problem holds a choice where the cue misleads, those whose chosen side
follows it anyway, and those whose rejected side follows it where the chosen side does not
(the negatives placed to push the cue down), with ``tasks.embedded.cue_followed`` on each
side's text.

For comparison it counts seed 0's RFT training examples the same way (pi_sft's distinct
correct samples, at most ``training.rft_max_per_problem`` of a problem, as the RFT stage takes
them): the share on misleading problems and the share that follows the cue.

    python docs/experiments/cue_pairs.py HOME [HOME ...]

Prints a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from synthdata_assets.models import rft_examples
from synthdata_assets.tasks import embedded
from warehouse import Warehouse

RFT_MAX_PER_PROBLEM = 4  # training.rft_max_per_problem in the presets


def main(homes: list[str]) -> None:
    print(
        "| warehouse | size | examples | count | on a misleading problem | chosen side (RFT: "
        "the example) follows it | rejected side alone follows it |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for home in homes:
        tables = Warehouse(Path(home)).tables
        problems = pl.read_parquet(tables / "problems.parquet")
        spec = dict(zip(problems["problem_id"], problems["spec"], strict=True))
        pairs = pl.read_parquet(tables / "preference_pairs" / "**/*.parquet")
        pairs = pairs.filter(pl.col("kind") == "per_step")
        for (size,), group in sorted(pairs.group_by("data_size")):
            misleading = chosen = rejected_only = 0
            for problem, chosen_text, rejected_text in group.select(
                "problem_id", "chosen", "rejected"
            ).iter_rows():
                points, by_chosen = embedded.cue_followed(spec[problem], chosen_text)
                _, by_rejected = embedded.cue_followed(spec[problem], rejected_text)
                misleading += points > 0
                chosen += by_chosen > 0
                rejected_only += by_rejected > by_chosen
            n = group.height
            print(
                f"| {home} | {size} | per-step pairs | {n} | {_share(misleading, n)} | "
                f"{_share(chosen, n)} | {_share(rejected_only, n)} |"
            )
        samples = pl.read_parquet(tables / "policy_samples" / "**/*.parquet")
        by_question = dict(zip(problems["question"], problems["problem_id"], strict=True))
        for (size,), group in sorted(samples.filter(pl.col("seed") == 0).group_by("data_size")):
            examples = rft_examples(group, problems, RFT_MAX_PER_PROBLEM)
            misleading = following = 0
            for question, solution in examples:
                points, followed = embedded.cue_followed(spec[by_question[question]], solution)
                misleading += points > 0
                following += followed > 0
            n = len(examples)
            print(
                f"| {home} | {size} | RFT examples (seed 0) | {n} | {_share(misleading, n)} | "
                f"{_share(following, n)} | — |"
            )


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f}%)"


if __name__ == "__main__":
    main(sys.argv[1:])
