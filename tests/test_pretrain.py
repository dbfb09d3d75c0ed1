"""The shipped base model: its recipe matches the code's, it loads, and it stays small."""

from __future__ import annotations

import re

import pytest

from synthdata_assets.config import load_config
from synthdata_assets.models import shipped_base_row
from synthdata_assets.pretrain import (
    LOOKUPS,
    SHIPPED_BASE,
    PretrainRecipe,
    lookup_drill,
    pretrain_base,
    score_base,
    shipped_meta,
)
from synthdata_assets.tasks import embedded
from training.checkpoint import load_checkpoint, read_meta
from training.prompts import format_prompt

MAX_BYTES = 25 * 2**20


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
    recipe = PretrainRecipe(drill_steps=3, lookups=64, chain_steps=3, chain_batch_size=4)
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


def test_synthdata_pretrain_prints_the_new_score_beside_the_shipped_one(
    tmp_path, monkeypatch, capsys
) -> None:
    import argparse

    from synthdata_assets import cli, pretrain

    cut = PretrainRecipe(drill_steps=3, lookups=64, chain_steps=3, chain_batch_size=4)
    monkeypatch.setattr(pretrain, "PretrainRecipe", lambda: cut)
    assert cli.cmd_pretrain(argparse.Namespace(out=str(tmp_path / "base"))) == 0
    printed = capsys.readouterr().out
    score = read_meta(tmp_path / "base")["greedy_accuracy"]
    shipped = shipped_meta()["greedy_accuracy"]["accuracy"]
    assert (
        f"greedy accuracy {score['accuracy']:.1%} on the demo preset's 1000 test problems "
        f"(the shipped base: {shipped:.1%})"
    ) in printed
