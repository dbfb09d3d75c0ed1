"""Checkpoint folders: ordinary Hugging Face model folders, written atomically.

A checkpoint is what ``save_pretrained`` writes for the model (``config.json``,
``generation_config.json``, ``model.safetensors``) and the tokenizer (``tokenizer.json``,
``tokenizer_config.json``), plus ``meta.json``: the caller's record of how it was made (stage,
data size, seed, training statistics...). Any tool that reads Hugging Face folders reads
it: ``AutoModelForCausalLM.from_pretrained(folder)``, vLLM, ``transformers`` pipelines.

Atomic writes
-------------
:func:`save_checkpoint` writes everything into a hidden sibling folder
``.NAME.partial-PID-RANDOM`` and renames it to ``NAME`` only once complete. An exception
removes the partial folder; a killed process can leave one behind, never a half-written
folder under the final name, so "the folder exists" means "the checkpoint is complete".
Leftover ``.*.partial-*`` folders are safe to delete
(:func:`training.folders.remove_partial_checkpoints`). Replacing an existing checkpoint
moves the old one aside first and deletes it after the rename; a crash in between leaves
no folder under the final name (and the old one under ``.NAME.old-*``), never a mix.
On several processes, only the main process should call it.

Loading
-------
:func:`load_checkpoint` reads a folder written here (offline, ``local_files_only``);
:func:`load_for_training` reads one to train, in float32, and says the dtype to save it in.
:func:`load_model_reference` resolves ``model.name`` for real models: a local folder
loads; anything else is a hub id, downloaded only when ``model.allow_hub_download`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from training.folders import old_folder, partial_folder

META_FILE = "meta.json"

Dtype = str | torch.dtype | None


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | os.PathLike[str],
    meta: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model``, ``tokenizer`` and ``meta`` to ``folder`` atomically; returns the path.

    ``dtype``: the weights' dtype in the folder (the model is cast to it in place first, so
    no second copy is made); None keeps the model's.
    """
    if dtype is not None and model.dtype != dtype:
        model.to(dtype)
    final = Path(folder)
    # Serialise first: a meta that is not JSON must fail before anything touches the disk.
    meta_text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = partial_folder(final, tag)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / META_FILE).write_text(meta_text + "\n")
        _readable_as_usual(partial)
        if final.exists():
            old = old_folder(final, tag)
            final.rename(old)
            partial.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _readable_as_usual(folder: Path) -> None:
    """Give every file the permissions a new file gets (0666 less the umask): the weights'
    writer creates its file owner-only (0600), which other users of a shared warehouse (a
    vLLM server, a colleague) could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint folder."""
    return json.loads((Path(folder) / META_FILE).read_text())


def load_checkpoint(
    folder: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: Dtype = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode, on ``device``) and tokenizer of a checkpoint folder, offline.

    ``dtype`` is a torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"auto"`` for the
    saved one); ``None`` keeps transformers' default.
    """
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (no config.json there)")
    return _load(str(path), device=device, dtype=dtype, local_files_only=True)


def load_for_training(
    folder: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.dtype]:
    """A checkpoint to train: its model with float32 weights, its tokenizer, and the dtype it
    was stored in (to save the trained model back in).

    AdamW's states follow the parameters' dtype, and a bf16 weight rounds away any update
    smaller than about 2^-9 of itself: at a DPO learning rate of 1e-6 a bf16-stored model
    would barely move, without an error. Training float32 master weights under bf16 autocast
    (``training.bf16``) keeps every update.
    """
    model, tokenizer = load_checkpoint(folder, device=device, dtype="auto")
    stored = model.dtype
    return model.float(), tokenizer, stored


def load_model_reference(
    name_or_path: str | os.PathLike[str],
    *,
    allow_hub_download: bool,
    device: str | torch.device | None = None,
    dtype: Dtype = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A real model named by ``model.name``: a local folder, or a hub id if downloads are on."""
    path = Path(name_or_path)
    if path.is_dir():
        return _load(str(path), device=device, dtype=dtype, local_files_only=True)
    if not allow_hub_download:
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} is not a local folder and hub downloads are off. "
            f"Either download the model folder (e.g. `hf download {name_or_path} --local-dir "
            f"models/{path.name}`) and set model.name to its path, or set "
            "model.allow_hub_download: true to let transformers download it."
        )
    return _load(str(name_or_path), device=device, dtype=dtype, local_files_only=False)


def _load(
    name: str, *, device: str | torch.device | None, dtype: Dtype, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if dtype is not None:
        kwargs["dtype"] = dtype  # transformers takes a torch dtype, its name, or "auto"
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
