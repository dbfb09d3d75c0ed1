"""The `small` preset's code path end to end on a real architecture, on GSM8K rows.

A randomly initialised Qwen2 (the architecture of Qwen2.5: grouped KV heads, biased q/k/v
projections, tied embeddings) of two layers, stored in bf16 as Hugging Face folders are, with a
byte-level tokenizer trained on GSM8K text, stands in for Qwen2.5-0.5B. The study runs on the
first rows of ``../shared/data/gsm8k`` with everything the preset sets: a bf16-stored model
trained in float32 master weights, micro-batches, gradient checkpointing, LoRA on and off,
and (through ``synthdata run``) one process per stage. The model writes garbage: every sample
is graded wrong, the per-step pairs take the teacher's reference solutions as their chosen
sides, and nothing here measures accuracy. ``tests/test_vllm_pipeline.py`` runs the same
study on the vLLM engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.study import partition_key
from synthdata_assets.study import PARTITION_STAGES, SETUP_STAGES
from warehouse import Warehouse

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
METHODS = {"base", "sft", "rft", "per_step_dpo", "nll_control", "dpo"}
# A step's start in a run's event log: "... - <run id> - <pid> - <step> - STEP_START - ...".
STEP_START = re.compile(r" - [0-9a-f-]{36} - (?P<pid>\d+) - (?P<step>\w+) - STEP_START - ")

pytestmark = pytest.mark.slow


def gsm8k_files() -> tuple[Path, Path]:
    """The shared GSM8K files (the test skips where the shared data checkout is absent)."""
    train, test = DATA / "train.jsonl", DATA / "test.jsonl"
    if not (train.exists() and test.exists()):
        pytest.skip(f"GSM8K files absent under {DATA} (expected the shared data checkout)")
    return train, test


def save_tiny_qwen2(folder: Path, train: Path) -> Path:
    """A two-layer Qwen2 with random weights (seed 0), stored in bf16, and its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.tokenizer import build_tokenizer

    with train.open() as f:
        rows = [json.loads(next(f)) for _ in range(400)]
    tokenizer = build_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], vocab_size=1024)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 32: vLLM's CPU attention has no 16
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def small_overrides(model: Path, backend: str, lora_rank: int, **execution) -> dict:
    """The `small` preset at a size that runs in a minute on a CPU: 8 training problems, 8
    test problems, 24 new tokens per sample."""
    train, test = gsm8k_files()
    return {
        "preset": "small",
        "data_sizes": [8],
        "task": {
            "train_path": str(train),
            "test_path": str(test),
            "n_train_pool": 16,
            "n_test": 8,
        },
        "model": {"name": str(model), "max_seq_len": 512},
        "sampling": {
            "backend": backend,
            "max_new_tokens": 24,
            "batch_size": 64,
            "samples_per_problem": 2,
            "eval_samples": 1,
        },
        "training": {
            "epochs": 1,
            "batch_size": 4,
            "micro_batch_size": 2,
            "dpo_learning_rate": 1e-4,
            "lora_rank": lora_rank,
        },
        "credit": {"max_negatives_per_problem": 2, "rollouts_per_prefix": 2, "k": 2},
        "execution": {"process_per_stage": False, **execution},
    }


def check_study(warehouse: Warehouse, key: tuple[int, int] = (8, 0)) -> None:
    """What every run of the small study must leave: every model on every test problem, and
    every trained model a plain Hugging Face folder stored in bf16 like its base."""
    evals = pl.read_parquet(warehouse.partition_file("evaluations", *key))
    assert set(evals["method"]) == METHODS
    assert evals.group_by("method").len()["len"].to_list() == [8] * len(METHODS)
    pairs = pl.read_parquet(warehouse.partition_file("preference_pairs", *key))
    assert pairs.filter(pl.col("kind") == "per_step").height > 0
    for stage in ("sft_model", "per_step_dpo_model", "dpo_model"):
        folder = Path(pl.read_parquet(warehouse.partition_file(stage, *key))["path"][0])
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "qwen2"
        assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
        assert not (folder / "adapter_config.json").exists()


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    train, _ = gsm8k_files()
    return save_tiny_qwen2(tmp_path_factory.mktemp("qwen2") / "qwen2-tiny", train)


def test_small_preset_end_to_end_on_a_real_architecture(qwen2: Path, warehouse: Warehouse) -> None:
    """Full fine-tuning, every stage in this process."""
    overrides = small_overrides(qwen2, "transformers", lora_rank=0)
    config = load_config("small", overrides=overrides)
    assert config.training.gradient_checkpointing and config.model.dtype == "bfloat16"
    defs = build_definitions(config, warehouse)
    with dg.instance_for_test() as instance:
        for selection, key in ((list(SETUP_STAGES), None), (PARTITION_STAGES, (8, 0))):
            result = dg.materialize(
                list(defs.assets or []),
                selection=list(selection),
                partition_key=partition_key(*key) if key else None,
                resources=defs.resources,
                instance=instance,
            )
            assert result.success
    check_study(warehouse)


def test_small_preset_with_lora_through_synthdata_run_one_process_per_stage(
    qwen2: Path, tmp_path: Path
) -> None:
    """LoRA, each stage in its own process (Dagster's multiprocess executor, which needs the
    code location that ``synthdata run`` launches), and each training stage over two ranks
    that shard the model (``execution.train_processes`` and ``train_sharding: fsdp``, here on
    CPUs over gloo)."""
    overrides = small_overrides(
        qwen2,
        "transformers",
        lora_rank=4,
        process_per_stage=True,
        train_processes=2,
        train_sharding="fsdp",
    )
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(overrides))
    home = tmp_path / "home"
    env = os.environ | {
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "SYNTHDATA_CONFIG": str(config),
        "OMP_NUM_THREADS": "1",
    }
    synthdata = Path(sys.executable).with_name("synthdata")
    run = subprocess.run(
        [str(synthdata), "run"], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (log,) = (home / "reports" / "logs").glob("*__8_0.log")
    pids = {m["step"]: int(m["pid"]) for m in STEP_START.finditer(log.read_text())}
    assert set(pids) == set(PARTITION_STAGES)
    assert len(set(pids.values())) == len(PARTITION_STAGES), pids  # a process each
    text = log.read_text()
    # SFT, RFT, both DPO variants and the control without negatives
    assert text.count("training over 2 ranks (fsdp)") == 5
    assert "(2 process(es) x 1 x <= 2)" in text  # batch 4: two ranks of one micro-batch of 2
    check_study(Warehouse(home))
    # Execution settings are in no fingerprint: the same study in one process is up to date.
    one_process = {"process_per_stage": False, "train_sharding": "ddp"}
    config.write_text(yaml.safe_dump(overrides | {"execution": one_process}))
    again = subprocess.run(
        [str(synthdata), "run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[8|0]: up to date" in again.stdout
