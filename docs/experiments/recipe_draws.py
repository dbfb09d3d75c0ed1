"""Where do draws of the pretraining recipe part, and does a recipe change make good draws
reliably?

    python docs/experiments/recipe_draws.py run NAME SEED [FIELD=VALUE ...]
    python docs/experiments/recipe_draws.py table [NAME ...]
    python docs/experiments/recipe_draws.py plot PNG [NAME ...]

``run`` pretrains ``PretrainRecipe(seed=SEED)`` with the FIELDs changed (values in JSON,
``chain_learning_rate=1e-3``; ``init_seed=N`` as in ``base_recipe.py``; ``phase2_KEY=VALUE``
sets a ``TrainingConfig`` field of phase 2 that the recipe does not hold, such as
``phase2_weight_decay=0.1``; ``name_keyed=N`` adds N lookups keyed by the name alone to the
drill, :func:`name_keyed_drill`; ``restate=true`` pretrains and scores with step lines that
restate their sentence, as ``restate.py`` does, without the probes) into
``/tmp/recipe_draws/NAME/sSEED``, and records on the way

- the loss of every update of both phases, as means over blocks of 50 updates;
- the skills in context (``sft_forgetting.in_context_of``: argmax accuracy per role of a step
  line, ``name`` / ``op`` / ``b`` / ``c``, on the gold solutions of the first 100 test
  problems of pool 0, teacher forcing) after phase 1 and every 250 phase-2 updates. The
  probe reads the model under ``torch.no_grad`` and draws no random numbers, so the run's
  updates are those of an unprobed run (checked: the final losses of the shipped recipe's
  seeds equal those of ``base_recipe.py recipe``);

then scores the base as ``base_recipe.py`` does (greedy accuracy and first errors on the 1000
test problems of pools 0 and 7) and appends one row to ``recipe_draws.jsonl`` next to this
file. NAME labels the recipe, so that ``table`` can put the draws of one recipe side by side
(mean ± sd over seeds); ``plot`` draws each draw's phase-2 loss and in-context probes against
the update, one colour per recipe, the shipped base in black. Run with one torch thread
(``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import sft_forgetting  # noqa: E402
from base_p import recipe_p  # noqa: E402
from base_recipe import _cpu, print_environment  # noqa: E402

from synthdata_assets import pretrain  # noqa: E402
from synthdata_assets.pretrain import PretrainRecipe, pretrain_base  # noqa: E402
from synthdata_assets.tasks import embedded  # noqa: E402
from training.prompts import format_prompt  # noqa: E402

OUT = Path(__file__).with_name("recipe_draws.jsonl")
PROBE_EVERY = 250
PROBE_PROBLEMS = 100
BLOCK = 50
ROLES = ("name", "op", "b", "c")


def cmd_run(name: str, seed: str, *settings: str) -> None:
    changed = {k: json.loads(v) for k, v in (s.split("=", 1) for s in settings)}
    fields = {
        k: v
        for k, v in changed.items()
        if k not in ("init_seed", "name_keyed", "restate") and not k.startswith("phase2_")
    }
    if changed.get("restate"):
        # Step lines that restate their sentence (restate.py patches the task's step line
        # and the lookup drill on import). The probe's token roles are those of the plain
        # line, so it is off.
        import restate  # noqa: F401
    if changed.get("name_keyed"):
        corpus = pretrain.pretraining_corpus

        def with_name_keyed(recipe: PretrainRecipe) -> tuple[list, list]:
            drill, chains = corpus(recipe)
            extra = name_keyed_drill(
                recipe.task_params(), seed=recipe.seed + 2, n=changed["name_keyed"]
            )
            return drill + [(p, c, False) for p, c in extra], chains

        pretrain.pretraining_corpus = with_name_keyed
    phase2 = {k.removeprefix("phase2_"): v for k, v in changed.items() if k.startswith("phase2_")}
    if phase2:
        # Phase 2's TrainingConfig is built inside pretrain_base (phase 1's at import).
        make = pretrain.TrainingConfig
        pretrain.TrainingConfig = lambda **settings: make(**(settings | phase2))
    recipe = recipe_p(seed=int(seed), **fields)
    folder = Path(f"/tmp/recipe_draws/{name}/s{seed}")

    # pretrain_base builds its model inside; keep a handle on it (and its tokenizer) for the
    # probe, and draw the initial weights from init_seed when asked.
    built = {}
    build = pretrain.build_tiny_llama

    def build_and_keep(config, tokenizer, *, seed):
        model = build(config, tokenizer, seed=changed.get("init_seed", seed))
        built.update(model=model, tokenizer=tokenizer)
        return model

    pretrain.build_tiny_llama = build_and_keep
    curves = {"phase1": [], "phase2": []}
    probes = []
    state = {"phase": "phase1", "last": 0, "probe_s": 0.0}

    def probe(update: int) -> None:
        if changed.get("restate"):
            return
        started = time.monotonic()
        model = built["model"]
        model.eval()
        with torch.no_grad():
            skills = sft_forgetting.in_context_of(model, built["tokenizer"], 0, PROBE_PROBLEMS)
        model.train()
        probes.append({"update": update, **{r: skills[f"ctx_{r}"] for r in ROLES}})
        state["probe_s"] += time.monotonic() - started

    def progress(done: int, total: int, **figures: float) -> None:
        if done < state["last"]:  # phase 2 counts from update 1 again
            state["phase"] = "phase2"
        state["last"] = done
        curves[state["phase"]].append(figures["loss"])
        if state["phase"] == "phase1" and done == total:
            probe(0)  # the end of phase 1 is update 0 of phase 2
        elif state["phase"] == "phase2" and done % PROBE_EVERY == 0:
            probe(done)

    started = time.monotonic()
    meta = pretrain_base(recipe, folder, log=lambda m: print(m, flush=True), progress=progress)
    pretrain_s = time.monotonic() - started
    row = {
        "cmd": "run",
        "name": name,
        "seed": int(seed),
        "recipe": changed,
        "cpu_model": _cpu(),
        "folder": str(folder),
        "drill_accuracy": round(meta["drill_accuracy"], 4),
        "loss_last_10pct": round(meta["final_loss"], 4),
        "pretrain_seconds": round(pretrain_s, 1),
        "probe_seconds": round(state["probe_s"], 1),
        "loss_blocks": {
            phase: [
                round(sum(c[i : i + BLOCK]) / len(c[i : i + BLOCK]), 4)
                for i in range(0, len(c), BLOCK)
            ]
            for phase, c in curves.items()
        },  # fmt: skip
        "probes": probes,
    }
    started = time.monotonic()
    for pool in (0, 7):
        scored = sft_forgetting.accuracy(str(folder), pool, 0)
        row[f"accuracy_pool{pool}"] = scored["accuracy"]
        row[f"first_error_pool{pool}"] = scored["first_error"]
    row["eval_seconds"] = round(time.monotonic() - started, 1)
    sft_forgetting.write_row(OUT, row)


def name_keyed_drill(params, *, seed: int, n: int) -> list[tuple[str, str]]:
    """``n`` operator and constant lookups of a step line with its "After Ray," left out, so
    that the name just written is the only key to the step's sentence: a chain question and the
    solution's first lines, then ``Uma has 12`` completed by `` -``, or ``Uma has 12 -`` by
    `` 2`` (alternately). The arithmetic drill's lines have the same form (``Bob has 3 + 5 =``).
    """
    out = []
    for i, problem in enumerate(embedded.generate_problems(params, n, seed=seed, split="lookup")):
        lines = embedded.solve(problem)
        j = (i // 2) % len(lines)
        name, tail = lines[j].split(", ", 1)[1].split(" has ")
        a, op, b = tail.split(" ")[:3]
        context = format_prompt(problem.question) + "".join(line + "\n" for line in lines[:j])
        if i % 2 == 0:
            out.append((context + f"{name} has {a}", f" {op}"))
        else:
            out.append((context + f"{name} has {a} {op}", f" {b}"))
    return out


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def cmd_table(*names: str) -> None:
    """Markdown: one line per draw, then each recipe's mean ± sd over its seeds."""
    rows = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["cmd"] == "run" and (not names or r["name"] in names)]
    print("| recipe | seed | drill acc. | phase-2 loss | pool 0 | pool 7 | first errors (pool 0) "
          "| in context at 500 / 1500 / 3000: name, op, b, c | s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    by_name = defaultdict(list)
    for r in rows:
        by_name[r["name"]].append(r)
        wrong = [(k, v) for k, v in r["first_error_pool0"].items() if k != "right"]
        errors = ", ".join(f"{k} {v}" for k, v in wrong[:3])
        at = {p["update"]: p for p in r["probes"]}
        ctx = " / ".join(
            ", ".join(f"{100 * at[u][role]:.0f}" for role in ROLES) for u in (500, 1500, 3000)
            if u in at
        )  # fmt: skip
        cells = [
            r["name"], r["seed"], f"{100 * r['drill_accuracy']:.1f}",
            f"{r['loss_last_10pct']:.3f}", f"{r['accuracy_pool0']:.1f}",
            f"{r['accuracy_pool7']:.1f}", errors, ctx, f"{r['pretrain_seconds']:.0f}",
        ]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
    print()
    print("| recipe | draws | pool 0 | pool 7 | draws at or above 30% (pool 0) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, group in by_name.items():
        p0 = [r["accuracy_pool0"] for r in group]
        p7 = [r["accuracy_pool7"] for r in group]
        good = sum(a >= 30 for a in p0)
        print(f"| {name} | {len(group)} | {_mean_sd(p0)} | {_mean_sd(p7)} | {good} |")


def cmd_plot(png: str, *names: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["cmd"] == "run" and (not names or r["name"] in names)]
    recipes = list(dict.fromkeys(r["name"] for r in rows))
    figure = Figure(figsize=(17, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 1 + len(ROLES))
    for r in rows:
        # The shipped base (the default recipe's seed 0) in black, over the others.
        shipped = not r["recipe"] and r["seed"] == 0
        style = (
            {"color": "black", "linewidth": 2.2, "zorder": 3}
            if shipped
            else {"color": f"C{recipes.index(r['name'])}", "linewidth": 1}
        )
        label = f"{r['name']} s{r['seed']} ({r['accuracy_pool0']:.1f}%)"
        loss = r["loss_blocks"]["phase2"]
        axes[0].plot([BLOCK * (i + 0.5) for i in range(len(loss))], loss, **style)
        for ax, role in zip(axes[1:], ROLES, strict=True):
            ax.plot(
                [p["update"] for p in r["probes"]],
                [100 * p[role] for p in r["probes"]],
                marker=".",
                label=label if ax is axes[1] else None,
                **style,
            )
    axes[0].set(yscale="log", title="phase-2 loss (mean of 50 updates)", xlabel="update")
    titles = {"name": "name", "op": "operator", "b": "constant", "c": "result (table)"}
    for ax, role in zip(axes[1:], ROLES, strict=True):
        ax.set(title=f"{titles[role]}, in context (%)", xlabel="phase-2 update", ylim=(0, 100))
    figure.legend(loc="outside right center", fontsize=7, title="draw (pool 0)")
    figure.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    print_environment()
    {"run": cmd_run, "table": cmd_table, "plot": cmd_plot}[sys.argv[1]](*sys.argv[2:])
