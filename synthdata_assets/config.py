"""Experiment configuration: one typed object describes a whole study.

An experiment is a task (where problems come from), the data sizes and seeds to sweep,
the teacher, the learner model, and the sampling and training budgets. It is chosen in
two layers:

1. a preset, named by the environment variable ``SYNTHDATA_PRESET`` (default ``demo``):

   - ``tiny``: the smallest study that exercises every stage (tests, about a minute);
   - ``demo``: the README's main job (minutes on a laptop);
   - ``embedded``: the demo's sweep over three seeds (under an hour on 2 cores);
   - ``didactic``: path-star graphs, the paper's didactic task (minutes on 2 cores);
   - ``paper``: GPUs, a 7B learner, vLLM, GSM8K-format data, sizes 8k-128k.

2. a YAML file named by ``SYNTHDATA_CONFIG`` whose fields override the preset's, at any
   depth (``task: {n_test: 100}`` changes only ``n_test``). The file may also name the
   preset itself (``preset: embedded``).

Every field is validated before any work starts; an invalid value raises
:class:`ConfigError` naming the field, the value and what is allowed.

This module is plain Python (no Dagster): the pipeline, the CLI and the tests all read
the same object through :func:`load_config`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from synthdata_assets.tasks import embedded, star_graph
from training.config import ModelConfig, SamplingConfig, Section, TrainingConfig

# The shipped base model of the embedded task (synthdata_assets/pretrain.py makes it); here so
# that light modules can name it without importing torch.
SHIPPED_BASE = Path(__file__).resolve().parents[1] / "models" / "embedded-base"
SHIPPED_NAME = "embedded-base"

PresetName = Literal["tiny", "demo", "embedded", "didactic", "small", "paper"]
PRESETS: tuple[str, ...] = get_args(PresetName)
DEFAULT_PRESET = "demo"
PRESET_ENV = "SYNTHDATA_PRESET"
BROKER_ENV = "SYNTHDATA_BROKER"
LOCAL_BROKER = "redis://127.0.0.1:6379/0"
CONFIG_ENV = "SYNTHDATA_CONFIG"


class ConfigError(ValueError):
    """An invalid configuration; the message names each bad field and what it allows."""


class EmbeddedTaskConfig(Section):
    """Knobs of the built-in word-problem generator (see ``tasks/embedded.py``)."""

    graph: Literal["chain", "dag"] = Field(
        "chain",
        description="chain: one unary step after another from a given quantity, with dead-end "
        "siblings, so each step's hard part is a choice; dag: the older word problems whose "
        "steps also add two quantities (harder, see docs/calibration.md).",
    )
    modulus: int = Field(
        23, ge=3, le=997, description="Arithmetic is modulo this prime (chance is 1/modulus)."
    )
    min_steps: int = Field(2, ge=1, le=12, description="Fewest needed steps per problem.")
    max_steps: int = Field(4, ge=1, le=12, description="Most needed steps per problem.")
    n_distractors: int = Field(
        2,
        ge=0,
        le=12,
        description="Unneeded quantities per problem (chain: dead-end siblings of needed steps).",
    )
    shuffle: bool = Field(
        False,
        description="Sentences in random order. Else dependency order: chain: each dead end "
        "anywhere after the quantity it reads; dag: derived distractors after the asked-for "
        "quantity.",
    )
    multiply: bool = Field(True, description="Allow 'times as many' steps.")
    max_constant: int | None = Field(
        5,
        ge=2,
        description="chain only: constants of a step are 1..max_constant (times: 2..), so the "
        "arithmetic table is small while answers range over the whole modulus. None: any "
        "constant below the modulus.",
    )
    cue_rate: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="chain only: a shortcut cue. In training problems the needed step of each "
        "choice is stated before its dead-end siblings with this probability (after one of them "
        "otherwise); test problems keep a plain shuffled order, where the cue is chance.",
    )

    dead_end_names: int = Field(
        0,
        ge=0,
        le=len(embedded.NAMES),
        description="chain only: dead ends are named from the last this many names, which chain "
        "quantities never use, so a wrong choice writes a name no correct solution writes "
        "(0: every name can be either). At least n_distractors.",
    )

    @model_validator(mode="after")
    def _steps_ordered(self) -> EmbeddedTaskConfig:
        if self.max_steps < self.min_steps:
            raise ValueError(
                f"max_steps ({self.max_steps}) must be at least min_steps ({self.min_steps})"
            )
        if self.cue_rate is not None and self.graph != "chain":
            raise ValueError("cue_rate needs graph 'chain' (its choices are sibling steps)")
        if self.max_constant is not None and self.graph == "dag":
            raise ValueError("max_constant needs graph 'chain' (set it to null for dag)")
        if self.dead_end_names and self.graph != "chain":
            raise ValueError("dead_end_names needs graph 'chain' (its distractors are dead ends)")
        spare = len(embedded.NAMES) - self.max_steps - 1
        if self.dead_end_names and not self.n_distractors <= self.dead_end_names <= spare:
            raise ValueError(
                f"dead_end_names ({self.dead_end_names}) must be between n_distractors "
                f"({self.n_distractors}) and {spare} (the chain needs max_steps + 1 names)"
            )
        if self.max_constant is not None and self.max_constant >= self.modulus:
            raise ValueError(
                f"max_constant ({self.max_constant}) must be below modulus ({self.modulus})"
            )
        return self


class StarGraphTaskConfig(Section):
    """Knobs of the didactic path-star task (see ``tasks/star_graph.py``)."""

    degree: int = Field(2, ge=2, le=20, description="Arms out of the start node.")
    path_length: int = Field(5, ge=1, le=50, description="Nodes per arm after the start.")
    n_nodes: int = Field(
        50,
        ge=3,
        le=1000,
        description="Node labels are distinct values below this (at least 1 + degree * "
        "path_length - (goal_arms - 1)).",
    )
    goal_arms: int = Field(
        1,
        ge=1,
        le=19,
        description="Arms that end at the goal (they share its node): the number of true "
        "paths, and of right first steps. 1 is the standard path-star graph; more makes the "
        "decision one with several right answers and degree - goal_arms wrong ones.",
    )
    hint_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of problems (training and test alike) whose true paths start with a "
        "hint label, which no other arm ever starts with: a local rule that decides those "
        "problems, so a model can make the decision partly right. 0 turns the hint off.",
    )
    hint_labels: int = Field(
        2,
        ge=1,
        le=100,
        description="How many labels are hint labels (the last ones below n_nodes); with "
        "hint_rate > 0, at least goal_arms.",
    )

    @model_validator(mode="after")
    def _a_graph_can_be_drawn(self) -> StarGraphTaskConfig:
        # The generator's own checks, so the rules live in one place; a ValueError here is
        # reported under this section's path.
        star_graph.StarGraphParams(**self.model_dump())
        return self


class TaskConfig(Section):
    """Where problems come from and how many are held out for testing."""

    name: Literal["embedded", "star_graph", "gsm8k", "math"] = Field(
        "embedded",
        description="embedded: word problems generated offline; star_graph: the didactic "
        "path-star graphs; gsm8k/math: local JSONL files.",
    )
    train_path: str | None = Field(None, description="Training JSONL file (gsm8k/math).")
    test_path: str | None = Field(None, description="Test JSONL file (gsm8k/math).")
    n_train_pool: int = Field(
        4000,
        ge=1,
        description="Generated tasks: training problems generated; real data: a cap on rows read.",
    )
    n_test: int = Field(200, ge=1, description="Test problems (the first n of the test split).")
    pool_seed: int = Field(
        0, description="Seed of the problem pool; fixed across experiment seeds."
    )
    embedded: EmbeddedTaskConfig = EmbeddedTaskConfig()
    star_graph: StarGraphTaskConfig = StarGraphTaskConfig()

    @property
    def generated(self) -> bool:
        """Whether problems are generated here (with a spec and an oracle teacher)."""
        return self.name in ("embedded", "star_graph")


class TeacherConfig(Section):
    """Who writes the synthetic solutions (D_syn) that SFT trains on."""

    kind: Literal["oracle", "reference", "endpoint"] = Field(
        "oracle",
        description="oracle: a generated task's exact solver with noise knobs; "
        "reference: the data set's own worked solutions (gsm8k/math); "
        "endpoint: a model served behind an OpenAI-compatible API (teacher.base_url).",
    )
    base_url: str | None = Field(
        None, description="endpoint: the server's root URL, e.g. http://127.0.0.1:8000."
    )
    model: str | None = Field(None, description="endpoint: model name (default: the first one).")
    concurrency: int = Field(8, ge=1, description="endpoint: requests in flight.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="endpoint: sampling temperature.")
    max_new_tokens: int = Field(512, ge=1, description="endpoint: token budget per solution.")
    solutions_per_problem: int = Field(1, ge=1, le=64)
    spurious_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Oracle: chance of a correct but unneeded step (embedded; star_graph paths "
        "have none: set 0).",
    )
    slip_rate: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="Oracle: chance that a solution has one wrong step (star_graph: a wrong "
        "arm taken at the first step).",
    )


class CreditConfig(Section):
    """Per-step credit assignment: step rollouts, Q-values, first pits, preference pairs.

    The defaults are the paper's reading: best-of-K (K = 5) around pi_sft as the rollout
    policy, the first step whose Q is 0 as the first pit, per-step pairs for per-step DPO.
    """

    max_negatives_per_problem: int = Field(
        8, ge=1, description="Negatives per problem that get step rollouts."
    )
    rollout_positives: bool = Field(
        False, description="Also roll out positives (to flag their spurious steps)."
    )
    rollouts_per_prefix: int = Field(5, ge=1, description="M completions per step prefix.")
    rollout_temperature: float | None = Field(
        None, ge=0.0, le=5.0, description="Rollout temperature (default: sampling.temperature)."
    )
    rollout_backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="Engine for step rollouts. auto: vLLM where it is installed and a GPU is "
        "present, else sampling.backend (docs/benchmarks.md compares the engines).",
    )
    rollout_policy: Literal["pi_sft", "best_of_k"] = "best_of_k"
    k: int = Field(5, ge=1, description="K of the best-of-K rollout policy.")
    pit_rule: Literal["first_zero", "largest_drop"] = "first_zero"
    early_stop: bool = Field(
        False,
        description="Stop rolling out a negative after its first pit (the first step whose M "
        "rollouts all fail): fewer completions, no Q-values after the pit. Needs pit_rule "
        "first_zero.",
    )
    step_rule: Literal["auto", "lines", "blank_lines", "sentences"] = Field(
        "auto", description="How a solution splits into steps (auto: the task's default)."
    )
    spurious_threshold: float = Field(
        -0.2, description="Steps of positives with an advantage below this are spurious."
    )
    per_step_pair_kind: Literal["per_step", "shared_prefix", "edit_distance"] = Field(
        "per_step", description="The pairs per_step_dpo_model trains on."
    )
    advantage_weighted: bool = Field(
        False,
        description="Weight each per-step pair by the value lost at its first pit, -A_pit "
        "clipped to [0.1, 1], normalised to mean 1: a pit that loses all of the value counts "
        "most, and weights stay within 10x of each other.",
    )

    @model_validator(mode="after")
    def _early_stop_needs_first_zero(self) -> CreditConfig:
        if self.early_stop and self.pit_rule != "first_zero":
            raise ValueError(
                f"early_stop needs pit_rule 'first_zero' (got {self.pit_rule!r}): the largest "
                "drop can come after the first zero, so every prefix must be rolled out"
            )
        return self

    @model_validator(mode="after")
    def _k_fits(self) -> CreditConfig:
        if self.rollout_policy == "best_of_k" and self.rollouts_per_prefix < self.k:
            raise ValueError(
                f"best_of_k with k={self.k} needs rollouts_per_prefix >= {self.k} "
                f"(got {self.rollouts_per_prefix})"
            )
        return self


class ExecutionConfig(Section):
    """Where and how stages run. These settings never change a stage's output, so they are
    in no stage's fingerprint: changing them reuses everything already materialized."""

    process_per_stage: bool = Field(
        False,
        description="Run each stage of a run in its own process (Dagster's multiprocess "
        "executor, one step at a time), so a training stage's or an engine's memory is returned "
        "when the stage ends: what a GPU needs between training and vLLM. Off, every stage of "
        "a run shares one process, which saves the seconds of importing torch per stage.",
    )
    train_processes: int = Field(
        1,
        ge=1,
        description="Processes each training stage (SFT, RFT, both DPO variants) runs as: one "
        "per GPU, data-parallel (DDP or FSDP by train_sharding, started by torchrun; "
        "synthdata_assets/ranks.py). The "
        "global batch and the schedule are those of one process; the updates differ only in "
        "the order of float sums.",
    )
    train_sharding: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How the train_processes ranks share the model. ddp: each keeps all of the "
        "weights, gradients and AdamW states. fsdp: each keeps 1/train_processes of them "
        "(PyTorch FSDP2, training/fsdp.py), so a model whose float32 training states do not "
        "fit one GPU trains fully over several; rank 0 still saves a full Hugging Face folder, "
        "and the updates are those of ddp up to float rounding. No effect with one process.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="vLLM: the share of GPU memory its engine may take."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="vLLM: GPUs one engine's model is split over."
    )
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM: engines per generation stage, each in its own process on "
        "tensor_parallel_size GPUs of its own, sharing every call's prompts "
        "(training/generation/vllm_replicas.py). Seeded requests give one engine's samples.",
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="vLLM: the engine's context in tokens (prompt and completion). None: the "
        "model's own (Qwen2.5: 32k), which the KV cache must hold at least once. Keep it at "
        "least the longest prompt plus sampling.max_new_tokens: a longer prompt is "
        "left-truncated (a warning in the log), which no stage's fingerprint records.",
    )
    rollout_chunk_prompts: int | None = Field(
        None,
        ge=1,
        description="step_rollouts: prompts per generation call, each call's rollouts written "
        "to the partition's journal at once, so a killed stage resumes from the last finished "
        "call. None: every prompt in one call (what the transformers engine batches best).",
    )
    accelerator_slots: int | None = Field(
        None,
        ge=1,
        description="Steps that run a model at once across every run of the instance (the "
        "`accelerator` pool's limit): one per GPU, or per worker that owns its cores. None: "
        "the worker count of `synthdata run --workers N`, else parallel_runs.",
    )
    parallel_runs: int = Field(
        1,
        ge=1,
        description="Partitions `synthdata run` materializes at once on this machine when there "
        "is no broker: each its own Dagster run and process, the largest first, with this "
        "machine's cores over parallel_runs torch threads (`--threads T` sets them). A model "
        "this small uses a second thread poorly, so on 2 cores two one-thread runs finish a "
        "study about 1.6x sooner than one two-thread run, with the same tables "
        "(docs/benchmarks.md). Each run holds a model in memory. On one GPU keep 1: the runs "
        "would share it. "
        "With a broker, accelerator_slots and the workers decide instead.",
    )
    broker: str | None = Field(
        None,
        description="A Celery broker URL (e.g. redis://host:6379/0): every run's steps are "
        "sent to the `synthdata worker` processes listening there, on this machine or others, "
        "from `synthdata run` and from the UI alike. None: steps run where their run runs; "
        "`synthdata run --workers N` then uses the local Redis at " + LOCAL_BROKER + ".",
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "amqp://")):
            raise ValueError("a Celery broker URL: redis://host:port/db or amqp://...")
        return value


class ExperimentConfig(Section):
    """A whole study: the sweep and every stage's settings."""

    preset: PresetName = DEFAULT_PRESET
    data_sizes: tuple[StrictInt, ...] = Field(
        (250, 500, 1000), min_length=1, description="Training problems per partition."
    )
    seeds: tuple[StrictInt, ...] = Field((0,), min_length=1, description="Replicates per size.")
    sft_reference_sizes: tuple[StrictInt, ...] = Field(
        (),
        description="Data sizes above the largest of data_sizes at which only SFT is trained "
        "and evaluated (asset sft_reference, per seed), so that a method above SFT's largest "
        "partition still reads its multiplier off a measured SFT curve, as the paper measures "
        "SFT on up to 8x more data. Drawn like data_sizes from the same pool: "
        "task.n_train_pool must hold the largest.",
    )
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    model: ModelConfig = ModelConfig()
    sampling: SamplingConfig = SamplingConfig()
    training: TrainingConfig = TrainingConfig()
    credit: CreditConfig = CreditConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("data_sizes")
    @classmethod
    def _sizes_valid(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in sizes):
            raise ValueError(f"every data size must be a positive integer, got {list(sizes)}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"data sizes must be distinct, got {list(sizes)}")
        return tuple(sorted(sizes))

    @field_validator("sft_reference_sizes")
    @classmethod
    def _reference_sizes_valid(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"sizes must be distinct positive integers, got {list(sizes)}")
        return tuple(sorted(sizes))

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be non-negative integers, got {list(seeds)}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        return tuple(sorted(seeds))

    @model_validator(mode="after")
    def _references_above_the_study(self) -> ExperimentConfig:
        below = [s for s in self.sft_reference_sizes if s <= max(self.data_sizes)]
        if below:
            raise ValueError(
                f"sft_reference_sizes {below} are not above the largest data size "
                f"({max(self.data_sizes)}), where every method is trained already"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        task = self.task
        if task.generated:
            if self.teacher.kind == "reference":
                raise ValueError(
                    "teacher.kind 'reference' needs a real data set; "
                    f"the {task.name} task uses teacher.kind 'oracle' (or 'endpoint')"
                )
            if task.name == "star_graph" and self.teacher.spurious_rate > 0:
                raise ValueError(
                    f"teacher.spurious_rate is {self.teacher.spurious_rate}, but a star_graph "
                    "path has no unneeded step to add: set teacher.spurious_rate to 0"
                )
            if max(self.data_sizes) > task.n_train_pool:
                raise ValueError(
                    f"the largest data size ({max(self.data_sizes)}) exceeds "
                    f"task.n_train_pool ({task.n_train_pool}); raise task.n_train_pool"
                )
            if self.sft_reference_sizes and self.largest_size > task.n_train_pool:
                raise ValueError(
                    f"the largest of sft_reference_sizes ({self.largest_size}) exceeds "
                    f"task.n_train_pool ({task.n_train_pool}); raise task.n_train_pool"
                )
        else:
            if self.teacher.kind == "oracle":
                raise ValueError(
                    f"teacher.kind 'oracle' exists only for generated tasks, not "
                    f"'{task.name}'; use 'reference'"
                )
            missing = [f for f in ("train_path", "test_path") if getattr(task, f) is None]
            if missing:
                raise ValueError(
                    f"task '{task.name}' reads local files: set "
                    + " and ".join(f"task.{f}" for f in missing)
                )
        return self

    @model_validator(mode="after")
    def _epoch_selectable(self) -> ExperimentConfig:
        if self.training.select_epoch != "validation":
            if self.training.validation_patience is not None:
                raise ValueError(
                    "training.validation_patience stops on validation scores: it needs "
                    "training.select_epoch 'validation'"
                )
            return self
        if not self.task.generated:
            raise ValueError(
                "training.select_epoch 'validation' needs a generated task's validation "
                f"stream; task '{self.task.name}' has none: use 'last'"
            )
        if self.execution.train_processes > 1:
            raise ValueError(
                "training.select_epoch 'validation' scores the model in the training process: "
                f"set execution.train_processes to 1 (got {self.execution.train_processes})"
            )
        return self

    @model_validator(mode="after")
    def _endpoint_named(self) -> ExperimentConfig:
        if self.teacher.kind == "endpoint" and not self.teacher.base_url:
            raise ValueError("teacher.kind 'endpoint' needs teacher.base_url")
        return self

    @property
    def answer_format(self) -> str:
        """The verifier's format for this task's answers."""
        return self.task.name

    @property
    def chance_rate(self) -> float | None:
        """Accuracy of a uniformly random answer: 1/modulus on the embedded task; None on real
        data and on star_graph, where a random path is all but never right."""
        return 1 / self.task.embedded.modulus if self.task.name == "embedded" else None

    @property
    def first_step_baseline(self) -> tuple[float | None, str]:
        """What ``first_step_curves`` compares first steps with: on star_graph 1/degree (an
        arm out of the start picked at random, where next-token SFT is known to stall;
        goal_arms/degree with several arms to the goal), elsewhere chance."""
        if self.task.name == "star_graph":
            star = self.task.star_graph
            if star.goal_arms > 1:
                return star.goal_arms / star.degree, f"{star.goal_arms}/degree"
            return 1 / star.degree, "1/degree"
        return self.chance_rate, "chance"

    @property
    def partition_keys(self) -> list[tuple[int, int]]:
        """Every (data_size, seed) pair of the sweep."""
        return [(size, seed) for size in self.data_sizes for seed in self.seeds]

    @property
    def reference_keys(self) -> list[tuple[int, int]]:
        """Every (size, seed) pair of the SFT-only reference partitions."""
        return [(size, seed) for size in self.sft_reference_sizes for seed in self.seeds]

    @property
    def largest_size(self) -> int:
        """The most training problems any partition draws from the pool."""
        return max(self.data_sizes + self.sft_reference_sizes)


# Presets hold only what differs from the defaults above, so each reads as a diff.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "data_sizes": [32, 64],
        "seeds": [0],
        "task": {"n_train_pool": 64, "n_test": 32, "embedded": {"max_steps": 3}},
        "model": {
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 1,
            "intermediate_size": 64,
            "max_seq_len": 256,
            "arithmetic_steps": 30,
            "pretrain_steps": 30,
        },
        "sampling": {"max_new_tokens": 96, "samples_per_problem": 2, "eval_samples": 2},
        "training": {"epochs": 1, "batch_size": 16, "dpo_epochs": 1},
        "credit": {"rollout_positives": True},
    },
    "demo": {
        # Three sizes keep the demo within 15 minutes on a 2-core CPU without AVX-512, where
        # training runs in float32 (docs/results/demo-three-sizes-avx2.md); `embedded` adds 2000.
        # The pool holds more problems than the largest size, so that every partition is a draw
        # from it, the largest too.
        "data_sizes": [250, 500, 1000],
        "seeds": [0],
        "task": {"n_train_pool": 2000, "n_test": 1000},
        # The shipped base (models/embedded-base): pretrained once, loaded in seconds.
        "model": {"name": "embedded-base", "max_seq_len": 320},
        # A chain solution is at most ~90 tokens; the rest of the 320 is for the prompt. The
        # study reads greedy accuracy alone: no pass@k samples (up to a tenth of a partition).
        "sampling": {"eval_samples": 0, "max_new_tokens": 100},
        # SFT at 2e-3 pulled an earlier base from 6.7% to 1.3% at 250 problems (laptop-study.md).
        # Per-step DPO and plain DPO on the same four negatives per problem, each pair with the
        # chosen side's NLL beside its DPO loss (RPO): better than one negative without it in
        # 11 of 12 cells of the embedded preset on pool 0, and on pool 7 (laptop-study.md,
        # "The DPO stages' defaults"); plain DPO without it collapsed below its base.
        "training": {"learning_rate": 5e-4, "dpo_sft_weight": 1.0},
        "credit": {"max_negatives_per_problem": 4},
        # Two one-thread runs on a 2-core laptop (the budget the demo is made for).
        "execution": {"parallel_runs": 2},
    },
    "embedded": {
        "data_sizes": [250, 500, 1000, 2000],
        "seeds": [0, 1, 2],
        # SFT alone at 4000 and 8000 problems: per-step DPO from 1000 problems is above SFT's
        # accuracy at 2000, and its multiplier needs SFT's measured curve there (the paper
        # measures SFT on more data the same way). The pool holds 8000 training problems.
        "sft_reference_sizes": [4000, 8000],
        "task": {"n_train_pool": 8000, "n_test": 1000},
        "model": {"name": "embedded-base", "max_seq_len": 320},
        "sampling": {"eval_samples": 0, "max_new_tokens": 100},
        "training": {"learning_rate": 5e-4, "dpo_sft_weight": 1.0},
        "credit": {"max_negatives_per_problem": 4},
        "execution": {"parallel_runs": 2},
    },
    # The didactic study (docs/didactic.md): path-star graphs learnt from scratch, as in
    # Bachmann & Nagarajan. Arms of two nodes: the largest graph whose lookups a 2-layer model
    # learns in minutes on a CPU. training.epochs is the SFT budget the paper's claim depends
    # on (docs/experiments/didactic_epochs.py sweeps it).
    "didactic": {
        "data_sizes": [1000, 2000, 3000],
        "seeds": [0, 1, 2],
        "task": {
            "name": "star_graph",
            "n_train_pool": 3000,
            "n_test": 500,
            "star_graph": {"degree": 2, "path_length": 2, "n_nodes": 20},
        },
        "teacher": {"spurious_rate": 0.0, "slip_rate": 0.1},
        "model": {"max_seq_len": 96, "pretrain_steps": 0},
        "sampling": {"max_new_tokens": 12, "eval_samples": 1, "batch_size": 512},
        "training": {"epochs": 12, "learning_rate": 3e-3, "rft_init": "sft"},
        "credit": {"max_negatives_per_problem": 1},
        # Two one-thread runs on 2 cores, as in the demo: about 1.4x one two-thread run.
        "execution": {"parallel_runs": 2},
    },
    # One GPU (docs/backends.md): a 0.5-1.5B Hugging Face model from a local folder, on GSM8K.
    # Full fine-tuning in float32 master weights fits 1.5B on an 80 GB card (24 GB of states);
    # training.lora_rank: 16 trains adapters instead.
    "small": {
        "data_sizes": [1000, 2000, 4000, 7473],
        "seeds": [0],
        "task": {
            "name": "gsm8k",
            "train_path": "data/gsm8k/train.jsonl",
            "test_path": "data/gsm8k/test.jsonl",
            "n_train_pool": 7473,
            "n_test": 1319,
        },
        "teacher": {"kind": "reference"},
        "model": {"name": "models/Qwen2.5-0.5B", "max_seq_len": 1024, "dtype": "bfloat16"},
        "sampling": {
            "backend": "vllm",
            "temperature": 0.7,
            "max_new_tokens": 512,
            "batch_size": 1024,
            "stop": ["\nQuestion:"],
            "samples_per_problem": 4,
            "eval_samples": 4,
        },
        "training": {
            "epochs": 3,
            "learning_rate": 1e-5,
            "batch_size": 64,
            "micro_batch_size": 8,
            "gradient_checkpointing": True,
            "logprob_chunk": 2048,
            "dpo_learning_rate": 1e-6,
            "dpo_beta": 0.1,
            "lora_rank": 0,
        },
        "credit": {"max_negatives_per_problem": 4},
        "execution": {"process_per_stage": True, "rollout_chunk_prompts": 4096},
    },
    "paper": {
        "data_sizes": [8000, 16000, 32000, 64000, 128000],
        "seeds": [0, 1, 2],
        "task": {
            "name": "gsm8k",
            "train_path": "data/gsm8k_synthetic/train.jsonl",
            "test_path": "data/gsm8k/test.jsonl",
            "n_train_pool": 128000,
            "n_test": 1319,
        },
        "teacher": {"kind": "reference"},
        "model": {
            "name": "deepseek-ai/deepseek-math-7b-base",
            "max_seq_len": 1024,
            "dtype": "bfloat16",
        },
        "sampling": {
            "backend": "vllm",
            "temperature": 0.7,
            "max_new_tokens": 512,
            "batch_size": 1024,
            "stop": ["\nQuestion:"],
            "samples_per_problem": 4,
            "eval_samples": 8,
        },
        # The paper fine-tunes every weight; a 7B model's float32 states (112 GB) do not fit one
        # GPU, so each DDP rank cannot keep a whole copy: LoRA here. For full fine-tuning set
        # lora_rank: 0 and execution.train_sharding: fsdp (each of 8 GPUs keeps 1/8).
        "training": {
            "epochs": 3,
            "learning_rate": 1e-5,
            "batch_size": 64,
            "micro_batch_size": 4,
            "gradient_checkpointing": True,
            "logprob_chunk": 2048,
            "lora_rank": 64,
            "dpo_learning_rate": 1e-6,
            "dpo_beta": 0.1,
        },
        # One node of 8 GPUs: each training stage as 8 DDP ranks, each generation stage as 8
        # vLLM engines (set both to the node's GPU count).
        "execution": {
            "process_per_stage": True,
            "rollout_chunk_prompts": 4096,
            "train_processes": 8,
            "data_parallel_size": 8,
        },
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        # Walk the models to list the fields that the parent allows.
        owner: type[BaseModel] = model
        for part in loc[:-1]:
            annotation = owner.model_fields[part].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                owner = annotation
        allowed = ", ".join(owner.model_fields)
        return f"{field}: unknown field (allowed: {allowed})"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{field}: {msg}{shown}"


def config_from_dict(data: dict[str, Any], *, source: str = "configuration") -> ExperimentConfig:
    """Validate a plain mapping (a preset merged with overrides)."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, ExperimentConfig) for e in exc.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def preset_dict(name: str, *, source: str = PRESET_ENV) -> dict[str, Any]:
    """The raw overrides of a preset, with its name filled in (``source``: where the name
    came from, for the error)."""
    if name not in _PRESETS:
        raise ConfigError(
            f"invalid {source}: preset {name!r} does not exist (allowed: {', '.join(PRESETS)})"
        )
    return {"preset": name, **copy.deepcopy(_PRESETS[name])}


def load_config(
    preset: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """The experiment to run: preset, then YAML file, then explicit overrides.

    With no arguments the preset comes from ``SYNTHDATA_PRESET`` and the file from
    ``SYNTHDATA_CONFIG``; ``SYNTHDATA_BROKER`` gives ``execution.broker`` when nothing else
    does (how ``synthdata run --workers N`` points its runs at its workers' broker).
    """
    file_data: dict[str, Any] = {}
    path = config_path if config_path is not None else os.environ.get(CONFIG_ENV) or None
    source = f"{CONFIG_ENV}={path}" if path else "configuration"
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"invalid {CONFIG_ENV}: no such file {str(file)!r}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid {source}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"invalid {source}: the file must hold a mapping of fields")
        file_data = loaded
    name = preset or file_data.get("preset") or os.environ.get(PRESET_ENV) or DEFAULT_PRESET
    if preset:
        named_by = "preset"
    elif file_data.get("preset"):
        named_by = f"{source}: field preset"
    else:
        named_by = PRESET_ENV
    data = _merge(preset_dict(str(name), source=named_by), file_data)
    if overrides:
        data = _merge(data, overrides)
    if os.environ.get(BROKER_ENV) and not (data.get("execution") or {}).get("broker"):
        data = _merge(data, {"execution": {"broker": os.environ[BROKER_ENV]}})
    data["preset"] = name
    return config_from_dict(data, source=source)
