"""Generation throughput of the transformers backend against the vLLM backend, on rollouts.

The workload is ``step_rollouts``'s: every step prefix of slipped oracle solutions (prompts
sharing long prefixes), M = 5 samples each at temperature 0.7, up to 160 new tokens, all in
one ``generate`` call. Two models, built here the way the ``base_model`` asset builds the base
model (tokenizer from the task's world, then a brief two-phase pretraining, so that
they write solutions in the task's format and stop at EOS like a trained policy):

- **demo**: the demo preset's architecture (hidden 64, 2 layers, 2 heads of 32,
  intermediate 256);
- **large**: about ten times the parameters (hidden 192, 4 layers, 3 heads of 64,
  intermediate 512).

Samples differ between the backends (their random streams differ), so completions differ in
length: compare new tokens per second, and see the mean tokens per completion beside it.

The transformers part runs in this interpreter (the main ``.venv``); the vLLM part in
``.venv-vllm`` (``make vllm-env``), which this script starts on itself with ``--vllm-part``,
sharing the checkpoint folder. vLLM runs each model in float32 (as the transformers backend
does) and in bfloat16 (what ``dtype="auto"`` picks for a float32 checkpoint on CPUs), with a
seed per request (``sampling.request_seeds``, the default), and in float32 once more without
(the engine's one random stream): what per-request seeds cost. One torch/OpenMP thread
everywhere unless ``--threads``. Figures go to
``benchmarks/results/backends.json`` and ``.md``, never to assertions in the tests::

    .venv/bin/python benchmarks/backends.py               # both parts, about 8 minutes
    .venv/bin/python benchmarks/backends.py --work DIR    # keep (and reuse) the checkpoints
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "demo": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256},
    "large": {"hidden_size": 192, "num_layers": 4, "num_heads": 3, "intermediate_size": 512},
}
N, TEMPERATURE, MAX_NEW_TOKENS = 5, 0.7, 160
# (dtype, seed per request) of each vLLM row.
VLLM_ROWS = (("float32", True), ("bfloat16", True), ("float32", False))
# As `make test-vllm`: an in-process engine, an explicit KV cache, no thread pinning, offline.
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def _rollout_prompts(n_problems: int) -> list[str]:
    """benchmarks/rollouts.py's prompts: every prefix of one slipped solution per problem."""
    from synthdata_assets.config import load_config

    spec = importlib.util.spec_from_file_location("bench_rollouts", ROOT / "benchmarks/rollouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.negative_prefixes(load_config("demo"), n_problems, seed=123)


def _params():
    from training.generation import SamplingParams

    return SamplingParams(n=N, temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS, seed=0)


def _timed(generator, prompts: list[str], repeats: int) -> dict:
    """The best of ``repeats`` timings (the machine's cores are shared); the same seed gives
    the same completions each time."""
    params = _params()
    generator.generate(prompts[:8], params)  # warm-up
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = generator.generate(prompts, params)
        seconds = min(seconds, time.perf_counter() - start)
    completions = [c for samples in outputs for c in samples]
    tokens = sum(c.num_tokens for c in completions)
    return {
        "prompts": len(prompts),
        "completions": len(completions),
        "new_tokens": tokens,
        "tokens_per_completion": round(tokens / len(completions), 1),
        "stopped_share": round(
            sum(c.finish_reason == "stop" for c in completions) / len(completions), 3
        ),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
    }


def build_models(work: Path, arithmetic_steps: int, pretrain_steps: int) -> dict[str, dict]:
    """The two checkpoints under ``work`` (reused when already there)."""
    from synthdata_assets import models as model_stages
    from synthdata_assets.config import ModelConfig, load_config

    models = {}
    for name, dims in MODELS.items():
        folder = work / name
        info_file = folder / "benchmark.json"
        if not info_file.exists():
            model = {"name": "tiny-llama", **dims, "pretrain_steps": pretrain_steps}
            if "arithmetic_steps" in ModelConfig.model_fields:
                model["arithmetic_steps"] = arithmetic_steps
            config = load_config("demo", overrides={"model": model})
            print(f"building the {name} model ({dims})...", flush=True)
            start = time.perf_counter()
            row = model_stages.build_study_base_model(
                config, folder, lambda line: print("  " + line)
            )
            info = {
                **dims,
                "head_size": dims["hidden_size"] // dims["num_heads"],
                "parameters": int(row["parameters"][0]),
                "arithmetic_steps": model.get("arithmetic_steps"),
                "pretrain_steps": pretrain_steps,
                "train_loss": row["train_loss"][0],
                "build_seconds": round(time.perf_counter() - start, 1),
            }
            info_file.write_text(json.dumps(info, indent=2) + "\n")
        models[name] = json.loads(info_file.read_text())
    return models


def transformers_part(work: Path, prompts: list[str], batch_size: int, repeats: int) -> list[dict]:
    from training.generation import make_generator

    rows = []
    for name in MODELS:
        generator = make_generator("transformers", work / name, batch_size=batch_size)
        print(f"transformers, {name}: {len(prompts)} prompts x {N}...", flush=True)
        rows.append(
            {"model": name, "backend": "transformers", "dtype": "float32", "startup_seconds": None}
            | _timed(generator, prompts, repeats)
        )
        print(f"  {rows[-1]['tokens_per_second']:,.0f} new tokens/s", flush=True)
    return rows


def vllm_part(work: Path, prompts: list[str], repeats: int) -> list[dict]:
    import vllm

    from training.generation.vllm_engine import VLLMGenerator

    rows = []
    for name in MODELS:
        for dtype, request_seeds in VLLM_ROWS:
            start = time.perf_counter()
            generator = VLLMGenerator(work / name, dtype=dtype, request_seeds=request_seeds)
            startup = round(time.perf_counter() - start, 1)
            seeds = "" if request_seeds else ", unseeded requests"
            print(f"vLLM {vllm.__version__} ({dtype}{seeds}), {name}: started in {startup} s")
            row = {"model": name, "backend": "vllm", "dtype": dtype, "startup_seconds": startup}
            row["request_seeds"] = request_seeds
            rows.append(row | _timed(generator, prompts, repeats))
            print(f"  {rows[-1]['tokens_per_second']:,.0f} new tokens/s", flush=True)
            generator.close()
    return rows


def _markdown(result: dict) -> str:
    lines = [
        f"Rollout-style generation ({result['prompts']} step prefixes of "
        f"{result['problems']} slipped solutions, n = {N}, temperature {TEMPERATURE}, "
        f"max_new_tokens {MAX_NEW_TOKENS}; best of {result['repeats']}), {result['machine']}:",
        "",
        "| model | parameters | backend | seed per request | prompts | completions | new tokens "
        "| tokens/completion | seconds | tokens/s | engine start s |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        model = result["models"][r["model"]]
        shape = (
            f"{r['model']} (h{model['hidden_size']}, {model['num_layers']}L, "
            f"{model['num_heads']}x{model['head_size']})"
        )
        backend = f"{r['backend']} {r['dtype']}"
        startup = "" if r["startup_seconds"] is None else f"{r['startup_seconds']:.1f}"
        seeds = {True: "yes", False: "no"}.get(r.get("request_seeds"), "")
        lines.append(
            f"| {shape} | {model['parameters']:,} | {backend} | {seeds} | {r['prompts']} | "
            f"{r['completions']} | {r['new_tokens']:,} | {r['tokens_per_completion']:.1f} | "
            f"{r['seconds']:.1f} | {r['tokens_per_second']:,.0f} | {startup} |"
        )
    if result.get("vllm_skipped"):
        lines += ["", f"vLLM part skipped: {result['vllm_skipped']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="checkpoint folder (default: a temp folder)")
    parser.add_argument("--problems", type=int, default=200, help="slipped solutions rolled out")
    parser.add_argument("--repeats", type=int, default=2, help="timings per row; the best counts")
    parser.add_argument("--arithmetic-steps", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64, help="transformers: prompts/batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--vllm-part", type=Path, help=argparse.SUPPRESS)  # rows file to write
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backends")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="synthdata-backends-"))
    prompts = _rollout_prompts(args.problems)

    if args.vllm_part is not None:  # the child, in .venv-vllm
        args.vllm_part.write_text(json.dumps(vllm_part(args.work, prompts, args.repeats)))
        return

    from benchmarks.stages import cpu_model

    models = build_models(args.work, args.arithmetic_steps, args.pretrain_steps)
    rows = transformers_part(args.work, prompts, args.batch_size, args.repeats)
    skipped = None
    if not args.vllm_python.exists():
        skipped = f"{args.vllm_python} not found (run `make vllm-env`)"
    else:
        rows_file = args.work / "vllm-rows.json"
        env = {**os.environ, **VLLM_ENV, "OMP_NUM_THREADS": str(args.threads)}
        command = [str(args.vllm_python), __file__, "--work", str(args.work)]
        command += ["--problems", str(args.problems), "--threads", str(args.threads)]
        command += ["--repeats", str(args.repeats)]
        command += ["--vllm-part", str(rows_file)]
        log_file = args.work / "vllm-part.log"
        with open(log_file, "w") as log:
            done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        for line in log_file.read_text().splitlines():
            if line.startswith(("vLLM ", "  ")) and "INFO" not in line and "WARN" not in line:
                print(line)
        if done.returncode != 0:
            skipped = f"the vLLM part failed ({done.returncode}); see {log_file}"
        else:
            rows += json.loads(rows_file.read_text())

    result = {
        "problems": args.problems,
        "prompts": len(prompts),
        "n": N,
        "temperature": TEMPERATURE,
        "max_new_tokens": MAX_NEW_TOKENS,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": f"{cpu_model()} (torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, "
        f"{args.threads} thread(s)",
        "models": models,
        "rows": rows,
        **({"vllm_skipped": skipped} if skipped else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = _markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    if skipped:
        sys.exit(1)


if __name__ == "__main__":
    main()
