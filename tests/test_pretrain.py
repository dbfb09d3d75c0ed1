"""The shipped base model: its recipe matches the code's, it loads, and it stays small."""

from __future__ import annotations

import re

import polars as pl
import pytest

from synthdata_assets.config import load_config
from synthdata_assets.models import shipped_base_row
from synthdata_assets.pretrain import (
    LOOKUPS,
    SHIPPED_BASE,
    PretrainRecipe,
    draws_folder,
    greedy_accuracy,
    lookup_drill,
    pretrain_base,
    pretrain_draws,
    score_base,
    shipped_meta,
)
from synthdata_assets.problems import generated_split, problem_pool
from synthdata_assets.tasks import embedded
from training.checkpoint import load_checkpoint, read_meta
from training.prompts import format_prompt

MAX_BYTES = 25 * 2**20


def _cut(**fields: object) -> PretrainRecipe:
    """The default recipe cut to a few updates of phases 1 and 2, and no phase 3."""
    return PretrainRecipe(
        drill_steps=3, lookups=64, chain_steps=3, chain_batch_size=4, polish_steps=0, **fields
    )


def test_shipped_base_matches_the_default_recipe() -> None:
    """A change of the recipe (or of the task world it encodes) must come with a new base:
    `synthdata pretrain` writes it."""
    assert shipped_meta()["recipe"] == PretrainRecipe().model_dump(), (
        "models/embedded-base/meta.json was pretrained by another recipe than "
        "synthdata_assets.pretrain.PretrainRecipe(); run `synthdata pretrain` and commit it"
    )


def test_shipped_base_is_small() -> None:
    size = sum(f.stat().st_size for f in SHIPPED_BASE.rglob("*") if f.is_file())
    assert size <= MAX_BYTES


def test_presets_that_use_it_load_it() -> None:
    config = load_config("demo")
    assert config.model.name == "embedded-base"
    row = shipped_base_row(config.task)
    assert row["parameters"][0] == shipped_meta()["parameters"]


def test_the_shipped_base_scores_what_its_meta_records() -> None:
    """`synthdata pretrain` prints a new base's score beside this recorded one, so the
    recorded one must be what the scoring gives for the shipped base."""
    recorded = shipped_meta()["greedy_accuracy"]
    config = load_config("demo", overrides={"task": {"pool_seed": recorded["pool_seed"]}})
    model, tokenizer = load_checkpoint(SHIPPED_BASE)
    score = score_base(model, tokenizer, config)
    # Within a point: another CPU's float sums may flip a greedy token or two.
    assert score["test_problems"] == recorded["test_problems"]
    assert abs(score["accuracy"] - recorded["accuracy"]) <= 0.01, (score, recorded)


def test_pretrain_base_writes_a_scored_base(tmp_path) -> None:
    """The recipe's two phases, cut to a few updates, write a loadable base whose meta holds
    the recipe and its score on the test split it was given."""
    recipe = _cut()
    config = load_config("demo", overrides={"task": {"n_test": 20}})
    lines: list[str] = []
    meta = pretrain_base(recipe, tmp_path / "base", log=lines.append, score_on=config)
    assert read_meta(tmp_path / "base") == meta
    assert meta["recipe"] == recipe.model_dump()
    assert meta["greedy_accuracy"]["test_problems"] == 20
    assert 0.0 <= meta["greedy_accuracy"]["accuracy"] <= 1.0
    assert any("greedy accuracy" in line for line in lines)
    model, tokenizer = load_checkpoint(tmp_path / "base")
    assert score_base(model, tokenizer, config) == meta["greedy_accuracy"]


def test_phase_3_continues_phase_2_from_the_same_weights(tmp_path) -> None:
    """polish_steps trains on after phase 2: the same recipe with and without it builds the same
    tokenizer, runs phase 3 only when asked, and ends with other weights."""
    from safetensors.torch import load_file

    cut = _cut()
    lines: list[str] = []
    plain = pretrain_base(cut, tmp_path / "plain", log=lines.append)
    assert not any(line.startswith("phase 3") for line in lines)
    polished = pretrain_base(
        cut.model_copy(update={"polish_steps": 2}), tmp_path / "polished", log=lines.append
    )
    assert polished["recipe"]["polish_steps"] == 2 and plain["recipe"]["polish_steps"] == 0
    assert any(line.startswith("phase 3: 2 more updates at 0.0005") for line in lines)
    assert (tmp_path / "plain" / "tokenizer.json").read_text() == (
        tmp_path / "polished" / "tokenizer.json"
    ).read_text()
    a = load_file(tmp_path / "plain" / "model.safetensors")
    b = load_file(tmp_path / "polished" / "model.safetensors")
    assert any(not (a[k] == b[k]).all() for k in a)


def test_a_draw_stored_before_phase_3_existed_is_a_draw_without_it() -> None:
    """The default recipe has phase 3 now; a draw stored before the field existed had none."""
    from synthdata_assets.pretrain import _recipe_of

    assert PretrainRecipe().polish_steps > 0
    old = PretrainRecipe(seed=3).model_dump()
    del old["polish_steps"], old["polish_learning_rate"]
    assert _recipe_of({"recipe": old}) == PretrainRecipe(seed=3, polish_steps=0)
    assert _recipe_of({"recipe": old}) != PretrainRecipe(seed=3)
    assert _recipe_of({}) is None
    assert _recipe_of({"recipe": PretrainRecipe().model_dump()}) == PretrainRecipe()


def test_another_world_is_refused() -> None:
    task = load_config("demo", overrides={"task": {"embedded": {"modulus": 29}}}).task
    with pytest.raises(ValueError, match="modulus 23"):
        shipped_base_row(task)


def test_lookup_drill_continues_the_true_solution_with_each_lookup() -> None:
    params = PretrainRecipe().task_params()
    drill = lookup_drill(params, seed=3, n=40, kinds=LOOKUPS)
    problems = embedded.generate_problems(params, 40, seed=3, split="lookup")
    ends = {"name": ",", "read": "After", "operator": None, "constant": None}
    for i, ((context, completion), problem) in enumerate(zip(drill, problems, strict=True)):
        kind = LOOKUPS[i % len(LOOKUPS)]
        prompt = format_prompt(problem.question)
        assert context.startswith(prompt)
        solution = "\n".join(embedded.solve(problem))
        # The context is the solution up to the looked-up token, which the completion is.
        assert solution.startswith(context[len(prompt) :] + completion), (kind, context)
        assert completion.startswith(" ") and " " not in completion[1:]
        if ends[kind]:
            assert context.endswith(ends[kind])
        else:
            assert re.search(r"has \d+( [-+*])?$", context), (kind, context)
    with pytest.raises(ValueError, match="unknown lookup"):
        lookup_drill(params, seed=3, n=2, kinds=("nope",))


@pytest.fixture
def cut_recipe(monkeypatch) -> PretrainRecipe:
    """`synthdata pretrain` with the recipe cut to a few updates and 20 validation problems."""
    from synthdata_assets import pretrain

    cut = _cut()
    monkeypatch.setattr(pretrain, "PretrainRecipe", lambda: cut)
    monkeypatch.setattr(pretrain, "VALIDATION_PROBLEMS", 20)
    return cut


def test_synthdata_pretrain_prints_the_new_score_beside_the_shipped_one(
    tmp_path, cut_recipe, capsys
) -> None:
    import argparse

    from synthdata_assets import cli

    args = argparse.Namespace(
        out=str(tmp_path / "base"), draws=1, jobs=None, seed=None, polish_steps=None
    )
    assert cli.cmd_pretrain(args) == 0
    printed = capsys.readouterr().out
    assert "to record this base" not in printed
    score = read_meta(tmp_path / "base")["greedy_accuracy"]
    shipped = shipped_meta()["greedy_accuracy"]["accuracy"]
    assert (
        f"greedy accuracy {score['accuracy']:.1%} on the demo preset's 1000 test problems "
        f"(the shipped base: {shipped:.1%})"
    ) in printed


def test_synthdata_pretrain_seed_and_polish_steps_change_the_recipe_and_say_how_to_record_it(
    tmp_path, cut_recipe, capsys
) -> None:
    from synthdata_assets import cli

    argv = ["pretrain", "--out", str(tmp_path / "base"), "--seed", "2", "--polish-steps", "2"]
    args = cli.build_parser().parse_args(argv)
    assert cli.cmd_pretrain(args) == 0
    recipe = read_meta(tmp_path / "base")["recipe"]
    assert (recipe["seed"], recipe["polish_steps"]) == (2, 2)
    assert "set PretrainRecipe.seed = 2, PretrainRecipe.polish_steps = 2 in" in (
        capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv[:-1], "-1"])


def test_pretrain_draws_keeps_the_best_on_validation_and_resumes(tmp_path) -> None:
    """Two draws of a cut recipe, in two one-thread processes: the base kept is the draw with
    the best validation accuracy, byte for byte, and a second run reuses both draws."""
    from safetensors.torch import load_file

    recipe = _cut(seed=5)
    config = load_config("demo", overrides={"task": {"n_test": 20}})
    lines: list[str] = []
    out = tmp_path / "base"
    draw = {"score_on": config, "validation_problems": 50, "log": lines.append}
    meta = pretrain_draws(recipe, out, draws=2, jobs=2, **draw)
    assert [row["seed"] for row in meta["draws"]] == [5, 6]
    best = max(meta["draws"], key=lambda row: (row["validation_accuracy"], -row["seed"]))
    assert meta["recipe"] == recipe.model_copy(update={"seed": best["seed"]}).model_dump()
    assert meta["torch_threads"] == 1
    assert meta["validation"] == {"split": "validation", "stream_seed": 0, "problems": 50}
    assert meta["greedy_accuracy"]["test_problems"] == 20
    assert read_meta(out) == meta
    kept = load_file(draws_folder(out) / f"seed-{best['seed']}" / "model.safetensors")
    written = load_file(out / "model.safetensors")
    assert kept.keys() == written.keys()
    assert all((kept[k] == written[k]).all() for k in kept)
    # Each draw is scored as the base itself would be on the validation split.
    model, tokenizer = load_checkpoint(draws_folder(out) / "seed-5")
    validation = [row for row in meta["draws"] if row["seed"] == 5][0]["validation_accuracy"]
    assert validation == greedy_accuracy(
        model, tokenizer, config, generated_split(config.task, "validation", 50, seed=0)
    )

    lines.clear()
    again = pretrain_draws(recipe, out, draws=2, **draw)
    assert again == meta
    assert sum("kept from an earlier run" in line for line in lines) == 2
    assert not any("pretraining" in line for line in lines)


def test_pretrain_draws_refuses_no_draws(tmp_path) -> None:
    with pytest.raises(ValueError, match="draws must be at least 1"):
        pretrain_draws(PretrainRecipe(), tmp_path, draws=0, score_on=load_config("demo"), log=print)


def test_the_validation_split_is_its_own_stream() -> None:
    """Draws are chosen on problems of no pool: the same for every pool seed, and none of them
    a test question of the demo's pool."""
    task = load_config("demo").task
    validation = generated_split(task, "validation", 200, seed=0)
    assert validation.height == 200 and set(validation["split"]) == {"validation"}
    other_pool = load_config("demo", overrides={"task": {"pool_seed": 7}}).task
    assert validation.equals(generated_split(other_pool, "validation", 200, seed=0))
    test = problem_pool(task).filter(pl.col("split") == "test")
    assert not set(validation["question"]) & set(test["question"])
    gsm8k = task.model_copy(update={"name": "gsm8k"})
    with pytest.raises(ValueError, match="not generated"):
        generated_split(gsm8k, "validation", 2, seed=0)
