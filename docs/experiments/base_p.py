"""The recipe of base P, the shipped base until 2026-12-02: seed 0 without phase 3.

The scripts in this folder that pretrain, continue or rebuild the data of a base were run on
that recipe when it was the code's default. The default is now seed 15 with phase 3
(``synthdata_assets.pretrain.PretrainRecipe``), so they build their recipes here, to rerun as
recorded. Every run recorded before that date that loads the shipped base (the pipeline
configs here, ``sft_forgetting.py`` and the others) ran on base P's weights; to rerun one as
recorded, put them back first::

    git restore --source fcb670d models/embedded-base
"""

from __future__ import annotations

from synthdata_assets.pretrain import PretrainRecipe

BASE_P = {"seed": 0, "polish_steps": 0}


def recipe_p(**fields: object) -> PretrainRecipe:
    """Base P's recipe with ``fields`` changed."""
    return PretrainRecipe.model_validate({**BASE_P, **fields})
