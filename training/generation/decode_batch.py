"""The rows in flight in :class:`training.generation.transformers_engine.TransformersGenerator`
(:class:`DecodeBatch`), and how a row draws its next token.

Every sample draws its randomness from its own stream (:func:`sample_uniforms`), seeded by
``(seed, prompt text, sample index)`` and indexed by the sample's own token count, so that a
completion does not depend on the other prompts of the call or the batch, on ``batch_size`` or
on prompt order. A step draws one uniform number ``u`` from that stream and takes the token at
which the cumulative probability reaches ``1 - u`` (over the vocabulary in id order, or over
the nucleus sorted by decreasing probability when ``top_p < 1``): inverse-CDF sampling
(:func:`choose_tokens`), exact for the distribution and cheap in random numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from training.generation.interface import SamplingParams
from training.generation.kv_cache import GrowingCache, SharedPrompts, first_used_column, pad_left


@dataclass
class DecodeBatch:
    """Rows in flight in a :class:`TransformersGenerator` call, ``draws`` per prompt (prompt
    ``p``'s are rows ``p * draws`` to ``p * draws + draws - 1``): the prompts' KV cache, the
    rows' cache of their new tokens and its attention mask, next position, pending next-token
    logits, call-wide row number (-1 once finished), tokens drawn so far, random numbers, and
    the tokens just drawn (fed by :meth:`advance`)."""

    prompts: SharedPrompts | None  # None: the rows' caches hold their prompts
    cache: GrowingCache
    mask: torch.Tensor
    draws: int
    next_position: torch.Tensor
    logits: torch.Tensor
    rows: list[int]
    steps: torch.Tensor
    uniforms: torch.Tensor | None
    chosen: torch.Tensor | None = None

    @property
    def live(self) -> int:
        return sum(row >= 0 for row in self.rows)

    @property
    def occupied(self) -> int:
        """Rows that cannot take new prompts: all samples of prompts with one still running."""
        return len(self.live_prompts()) * self.draws

    def live_prompts(self) -> list[int]:
        """The prompts with a sample still running."""
        return [p for p in range(len(self.rows) // self.draws) if not self._finished(p)]

    def _finished(self, prompt: int) -> bool:
        """Whether all samples of ``prompt`` have finished (or moved)."""
        return max(self.rows[prompt * self.draws : (prompt + 1) * self.draws]) < 0

    def choose(self, params: SamplingParams) -> None:
        """Draws every row's next token (finished rows draw too; it is ignored)."""
        uniforms = None
        if self.uniforms is not None:
            step = self.steps.clamp(max=self.uniforms.shape[1] - 1)  # finished rows run on
            uniforms = self.uniforms.gather(1, step[:, None]).squeeze(1)
        self.chosen = choose_tokens(self.logits, uniforms, params)

    def _positions(self, prompts: list[int]) -> torch.Tensor:
        """The row positions of ``prompts``' samples."""
        index = torch.tensor(prompts, device=self.mask.device)[:, None] * self.draws
        return (index + torch.arange(self.draws, device=self.mask.device)).flatten()

    def take(self, prompts: list[int]) -> DecodeBatch:
        """A new batch of copies of ``prompts`` with their samples, without the padding
        columns that none of them needs."""
        index = self._positions(prompts)
        mask = self.mask[index]
        first = first_used_column(mask)
        return DecodeBatch(
            prompts=None
            if self.prompts is None
            else self.prompts.take(torch.tensor(prompts, device=self.mask.device)),
            cache=self.cache.take(index, first),
            mask=mask[:, first:],
            draws=self.draws,
            next_position=self.next_position[index],
            logits=self.logits[index],
            rows=[self.rows[position] for position in index.tolist()],
            steps=self.steps[index],
            uniforms=None if self.uniforms is None else self.uniforms[index],
            chosen=None if self.chosen is None else self.chosen[index],
        )

    def compact(self, at_least: float = 0.0) -> DecodeBatch:
        """Without the prompts whose samples have all finished, if they are more than
        ``at_least`` of the prompts."""
        keep = self.live_prompts()
        total = len(self.rows) // self.draws
        dead = total - len(keep)
        if dead == 0 or dead < at_least * total:
            return self
        return self.take(keep)

    def retire(self, positions: list[int]) -> None:
        """Marks rows gone (finished); their positions stay in the batch until reused or
        compacted, masked out so that they do not hold back :meth:`make_room`. A prompt whose
        samples have all gone is masked out too."""
        for position in positions:
            self.rows[position] = -1
        self.mask[torch.tensor(positions, device=self.mask.device)] = False
        gone = {p // self.draws for p in positions if self._finished(p // self.draws)}
        if gone and self.prompts is not None:
            self.prompts.retire(sorted(gone))

    def retire_prompts(self, prompts: list[int]) -> None:
        """Marks ``prompts`` and all their samples gone (moved to another batch)."""
        self.retire(self._positions(prompts).tolist())

    def make_room(self) -> None:
        """Compacts the cache when it has no room for the next column, dropping the leading
        columns that no row attends to any more."""
        if self.cache.capacity > self.mask.shape[1]:
            return
        first = first_used_column(self.mask)
        self.cache.compact(first)
        self.mask = self.mask[:, first:]

    def absorb(self, fresh: DecodeBatch) -> DecodeBatch:
        """Adds ``fresh``'s prompts (just prefilled: no new tokens yet), in the places of
        finished prompts when there are enough (in place), else below the remaining rows (a
        copy of the cache)."""
        free = [p for p in range(len(self.rows) // self.draws) if self._finished(p)]
        count = len(fresh.rows) // self.draws
        assert self.prompts is not None and fresh.prompts is not None, (
            "see TransformersGenerator._prefill(share)"
        )
        if count > len(free):
            return self.compact().merge(fresh)
        free = free[:count]
        self.prompts.place(torch.tensor(free, device=self.mask.device), fresh.prompts)
        # The new rows' own caches are empty: their places' columns are masked (finished rows
        # kept attending to the tokens they drew after finishing).
        slots = self._positions(free)
        self.mask[slots] = False
        self.next_position[slots] = fresh.next_position
        self.logits[slots] = fresh.logits
        self.steps[slots] = fresh.steps
        if self.uniforms is not None:
            self.uniforms[slots] = fresh.uniforms
        for position, row in zip(slots.tolist(), fresh.rows, strict=True):
            self.rows[position] = row
        self.chosen = None  # drawn before the new rows came; draw again
        return self

    def merge(self, other: DecodeBatch) -> DecodeBatch:
        """This batch's rows followed by ``other``'s, left-padded to a common width."""
        self.cache.stack(other.cache)
        width = max(self.mask.shape[1], other.mask.shape[1])
        both = self.chosen is not None and other.chosen is not None
        return DecodeBatch(
            prompts=None
            if self.prompts is None or other.prompts is None
            else self.prompts.stack(other.prompts),
            cache=self.cache,
            mask=torch.cat([pad_left(self.mask, width), pad_left(other.mask, width)]),
            draws=self.draws,
            next_position=torch.cat([self.next_position, other.next_position]),
            logits=torch.cat([self.logits, other.logits]),
            rows=self.rows + other.rows,
            steps=torch.cat([self.steps, other.steps]),
            uniforms=None if self.uniforms is None else torch.cat([self.uniforms, other.uniforms]),
            chosen=torch.cat([self.chosen, other.chosen]) if both else None,
        )

    def advance(self, model: PreTrainedModel) -> None:
        """Feeds every row its drawn token; the logits become those of the next token."""
        assert self.chosen is not None, "choose() before advance()"
        self.make_room()
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        # Attention sees the cache's whole buffers (see GrowingLayer): the room is masked.
        # Masks are passed 4D, which transformers hands to attention as they are (a query of
        # one token sees every cached column the mask allows).
        attend = self.mask.new_zeros((len(self.rows), self.cache.capacity))
        attend[:, : self.mask.shape[1]] = self.mask
        shared: dict[str, Any] = {}
        if self.prompts is None:
            mask = attend[:, None, None, :]  # SDPA's form
        else:
            # shared_prompt_attention's form: [rows, kv heads, 1, columns], 0 or -inf.
            keys = self.prompts.keys[0]
            mask = keys.new_zeros((len(self.rows), keys.shape[1], 1, attend.shape[1]))
            mask.masked_fill_(~attend[:, None, None, :], -torch.inf)
            shared["shared_prompts"] = self.prompts  # passed on to shared_prompt_attention
        out = model(
            input_ids=self.chosen[:, None],
            attention_mask=mask,
            position_ids=self.next_position[:, None],
            past_key_values=self.cache,
            use_cache=True,
            **shared,
        )
        self.logits = out.logits[:, -1, :]
        self.next_position = self.next_position + 1
        self.steps = self.steps + 1
        self.chosen = None


def sample_uniforms(prompts: Sequence[str], draws: int, params: SamplingParams) -> torch.Tensor:
    """``[len(prompts) * draws, max_new_tokens]`` uniforms; row ``p * draws + j`` is sample
    ``j`` of prompt ``p``, from a stream that depends only on ``(seed, prompt, j)``."""
    streams = []
    for prompt in prompts:
        for j in range(draws):
            key = hashlib.sha256(f"{params.seed}\0{j}\0{prompt}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "big") >> 1)
            streams.append(torch.rand(params.max_new_tokens, generator=generator))
    return torch.stack(streams)


def choose_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor | None, params: SamplingParams
) -> torch.Tensor:
    """The next token of every row: argmax, or inverse-CDF sampling with ``uniforms``."""
    if uniforms is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    order = None
    if params.top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        # The nucleus: tokens whose more probable predecessors hold less than top_p.
        probs = probs * ((probs.cumsum(dim=-1) - probs) < params.top_p)
    cdf = probs.cumsum(dim=-1)
    # 1 - u lies in (0, 1], so the target lies in (0, total]: the first index reaching it
    # always has positive probability and exists even after float rounding.
    target = (1.0 - uniforms).unsqueeze(-1) * cdf[:, -1:]
    index = torch.searchsorted(cdf, target)
    return (index if order is None else order.gather(-1, index)).squeeze(-1)
