"""One sampling interface for every stage: policy samples, step rollouts, evaluation.

.. code-block:: python

    generator = make_generator("transformers", checkpoint_folder, batch_size=64, log=print)
    params = SamplingParams(n=4, temperature=0.7, max_new_tokens=160, seed=0)
    completions = generator.generate([format_prompt(q) for q in questions], params)
    completions[i][j].text  # sample j of prompt i; also .num_tokens and .finish_reason

Semantics shared by both backends
---------------------------------
- ``generate`` returns one list of ``n`` :class:`Completion` per prompt, in prompt order.
- ``temperature == 0`` is greedy decoding (the ``n`` completions of a prompt are then equal);
  otherwise softmax sampling at ``temperature`` restricted to the ``top_p`` nucleus.
- Generation stops at the EOS token or at the first occurrence of any ``stop`` string
  (``finish_reason == "stop"``; the text ends before the stop string, and holds no EOS), or
  after ``max_new_tokens`` tokens (``"length"``). ``num_tokens`` counts the generated tokens,
  the EOS or the token that completed a stop string included.
- Prompts are encoded with the tokenizer's special tokens (``<bos>``), exactly as the trainer
  encodes them (:func:`training.sft.encode_example`).

The transformers backend
------------------------
:class:`TransformersGenerator` runs a hand-written decoding loop over the model's forward pass
with a KV cache, rather than ``model.generate``. Measured on 2 CPU cores with a 0.16M-parameter
Llama trained on the embedded task (256 prompts, batches of 64, up to 96 new tokens, best of
3): greedy, 20.6k new tokens/s against 17.9k for ``generate``; ``n=4`` at temperature 0.7,
29.9k against 13.1k (before the continuous batching below; ``benchmarks/rollouts.py`` has
current figures). The gain comes from what only the hand loop can do:

- each prompt is prefilled once, instead of prefilling ``n`` copies of the prompt; a prompt
  whose tokens begin another prompt of the same prefill group (the step prefixes of one
  solution, duplicates) is not prefilled at all: its cache and next-token logits are read off
  the longer prompt's (vLLM calls this prefix caching);
- the ``n`` samples of a prompt share its KV cache: it is stored once, and a decoding step
  reads it once for all ``n`` (cascade attention, as vLLM and FlashInfer call it; see
  :class:`_SharedPrompts`), instead of once per sample from ``n`` copies. Calls of at most 64
  rows (prompts x samples) that fit in one prefill copy the prompt into each row instead,
  where one SDPA call beats the shared attention's many small kernels;
- continuous batching: up to ``batch_size`` prompts (each with its ``n`` samples) are in
  flight; when a quarter of the rows belong to prompts whose samples have all finished, new
  prompts are prefilled into their places, so the batch stays full instead of decoding a long
  tail for a few sequences; prompts with a sample that has drawn 96 tokens move to a second
  batch (the slow lane), because every row of a batch attends over the longest row's span;
- every sample draws its randomness from its own stream, seeded by ``(seed, prompt text,
  sample index)`` and indexed by the sample's own token count, so a completion does not
  depend on which other prompts share the call or the batch, on ``batch_size`` or on prompt
  order: sampling the first 250 problems of a subset gives the same samples as sampling them
  within 500. (Floating-point results of a padded batch can differ in the last bits from an
  unpadded one, so near-ties in the probabilities may still resolve differently in a
  different batch; with the same call and seed, outputs are identical.)

Sampling draws one uniform number ``u`` per step from that stream and takes the token at which
the cumulative probability reaches ``1 - u`` (over the vocabulary in id order, or over the
nucleus sorted by decreasing probability when ``top_p < 1``): inverse-CDF sampling, exact for
the distribution and cheap in random numbers.

Prompts are taken in families (a prompt with the prompts that begin it), shortest families
first, so that prefixes meet their extensions in one prefill and rows joining a running batch
are about as long as the rows already in it (measured faster than longest first). A prompt
longer than the model's context minus ``max_new_tokens`` is left-truncated (keeping ``<bos>``)
with a warning through ``log``, so that prompt and completion always fit in
``max_position_embeddings``. Progress goes to ``log`` when 10 seconds have passed since the
last line, and at the end of calls longer than a second: sequences done, new tokens per second.

The cache of the tokens each row has drawn (:class:`_GrowingCache`) keeps keys and values in
buffers with room to grow, so a decoding step writes one column in place; rows joining the
batch start at the current column (the columns before are masked), and when the room runs
out the buffers are copied without the leading columns that no row needs any more.
Transformers' ``DynamicCache`` concatenates instead, copying the whole cache every token: at
640 rows that copy took half of a decoding step. ``torch.compile`` is not used: it made
sampling slower on the 2-core CPU (shapes change every step). Thread counts are the caller's
business (``torch.set_num_threads``); note that when another process keeps a core busy, two
torch threads spin-wait on each other and run many times slower than one.

The vLLM backend
----------------
``make_generator("vllm", folder)`` imports :mod:`training.vllm_backend` only then; vLLM is the
optional extra ``pip install -e ".[vllm]"`` (GPU machines). It honours the same
``SamplingParams`` (vLLM seeds each request from ``seed``; its random streams differ from the
transformers backend's, so the two backends give different samples for the same seed).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from synthdata_assets.config import SamplingConfig
from training.checkpoint import Dtype, load_checkpoint

BACKENDS: tuple[str, ...] = ("transformers", "vllm", "openai")
_LOG_INTERVAL_S = 10.0
_SLOW_LANE_AFTER = 96  # tokens drawn before a row leaves the main batch (see _decode)
# Calls with more rows than this (prompts x samples) share each prompt's KV cache among its
# samples (see _SharedPrompts); smaller ones copy it into every row, where one SDPA call per
# layer beats the shared-prompt attention's dozen small kernels (measured at 5 rows: 20 us
# against 70 us per layer and step).
_SHARE_PROMPTS_FROM = 64


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; see the module docstring for the exact semantics."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @classmethod
    def from_config(
        cls, sampling: SamplingConfig, *, n: int, seed: int, stop: tuple[str, ...] = ()
    ) -> SamplingParams:
        """Temperature, top-p and token budget from the experiment's ``sampling`` section."""
        return cls(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            stop=stop,
            seed=seed,
        )


@dataclass(frozen=True)
class Completion:
    """One generated continuation of a prompt."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_new_tokens)


@runtime_checkable
class Generator(Protocol):
    """Anything that samples completions for prompts."""

    def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]: ...


class TransformersGenerator:
    """Batched sampling from a transformers causal LM (see the module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 64,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; generation could never stop")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.log = log or (lambda _message: None)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = frozenset(i for i in [tokenizer.eos_token_id, *eos_ids] if i is not None)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        self.context = model.config.max_position_embeddings

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: Dtype = None,
        batch_size: int = 64,
        log: Callable[[str], None] | None = None,
    ) -> TransformersGenerator:
        """A generator over the checkpoint in ``folder`` (see :func:`load_checkpoint`), on
        ``device`` (default: the GPU when there is one, else the CPU)."""
        if device is None and torch.cuda.is_available():
            device = "cuda"
        model, tokenizer = load_checkpoint(folder, device=device, dtype=dtype)
        return cls(model, tokenizer, batch_size=batch_size, log=log)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        prompts = list(prompts)
        room = self.context - params.max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens ({params.max_new_tokens}) leaves no room for a prompt in the "
                f"model's context of {self.context} tokens"
            )
        # One batched call: the tokenizer encodes in parallel, many times faster than per prompt.
        all_ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
        encoded = [self._fit(ids, room) for ids in all_ids]
        truncated = sum(cut for _, cut in encoded)
        if truncated:
            self.log(
                f"warning: {truncated} prompt(s) longer than {room} tokens (context "
                f"{self.context} - max_new_tokens {params.max_new_tokens}) were left-truncated"
            )
        # Greedy samples of one prompt are all equal: decode once, repeat.
        draws = 1 if params.temperature == 0 else params.n
        order = _prefix_family_order([ids for ids, _ in encoded])
        with _shared_prompt_attention_in(self.model):
            tokens, finish = self._decode(
                [encoded[i][0] for i in order], [prompts[i] for i in order], draws, params
            )
        results: list[list[Completion]] = [[] for _ in prompts]
        for rank, i in enumerate(order):
            samples = [
                self._completion(tokens[row], finish[row], params.stop)
                for row in range(rank * draws, (rank + 1) * draws)
            ]
            results[i] = samples * (params.n // draws)
        return results

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _fit(self, ids: list[int], room: int) -> tuple[list[int], bool]:
        """The prompt's ids, left-truncated to ``room`` (keeping ``<bos>``); truncated?"""
        if len(ids) <= room:
            return ids, False
        head = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []
        return head + ids[len(ids) - (room - len(head)) :], True

    def _decode(
        self,
        prompt_ids: list[list[int]],
        prompts: list[str],
        draws: int,
        params: SamplingParams,
    ) -> tuple[list[list[int]], list[str]]:
        """Continuous batching: the new tokens and finish reason of every row (row
        ``p * draws + j`` is sample ``j`` of prompt ``p``)."""
        capacity = self.batch_size * draws  # rows in flight
        # Refill once a quarter of the rows (at least one prompt's) has finished: each refill
        # costs a prefill and a copy of the cache, so not after every finished row.
        refill_at = capacity - max(draws, capacity // 4)
        rows = len(prompt_ids) * draws
        tokens: list[list[int]] = [[] for _ in range(rows)]
        finish = [""] * rows
        stop_window = max((len(s.encode()) for s in params.stop), default=0) + 1
        started, done, new_tokens = 0, 0, 0
        start = last_log = time.perf_counter()
        # Two lanes, each one batch: new prompts join `main`; rows that have drawn
        # _SLOW_LANE_AFTER tokens move to `slow`. All rows of a batch end at the same column,
        # so in one batch a long-running row would make every row attend over its length in
        # padding (measured: 40% of the attention was padding on the step-rollout workload).
        main: _Batch | None = None
        slow: _Batch | None = None
        while True:
            live = 0 if main is None else main.occupied
            if started < len(prompt_ids) and live <= refill_at and main is not None:
                # Long-running rows leave for the slow lane when new rows arrive (then, rather
                # than every step, so that the slow lane's cache is copied rarely).
                # A prompt's samples move together (they share its cache).
                old = sorted(
                    {
                        position // draws
                        for position, row in enumerate(main.rows)
                        if row >= 0 and len(tokens[row]) >= _SLOW_LANE_AFTER
                    }
                )
                if old:
                    moved = main.take(old)
                    main.retire_prompts(old)
                    slow = moved if slow is None else slow.compact().merge(moved)
                    live = main.occupied
            if started < len(prompt_ids) and live <= refill_at:
                group = range(
                    started, min(started + max(1, (capacity - live) // draws), len(prompt_ids))
                )
                started = group.stop
                fresh = self._prefill(
                    [prompt_ids[p] for p in group],
                    [prompts[p] for p in group],
                    group.start,
                    draws,
                    params,
                    share=rows > min(capacity, _SHARE_PROMPTS_FROM),
                )
                main = fresh if main is None else main.absorb(fresh)
            if main is None and slow is None:
                break
            for batch in (main, slow):
                if batch is None:
                    continue
                batch.choose(params)
                finished = []
                for position, (row, token) in enumerate(
                    zip(batch.rows, batch.chosen.tolist(), strict=True)
                ):
                    if row < 0:  # finished earlier; the place waits for a new row or compaction
                        continue
                    tokens[row].append(token)
                    if token in self.eos_ids or (
                        params.stop and self._ends_with_stop(tokens[row], params.stop, stop_window)
                    ):
                        finish[row] = "stop"
                    elif len(tokens[row]) == params.max_new_tokens:
                        finish[row] = "length"
                    else:
                        continue
                    finished.append(position)
                    done += 1
                    new_tokens += len(tokens[row])
                if finished:
                    batch.retire(finished)
            now = time.perf_counter()
            # Quick calls (single prompts, tests) stay quiet; long ones report as they go.
            if now - last_log >= _LOG_INTERVAL_S or (done == rows and now - start >= 1.0):
                self.log(
                    f"sampled {done * (params.n // draws)}/{rows * (params.n // draws)} "
                    f"sequences, {new_tokens / max(now - start, 1e-9):,.0f} new tokens/s"
                )
                last_log = now
            main = None if main is None or main.live == 0 else main
            slow = None if slow is None or slow.live == 0 else slow
            if main is None and slow is None and started == len(prompt_ids):
                break
            # Finished rows keep decoding (their tokens are ignored) until new rows take their
            # places; in a lane that gets no new rows they go once they are a quarter of it
            # (dropping them copies the lane's cache).
            if main is not None and started == len(prompt_ids):
                main = main.compact(at_least=0.25)
            if slow is not None:
                slow = slow.compact(at_least=0.25)
            for batch in (main, slow):
                if batch is not None:
                    batch.advance(self.model)
        return tokens, finish

    def _prefill(
        self,
        prompt_ids: list[list[int]],
        prompts: list[str],
        first: int,
        draws: int,
        params: SamplingParams,
        share: bool,
    ) -> _Batch:
        """The prompts' KV cache and next-token logits, each prompt repeated ``draws`` times;
        the prompts are ``first, first + 1, ...`` of the call. With ``share``, the ``draws``
        samples of a prompt share its cache (:class:`_SharedPrompts`), else each row holds a
        copy (only for calls that fit in one prefill: such a batch takes no new rows)."""
        device = self.device
        # Prefix sharing: a prompt whose tokens begin another prompt of the group (a step prefix
        # of the same solution, a duplicate) is not prefilled; its cache and next-token logits
        # are read off the longer prompt's, as vLLM's prefix caching does.
        source = _extended_by(prompt_ids)
        leaves = sorted(set(source))
        # Shared prompts need the logits at inner positions: [leaves, positions, vocabulary].
        # Past a quarter of a GiB of float32 (large vocabularies), prefill every prompt.
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if len(leaves) * max(len(ids) for ids in prompt_ids) * vocab > 2**26:
            source, leaves = list(range(len(prompt_ids))), list(range(len(prompt_ids)))
        width = max(len(prompt_ids[leaf]) for leaf in leaves)
        input_ids = torch.full((len(leaves), width), self.pad_id, dtype=torch.long)
        leaf_mask = torch.zeros((len(leaves), width), dtype=torch.long)
        for row, leaf in enumerate(leaves):
            ids = prompt_ids[leaf]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            leaf_mask[row, width - len(ids) :] = 1
        input_ids, leaf_mask = input_ids.to(device), leaf_mask.to(device)
        positions = (leaf_mask.cumsum(-1) - 1).clamp(min=0)
        row_of = {leaf: row for row, leaf in enumerate(leaves)}
        src = torch.tensor([row_of[leaf] for leaf in source], device=device)
        lengths = torch.tensor([len(ids) for ids in prompt_ids], device=device)
        # The column of each prompt's last token within its leaf's row.
        last = width - torch.tensor([len(prompt_ids[leaf]) for leaf in source], device=device)
        last = last + lengths - 1
        columns = torch.unique(last)
        shared = len(leaves) < len(prompt_ids)
        cache = DynamicCache()  # one forward pass: nothing to grow
        out = self.model(
            input_ids=input_ids,
            attention_mask=leaf_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=columns if shared else 1,
        )
        # One gather builds every prompt's cache: right-aligned at `width`, its column j reads
        # its leaf's column j + (own length - leaf length); columns left of the prompt are
        # padding, masked. Its `draws` samples share it (see _SharedPrompts).
        j = torch.arange(width, device=device)
        shared_prompts = _SharedPrompts.gather(
            cache,
            src,
            (j[None, :] + (last + 1 - width)[:, None]).clamp(min=0),
            j[None, :] >= (width - lengths)[:, None],
        )
        # Row p * draws + d is draw d of prompt p.
        src, last, lengths = (t.repeat_interleave(draws) for t in (src, last, lengths))
        if shared:
            logits = out.logits[src, torch.searchsorted(columns, last)]
        else:
            logits = out.logits[src, -1]
        rows = len(prompt_ids) * draws
        uniforms = _uniforms(prompts, draws, params).to(device) if params.temperature > 0 else None
        if share:
            cache = _GrowingCache.empty(shared_prompts.keys, rows)
            mask = torch.zeros((rows, 0), dtype=torch.bool, device=device)
        else:
            cache = _GrowingCache.copies(shared_prompts, draws)
            mask = shared_prompts.mask.repeat_interleave(draws, dim=0)
        return _Batch(
            prompts=shared_prompts if share else None,
            cache=cache,
            mask=mask,
            draws=draws,
            next_position=lengths,
            logits=logits,
            rows=list(range(first * draws, (first + len(prompt_ids)) * draws)),
            steps=torch.zeros(rows, dtype=torch.long, device=device),
            uniforms=uniforms,
        )

    def _ends_with_stop(self, tokens: list[int], stop: tuple[str, ...], window: int) -> bool:
        # Checked after every token, so a new stop string ends within the last token, and the
        # last `window` tokens (at least one byte each) cover it. Decoding only them keeps the
        # check O(1) per token instead of O(length).
        tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _completion(self, tokens: list[int], finish: str, stop: tuple[str, ...]) -> Completion:
        ids = tokens[:-1] if tokens and tokens[-1] in self.eos_ids else tokens
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:
            text = text[: min(cuts)]
        return Completion(text=text, num_tokens=len(tokens), finish_reason=finish)


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` for decoding: keys and values live in zero-initialised buffers with
    room to grow along the sequence, so that a decoding step writes its column in place, and
    :meth:`update` hands attention the whole buffers, room included (the caller masks the
    columns not yet written; they hold zeros, finite, so masked weights stay exactly 0).
    ``keys`` and ``values`` are the written columns.

    Hand-written because transformers' caches either concatenate every step (``DynamicLayer``:
    a copy of the whole cache per token; at 640 rows the two copies per layer took half of a
    decoding step) or preallocate the full context and attend over all of it with one shared
    write position (``StaticCache``), which rules out rows of different lengths joining and
    leaving the batch. Attention reads whole buffers rather than a view of their written
    columns because batched matrix products over such a view (rows strided by the buffer's
    width) ran 2x slower than over a contiguous tensor on the CPU; the room is kept small and
    the cache compacted (:meth:`compact`) when it runs out.
    """

    ROOM = 16  # columns allocated ahead

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length, new = self.get_seq_length(), key_states.shape[-2]
        if length + new > self.capacity:
            raise RuntimeError("no room in the decoding cache: _Batch.make_room() first")
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

    def stack(self, other: _GrowingLayer) -> None:
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

    def copy_rows(self, other: _GrowingLayer, rows: torch.Tensor | None, first: int) -> None:
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


class _GrowingCache(DynamicCache):
    """A ``DynamicCache`` made of :class:`_GrowingLayer`."""

    def __init__(self, num_layers: int) -> None:  # pylint: disable=super-init-not-called
        Cache.__init__(self, layers=[_GrowingLayer() for _ in range(num_layers)])

    @classmethod
    def empty(cls, like: list[torch.Tensor], rows: int) -> _GrowingCache:
        """``rows`` rows of no columns, a layer shaped like each of ``like``."""
        cache = cls(len(like))
        for layer, tensor in zip(cache.layers, like, strict=True):
            layer.start_empty(tensor, rows)
        return cache

    @classmethod
    def copies(cls, prompts: _SharedPrompts, repeats: int) -> _GrowingCache:
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

    def stack(self, other: _GrowingCache) -> None:
        for layer, theirs in zip(self.layers, other.layers, strict=True):
            layer.stack(theirs)

    def take(self, rows: torch.Tensor, first: int) -> _GrowingCache:
        """A new cache holding copies of ``rows`` from column ``first`` on."""
        taken = _GrowingCache(len(self.layers))
        for mine, theirs in zip(taken.layers, self.layers, strict=True):
            mine.copy_rows(theirs, rows, first)
        return taken


@dataclass
class _SharedPrompts:
    """The KV cache of the prompts in flight, stored once per prompt rather than once per
    sample: ``keys[layer]`` and ``values[layer]`` are ``[prompts, heads, width, size]``,
    right-aligned, and ``mask`` (``[prompts, width]``) marks the prompt's columns.

    The ``n`` samples of a prompt (rows ``p * n`` to ``p * n + n - 1`` of the batch) attend
    over it through :func:`_shared_prompt_attention`, and over their own new tokens in the
    batch's :class:`_GrowingCache`. Reading the prompt once for its ``n`` samples instead of
    once per sample (vLLM and FlashInfer call this cascade attention) ran attention 3x
    faster in isolation at 128 prompts x 5 samples of ~110 prompt and ~20 own tokens (the
    step-rollout workload; end to end see ``benchmarks/rollouts.py``); it also makes prefills
    and refills cheaper, since nothing is copied ``n`` times.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    _bias: torch.Tensor | None = None  # the mask as attention wants it; see layer()

    @classmethod
    def gather(
        cls, cache: DynamicCache, rows: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor
    ) -> _SharedPrompts:
        """Prompt ``p`` is ``cache``'s row ``rows[p]`` read at columns ``columns[p]``."""
        keys, values = [], []
        for layer in cache.layers:
            heads = torch.arange(layer.keys.shape[1], device=rows.device)
            # One index builds [prompts, heads, width, size] in attention's layout (indexing
            # through a transposed view was 4x slower).
            index = (rows[:, None, None], heads[None, :, None], columns[:, None, :])
            keys.append(layer.keys[index])
            values.append(layer.values[index])
        return cls(keys, values, mask)

    def take(self, prompts: torch.Tensor) -> _SharedPrompts:
        """Copies of ``prompts``, without the padding columns none of them needs."""
        mask = self.mask[prompts]
        first = _first_used_column(mask)
        return _SharedPrompts(
            [k[prompts, :, first:] for k in self.keys],
            [v[prompts, :, first:] for v in self.values],
            mask[:, first:],
        )

    def stack(self, other: _SharedPrompts) -> _SharedPrompts:
        """These prompts followed by ``other``'s, right-aligned at a common width."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def both(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return torch.cat([_pad_left(mine, width), _pad_left(theirs, width)])

        return _SharedPrompts(
            [both(a, b) for a, b in zip(self.keys, other.keys, strict=True)],
            [both(a, b) for a, b in zip(self.values, other.values, strict=True)],
            torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)]),
        )

    def place(self, slots: torch.Tensor, other: _SharedPrompts) -> None:
        """Overwrites prompts ``slots`` with ``other``'s prompts, right-aligned."""
        theirs = other.mask.shape[1]
        if theirs > self.mask.shape[1]:
            self.keys = [_pad_left(k, theirs) for k in self.keys]
            self.values = [_pad_left(v, theirs) for v in self.values]
            self.mask = _pad_left(self.mask, theirs)
        width = self.mask.shape[1]
        for mine, new in zip(self.keys + self.values, other.keys + other.values, strict=True):
            mine[slots, :, : width - theirs] = 0  # finite: masked weights must stay 0, not NaN
            mine[slots, :, width - theirs :] = new
        self.mask[slots] = _pad_left(other.mask, width)
        self._bias = None

    def retire(self, prompts: list[int]) -> None:
        """Masks ``prompts`` out (no sample of theirs runs any more), and drops the leading
        columns that no prompt needs then, once they are a quarter of the width (a copy:
        attention over a view strided by the old width ran 2x slower, see _GrowingLayer)."""
        self.mask[torch.tensor(prompts, device=self.mask.device)] = False
        self._bias = None
        if bool(self.mask[:, 0].any()) or not bool(self.mask.any()):
            return
        first = _first_used_column(self.mask)
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


def _shared_prompt_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    shared_prompts: _SharedPrompts | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over its prompt (shared by the prompt's ``n``
    samples, see :class:`_SharedPrompts`) and over its own tokens (``key``, ``value``: the
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


AttentionInterface.register(_SHARED_PROMPT_ATTENTION, _shared_prompt_attention)
AttentionMaskInterface.register(_SHARED_PROMPT_ATTENTION, sdpa_mask)  # prefills: SDPA's masks


@contextmanager
def _shared_prompt_attention_in(model: PreTrainedModel) -> Iterator[None]:
    """Runs ``model``'s attention through :func:`_shared_prompt_attention` (once per call,
    not per step: the config setter costs more than a decoding step's attention)."""
    config = model.config
    previous = config._attn_implementation  # pylint: disable=protected-access
    config._attn_implementation = _SHARED_PROMPT_ATTENTION  # pylint: disable=protected-access
    try:
        yield
    finally:
        config._attn_implementation = previous  # pylint: disable=protected-access


@dataclass
class _Batch:
    """Rows in flight in :meth:`TransformersGenerator._decode`, ``draws`` per prompt (prompt
    ``p``'s are rows ``p * draws`` to ``p * draws + draws - 1``): the prompts' KV cache, the
    rows' cache of their new tokens and its attention mask, next position, pending next-token
    logits, call-wide row number (-1 once finished), tokens drawn so far, random numbers, and
    the tokens just drawn (fed by :meth:`advance`)."""

    prompts: _SharedPrompts | None  # None: the rows' caches hold their prompts
    cache: _GrowingCache
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
        self.chosen = _choose(self.logits, uniforms, params)

    def _positions(self, prompts: list[int]) -> torch.Tensor:
        """The row positions of ``prompts``' samples."""
        index = torch.tensor(prompts, device=self.mask.device)[:, None] * self.draws
        return (index + torch.arange(self.draws, device=self.mask.device)).flatten()

    def take(self, prompts: list[int]) -> _Batch:
        """A new batch of copies of ``prompts`` with their samples, without the padding
        columns that none of them needs."""
        index = self._positions(prompts)
        mask = self.mask[index]
        first = _first_used_column(mask)
        return _Batch(
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

    def compact(self, at_least: float = 0.0) -> _Batch:
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
        first = _first_used_column(self.mask)
        self.cache.compact(first)
        self.mask = self.mask[:, first:]

    def absorb(self, fresh: _Batch) -> _Batch:
        """Adds ``fresh``'s prompts (just prefilled: no new tokens yet), in the places of
        finished prompts when there are enough (in place), else below the remaining rows (a
        copy of the cache)."""
        free = [p for p in range(len(self.rows) // self.draws) if self._finished(p)]
        count = len(fresh.rows) // self.draws
        assert self.prompts is not None and fresh.prompts is not None, "see _prefill(share)"
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

    def merge(self, other: _Batch) -> _Batch:
        """This batch's rows followed by ``other``'s, left-padded to a common width."""
        self.cache.stack(other.cache)
        width = max(self.mask.shape[1], other.mask.shape[1])
        both = self.chosen is not None and other.chosen is not None
        return _Batch(
            prompts=None
            if self.prompts is None or other.prompts is None
            else self.prompts.stack(other.prompts),
            cache=self.cache,
            mask=torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)]),
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
        # Attention sees the cache's whole buffers (see _GrowingLayer): the room is masked.
        # Masks are passed 4D, which transformers hands to attention as they are (a query of
        # one token sees every cached column the mask allows).
        attend = self.mask.new_zeros((len(self.rows), self.cache.capacity))
        attend[:, : self.mask.shape[1]] = self.mask
        shared: dict[str, Any] = {}
        if self.prompts is None:
            mask = attend[:, None, None, :]  # SDPA's form
        else:
            # _shared_prompt_attention's form: [rows, kv heads, 1, columns], 0 or -inf.
            keys = self.prompts.keys[0]
            mask = keys.new_zeros((len(self.rows), keys.shape[1], 1, attend.shape[1]))
            mask.masked_fill_(~attend[:, None, None, :], -torch.inf)
            shared["shared_prompts"] = self.prompts  # passed on to _shared_prompt_attention
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


def _first_used_column(mask: torch.Tensor) -> int:
    """The first column that some row of ``mask`` attends to (the width when none does)."""
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if len(used) else mask.shape[1]


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` ([rows, columns] or [rows, heads, columns, size]) left-padded with zeros
    (False) to ``width`` columns."""
    missing = width - (tensor.shape[1] if tensor.dim() == 2 else tensor.shape[2])
    if missing == 0:
        return tensor
    pad = (missing, 0) if tensor.dim() == 2 else (0, 0, missing, 0)
    return torch.nn.functional.pad(tensor, pad)


def make_generator(backend: str, folder: str | os.PathLike[str], **kwargs: Any) -> Generator:
    """The generator of ``backend`` ("transformers" or "vllm") over a checkpoint folder.

    ``kwargs`` go to the backend: ``device``, ``dtype``, ``batch_size``, ``log`` for
    transformers; see :class:`training.vllm_backend.VLLMGenerator` for vLLM.
    """
    if backend == "transformers":
        return TransformersGenerator.from_pretrained(folder, **kwargs)
    if backend == "vllm":
        try:
            module = importlib.import_module("training.vllm_backend")
        except ImportError as exc:
            raise ImportError(
                f"sampling.backend 'vllm' needs the vLLM engine, which is not installed ({exc}). "
                "On a GPU machine run: pip install -e '.[vllm]'; "
                "otherwise set sampling.backend: transformers"
            ) from exc
        return module.VLLMGenerator(folder, **kwargs)
    if backend == "openai":  # `folder` is the server's URL; see training/openai_backend.py
        module = importlib.import_module("training.openai_backend")
        return module.OpenAIGenerator(folder, **kwargs)
    raise ValueError(f"unknown sampling backend {backend!r} (allowed: {', '.join(BACKENDS)})")


def _extended_by(prompt_ids: list[list[int]]) -> list[int]:
    """For each prompt, the index of the longest prompt whose tokens begin with all of its
    tokens, through chains of prefixes (itself when there is none). In lexicographic order a
    prompt's extensions follow it directly, so comparing neighbours finds the chains."""
    lex = sorted(range(len(prompt_ids)), key=lambda i: prompt_ids[i])
    source = list(range(len(prompt_ids)))
    for shorter, longer in zip(reversed(lex[:-1]), reversed(lex[1:]), strict=True):
        ids = prompt_ids[shorter]
        if prompt_ids[longer][: len(ids)] == ids:
            source[shorter] = source[longer]
    return source


def _prefix_family_order(prompt_ids: list[list[int]]) -> list[int]:
    """Prompt indices with every prompt next to the longer prompts it begins (so that they
    share a prefill), families longest first (so that left padding stays small)."""
    source = _extended_by(prompt_ids)
    families: dict[int, list[int]] = {}
    for i, leaf in enumerate(source):
        families.setdefault(leaf, []).append(i)
    ranked = sorted(families.items(), key=lambda item: len(prompt_ids[item[0]]))
    return [i for leaf, members in ranked for i in [leaf, *(m for m in members if m != leaf)]]


def _uniforms(prompts: Sequence[str], draws: int, params: SamplingParams) -> torch.Tensor:
    """``[len(prompts) * draws, max_new_tokens]`` uniforms; row ``p * draws + j`` is sample
    ``j`` of prompt ``p``, from a stream that depends only on ``(seed, prompt, j)``."""
    streams = []
    for prompt in prompts:
        for j in range(draws):
            key = hashlib.sha256(f"{params.seed}\0{j}\0{prompt}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "big") >> 1)
            streams.append(torch.rand(params.max_new_tokens, generator=generator))
    return torch.stack(streams)


def _choose(
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
