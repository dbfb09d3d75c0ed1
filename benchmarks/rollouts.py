"""Rollout generation throughput: all step prefixes in one batched call vs. one prefix at a time.

What it measures: the ``step_rollouts`` workload (M completions from every step prefix of
negative solutions) on a model of the preset's architecture, in new tokens per second,

- **batched**: every prefix in one ``generate`` call, as ``step_rollouts`` does (the
  generator keeps ``sampling.batch_size`` prompts x M samples in flight, refilling the places
  of finished ones, and prefills the prefixes of one solution once);
- **one prefix at a time**: one ``generate`` call per prefix (its M samples still share
  that call), the naive loop over prefixes.

The two modes alternate ``--repeats`` times (3) and the median run of each is reported, with
every run's figure beside it: on a shared 2-core machine single runs vary by tens of percent.

The model is a checkpoint folder (``--checkpoint``, e.g. a demo run's
``checkpoints/sft/data_size=1000/seed=0``) or, by default, the preset's base model
architecture pretrained here for ``--pretrain-steps`` updates so that it writes solutions in
the task's format and stops at its end-of-sequence token like a trained policy. The negatives
are oracle solutions with one slipped step (``teacher.slip_rate`` 1), cut into line steps.

Figures go to ``benchmarks/results/rollouts.json`` and ``.md`` (``--out`` to change), never
to assertions in the tests. Usage::

    .venv/bin/python benchmarks/rollouts.py                       # demo preset
    .venv/bin/python benchmarks/rollouts.py --checkpoint PATH --backend vllm
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthdata_assets import models  # noqa: E402
from synthdata_assets.config import load_config  # noqa: E402
from synthdata_assets.problems import embedded_params  # noqa: E402
from synthdata_assets.steps import prefix, split_steps  # noqa: E402
from synthdata_assets.tasks import embedded  # noqa: E402
from training.generation import SamplingParams, make_generator  # noqa: E402
from training.prompts import format_prompt  # noqa: E402


def negative_prefixes(config, n_problems: int, seed: int) -> list[str]:
    """Prompts of every prefix 0..L-1 of one slipped oracle solution per problem."""
    params = embedded_params(config.task.embedded)
    problems = embedded.generate_problems(params, seed=seed, split="train", n=n_problems)
    prompts = []
    for i, problem in enumerate(problems):
        rng = random.Random(f"bench/{seed}/{i}")
        solution = embedded.oracle_solution(problem, rng=rng, slip_rate=1.0)
        steps = split_steps(solution.rstrip("\n"), "lines")
        head = format_prompt(problem.question)
        prompts += [head + prefix(steps, j) for j in range(len(steps))]
    return prompts


def timed(generator, prompts, params) -> dict:
    start = time.perf_counter()
    outputs = generator.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for outs in outputs for c in outs)
    return {
        "prompts": len(prompts),
        "completions": len(prompts) * params.n,
        "new_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1),
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (the lower middle one for an even count)."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_second"])
    return ranked[(len(ranked) - 1) // 2]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--checkpoint", help="model folder (default: build one, see above)")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--problems", type=int, default=400, help="negatives rolled out")
    parser.add_argument(
        "--single-problems", type=int, default=40, help="negatives for the one-at-a-time loop"
    )
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument(
        "--batch-size", type=int, help="prompts per forward pass (default: the preset's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rollouts")
    return parser.parse_args()


def checkpoint_folder(args: argparse.Namespace, config) -> str:
    """``--checkpoint``, or a base model of the preset built here."""
    if args.checkpoint is not None:
        return args.checkpoint
    work = Path(tempfile.mkdtemp(prefix="synthdata-bench-"))
    print(f"building a {args.preset}-preset base model ({args.pretrain_steps} updates)...")
    models.build_study_base_model(config, work / "base", print)
    return str(work / "base")


def alternating_runs(
    generator, prompts: list[str], single: list[str], params, repeats: int
) -> tuple[list[dict], list[dict]]:
    """``repeats`` runs of each mode, alternating: all of ``prompts`` in one call, and each of
    ``single`` in a call of its own."""
    batched_runs, single_runs = [], []
    for repeat in range(repeats):
        print(f"[{repeat + 1}/{repeats}] batched: {len(prompts)} prefixes x {params.n} rollouts...")
        batched_runs.append(timed(generator, prompts, params))
        print(f"  {batched_runs[-1]['tokens_per_second']:,.0f} new tokens/s")
        print(f"[{repeat + 1}/{repeats}] one prefix at a time: {len(single)} prefixes...")
        start = time.perf_counter()
        runs = [timed(generator, [p], params) for p in single]
        seconds = time.perf_counter() - start
        tokens = sum(r["new_tokens"] for r in runs)
        single_runs.append(
            {
                "prompts": len(single),
                "completions": len(single) * params.n,
                "new_tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_second": round(tokens / seconds, 1),
            }
        )
        print(f"  {single_runs[-1]['tokens_per_second']:,.0f} new tokens/s")
    return batched_runs, single_runs


def markdown(result: dict) -> str:
    batched, one = result["batched"], result["one_prefix_at_a_time"]
    parameters = "?" if result["parameters"] is None else f"{result['parameters']:,}"
    md = [
        f"Rollout generation, {result['preset']} preset model ({parameters} "
        f"parameters), backend {result['backend']}, M = {result['rollouts_per_prefix']}, "
        f"{result['batch_size']} prompts per batch, {result['machine']}:",
        "",
        "| mode | prefixes | completions | new tokens | seconds | new tokens/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in (("batched across prefixes", batched), ("one prefix at a time", one)):
        md.append(
            f"| {name} | {r['prompts']} | {r['completions']} | {r['new_tokens']:,} | "
            f"{r['seconds']:.1f} | {r['tokens_per_second']:,.0f} |"
        )
    md += [
        "",
        f"Median of {result['repeats']} alternating runs per mode (new tokens/s of each run: "
        f"batched {', '.join(f'{r:,.0f}' for r in result['batched_runs'])}; one at a time "
        f"{', '.join(f'{r:,.0f}' for r in result['one_prefix_at_a_time_runs'])}).",
        "",
        f"Batched is {result['speedup']:.1f}x faster per token.",
    ]
    return "\n".join(md) + "\n"


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    config = load_config(args.preset, overrides={"model": {"pretrain_steps": args.pretrain_steps}})
    checkpoint = checkpoint_folder(args, config)
    batch_size = args.batch_size or config.sampling.batch_size
    generator = make_generator(args.backend, checkpoint, batch_size=batch_size)
    params = SamplingParams(
        n=config.credit.rollouts_per_prefix,
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        max_new_tokens=config.sampling.max_new_tokens,
        seed=0,
    )
    prompts = negative_prefixes(config, args.problems, seed=123)
    single = negative_prefixes(config, args.single_problems, seed=456)
    generator.generate(prompts[:8], params)  # warm-up
    # The two modes alternate, `--repeats` times each, and the median run of each counts: on a
    # shared 2-core machine single runs vary by tens of percent.
    batched_runs, single_runs = alternating_runs(generator, prompts, single, params, args.repeats)
    batched = median_run(batched_runs)
    one = median_run(single_runs)
    from training.model import count_parameters  # noqa: PLC0415

    n_params = getattr(generator, "model", None)
    result = {
        "preset": args.preset,
        "backend": args.backend,
        "checkpoint": checkpoint if args.checkpoint else f"built ({args.pretrain_steps} updates)",
        "parameters": count_parameters(n_params) if n_params is not None else None,
        "rollouts_per_prefix": params.n,
        "batch_size": batch_size,
        "max_new_tokens": params.max_new_tokens,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        "repeats": args.repeats,
        "batched": batched,
        "one_prefix_at_a_time": one,
        "batched_runs": [r["tokens_per_second"] for r in batched_runs],
        "one_prefix_at_a_time_runs": [r["tokens_per_second"] for r in single_runs],
        "speedup": round(batched["tokens_per_second"] / one["tokens_per_second"], 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text, end="")
    print(f"wrote {json_path} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
