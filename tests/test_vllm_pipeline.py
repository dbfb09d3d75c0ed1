"""The tiny preset end to end through Dagster with ``sampling.backend: vllm`` (its models
trained with LoRA, merged on save).

tests/test_pipeline.py's end-to-end test, for one partition, with every generating stage
(policy samples, step rollouts, evaluation of every model) on the vLLM engine instead of the
transformers backend. It needs vLLM and the rest of the pipeline in one virtualenv: ``make
test-vllm`` (which builds ``.venv-vllm`` first). In the main venv the module is skipped.
"""

# ruff: noqa: E402 (imports after the skip and the environment)
from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed here; run `make test-vllm` (its own .venv-vllm)",
        allow_module_level=True,
    )

# As in tests/test_vllm_backend.py (and `make test-vllm`): nothing may download; on CPUs an
# in-process engine with an explicit KV cache and one unpinned thread.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import dagster as dg
import polars as pl

import training.generation.vllm_engine
from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.defs.study import partition_key
from synthdata_assets.study import PARTITION_STAGES, SETUP_STAGES
from training.generation.transformers_engine import TransformersGenerator
from warehouse import Warehouse

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

METHODS = {"base", "sft", "rft", "per_step_dpo", "nll_control", "dpo"}
# The tiny preset with head size 32 (vLLM's CPU attention has no 16: hidden 32 over one
# head), one data size, and the vLLM backend.
OVERRIDES = {
    "data_sizes": [32],
    "model": {"hidden_size": 32, "num_heads": 1},
    "sampling": {"backend": "vllm"},
}
# The generating stages' engines load LoRA-trained checkpoints (adapters merged on save): the
# fully fine-tuned ones are tests/test_vllm_backend.py's and the other test's here.
LORA = {"training": {"lora_rank": 4}}


def _run(defs: dg.Definitions, names, key, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(defs.assets or []),
        selection=list(names),
        partition_key=str(key) if key is not None else None,
        resources=defs.resources,
        instance=instance,
    )


def test_tiny_preset_end_to_end_on_vllm(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    engines: list[str] = []
    closed: list[str] = []

    class CountedVLLMGenerator(training.generation.vllm_engine.VLLMGenerator):
        def __init__(self, folder, **kwargs) -> None:
            engines.append(str(folder))
            self.folder = str(folder)
            super().__init__(folder, **kwargs)

        def close(self) -> None:
            closed.append(self.folder)
            super().close()
            assert self.llm is None

    def no_transformers(*_args, **_kwargs):
        raise AssertionError("sampling.backend is vllm: the transformers backend must not run")

    # make_generator("vllm", ...) looks the class up on the module at call time.
    monkeypatch.setattr(training.generation.vllm_engine, "VLLMGenerator", CountedVLLMGenerator)
    monkeypatch.setattr(TransformersGenerator, "from_pretrained", no_transformers)

    config = load_config("tiny", overrides={**OVERRIDES, **LORA})
    assert config.model.hidden_size // config.model.num_heads == 32
    defs = build_definitions(config, warehouse)
    key = partition_key(32, 0)
    with dg.instance_for_test() as instance:
        assert _run(defs, list(SETUP_STAGES), None, instance).success
        result = _run(defs, PARTITION_STAGES, key, instance)
    assert result.success

    evals = pl.read_parquet(warehouse.partition_file("evaluations", 32, 0))
    assert set(evals["method"]) == METHODS
    n_test = config.task.n_test
    assert evals.group_by("method").len()["len"].to_list() == [n_test] * len(METHODS)
    assert evals["completion"].null_count() == 0
    assert (evals["n_samples"] == config.sampling.eval_samples).all()

    samples = pl.read_parquet(warehouse.partition_file("policy_samples", 32, 0))
    assert samples.height == 32 * config.sampling.samples_per_problem
    assert set(samples["finish_reason"]) <= {"stop", "length"}

    rollouts = pl.read_parquet(warehouse.partition_file("step_rollouts", 32, 0))
    assert rollouts.height > 0
    assert {"sample_id", "step_idx", "rollout_idx", "completion", "is_correct"} <= set(
        rollouts.columns
    )
    assert rollouts.group_by("sample_id", "step_idx").len()["len"].unique().to_list() == [
        config.credit.rollouts_per_prefix
    ]
    (event,) = result.asset_materializations_for_node("step_rollouts")
    assert event.metadata["completions_generated"].value > 0

    # Every generating stage ran on vLLM: policy samples and step rollouts from pi_sft, and
    # the evaluation of each of the five models.
    assert len(engines) >= 2 + len(METHODS), engines
    # Each stage shut its engines down when it was done with them, not garbage collection.
    assert closed == engines
    # LoRA trained the projections only (the embedding is the base's), and every trained
    # model is a plain folder with its adapters merged.
    from safetensors.torch import load_file

    base = pl.read_parquet(warehouse.table_file("base_model"))["path"][0]
    sft = pl.read_parquet(warehouse.partition_file("sft_model", 32, 0))["path"][0]
    weights = [load_file(f"{folder}/model.safetensors") for folder in (base, sft)]
    embedding = "model.embed_tokens.weight"
    assert (weights[0][embedding] == weights[1][embedding]).all()
    assert any(not (weights[0][k] == weights[1][k]).all() for k in weights[0] if "proj" in k)
    assert list(warehouse.checkpoints.rglob("config.json"))
    assert not list(warehouse.checkpoints.rglob("adapter_config.json"))


def test_tiny_preset_with_a_teacher_served_by_vllm(warehouse: Warehouse, tmp_path) -> None:
    """The tiny preset end to end with `teacher.kind: endpoint`: teacher solutions come from a
    real vLLM server on 127.0.0.1 through the OpenAI-compatible backend, the rest of the
    study runs on them as usual."""
    from test_openai_backend import _tiny_trained_checkpoint
    from test_openai_backend import vllm_server as _vllm_server

    teacher = _tiny_trained_checkpoint(tmp_path / "teacher")
    with _vllm_server(teacher, tmp_path / "server.log") as url:
        overrides = {
            **OVERRIDES,
            "sampling": {"backend": "transformers"},
            # A briefly trained teacher is right now and then; several solutions per problem
            # give SFT some verified positives to train on.
            "teacher": {
                "kind": "endpoint",
                "base_url": url,
                "solutions_per_problem": 4,
                "temperature": 1.0,
                "max_new_tokens": 96,
            },
        }
        defs = build_definitions(load_config("tiny", overrides=overrides), warehouse)
        with dg.instance_for_test() as instance:
            assert _run(defs, list(SETUP_STAGES), None, instance).success
            result = _run(defs, PARTITION_STAGES, partition_key(32, 0), instance)
    assert result.success
    solutions = pl.read_parquet(warehouse.partition_file("teacher_solutions", 32, 0))
    assert solutions.height == 32 * 4 and (solutions["teacher"] == "endpoint").all()
    assert solutions["is_correct"].any()
    evals = pl.read_parquet(warehouse.partition_file("evaluations", 32, 0))
    assert set(evals["method"]) == METHODS
    assert (warehouse.root / "cache" / "teacher").is_dir()


def test_small_preset_on_a_real_architecture_on_vllm(warehouse: Warehouse, tmp_path) -> None:
    """tests/test_real_architecture.py's study (a two-layer Qwen2 stored in bf16, GSM8K rows,
    micro-batches, gradient checkpointing) with every generating stage on the vLLM engine."""
    from test_real_architecture import check_study, gsm8k_files, save_tiny_qwen2, small_overrides

    train, _ = gsm8k_files()
    qwen2 = save_tiny_qwen2(tmp_path / "qwen2-tiny", train)
    overrides = small_overrides(qwen2, "vllm", lora_rank=0)
    # vLLM on a CPU runs the bf16-stored weights in float32 (not every CPU has bf16 kernels).
    overrides["model"]["dtype"] = "float32"
    defs = build_definitions(load_config("small", overrides=overrides), warehouse)
    with dg.instance_for_test() as instance:
        assert _run(defs, list(SETUP_STAGES), None, instance).success
        assert _run(defs, PARTITION_STAGES, partition_key(8, 0), instance).success
    check_study(warehouse)
