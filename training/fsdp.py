"""Fully sharded data parallel training (PyTorch FSDP2, ``torch.distributed.fsdp.fully_shard``).

With ``execution.train_sharding: fsdp`` and ``execution.train_processes: N`` (N > 1) the N
training ranks each keep ``1/N`` of every parameter, of its gradient and of its AdamW states,
instead of the whole of each (DDP): a model whose float32 training states do not fit one GPU
trains over several. Before a unit's forward pass the ranks all-gather its parameters, after
its backward pass they reduce-scatter (average) its gradients, and each rank's AdamW updates
its own shard. The batches, the schedule, the seeds and the loss are those of DDP
(:mod:`training.trainer`), so the updates are those of one process up to the order of float
sums (``tests/test_ranks.py``).

Units (:func:`shard`)
---------------------
Each decoder layer (the classes in the model's ``_no_split_modules``) is a unit, its gathered
parameters freed again after its forward pass; an input embedding that is not tied to the
output head is a unit; the root unit holds the rest: the final norm, the output head (and a
tied input embedding). That is accelerate 1.15's layout
(``accelerate.utils.fsdp_utils.fsdp2_prepare_model``) but for its ``[final norm, head]`` unit,
whose parameters stay in the root here.

The output head outside ``forward``
-----------------------------------
The chunked log-probs (:mod:`training.logprobs`) apply the output head to hidden states after
the model's ``forward`` has returned, and again in the backward pass, where activation
checkpointing recomputes each chunk. A head whose weight is sharded at that time gives no
logits at all (``mm`` of a tensor and a DTensor shard is an error). Here the head belongs to
the root unit, which is ``fully_shard`` with ``reshard_after_forward=False``: documented to
keep the unsharded parameters registered from the root's forward pass until its
post-backward, which FSDP runs at the end of the backward pass (its final callback, also when
the root's inputs need no gradient). So a call of the head between the forward and the end of
backward multiplies by the whole weight, its gradient accumulates on the unsharded parameter
and is reduce-scattered with the root's. accelerate keeps its ``[final norm, head]`` unit
gathered the same way, for the same reason. The alternative, the head as a unit of its own
called per chunk (which ``fully_shard([norm, head])`` supports from torch 2.13), reduce-scatters
the head's gradient once per chunk (torch's own caveat) instead of once per micro-batch.

Why hand-written and not accelerate's ``FullyShardedDataParallelPlugin(fsdp_version=2)``
------------------------------------------------------------------------------------------
accelerate turns the plugin into FSDP only for GPU-like process groups (``AcceleratorState``
sets ``DistributedType.FSDP`` for ``MULTI_GPU``, ``MULTI_NPU``...; ``MULTI_CPU`` stays data
parallel without a word), so the CPU ranks over gloo that test this project's training would
silently train DDP. ``fully_shard`` itself runs on CPUs over gloo. So the trainers shard the
model here, on CPUs and GPUs alike, and give accelerate the optimizer, the loader and the
schedule only: it still shards the data, counts accumulation steps, scales the loss and clips
the gradients (its clipping is DTensor-aware).

Saving
------
:func:`full_state_dict` gathers the full, unsharded state dict onto rank 0's CPU (every rank
must call it; the others get an empty dict), through
``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with
``StateDictOptions(full_state_dict=True, cpu_offload=True)``, which is what accelerate's
``get_state_dict`` does for FSDP2. :class:`training.trainer.TrainingRun` loads it into the
caller's model on rank 0, which then saves a plain Hugging Face folder as in one process.

The cost in host memory: every rank loads the whole starting model before sharding it (as for
DDP), and rank 0 keeps it whole, beside the copy it shards, until the weights come back (for a
7B model in float32, 28 GB more on rank 0).
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


def shard(model: torch.nn.Module, device: torch.device, ranks: int) -> torch.nn.Module:
    """``model`` sharded in place over ``ranks`` ranks on ``device``'s type, in the units of
    the module docstring; the same object."""
    mesh = init_device_mesh(device.type, (ranks,))
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or embedding.weight is not head.weight:
        fully_shard(embedding, mesh=mesh)
    # The head stays in the root, gathered from forward to backward (see the module docstring).
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def resharded(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every unit's shards registered as its parameters again, as the optimizer
    must hold them: after a forward pass without backward (DPO's reference pass) the root unit
    still has its gathered parameters registered, which ``model.parameters()`` would give."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """The parameter elements this rank keeps, and the model's (for the log)."""
    here = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        here += (
            parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
        )
    return here, total


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The sharded ``model``'s full state dict on rank 0's CPU, empty elsewhere; every rank
    must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
