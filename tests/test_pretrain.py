"""The shipped base model: its recipe matches the code's, it loads, and it stays small."""

from __future__ import annotations

import pytest

from synthdata_assets.config import load_config
from synthdata_assets.models import shipped_base_row
from synthdata_assets.pretrain import SHIPPED_BASE, PretrainRecipe, shipped_meta

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
