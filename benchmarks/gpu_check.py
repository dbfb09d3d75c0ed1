"""The GPU check: the `small` preset's path at a tiny size, with its figures written to a file.

Run it whenever a GPU machine is at hand, in the environment that has vLLM::

    python benchmarks/gpu_check.py                 # Qwen2.5-0.5B's shape; meant for < 8 minutes
    python benchmarks/gpu_check.py --shape tiny --size 8 --new-tokens 32 --results /tmp/r

The second line is a CPU dry run: 3.5 minutes on 2 cores of an AMD EPYC (AVX512).

It has not run on a GPU yet: the first GPU run says whether the default sizes fit 8 minutes.

Nothing is downloaded. The model is a randomly initialised Qwen2 with the shape of
Qwen2.5-0.5B (hidden 896, 24 layers, 14 query and 2 KV heads, MLP 4864, tied embeddings),
stored in bf16 like a hub model, with the byte-level tokenizer trained here on GSM8K text
(1,024 tokens: the one dimension that differs from the real model, whose 151,936-token head
would be 150 times wider). Random weights write until ``max_new_tokens``, so every sample has
the worst-case length. The study is the `small` preset (``execution.process_per_stage``,
micro-batches, gradient checkpointing, vLLM) at ``--size`` training and test problems of
GSM8K (``--data``: a folder with ``train.jsonl`` and ``test.jsonl``).

Figures, to ``benchmarks/results/gpu_check.json`` and ``.md``: wall seconds of every stage
(from Dagster's step records), tokens per second of each generating and training stage
(generated tokens over the stage's seconds; the trainers' own tokens per second), the peak
GPU memory in use while each stage ran (``nvidia-smi`` every half second, the whole device),
and every vLLM engine's start time. ``--limit`` stops the run (default 450 s) and writes what
was measured by then. With vLLM, one more engine then samples the test questions (4 samples
each) with a seed per request and without (``sampling.request_seeds``): what the seeds cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
}
TRAINING = ("sft_model", "rft_model", "per_step_dpo_model", "nll_control_model", "dpo_model")
ENGINE_START = re.compile(r"vLLM engine started in (?P<s>[\d.]+)s \((?P<folder>[^)]*)\)")


def save_model(folder: Path, shape: str, train: Path) -> int:
    """The random Qwen2 of ``shape`` and its GSM8K tokenizer in ``folder``; its parameters."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.tokenizer import build_tokenizer

    with train.open() as f:
        rows = [json.loads(line) for _, line in zip(range(2000), f, strict=False)]
    tokenizer = build_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], vocab_size=1024)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


class GPUMemory:
    """``nvidia-smi``'s memory in use, sampled every half second in a thread (none without it)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (unix time, MiB)
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> GPUMemory:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append((time.time(), sum(float(x) for x in out)))
            self._stop.wait(0.5)

    def peak(self, start: float, end: float) -> float | None:
        during = [mib for t, mib in self.samples if start <= t <= end]
        return max(during) if during else None


def study_config(model: Path, data: Path, size: int, backend: str, new_tokens: int) -> dict:
    return {
        "preset": "small",
        "data_sizes": [size],
        "task": {
            "train_path": str(data / "train.jsonl"),
            "test_path": str(data / "test.jsonl"),
            "n_train_pool": size,
            "n_test": size,
        },
        "model": {"name": str(model), "max_seq_len": 1024},
        "sampling": {"backend": backend, "max_new_tokens": new_tokens},
        "training": {"epochs": 1, "batch_size": 16, "micro_batch_size": 4},
    }


def run_study(home: Path, config: Path, limit: float) -> tuple[int | None, float]:
    """``synthdata run`` on ``config`` in ``home``: its exit code (None if stopped at ``limit``
    seconds) and its wall seconds."""
    env = os.environ | {
        "SYNTHDATA_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "SYNTHDATA_CONFIG": str(config),
    }
    synthdata = Path(sys.executable).with_name("synthdata")
    start = time.monotonic()
    proc = subprocess.Popen([str(synthdata), "run"], env=env)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(2)  # SIGINT: the run stops and records itself as cancelled
        proc.wait(timeout=60)
        code = None
    return code, time.monotonic() - start


def stage_figures(home: Path, memory: GPUMemory) -> dict[str, dict]:
    """Seconds, peak GPU memory and tokens per second of every stage that ran."""
    import dagster as dg
    import polars as pl

    from synthdata_assets.study import PARTITION_STAGES, REPORT_STAGES, SETUP_STAGES
    from warehouse import Warehouse

    warehouse = Warehouse(home)
    figures: dict[str, dict] = {}
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for run in instance.get_runs():
            for step in instance.get_run_step_stats(run.run_id):
                if step.start_time is None or step.end_time is None:
                    continue
                figures[step.step_key] = {
                    "seconds": round(step.end_time - step.start_time, 1),
                    "status": str(step.status.value) if step.status else None,
                    "peak_gpu_mib": memory.peak(step.start_time, step.end_time),
                }
    order = [*SETUP_STAGES, *PARTITION_STAGES, *REPORT_STAGES]
    figures = dict(sorted(figures.items(), key=lambda kv: order.index(kv[0])))
    for stage, figure in figures.items():
        files = list((warehouse.tables / stage).rglob("*.parquet"))
        if not files:
            continue
        table = pl.read_parquet(files[0])
        if "num_tokens" in table.columns and figure["seconds"]:
            tokens = int(table["num_tokens"].sum())
            figure |= {"new_tokens": tokens, "tokens_per_s": round(tokens / figure["seconds"])}
        if stage in TRAINING and table["tokens_per_second"][0] is not None:
            figure["train_tokens_per_s"] = round(float(table["tokens_per_second"][0]))
            figure["train_seconds"] = round(float(table["train_seconds"][0]), 1)
    return figures


def engine_starts(home: Path) -> list[dict]:
    starts = []
    for log in sorted((home / "reports" / "logs").glob("*.log")):
        for m in ENGINE_START.finditer(log.read_text(errors="replace")):
            starts.append({"model": m["folder"], "seconds": float(m["s"])})
    return starts


def request_seed_cost(model: Path, data: Path, size: int, new_tokens: int) -> list[dict]:
    """New tokens per second of one vLLM engine sampling ``size`` test questions 4 times each,
    with a seed per request and without (the same engine, the same prompts)."""
    from synthdata_assets.tasks import realdata
    from training.generation import SamplingParams, make_generator
    from training.prompts import format_prompt

    rows = realdata.load_gsm8k(data / "test.jsonl", split="test")[:size]
    prompts = [format_prompt(row.question) for row in rows]
    generator = make_generator("vllm", model, max_model_len=1024)
    params = SamplingParams(n=4, temperature=0.7, max_new_tokens=new_tokens, seed=0)
    generator.generate(prompts[:4], params)  # warm-up
    out = []
    try:
        for seeded in (True, False):
            generator.request_seeds = seeded
            start = time.perf_counter()
            completions = generator.generate(prompts, params)
            seconds = time.perf_counter() - start
            tokens = sum(c.num_tokens for samples in completions for c in samples)
            out.append(
                {
                    "request_seeds": seeded,
                    "sequences": len(prompts) * params.n,
                    "new_tokens": tokens,
                    "seconds": round(seconds, 2),
                    "tokens_per_s": round(tokens / seconds),
                }
            )
    finally:
        generator.close()
    return out


def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        return f"CPU ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"
    except ImportError:
        return platform.processor() or "unknown"


def write(result: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# GPU check ({result['when']})",
        "",
        f"Device: {result['device']}. Model: random Qwen2, {result['shape']} shape, "
        f"{result['parameters']:,} parameters, bf16 on disk. {result['size']} GSM8K training "
        f"and test problems, {result['new_tokens']} new tokens, backend {result['backend']}. "
        f"Run: exit {result['exit_code']} after {result['seconds']:.0f} s.",
        "",
        "| stage | seconds | peak GPU MiB | new tokens | tokens/s | training tokens/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, f in result["stages"].items():
        cells = [f.get(k) for k in ("seconds", "peak_gpu_mib", "new_tokens", "tokens_per_s")]
        cells.append(f.get("train_tokens_per_s"))
        lines.append(
            f"| {stage} | " + " | ".join("" if c is None else str(c) for c in cells) + " |"
        )
    lines += ["", "vLLM engine starts (seconds): "]
    lines[-1] += (
        ", ".join(f"{s['seconds']:.1f} ({s['model']})" for s in result["engines"]) or "none"
    )
    if result.get("request_seeds"):
        lines += [
            "",
            "Sampling with and without a seed per request (one engine, same prompts):",
            "",
        ]
        lines += ["| seed per request | sequences | new tokens | seconds | tokens/s |"]
        lines += ["| --- | ---: | ---: | ---: | ---: |"]
        for r in result["request_seeds"]:
            seeded = "yes" if r["request_seeds"] else "no"
            lines.append(
                f"| {seeded} | {r['sequences']} | {r['new_tokens']} | {r['seconds']} | "
                f"{r['tokens_per_s']} |"
            )
    (results / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    parser.add_argument("--size", type=int, default=64, help="training and test problems")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--limit", type=float, default=450.0, help="seconds before stopping")
    default_data = ROOT.parent / "shared" / "data" / "gsm8k"
    if not default_data.is_dir():
        default_data = ROOT / "data" / "gsm8k"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--work", type=Path, default=None, help="keep the model and warehouse")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the figures go")
    args = parser.parse_args()
    if not (args.data / "train.jsonl").is_file():
        sys.exit(f"gpu_check: no GSM8K train.jsonl in {args.data}; pass --data FOLDER")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    model = work / "model"
    parameters = save_model(model, args.shape, args.data / "train.jsonl")
    config = work / "small.yaml"
    config.write_text(
        yaml.safe_dump(study_config(model, args.data, args.size, args.backend, args.new_tokens))
    )
    home = work / "home"
    with GPUMemory() as memory:
        code, seconds = run_study(home, config, args.limit)
    seeds = None
    if args.backend == "vllm":
        seeds = request_seed_cost(model, args.data, args.size, args.new_tokens)
    write(
        {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device(),
            "shape": args.shape,
            "parameters": parameters,
            "size": args.size,
            "new_tokens": args.new_tokens,
            "backend": args.backend,
            "exit_code": code,
            "seconds": seconds,
            "stages": stage_figures(home, memory),
            "engines": engine_starts(home),
            "gpu_memory_sampled": memory.available,
            "request_seeds": seeds,
        },
        args.results,
    )


if __name__ == "__main__":
    main()
