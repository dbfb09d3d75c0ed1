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
    shipped_meta,
)
from synthdata_assets.tasks import embedded
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
