"""The KV caches of :class:`training.generation.transformers_engine.TransformersGenerator`.

Two caches hold what a row of the decoding batch attends to:

- :class:`SharedPrompts`: the prompts in flight, stored once per prompt and read once per
  decoding step for all ``n`` samples of a prompt (cascade attention, as vLLM and FlashInfer
  call it), through :func:`shared_prompt_attention`, registered with transformers as an
  attention implementation and switched on by :func:`shared_prompt_attention_in`;
- :class:`GrowingCache`: the tokens each row has drawn (or, in the copied layout, its prompt
  and its tokens). Keys and values live in buffers with room to grow, so a decoding step
  writes one column in place; rows joining the batch start at the current column (the columns
  before are masked), and when the room runs out the buffers are copied without the leading
  columns that no row needs any more. Transformers' ``DynamicCache`` concatenates instead,
  copying the whole cache every token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` for decoding: keys and values live in zero-initialised buffers with
    room to grow along the sequence, so that a decoding step writes its column in place, and
    :meth:`update` hands attention the whole buffers, room included (the caller masks the
    columns not yet written; they hold zeros, finite, so masked weights stay exactly 0).
    ``keys`` and ``values`` are the written columns.

    Hand-written because transformers' caches either concatenate every step (``DynamicLayer``:
    a copy of the whole cache per token) or preallocate the full context and attend over all
    of it with one shared write position (``StaticCache``), which rules out rows of different
    lengths joining and leaving the batch. Attention reads whole buffers rather than a view of
    their written columns because batched matrix products over such a view (rows strided by
    the buffer's width) are slower than over a contiguous tensor on the CPU; the room is kept
    small and the cache compacted (:meth:`compact`) when it runs out.
    """

    ROOM = 16  # columns allocated ahead

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length, new = self.get_seq_length(), key_states.shape[-2]
        if length + new > self.capacity:
            raise RuntimeError("no room in the decoding cache: DecodeBatch.make_room() first")
        self._keys[:, :, length : length + new] = key_states
        self._values[:, :, length : length + new] = value_states
        self._view(length + new)
        return self._keys, self._values

    @property
    def capacity(self) -> int:
        """Columns allocated (written ones and room)."""
        return self._keys.shape[-2]

    def _allocate(
        self, like: torch.Tensor, rows: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers for ``width`` columns that the caller writes, and zeroed room after them."""
        shape = (rows, like.shape[1], width + self.ROOM, like.shape[3])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        keys[:, :, width:] = 0
        values[:, :, width:] = 0
        return keys, values

    def _view(self, length: int) -> None:
        self.keys = self._keys[:, :, :length]
        self.values = self._values[:, :, :length]

    # The decoder does not call these two; they keep the buffers consistent if transformers'
    # own cache operations are applied to this layer.
    def batch_repeat_interleave(self, repeats: int) -> None:
        length = self.get_seq_length()
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._view(length)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        length = self.get_seq_length()
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view(length)

    def start_empty(self, like: torch.Tensor, rows: int) -> None:
        """``rows`` rows of no columns yet, shaped like ``like`` ([any, heads, any, size])."""
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True
        self._keys, self._values = self._allocate(like, rows, 0)
        self._view(0)

    def start_copies(self, keys: torch.Tensor, values: torch.Tensor, repeats: int) -> None:
        """Row ``p * repeats + r`` holds ``keys[p]`` and ``values[p]`` for every ``r``."""
        rows, width = len(keys) * repeats, keys.shape[2]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._keys, self._values = self._allocate(keys, rows, width)
        for buffer, new in ((self._keys, keys), (self._values, values)):
            buffer[:, :, :width].unflatten(0, (len(keys), repeats)).copy_(new[:, None])
        self._view(width)

    def compact(self, first: int) -> None:
        """Drops the first ``first`` columns (padding that no row attends to any more) into new
        buffers with fresh room."""
        self.copy_rows(self, None, first)

    def stack(self, other: GrowingLayer) -> None:
        """Append ``other``'s rows below this layer's, both right-aligned (left padding)."""
        width = max(self.get_seq_length(), other.get_seq_length())
        rows = len(self.keys) + len(other.keys)
        keys, values = self._allocate(self.keys, rows, width)
        top = 0
        for part in (self, other):
            length, bottom = part.get_seq_length(), top + len(part.keys)
            for buffer, old in ((keys, part.keys), (values, part.values)):
                # Padding: finite, see the class docstring.
                buffer[top:bottom, :, : width - length] = 0
                buffer[top:bottom, :, width - length : width] = old
            top = bottom
        self._keys, self._values = keys, values
        self._view(width)

    def copy_rows(self, other: GrowingLayer, rows: torch.Tensor | None, first: int) -> None:
        """Becomes a copy of ``other``'s ``rows`` (all: None) from column ``first`` on."""
        width = other.get_seq_length() - first
        every = slice(None) if rows is None else rows
        count = len(other.keys) if rows is None else len(rows)
        keys, values = self._allocate(other.keys, count, width)
        keys[:, :, :width] = other.keys[every, :, first:]
        values[:, :, :width] = other.values[every, :, first:]
        self.dtype, self.device, self.is_initialized = other.dtype, other.device, True
        self._keys, self._values = keys, values
        self._view(width)


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` made of :class:`GrowingLayer`."""

    def __init__(self, num_layers: int) -> None:  # pylint: disable=super-init-not-called
        Cache.__init__(self, layers=[GrowingLayer() for _ in range(num_layers)])

    @classmethod
    def empty(cls, like: list[torch.Tensor], rows: int) -> GrowingCache:
        """``rows`` rows of no columns, a layer shaped like each of ``like``."""
        cache = cls(len(like))
        for layer, tensor in zip(cache.layers, like, strict=True):
            layer.start_empty(tensor, rows)
        return cache

    @classmethod
    def copies(cls, prompts: SharedPrompts, repeats: int) -> GrowingCache:
        """Rows ``p * repeats`` to ``p * repeats + repeats - 1`` hold prompt ``p``'s cache."""
        cache = cls(len(prompts.keys))
        for layer, keys, values in zip(cache.layers, prompts.keys, prompts.values, strict=True):
            layer.start_copies(keys, values, repeats)
        return cache

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def compact(self, first: int) -> None:
        for layer in self.layers:
            layer.compact(first)

    def stack(self, other: GrowingCache) -> None:
        for layer, theirs in zip(self.layers, other.layers, strict=True):
            layer.stack(theirs)

    def take(self, rows: torch.Tensor, first: int) -> GrowingCache:
        """A new cache holding copies of ``rows`` from column ``first`` on."""
        taken = GrowingCache(len(self.layers))
        for mine, theirs in zip(taken.layers, self.layers, strict=True):
            mine.copy_rows(theirs, rows, first)
        return taken


@dataclass
class SharedPrompts:
    """The KV cache of the prompts in flight, stored once per prompt rather than once per
    sample: ``keys[layer]`` and ``values[layer]`` are ``[prompts, heads, width, size]``,
    right-aligned, and ``mask`` (``[prompts, width]``) marks the prompt's columns.

    The ``n`` samples of a prompt (rows ``p * n`` to ``p * n + n - 1`` of the batch) attend
    over it through :func:`shared_prompt_attention`, and over their own new tokens in the
    batch's :class:`GrowingCache`. The prompt is read once for its ``n`` samples instead of
    once per sample (vLLM and FlashInfer call this cascade attention), and prefills and
    refills copy nothing ``n`` times.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    _bias: torch.Tensor | None = None  # the mask as attention wants it; see layer()

    @classmethod
    def gather(
        cls, cache: DynamicCache, rows: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor
    ) -> SharedPrompts:
        """Prompt ``p`` is ``cache``'s row ``rows[p]`` read at columns ``columns[p]``."""
        keys, values = [], []
        for layer in cache.layers:
            heads = torch.arange(layer.keys.shape[1], device=rows.device)
            # One index builds [prompts, heads, width, size] in attention's layout (indexing
            # through a transposed view is slower).
            index = (rows[:, None, None], heads[None, :, None], columns[:, None, :])
            keys.append(layer.keys[index])
            values.append(layer.values[index])
        return cls(keys, values, mask)

    def take(self, prompts: torch.Tensor) -> SharedPrompts:
        """Copies of ``prompts``, without the padding columns none of them needs."""
        mask = self.mask[prompts]
        first = first_used_column(mask)
        return SharedPrompts(
            [k[prompts, :, first:] for k in self.keys],
            [v[prompts, :, first:] for v in self.values],
            mask[:, first:],
        )

    def stack(self, other: SharedPrompts) -> SharedPrompts:
        """These prompts followed by ``other``'s, right-aligned at a common width."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def both(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return torch.cat([pad_left(mine, width), pad_left(theirs, width)])

        return SharedPrompts(
            [both(a, b) for a, b in zip(self.keys, other.keys, strict=True)],
            [both(a, b) for a, b in zip(self.values, other.values, strict=True)],
            torch.cat([pad_left(self.mask, width), pad_left(other.mask, width)]),
        )

    def place(self, slots: torch.Tensor, other: SharedPrompts) -> None:
        """Overwrites prompts ``slots`` with ``other``'s prompts, right-aligned."""
        theirs = other.mask.shape[1]
        if theirs > self.mask.shape[1]:
            self.keys = [pad_left(k, theirs) for k in self.keys]
            self.values = [pad_left(v, theirs) for v in self.values]
            self.mask = pad_left(self.mask, theirs)
        width = self.mask.shape[1]
        for mine, new in zip(self.keys + self.values, other.keys + other.values, strict=True):
            mine[slots, :, : width - theirs] = 0  # finite: masked weights must stay 0, not NaN
            mine[slots, :, width - theirs :] = new
        self.mask[slots] = pad_left(other.mask, width)
        self._bias = None

    def retire(self, prompts: list[int]) -> None:
        """Masks ``prompts`` out (no sample of theirs runs any more), and drops the leading
        columns that no prompt needs then, once they are a quarter of the width (a copy:
        attention over a view strided by the old width is slower, see GrowingLayer)."""
        self.mask[torch.tensor(prompts, device=self.mask.device)] = False
        self._bias = None
        if bool(self.mask[:, 0].any()) or not bool(self.mask.any()):
            return
        first = first_used_column(self.mask)
        if first < self.mask.shape[1] // 4:
            return
        self.keys = [k[:, :, first:].contiguous() for k in self.keys]
        self.values = [v[:, :, first:].contiguous() for v in self.values]
        self.mask = self.mask[:, first:]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``index``'s keys and values as ``[prompts * heads, width, size]``, and the
        mask as ``[prompts * heads, 1, width]``, 0 where attended and -inf elsewhere (built
        once per change, not per step and layer)."""
        keys, values = self.keys[index], self.values[index]
        prompts, heads, width, _ = keys.shape
        if self._bias is None:
            bias = keys.new_zeros((prompts, heads, 1, width))
            self._bias = bias.masked_fill_(~self.mask[:, None, None, :], -torch.inf)
        return keys.flatten(0, 1), values.flatten(0, 1), self._bias.flatten(0, 1)


_SHARED_PROMPT_ATTENTION = "synthdata_shared_prompt"


def shared_prompt_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    shared_prompts: SharedPrompts | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over its prompt (shared by the prompt's ``n``
    samples, see :class:`SharedPrompts`) and over its own tokens (``key``, ``value``: the
    sample cache after this step's update; ``attention_mask``: ``[rows, kv heads, 1,
    columns]``, 0 where attended and -inf elsewhere). Exact softmax attention over the union
    of both, as transformers' ``AttentionInterface`` expects: returns ``[rows, 1, heads,
    size]``.

    Without ``shared_prompts`` (prefills) it is transformers' SDPA attention.

    Hand-written because no attention function in transformers or torch takes a KV cache
    shared by several rows (vLLM's cascade attention is GPU-only). Few kernels: decoding a
    handful of rows is bound by per-operation overhead, and the scaling and masks ride on
    ``baddbmm``. Models with features it does not implement (sliding windows, logit
    soft-capping, attention sinks) are refused.
    """
    if shared_prompts is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    for feature in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(feature) is not None:
            raise ValueError(
                f"the transformers sampling backend does not support attention with "
                f"{feature}; use sampling.backend: vllm for this model"
            )
    prompt_keys, prompt_values, prompt_bias = shared_prompts.layer(module.layer_idx)
    rows, heads, _, size = query.shape
    kv_heads = key.shape[1]
    groups, prompts, width = heads // kv_heads, len(prompt_keys) // kv_heads, prompt_keys.shape[1]
    n = rows // prompts  # samples per prompt
    # The n samples' queries (and a kv head's query heads) meet their prompt's keys in one
    # matrix product: [rows, heads, 1, size] -> [prompts * kv heads, n * groups, size].
    grouped = query.view(prompts, n, kv_heads, groups, size).transpose(1, 2)
    grouped = grouped.reshape(prompts * kv_heads, n * groups, size)
    prompt_scores = torch.baddbmm(
        prompt_bias, grouped, prompt_keys.transpose(1, 2), alpha=scaling
    )  # [prompts * kv heads, n * groups, width]
    own_keys = key.flatten(0, 1).transpose(1, 2)  # [rows * kv heads, size, columns]
    own_scores = torch.baddbmm(
        attention_mask.flatten(0, 1),
        query.view(rows * kv_heads, groups, size),
        own_keys,
        alpha=scaling,
    )  # [rows * kv heads, groups, columns]
    columns = own_scores.shape[-1]
    scores = torch.cat(
        [
            prompt_scores.view(prompts, kv_heads, n, groups, width),
            own_scores.view(prompts, n, kv_heads, groups, columns).transpose(1, 2),
        ],
        dim=-1,
    )
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    from_prompt = torch.bmm(
        weights[..., :width].view(prompts * kv_heads, n * groups, width), prompt_values
    )
    own_weights = weights[..., width:].transpose(1, 2).reshape(rows * kv_heads, groups, columns)
    from_own = torch.bmm(own_weights, value.flatten(0, 1))  # [rows * kv heads, groups, size]
    output = from_own.view(prompts, n, kv_heads, groups, size) + from_prompt.view(
        prompts, kv_heads, n, groups, size
    ).transpose(1, 2)
    return output.reshape(rows, 1, heads, size), None


AttentionInterface.register(_SHARED_PROMPT_ATTENTION, shared_prompt_attention)
AttentionMaskInterface.register(_SHARED_PROMPT_ATTENTION, sdpa_mask)  # prefills: SDPA's masks


@contextmanager
def shared_prompt_attention_in(model: PreTrainedModel) -> Iterator[None]:
    """Runs ``model``'s attention through :func:`shared_prompt_attention` (once per call,
    not per step: the config setter is costlier than a decoding step's attention)."""
    config = model.config
    previous = config._attn_implementation  # pylint: disable=protected-access
    config._attn_implementation = _SHARED_PROMPT_ATTENTION  # pylint: disable=protected-access
    try:
        yield
    finally:
        config._attn_implementation = previous  # pylint: disable=protected-access


def first_used_column(mask: torch.Tensor) -> int:
    """The first column that some row of ``mask`` attends to (the width when none does)."""
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if len(used) else mask.shape[1]


def pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` ([rows, columns] or [rows, heads, columns, size]) left-padded with zeros
    (False) to ``width`` columns."""
    missing = width - (tensor.shape[1] if tensor.dim() == 2 else tensor.shape[2])
    if missing == 0:
        return tensor
    pad = (missing, 0) if tensor.dim() == 2 else (0, 0, missing, 0)
    return torch.nn.functional.pad(tensor, pad)
