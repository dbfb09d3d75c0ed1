"""The study as a whole: its stages in the order data flows through them, its partitions,
and the settings fingerprints that say whether a materialized stage is still valid.

A study is a sweep of ``data_size x seed`` partitions. Every partition runs the same
stages (:data:`PARTITION_STAGES`), after the unpartitioned :data:`SETUP_STAGES` and before
the :data:`REPORT_STAGES`, which read every partition. The sizes of ``sft_reference_sizes``
are partitions of their own, where only SFT is trained and evaluated
(:data:`REFERENCE_STAGES`).

Provenance
----------
:data:`STAGE_INPUTS` is the asset graph (each stage and the stages it reads) and
:data:`STAGE_SETTINGS` the configuration sections each stage reads itself. A stage's
fingerprint (:func:`stage_fingerprints`) is a digest of the sections it and every stage
upstream of it read (and, for the shipped base, of its weights), less the fields of
:data:`FIELD_READERS` that none of those stages reads, so it changes exactly when a setting
that can change the stage's output changes: a sweep over the DPO budget reuses the base, SFT,
the samples and the rollouts. A change of code that makes a stage compute something else
from the same settings enters its fingerprint through :data:`STAGE_REVISIONS`. Every
materialization records its stage's fingerprint (the IO manager writes it into the
materialization's metadata); :func:`stale_stages` compares the recorded ones with those the
configuration accepts (:func:`accepted_fingerprints`) and returns what must be recomputed:
the stages never materialized, made under other settings, or older than a stage they read (an
interrupted rerun), and everything downstream of them. A partition therefore never mixes
stages made under two configurations, and a rerun recomputes only what is missing or stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from synthdata_assets.config import SHIPPED_BASE, SHIPPED_NAME, ExperimentConfig
from training.config import TrainingConfig

# The base is one model for the whole study: it is trained (or loaded) and evaluated once.
SETUP_STAGES: tuple[str, ...] = ("problems", "base_model", "base_evaluation")
PARTITION_STAGES: tuple[str, ...] = (
    "teacher_solutions",
    "sft_model",
    "policy_samples",
    "rft_model",
    "step_rollouts",
    "step_advantages",
    "preference_pairs",
    "per_step_dpo_model",
    "nll_control_model",
    "dpo_model",
    "evaluations",
)
# SFT alone past the study's largest size (``sft_reference_sizes``): its own partitions.
REFERENCE_STAGES: tuple[str, ...] = ("sft_reference",)
REPORT_STAGES: tuple[str, ...] = ("scaling_curves", "first_step_curves")
# The partition dimensions, as the tables' columns and the Hive folders name them.
DATA_SIZE, SEED = "data_size", "seed"
# The metadata key under which a materialization records its stage's fingerprint.
FINGERPRINT_KEY = "synthdata/settings"

STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "problems": (),
    "base_model": ("problems",),
    "base_evaluation": ("problems", "base_model"),
    "teacher_solutions": ("problems",),
    "sft_model": ("base_model", "teacher_solutions", "problems"),
    "policy_samples": ("sft_model", "problems"),
    "rft_model": ("base_model", "sft_model", "policy_samples", "problems"),
    "step_rollouts": ("sft_model", "policy_samples", "problems"),
    "step_advantages": ("policy_samples", "step_rollouts", "problems"),
    "preference_pairs": (
        "problems",
        "teacher_solutions",
        "policy_samples",
        "step_advantages",
        "step_rollouts",
    ),
    "per_step_dpo_model": ("sft_model", "problems", "preference_pairs", "step_advantages"),
    "nll_control_model": ("sft_model", "problems", "preference_pairs", "step_advantages"),
    "dpo_model": ("sft_model", "problems", "preference_pairs"),
    "evaluations": (
        "problems",
        "base_evaluation",
        "sft_model",
        "rft_model",
        "per_step_dpo_model",
        "nll_control_model",
        "dpo_model",
    ),
    "sft_reference": ("problems", "base_model"),
    "scaling_curves": ("evaluations", "sft_reference"),
    "first_step_curves": ("evaluations", "step_advantages", "problems"),
}
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "problems": ("task",),
    "base_model": ("model", "training"),
    "base_evaluation": ("sampling",),
    "teacher_solutions": ("teacher",),
    "sft_model": ("model", "training"),
    "policy_samples": ("sampling",),
    "rft_model": ("model", "training"),
    "step_rollouts": ("credit", "sampling"),
    "step_advantages": ("credit",),
    "preference_pairs": ("credit",),
    "per_step_dpo_model": ("model", "training", "credit"),
    "nll_control_model": ("model", "training", "credit"),
    "dpo_model": ("model", "training"),
    "evaluations": ("sampling",),
    "sft_reference": ("teacher", "model", "training", "sampling"),
    "scaling_curves": (),
    "first_step_curves": (),
}


def partition_key(data_size: int, seed: int) -> str:
    """The ``data_size|seed`` key Dagster shows and ``--partition`` takes."""
    return f"{data_size}|{seed}"


def data_size_of(key: str) -> int:
    """The data size of a :func:`partition_key`."""
    return int(key.split("|", 1)[0])


def partition_keys(config: ExperimentConfig) -> list[str]:
    """Every partition key of the sweep, smallest data size first."""
    return [partition_key(size, seed) for size, seed in config.partition_keys]


def reference_partition_keys(config: ExperimentConfig) -> list[str]:
    """Every partition key of the SFT-only reference sizes, smallest first."""
    return [partition_key(size, seed) for size, seed in config.reference_keys]


def upstream(stage: str) -> set[str]:
    """Every stage ``stage`` reads, directly or through others."""
    seen: set[str] = set()
    todo = list(STAGE_INPUTS[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += STAGE_INPUTS[name]
    return seen


# The preference stages: the DPO variants that train from pi_sft.
PREFERENCE_STAGES = frozenset({"per_step_dpo_model", "nll_control_model", "dpo_model"})

# Fields that only some of the stages reading their section use: the fingerprints of the
# other stages (and of everything those read) leave them out, so that changing one reuses
# what it cannot change. Changing the DPO budget reuses the base, SFT, the samples and the
# rollouts; the pit rule, the rollouts (early_stop, which they do read, needs first_zero);
# eval_samples, everything before the evaluations. A key is (section, field); a test checks
# that only those stages' modules read these fields, so a new reader is named here too.
FIELD_READERS: dict[tuple[str, str], frozenset[str]] = {
    # every dpo_ field of training: the DPO stages' own budget
    **{
        ("training", name): PREFERENCE_STAGES
        for name in TrainingConfig.model_fields
        if name.startswith("dpo_")
    },
    ("training", "rft_max_per_problem"): frozenset({"rft_model"}),
    # scaling_curves says in its report when RFT starts from pi_sft; it reads rft_model
    # through the evaluations, so its fingerprint holds the field either way
    ("training", "rft_init"): frozenset({"rft_model", "scaling_curves"}),
    ("credit", "per_step_pair_kind"): frozenset({"per_step_dpo_model", "nll_control_model"}),
    ("credit", "advantage_weighted"): frozenset({"per_step_dpo_model", "nll_control_model"}),
    ("credit", "pit_rule"): frozenset({"step_advantages"}),
    ("credit", "spurious_threshold"): frozenset({"step_advantages"}),
    ("sampling", "eval_samples"): frozenset({"base_evaluation", "evaluations", "sft_reference"}),
}

# Changes to what a stage makes from the same settings, by task: each enters the fingerprint of
# its stage (and of every stage downstream) on studies of that task, so that what a warehouse
# made before it is recomputed; other tasks' warehouses stay valid. Append; never edit one.
STAGE_REVISIONS: dict[tuple[str, str], tuple[str, ...]] = {
    # A rollout's path is graded with the prefix's steps in front (rollouts.py, "Grading").
    ("step_rollouts", "star_graph"): ("graded with the prefix's steps",),
}

# Settings added after warehouses were made with the settings before them: left out of the
# fingerprints while they hold these values (the behaviour from before), so a warehouse
# made then stays valid; any other value enters like every setting. A key is the setting's
# path: its section, then the field (and, for a nested section, the fields down to it).
ADDED_SETTINGS: dict[tuple[str, ...], object] = {
    # In order: a field is left out before the section that holds it is compared whole.
    ("task", "star_graph", "goal_arms"): 1,
    ("task", "star_graph", "hint_rate"): 0.0,
    ("task", "star_graph", "hint_labels"): 2,
    ("task", "star_graph"): {"degree": 2, "path_length": 5, "n_nodes": 50},  # as it was added
    ("training", "dpo_sft_weight"): 0.0,
    ("training", "micro_batch_size"): None,
    ("training", "gradient_checkpointing"): False,
    ("training", "dpo_batch_size"): None,
    ("training", "lora_rank"): 0,
    ("training", "logprob_chunk"): None,
    ("sampling", "stop"): [],
    ("sampling", "request_seeds"): True,
    ("training", "select_epoch"): "last",
    ("training", "validation_problems"): 500,
    ("training", "validation_patience"): None,
    ("task", "embedded", "dead_end_names"): 0,
}


def stage_fingerprints(config: ExperimentConfig, *, by_field: bool = True) -> dict[str, str]:
    """Each stage's fingerprint: a digest of the settings it and its upstream stages read.
    ``by_field=False``: of the whole sections they read, as every stage recorded before
    :data:`FIELD_READERS` (:func:`accepted_fingerprints` accepts those still)."""
    dumped = config.model_dump(mode="json")
    for path, before in ADDED_SETTINGS.items():
        *parents, field = path
        holder = dumped
        for key in parents:
            holder = holder[key]
        if holder.get(field) == before:
            del holder[field]
    base = shipped_base_digest(config)
    out = {}
    for stage in STAGE_INPUTS:
        reads = {stage} | upstream(stage)
        sections = sorted({s for name in reads for s in STAGE_SETTINGS[name]})
        settings = {name: dict(dumped[name]) for name in sections}
        if by_field:
            for (section, field), readers in FIELD_READERS.items():
                if section in settings and not readers & reads:
                    settings[section].pop(field, None)
        if base is not None and "model" in sections:
            settings["shipped_base"] = base  # a new shipped base invalidates what it made
        revisions = [
            change
            for name in sorted(reads)
            for change in STAGE_REVISIONS.get((name, config.task.name), ())
        ]
        if revisions:
            settings["revisions"] = revisions
        text = json.dumps(settings, sort_keys=True)
        out[stage] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def accepted_fingerprints(config: ExperimentConfig) -> dict[str, frozenset[str]]:
    """The fingerprints under which each stage's materialization is current: this code's
    (:func:`stage_fingerprints`, which new materializations record) and the digest of the
    whole sections, which warehouses made before :data:`FIELD_READERS` recorded. The second
    covers every setting the first does, so a match on either means the same settings."""
    narrow, whole = stage_fingerprints(config), stage_fingerprints(config, by_field=False)
    return {stage: frozenset({narrow[stage], whole[stage]}) for stage in narrow}


def shipped_base_digest(config: ExperimentConfig, folder: Path | None = None) -> str | None:
    """A digest of the shipped base's weights (in ``folder``, by default the repository's)
    when ``model.name`` is the shipped base, whose settings name it but not its contents;
    else None."""
    weights = (folder or SHIPPED_BASE) / "model.safetensors"
    if config.model.name != SHIPPED_NAME or not weights.is_file():
        return None
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Materialized:
    """What the instance recorded of a stage's latest materialization: the settings
    fingerprint it was made under, and its place in the event log (larger is later)."""

    fingerprint: str | None
    order: int


def stale_stages(
    stages: tuple[str, ...],
    recorded: Mapping[str, Materialized],
    accepted: Mapping[str, Set[str]],
) -> list[str]:
    """The ``stages`` (in flow order) to recompute: those never materialized, made under a
    fingerprint not among ``accepted`` (:func:`accepted_fingerprints`), or older than a stage
    they read; and every one of ``stages`` downstream of those. ``recorded`` also holds the
    stages ``stages`` read from outside (the setup stages of a partition)."""
    return list(stale_reasons(stages, recorded, accepted))


def stale_reasons(
    stages: tuple[str, ...],
    recorded: Mapping[str, Materialized],
    accepted: Mapping[str, Set[str]],
) -> dict[str, str]:
    """:func:`stale_stages` with why, in flow order: "never made", "made under other
    settings" (or before a :data:`STAGE_REVISIONS` change), "older than <stage>", or
    "reads <stage>" for one downstream of a stale stage."""
    why: dict[str, str] = {}
    for stage in stages:
        mine = recorded.get(stage)
        if mine is None:
            why[stage] = "never made"
            continue
        if mine.fingerprint not in accepted[stage]:
            why[stage] = "made under other settings"
            continue
        for read in STAGE_INPUTS[stage]:
            theirs = recorded.get(read)
            if read in why:
                why[stage] = f"reads {read}"
            elif theirs is None:
                why[stage] = f"reads {read}, never made"
            elif theirs.order > mine.order:
                why[stage] = f"older than {read}"
            else:
                continue
            break
    return why


def explain_stale(why: Mapping[str, str]) -> str:
    """``stale_reasons``' stages, then the reasons of those that are not stale only because
    they read a stale stage: ``"a, b, c (made under other settings: a; older than x: b)"``."""
    causes: dict[str, list[str]] = {}
    for stage, reason in why.items():
        if not reason.startswith("reads ") or reason.endswith("never made"):
            causes.setdefault(reason, []).append(stage)
    said = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in causes.items())
    return ", ".join(why) + (f" ({said})" if said else "")
