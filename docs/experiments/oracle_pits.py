"""Is per-step DPO held back by where its Monte Carlo first pits land?

Monte Carlo first pits (best-of-K rollouts from every step prefix) land on the true first
wrong step for 55-60% of negatives in the demo (at or one step before it for about 80%). This
script retrains a finished partition's per-step DPO model with its pits replaced by the task
solver's ground truth (``is_true_first_wrong`` of ``step_advantages``), everything else as the
pipeline's ``per_step_dpo_model`` does it: the same negatives, chosen sides, settings and
seeds. ``mc`` keeps the Monte Carlo pits and must reproduce the pipeline's model (the control);
``truth`` is the oracle. If the oracle gains much more over SFT than ``mc`` does, credit
assignment is what limits the method here; if not, the pairs' signal is not the bottleneck.
``nll`` is the control without negatives: every pair's rejected side is its chosen side, so
the DPO term is log 2 with no gradient and only the chosen side's NLL (``dpo_sft_weight``)
trains, with the same pairs, schedule and updates: what the stage does without the per-step
negatives.

``token`` and ``truthtoken`` (thirteenth session) keep the pits of ``mc`` and ``truth`` but
cut each rejected side right after its first token that departs from the pair's chosen side,
where that token lies in the pit step (other pairs are kept whole). The pit step's later
tokens are mostly right given that token ("18 + 1 = 19" after a wrong "+": the constant and
the sum are right), and the step cut pushes them down too. If that is what cancels the
negatives' gain, the token cut beats the step cut and the ``nll`` control.

``mcclean``, ``truthclean`` and ``nllclean`` (sixteenth session) are ``mc``, ``truth`` and
``nll`` with clean chosen sides: 14-18% of pi_sft's correct samples on base S hold a wrong step
(mostly a name not in the question, with the right numbers), and Monte Carlo credit never
looks inside positives. Each pair whose chosen side has a ``wrong`` step (by the task's
solver) gets the problem's first correct sample without one instead, else its first such
teacher solution, else the pair is dropped. If clean chosen sides lift both ``mc`` and
``nll``, the positives' wrong steps cost accuracy, and credit on positives could earn it.

A dose of the negatives (sixteenth session): ``KEY=VALUE`` arguments after the mode set
fields of the config's ``training`` section, e.g. ``dpo_beta=0.03``. With the NLL term on,
the DPO term's gradient scales about linearly with ``dpo_beta`` at small margins, so a sweep
of it from the ``nll`` control (no DPO gradient) upwards is a dose-response curve of the
per-step negatives.

Negatives that are not the trained model's own samples (seventeenth session): ``init=TABLE``
or ``init=TABLE@SIZE`` starts training (and the frozen reference) from another model of the
warehouse instead of the partition's pi_sft, e.g. ``init=rft_model`` (this partition's RFT
model) or ``init=sft_model@2000`` (the SFT model of partition 2000|SEED), while the pairs stay
pi_sft's. On-policy negatives mirror the NLL of the same states' positives in expectation
(``docs/laptop-study.md``, "Why several correct paths alone would not change this"); from
another model they need not, so ``mc`` against ``nll`` with the same ``init`` tests whether
the negatives then add anything of their own. The row's ``init_*`` fields pair the result
with that model's own evaluation.

``mcw`` and ``nllw`` (twenty-ninth session) are ``mc`` and ``nll`` with each pair weighted
as ``credit.advantage_weighted`` weights it (:func:`preference.pair_weights`: the value lost
at the pit, in [0.1, 1], mean 1). With best-of-K rollouts, Q-values are 0 or 1: the pits that
lose no value are at step 1 of problems whose rollouts from the question all fail, and only
about a quarter of them are the true first wrong step (against about 70% of the others), so
the weighting mostly turns down pairs whose pit is a guess. ``mcwpi`` and ``nllwpi`` take the
weights from Q-values under ``rollout_policy: pi_sft`` instead (``c / M`` of the same
rollouts, recomputed by :func:`advantages.from_rollouts`), which grade the value lost in
steps of 1/M; the first pits, and so the pairs, are those of best-of-K (under ``first_zero``
both put the pit where all M rollouts fail).

``mcdead`` and ``mcalive`` (twenty-ninth session) split ``mc``'s negatives by the task's
ground truth, as ``mcnames`` and ``mcrest`` do by token role: ``mcdead`` keeps only the
negatives whose pit step (the rejected side's last line) names one of the problem's dead ends,
``mcalive`` only the others; every other pair's rejected side becomes its chosen side, as in
``nll``. On the ``embedded`` preset's task the teacher writes true lines about dead ends
(``teacher.spurious_rate``), SFT copies them, and per-step DPO writes fewer of them than the
control (``spurious_lines.py --by-size``): if the negatives at those lines are the ones that
help and the rest the ones that cost, ``mcdead`` is above ``nll`` and ``mcalive`` below it.

``mcoff`` (twenty-ninth session) keeps only the negatives whose prefix before the pit step
holds a line the solver does not label ``needed`` (a wrong line, or a true line about a dead
end): negatives at states off the problem's one correct path, which no correct solution
without such a line passes through. On-policy negatives mirror the NLL of the positives at the
same state (the fourteenth session's argument), so they can add a direction of their own only
where no positive is; if that is what the chain task lacks, ``mcoff`` is above ``nll`` where
``mcdead`` (a subset of about the same size at on-path states) is below it.

``slips`` (seventeenth session) keeps ``mc``'s pairs, chosen sides and schedule and replaces
each rejected side by a teacher slip on the same problem: ``embedded.oracle_solution`` with
``slip_rate`` 1 (one needed step's result wrong), cut right after that step. Its negatives are
not samples of any model being trained and part from the correct path at a true first wrong
step; against ``mc`` (pi_sft's own negatives) and ``nll`` (none) it tells whether negatives
from elsewhere add a direction of their own.

    python docs/experiments/oracle_pits.py HOME CONFIG_YAML SIZE SEED MODE [KEY=VALUE ...]

HOME is a warehouse where the partition SIZE|SEED of CONFIG_YAML (``SYNTHDATA_CONFIG``) is
materialized. Scores: greedy accuracy on the pool's test problems, the paired difference
to the partition's SFT model (its ``evaluations`` rows), and (``first_errors``, from the
seventeenth session) the kinds of the greedy solutions' first errors
(``sft_forgetting.first_error_kinds``). Rows go to ``oracle_pits.jsonl`` next to this file.
Run with one torch thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from synthdata_assets import advantages, pairs, preference
from synthdata_assets.config import load_config
from synthdata_assets.steps import prefix, resolve_rule, split_steps
from synthdata_assets.tasks import embedded
from training.checkpoint import load_checkpoint
from training.config import TrainingConfig
from warehouse import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import base_recipe  # noqa: E402
import sft_forgetting  # noqa: E402
import shared_tokens  # noqa: E402
import spurious_lines  # noqa: E402

OUT = Path(__file__).with_name("oracle_pits.jsonl")
MODES = (
    "mc", "truth", "nll", "token", "truthtoken", "mcclean", "truthclean", "nllclean", "slips",
    "mcnames", "mcrest", "mcw", "nllw", "mcwpi", "nllwpi", "mcdead", "mcalive", "mcoff",
)  # fmt: skip


class Partition:
    """The tables of one materialized partition SIZE|SEED of a warehouse."""

    def __init__(self, home: str, config_yaml: str, size: str, seed: str) -> None:
        self.home, self.config_yaml = home, config_yaml
        self.config = load_config(config_path=config_yaml)
        self.warehouse = Warehouse(Path(home))
        self.size, self.seed = int(size), int(seed)
        self.problems = pl.read_parquet(self.warehouse.table_file("problems"))
        self.spec = dict(zip(self.problems["problem_id"], self.problems["spec"], strict=True))

    def table(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(self.warehouse.partition_file(name, self.size, self.seed))

    def pairs(self, pits: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """The per-step and outcome pairs ``per_step_dpo_model`` and ``dpo_model`` train on,
        built from the Monte Carlo pits or (``truth*``) the true first wrong steps; and the
        step advantages they came from."""
        adv = self.table("step_advantages")
        if pits.endswith("wpi"):
            credit = self.config.credit.model_copy(update={"rollout_policy": "pi_sft"})
            adv = advantages.from_rollouts(
                credit,
                resolve_rule(credit.step_rule, self.config.task.name),
                self.table("policy_samples"),
                self.table("step_rollouts"),
                self.problems,
            )
        if pits.startswith("truth"):
            adv = adv.with_columns(is_first_pit=pl.col("is_true_first_wrong"))
        built = pairs.partition_pairs(
            self.problems,
            self.table("policy_samples"),
            adv,
            self.table("step_rollouts"),
            self.table("teacher_solutions"),
            seed=self.seed,
            step_rule=resolve_rule(self.config.credit.step_rule, self.config.task.name),
        )
        kind = pl.col("kind")
        return built.filter(kind == "per_step"), built.filter(kind == "outcome"), adv


def main(home: str, config_yaml: str, size: str, seed: str, pits: str, *overrides: str) -> None:
    started = time.monotonic()
    if pits not in MODES:
        raise SystemExit(f"mode must be one of {', '.join(MODES)}, got {pits!r}")
    part = Partition(home, config_yaml, size, seed)
    init = next((o.partition("=")[2] for o in overrides if o.startswith("init=")), None)
    training = _training_overrides(tuple(o for o in overrides if not o.startswith("init=")))
    part.config = part.config.model_copy(
        update={"training": part.config.training.model_copy(update=training)}
    )
    config, problems, table, size_, seed_ = (
        part.config, part.problems, part.table, part.size, part.seed
    )  # fmt: skip
    chosen, twins, adv = part.pairs(pits)
    cleaned = None
    if pits.endswith("clean"):
        chosen, cleaned = clean_chosen(chosen, part)
    if pits.startswith("nll"):
        chosen = preference.without_negatives(chosen)
    slipped = None
    if pits == "slips":
        chosen, slipped = teacher_slips(chosen, part)
    sft_path = table("sft_model")["path"][0]
    init_path, init_evals = start_model(part, init)
    cut = None
    if pits.endswith("token"):
        chosen, cut = cut_at_first_departure(chosen, load_checkpoint(sft_path)[1])
    kept = None
    if pits in ("mcdead", "mcalive"):
        chosen, kept = negatives_at_dead_ends(chosen, part, dead=pits == "mcdead")
    if pits == "mcoff":
        chosen, kept = negatives_off_path(chosen, part)
    if pits in ("mcnames", "mcrest"):
        chosen, kept = negatives_by_role(
            chosen, load_checkpoint(sft_path)[1], names=pits == "mcnames"
        )
    weighted = pits.endswith(("w", "wpi"))
    weights = preference.pair_weights(chosen, adv) if weighted else None
    test = problems.filter(pl.col("split") == "test")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "per_step_dpo"
        row = preference.train_preference_model(
            config.training,
            "per_step_dpo",
            init_path,
            chosen,
            folder,
            seed=seed_,
            max_seq_len=config.model.max_seq_len,
            log=lambda m: print(m, flush=True),
            twins=twins,
            weights=weights,
            held_out=preference.held_out_texts(problems),
        ).row(0, named=True)
        greedy = sft_forgetting.greedy(config, str(folder), test, seed_)
    evals = table("evaluations")
    sft = evals.filter(pl.col("method") == "sft").select("problem_id", sft="is_correct")
    mine = greedy.select("problem_id", new="is_correct").join(sft, on="problem_id")
    start = init_evals.select("problem_id", start="is_correct").join(mine, on="problem_id")
    out = {
        "home": home,
        "config": config_yaml,
        "pool_seed": config.task.pool_seed,
        "size": size_,
        "seed": seed_,
        "pits": pits,
        "pairs": chosen.height,
        "training": training or None,
        "init": init,
        "init_accuracy": round(100 * float(start["start"].mean()), 1),
        "init_wins": int((start["new"] & ~start["start"]).sum()),
        "init_losses": int((~start["new"] & start["start"]).sum()),
        "token_cut": cut,
        "clean_chosen": cleaned,
        "slip_steps": slipped,
        "negatives_by_role": kept,
        "weights": None if weights is None else _weight_summary(weights),
        # The kinds of first error are the embedded task's (errors.first_error).
        "first_errors": sft_forgetting.first_error_kinds(greedy, test)
        if config.task.name == "embedded"
        else None,
        "pits_moved": int(
            adv.filter(pl.col("is_true_first_wrong") != pl.col("is_first_pit_best_of_k")).height
        ),
        "sft": round(100 * float(mine["sft"].mean()), 1),
        "per_step_dpo": round(100 * float(mine["new"].mean()), 1),
        "wins": int((mine["new"] & ~mine["sft"]).sum()),
        "losses": int((~mine["new"] & mine["sft"]).sum()),
        "reward_accuracy": round(row["reward_accuracy"], 3),
        "chosen_logp_change": round(row["chosen_logp_change"], 3),
        "rejected_logp_change": round(row["rejected_logp_change"], 3),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_model": base_recipe._cpu(),
    }
    sft_forgetting.write_row(OUT, out)


def _weight_summary(weights: list[float]) -> dict[str, float]:
    """The pair weights' spread: the smallest, the largest, and the share at the smallest."""
    low = min(weights)
    return {
        "min": round(low, 3),
        "max": round(max(weights), 3),
        "share_at_min": round(sum(w == low for w in weights) / len(weights), 3),
    }


def start_model(part: Partition, init: str | None) -> tuple[str, pl.DataFrame]:
    """The checkpoint training starts from (``init``: ``TABLE`` of this partition or
    ``TABLE@SIZE`` of partition SIZE|SEED; None: pi_sft) and its own test evaluations."""
    table, _, size = (init or "sft_model").partition("@")
    where = Partition(part.home, part.config_yaml, size, str(part.seed)) if size else part
    if not where.warehouse.partition_file(table, where.size, where.seed).exists():
        raise SystemExit(f"init: no table {table!r} in partition {where.size}|{where.seed}")
    model = where.table(table)
    if "method" not in model.columns or "path" not in model.columns:
        raise SystemExit(f"init: {table!r} is not a model table (no method and path)")
    method = model["method"][0]
    evals = where.table("evaluations").filter(pl.col("method") == method)
    return model["path"][0], evals


def _training_overrides(overrides: tuple[str, ...]) -> dict[str, float | int]:
    """``KEY=VALUE`` settings of the ``training`` section (numbers), checked by name."""
    fields = TrainingConfig.model_fields
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"an override is KEY=VALUE with KEY a training field, got {item!r}")
        out[key] = float(value)
    # Validated as the config file's fields are, and typed by them (dpo_epochs=8 is an int).
    checked = TrainingConfig(**{**TrainingConfig().model_dump(), **out})
    return {key: getattr(checked, key) for key in out}


def clean_chosen(chosen: pl.DataFrame, part: Partition) -> tuple[pl.DataFrame, dict]:
    """Each chosen side with a ``wrong`` step replaced by a correct solution of the same
    problem without one (pi_sft's samples first, then the teacher's), or the pair dropped."""
    spec = part.spec

    def clean(problem_id: str, text: str) -> bool:
        return "wrong" not in embedded.step_labels(spec[problem_id], text)

    candidates: dict[str, list[tuple[str, str]]] = {}
    samples = part.table("policy_samples").filter(pl.col("is_correct")).sort("sample_id")
    teacher = part.table("teacher_solutions").filter(pl.col("is_correct")).sort("solution_id")
    for frame, id_col in ((samples, "sample_id"), (teacher, "solution_id")):
        for pid, sid, text in frame.select("problem_id", id_col, "solution").iter_rows():
            if clean(pid, text):
                candidates.setdefault(pid, []).append((sid, text))
    rows, counts = [], {"kept": 0, "replaced": 0, "dropped": 0}
    for row in chosen.iter_rows(named=True):
        if clean(row["problem_id"], row["chosen"]):
            counts["kept"] += 1
        elif row["problem_id"] in candidates:
            sid, text = candidates[row["problem_id"]][0]
            # stored as the pipeline stores a chosen side (trailing newlines -> one)
            row = {**row, "chosen": pairs._with_eos(text), "chosen_id": sid}
            counts["replaced"] += 1
        else:
            counts["dropped"] += 1
            continue
        rows.append(row)
    return pl.DataFrame(rows, schema=chosen.schema), counts


def teacher_slips(chosen: pl.DataFrame, part: Partition) -> tuple[pl.DataFrame, dict]:
    """Each pair's rejected side replaced by a teacher slip on its problem cut right after
    the slipped step (seeded by the pair); how many slips fell on each step."""
    spec = part.spec
    rule = resolve_rule(part.config.credit.step_rule, part.config.task.name)
    rejected, pits, at = [], [], {}
    for pair_id, pid in chosen.select("pair_id", "problem_id").iter_rows():
        problem = embedded.EmbeddedProblem.from_spec(pid, spec[pid])
        rng = pairs._rng(part.seed, f"slip/{pair_id}")
        text = embedded.oracle_solution(problem, rng=rng, slip_rate=1.0)
        p = embedded.first_wrong_step(spec[pid], text)
        if p is None:
            raise ValueError(f"{pair_id}: a teacher slip without a wrong step: {text!r}")
        rejected.append(pairs._without_eos(prefix(split_steps(text, rule), p)))
        pits.append(p)
        at[str(p)] = at.get(str(p), 0) + 1
    return chosen.with_columns(
        rejected=pl.Series(rejected, dtype=pl.String),
        pit_step_idx=pl.Series(pits, dtype=chosen.schema["pit_step_idx"]),
    ), dict(sorted(at.items()))


def cut_at_first_departure(chosen: pl.DataFrame, tokenizer) -> tuple[pl.DataFrame, dict]:
    """Each rejected side cut right after its first token that differs from the chosen side,
    where that token lies in the pit step (the rejected side's last line); the counts of
    pairs cut, kept whole (they part before the pit step, or not at all) and tokens removed."""
    rejected, counts = [], {"cut": 0, "part_before_pit": 0, "no_departure": 0}
    counts["tokens_removed"] = 0
    for row in chosen.iter_rows(named=True):
        text = row["rejected"]
        ids = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        other = tokenizer(row["chosen"], add_special_tokens=False)["input_ids"]
        n = len(ids["input_ids"])
        pairs_ = enumerate(zip(ids["input_ids"], other, strict=False))
        k = next((i for i, (a, b) in pairs_ if a != b), min(n, len(other)))
        if k >= n:  # the rejected side is a prefix of the chosen one: its pit step is right
            kind = "no_departure"
        elif ids["offset_mapping"][k][0] < text.rfind("\n") + 1:
            kind = "part_before_pit"
        else:
            kind = "cut"
            counts["tokens_removed"] += n - k - 1
            text = text[: ids["offset_mapping"][k][1]]
        counts[kind] += 1
        rejected.append(text)
    return chosen.with_columns(rejected=pl.Series(rejected, dtype=pl.String)), counts


def negatives_at_dead_ends(
    chosen: pl.DataFrame, part: Partition, dead: bool
) -> tuple[pl.DataFrame, dict[str, int]]:
    """``mcdead``: only the pairs whose rejected side's pit step (its last line) names a dead
    end of the problem keep their negative; ``mcalive``: only the others (:func:`_only`).
    Also how many pairs were kept and nulled."""
    keep = []
    for pid, text in chosen.select("problem_id", "rejected").iter_rows():
        pit_step = text.strip().split("\n")[-1]
        keep.append(spurious_lines.has_dead_end(part.spec[pid], pit_step) == dead)
    at_dead_end = sum(keep) if dead else len(keep) - sum(keep)
    counts = {"kept": sum(keep), "nulled": len(keep) - sum(keep), "pit_at_dead_end": at_dead_end}
    return _only(chosen, keep), counts


def negatives_off_path(chosen: pl.DataFrame, part: Partition) -> tuple[pl.DataFrame, dict]:
    """``mcoff``: only the pairs whose rejected side has a line before its pit step that the
    solver does not label ``needed`` keep their negative (:func:`_only`). Also how many were
    kept and nulled, and the labels of the kept ones' pit steps."""
    keep, pit_labels = [], {}
    for pid, text in chosen.select("problem_id", "rejected").iter_rows():
        labels = embedded.step_labels(part.spec[pid], text)
        keep.append(any(label != "needed" for label in labels[:-1]))
        if keep[-1]:
            pit_labels[labels[-1]] = pit_labels.get(labels[-1], 0) + 1
    counts = {"kept": sum(keep), "nulled": len(keep) - sum(keep), "pit_labels": pit_labels}
    return _only(chosen, keep), counts


def negatives_by_role(
    chosen: pl.DataFrame, tokenizer, names: bool
) -> tuple[pl.DataFrame, dict[str, dict[str, int]]]:
    """``mcnames``: only the pairs whose rejected side first parts from the chosen side at the
    name of a step line (which quantity comes next) keep their negative; ``mcrest``: only the
    others do (a wrong number, operator or read quantity); see :func:`_only`. Also the counts
    of pairs kept and nulled by the role of their first departing token."""
    keep = []
    counts: dict[str, dict[str, int]] = {"kept": {}, "nulled": {}}
    for good, bad in chosen.select("chosen", "rejected").iter_rows():
        departure = shared_tokens.first_departure(tokenizer, good, bad)
        role = (departure[0] if departure else None) or "none"
        keep.append((role == "name") == names)
        side = "kept" if keep[-1] else "nulled"
        counts[side][role] = counts[side].get(role, 0) + 1
    return _only(chosen, keep), counts


def _only(chosen: pl.DataFrame, keep: list[bool]) -> pl.DataFrame:
    """``chosen`` with only the negatives of the pairs ``keep`` marks: every other pair's
    rejected side becomes its chosen side, as in ``nll``, so it has no DPO gradient while its
    chosen side's NLL still trains, and pairs, schedule and updates stay those of ``mc``."""
    mask = pl.lit(pl.Series(keep, dtype=pl.Boolean))
    return chosen.with_columns(
        rejected=pl.when(mask).then("rejected").otherwise("chosen"),
        rejected_has_eos=pl.when(mask).then("rejected_has_eos").otherwise("chosen_has_eos"),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
