"""What per-step DPO's negatives push down: the first error of each negative, and the token at
which each per-step pair's rejected side parts from its chosen side.

    python docs/experiments/pit_tokens.py LABEL=HOME ...

HOME is a warehouse of the chain task (``synthdata run`` with ``SYNTHDATA_HOME=HOME``); every
partition on disk is read. Prints one markdown table per question, one row per warehouse,
summed over its data sizes and seeds:

1. the first error of each per-step negative (the policy sample the pair's rejected side is
   cut from), by ``errors.first_error``'s kinds (``dead_end``: a dead-end sibling of the step
   to take; ``other_name``: another quantity, mostly a chain step out of turn; ``overran``: a
   step after the target; ``read``/``operator``/``constant``/``table``: the right step with a
   wrong value; ...);
2. the parting token (the first token of the rejected side that differs from the chosen side)
   by kind, and whether a correct solution writes that token: the problem's own gold solution,
   the gold solution of some training problem, or none. A negative can only push down a token
   that costs nothing elsewhere where it is in the last column: the mechanism
   experiments/dead_end_names.md tests.

Pure reading and tokenizing; no model runs.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

from transformers import AutoTokenizer

from synthdata_assets.config import SHIPPED_BASE
from synthdata_assets.tasks import embedded
from warehouse import Warehouse
from warehouse.query import run_query

sys.path.insert(0, str(Path(__file__).parent))
import errors  # noqa: E402

ERRORS = ["dead_end", "other_name", "overran", "stopped", "read", "operator", "constant", "table"]
TOKENS = ["name", "number", "operator", "other", "none"]
WRITTEN = ["own gold", "other gold", "never"]


def _rows(home: Path, sql: str) -> list[tuple]:
    return run_query(sql, Warehouse(home)).rows


def _token_kind(text: str) -> str:
    text = text.strip()
    if text[:1].isupper():
        return "name"
    if text.isdigit():
        return "number"
    return "operator" if text in ("+", "-", "*") else "other"


def measure(home: Path, tokenizer) -> tuple[collections.Counter, collections.Counter]:
    problems = {
        pid: embedded.EmbeddedProblem.from_spec(pid, spec)
        for pid, spec in _rows(home, "SELECT problem_id, spec FROM problems")
    }

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    gold = {pid: set(ids("\n".join(embedded.solve(p)))) for pid, p in problems.items()}
    train = _rows(home, "SELECT DISTINCT problem_id FROM teacher_solutions")
    any_gold = set().union(*(gold[pid] for (pid,) in train))
    errors_seen: collections.Counter = collections.Counter()
    tokens: collections.Counter = collections.Counter()
    pairs = _rows(
        home,
        "SELECT p.problem_id, p.chosen, p.rejected, s.solution FROM preference_pairs p "
        "JOIN policy_samples s ON s.sample_id = p.sample_id AND s.data_size = p.data_size "
        "AND s.seed = p.seed WHERE p.kind = 'per_step'",
    )
    for pid, chosen, rejected, sample in pairs:
        errors_seen[errors.first_error(problems[pid], sample or "")] += 1
        c, r = ids(chosen), ids(rejected)
        k = next((i for i, (a, b) in enumerate(zip(c, r, strict=False)) if a != b), None)
        if k is None:  # one side is a prefix of the other: the pit step is the chosen's own
            tokens[("none", "own gold")] += 1
            continue
        w = r[k]
        where = "own gold" if w in gold[pid] else "other gold" if w in any_gold else "never"
        tokens[(_token_kind(tokenizer.decode([w])), where)] += 1
    return errors_seen, tokens


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.0f}" if total else "-"


def main(*args: str) -> None:
    if not args:
        raise SystemExit(__doc__)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_BASE)
    results = []
    for arg in args:
        label, _, home = arg.partition("=")
        results.append((label, *measure(Path(home), tokenizer)))
    print("First error of the per-step negatives (% of negatives)\n")
    kinds = ERRORS + sorted({k for _, e, _ in results for k in e} - set(ERRORS))
    print("| warehouse | negatives | " + " | ".join(kinds) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in kinds) + " |")
    for label, seen, _ in results:
        total = sum(seen.values())
        print(f"| {label} | {total} | " + " | ".join(_pct(seen[k], total) for k in kinds) + " |")
    print("\nParting token of the per-step pairs (% of pairs): its kind, and which correct")
    print("solutions write it (own gold: the problem's; other gold: some training problem's)\n")
    print("| warehouse | pairs | " + " | ".join(WRITTEN) + " | " + " | ".join(TOKENS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in WRITTEN + TOKENS) + " |")
    for label, _, tokens in results:
        total = sum(tokens.values())
        by_where = [sum(n for (_, w), n in tokens.items() if w == x) for x in WRITTEN]
        by_kind = [sum(n for (k, _), n in tokens.items() if k == x) for x in TOKENS]
        cells = [_pct(n, total) for n in by_where + by_kind]
        print(f"| {label} | {total} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
