"""Probes for the didactic study (docs/didactic.md): can a tiny Llama learn path-star graphs on
CPU, and which part?

Two modes, each a fresh tiny-llama with the star_graph tokenizer, one torch thread:

    python docs/experiments/didactic_probe.py sft N EPOCHS HIDDEN LAYERS LR D,L,NODES
        next-token SFT from scratch on N problems for EPOCHS epochs (Bachmann & Nagarajan's
        setting), then greedy first-step and path accuracy on 500 test problems, and the
        teacher-forced accuracy of each node given the true nodes before it;
    python docs/experiments/didactic_probe.py walks CHUNKS STEPS HIDDEN LAYERS LR D,L,NODES
        pretraining on fresh walks (``star_graph.walk_examples``: every step a lookup), CHUNKS
        times STEPS updates (each chunk its own warm-up and decay), with held-out walk accuracy
        and greedy accuracy on the real task after each chunk.

Each result is a JSON row appended to docs/experiments/didactic_probe.jsonl with the CPU name.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from synthdata_assets.config import StarGraphTaskConfig, TaskConfig
from synthdata_assets.models import build_base_model, star_graph_walk_accuracy
from synthdata_assets.tasks import star_graph as sg
from training.checkpoint import load_checkpoint
from training.config import ModelConfig, TrainingConfig
from training.generation import SamplingParams
from training.generation.transformers_engine import TransformersGenerator
from training.prompts import format_example, format_prompt
from training.sft import train_sft

RESULTS = Path(__file__).with_name("didactic_probe.jsonl")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def fresh_model(hidden: int, layers: int, params: sg.StarGraphParams):
    task = TaskConfig(
        name="star_graph",
        star_graph=StarGraphTaskConfig(
            degree=params.degree, path_length=params.path_length, n_nodes=params.n_nodes
        ),
    )
    config = ModelConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=max(1, hidden // 32),
        intermediate_size=4 * hidden,
        max_seq_len=128,
        pretrain_steps=0,
    )
    folder = Path(tempfile.mkdtemp(prefix="didactic_probe_"))
    build_base_model(config, TrainingConfig(), task, folder, meta={}, log=lambda _: None)
    return load_checkpoint(str(folder))


def task_accuracy(model, tokenizer, test: list[sg.StarProblem]) -> tuple[float, float]:
    """Greedy first-step and whole-path accuracy."""
    outputs = TransformersGenerator(model, tokenizer, batch_size=256).generate(
        [format_prompt(p.question) for p in test], SamplingParams(max_new_tokens=24)
    )
    texts = [o[0].text for o in outputs]
    first = sum(sg.first_step_correct(p.spec, t) for p, t in zip(test, texts, strict=True))
    path = sum(
        sg.parse_path(t) == [str(n) for n in p.path] for p, t in zip(test, texts, strict=True)
    )
    return first / len(test), path / len(test)


def teacher_forced(model, tokenizer, test: list[sg.StarProblem]) -> list[float]:
    """Accuracy of each node given the true nodes before it (nodes and newlines alternate)."""
    right = [0] * len(test[0].path)
    with torch.no_grad():
        for p in test:
            prompt = format_prompt(p.question)
            ids = tokenizer(prompt + sg.solution_text(p.path) + "\n", return_tensors="pt")
            start = len(tokenizer(prompt)["input_ids"])
            logits = model(**ids).logits[0]
            for j in range(len(p.path)):
                pos = start + 2 * j
                right[j] += int(logits[pos - 1].argmax()) == int(ids["input_ids"][0, pos])
    return [r / len(test) for r in right]


def record(row: dict) -> None:
    row = {**row, "cpu": cpu_name(), "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    mode, a, b, hidden, layers, lr, graph = argv
    degree, length, nodes = (int(x) for x in graph.split(","))
    params = sg.StarGraphParams(degree, length, nodes)
    model, tokenizer = fresh_model(int(hidden), int(layers), params)
    test = sg.generate_problems(params, 500, seed=0, split="test")
    common = {"mode": mode, "hidden": int(hidden), "layers": int(layers), "lr": float(lr)}
    common["graph"] = [degree, length, nodes]
    start = time.time()
    if mode == "sft":
        n, epochs = int(a), int(b)
        train = sg.generate_problems(params, n, seed=0, split="train")
        examples = [format_example(p.question, sg.solution_text(p.path)) for p in train]
        config = TrainingConfig(epochs=epochs, learning_rate=float(lr), batch_size=32)
        stats = train_sft(model, tokenizer, examples, config=config, seed=0, max_seq_len=128)
        model.eval()
        first, path = task_accuracy(model, tokenizer, sg.exclude_overlap(test, train))
        record(
            {
                **common,
                "problems": n,
                "epochs": epochs,
                "train_loss": stats.mean_loss_last_10pct,
                "seconds": round(time.time() - start),
                "first_step": first,
                "path": path,
                "teacher_forced_per_node": teacher_forced(model, tokenizer, test[:200]),
            }
        )
        return
    chunks, steps = int(a), int(b)
    held_out = sg.walk_examples(params, 300, seed=1)
    config = TrainingConfig(epochs=1, learning_rate=float(lr), batch_size=32)
    for chunk in range(chunks):
        walks = sg.walk_examples(params, steps * 32, seed=100 + chunk)
        model.train()
        stats = train_sft(
            model,
            tokenizer,
            [format_example(q, s) for q, s in walks],
            config=config,
            seed=chunk,
            max_steps=steps,
            max_seq_len=128,
        )
        model.eval()
        first, path = task_accuracy(model, tokenizer, test)
        record(
            {
                **common,
                "updates": (chunk + 1) * steps,
                "train_loss": stats.mean_loss_last_10pct,
                "seconds": round(time.time() - start),
                "walk_accuracy": star_graph_walk_accuracy(model, tokenizer, held_out),
                "first_step": first,
                "path": path,
            }
        )


if __name__ == "__main__":
    main(sys.argv[1:])
