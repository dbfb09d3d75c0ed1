"""The transformers engine of :mod:`training.generation`: :class:`TransformersGenerator`.

It runs a hand-written decoding loop over the model's forward pass with a KV cache, rather than
``model.generate``, for what only a hand loop can do:

- each prompt is prefilled once, instead of prefilling ``n`` copies of the prompt; a prompt
  whose tokens begin another prompt of the same prefill group (the step prefixes of one
  solution, duplicates) is not prefilled at all: its cache and next-token logits are read off
  the longer prompt's (vLLM calls this prefix caching);
- the ``n`` samples of a prompt share its KV cache: it is stored once, and a decoding step
  reads it once for all ``n`` (cascade attention, see
  :class:`~training.generation.kv_cache.SharedPrompts`), instead of once per sample from
  ``n`` copies. Calls of at most 64 rows (prompts x samples) that fit in one prefill copy the
  prompt into each row instead, where one SDPA call beats the shared attention's many small
  kernels;
- continuous batching: up to ``batch_size`` prompts (each with its ``n`` samples) are in
  flight; when a quarter of the rows belong to prompts whose samples have all finished, new
  prompts are prefilled into their places, so the batch stays full instead of decoding a long
  tail for a few sequences; prompts with a sample that has drawn 96 tokens move to a second
  batch (the slow lane), because every row of a batch attends over the longest row's span;
- every sample draws its randomness from its own stream (see
  :mod:`training.generation.decode_batch`), so a completion does not depend on which other
  prompts share the call or the batch, on ``batch_size`` or on prompt order: sampling the
  first 250 problems of a subset gives the same samples as sampling them within 500.
  (Floating-point results of a padded batch can differ in the last bits from an unpadded one,
  so near-ties in the probabilities may still resolve differently in a different batch; with
  the same call and seed, outputs are identical.)

Prompts are taken in families (a prompt with the prompts that begin it), shortest families
first, so that prefixes meet their extensions in one prefill and rows joining a running batch
are about as long as the rows already in it. A prompt longer than the model's context minus
``max_new_tokens`` is left-truncated (keeping ``<bos>``) with a warning through ``log``, so
that prompt and completion always fit in ``max_position_embeddings``. ``progress`` hears of
prompts as all their samples finish (at most twice a second, and once at the end), with the
new tokens per second so far; a call longer than a second ends with one line through ``log``.

``torch.compile`` is not used: the shapes change every step. Thread counts are the caller's
business (``torch.set_num_threads``); note that when another process keeps a core busy, two
torch threads spin-wait on each other and run many times slower than one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from training.checkpoint import Dtype, load_checkpoint
from training.generation.decode_batch import DecodeBatch, sample_uniforms
from training.generation.interface import (
    Completion,
    RateLimitedProgress,
    SamplingParams,
    encode_prompts,
)
from training.generation.kv_cache import GrowingCache, SharedPrompts, shared_prompt_attention_in
from training.progress import Progress

_SLOW_LANE_AFTER = 96  # tokens drawn before a row leaves the main batch (see _decode)
# Calls with more rows than this (prompts x samples) share each prompt's KV cache among its
# samples (see SharedPrompts); smaller ones copy it into every row, where one SDPA call per
# layer beats the shared-prompt attention's dozen small kernels.
_SHARE_PROMPTS_FROM = 64


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

    def close(self) -> None:
        """Drop the model (and the GPU memory it held); the generator is unusable afterwards."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        prompts = list(prompts)
        encoded = encode_prompts(
            self.tokenizer, prompts, self.context, params.max_new_tokens, self.log
        )
        # Greedy samples of one prompt are all equal: decode once, repeat.
        draws = 1 if params.temperature == 0 else params.n
        order = prefix_family_order(encoded)
        with shared_prompt_attention_in(self.model):
            tokens, finish = self._decode(
                [encoded[i] for i in order], [prompts[i] for i in order], draws, params, progress
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

    def _decode(
        self,
        prompt_ids: list[list[int]],
        prompts: list[str],
        draws: int,
        params: SamplingParams,
        progress: Progress | None,
    ) -> tuple[list[list[int]], list[str]]:
        """Continuous batching: the new tokens and finish reason of every row (row
        ``p * draws + j`` is sample ``j`` of prompt ``p``)."""
        capacity = self.batch_size * draws  # rows in flight
        # Refill once a quarter of the rows (at least one prompt's) has finished: each refill
        # costs a prefill and a copy of the cache, so not after every finished row.
        refill_at = capacity - max(draws, capacity // 4)
        share = len(prompt_ids) * draws > min(capacity, _SHARE_PROMPTS_FROM)
        drawn = _Drawn(len(prompt_ids), draws, params, self._stops(params), progress)
        started = 0
        # Two lanes, each one batch: new prompts join `main`; rows that have drawn
        # _SLOW_LANE_AFTER tokens move to `slow`. All rows of a batch end at the same column,
        # so in one batch a long-running row would make every row attend over its length in
        # padding.
        main: DecodeBatch | None = None
        slow: DecodeBatch | None = None
        while True:
            if started < len(prompt_ids) and (main is None or main.occupied <= refill_at):
                if main is not None:
                    main, slow = _to_slow_lane(main, slow, drawn.tokens)
                live = 0 if main is None else main.occupied
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
                    share=share,
                )
                main = fresh if main is None else main.absorb(fresh)
            if main is None and slow is None:
                break
            for batch in (main, slow):
                if batch is not None:
                    batch.choose(params)
                    drawn.record(batch)
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
        drawn.summarize(self.log, sequences=len(prompt_ids) * params.n)
        return drawn.tokens, drawn.finish

    def _prefill(
        self,
        prompt_ids: list[list[int]],
        prompts: list[str],
        first: int,
        draws: int,
        params: SamplingParams,
        share: bool,
    ) -> DecodeBatch:
        """The prompts' KV cache and next-token logits, each prompt repeated ``draws`` times;
        the prompts are ``first, first + 1, ...`` of the call. With ``share``, the ``draws``
        samples of a prompt share its cache (:class:`SharedPrompts`), else each row holds a
        copy (only for calls that fit in one prefill: such a batch takes no new rows)."""
        device = self.device
        shared_prompts, logits, lengths = self._prefill_prompts(prompt_ids, draws)
        rows = len(prompt_ids) * draws
        uniforms = (
            sample_uniforms(prompts, draws, params).to(device) if params.temperature > 0 else None
        )
        if share:
            cache = GrowingCache.empty(shared_prompts.keys, rows)
            mask = torch.zeros((rows, 0), dtype=torch.bool, device=device)
        else:
            cache = GrowingCache.copies(shared_prompts, draws)
            mask = shared_prompts.mask.repeat_interleave(draws, dim=0)
        return DecodeBatch(
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

    def _prefill_prompts(
        self, prompt_ids: list[list[int]], draws: int
    ) -> tuple[SharedPrompts, torch.Tensor, torch.Tensor]:
        """One forward pass over the prompts that no other prompt extends: every prompt's KV
        cache, and the next-token logits and next position of each of its ``draws`` rows."""
        device = self.device
        source, leaves = self._prefill_leaves(prompt_ids)
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
        # padding, masked. Its `draws` samples share it (see SharedPrompts).
        j = torch.arange(width, device=device)
        shared_prompts = SharedPrompts.gather(
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
        return shared_prompts, logits, lengths

    def _prefill_leaves(self, prompt_ids: list[list[int]]) -> tuple[list[int], list[int]]:
        """The prompts to run through the model (the leaves), and for each prompt the leaf
        whose cache and logits it reads."""
        # Prefix sharing: a prompt whose tokens begin another prompt of the group (a step prefix
        # of the same solution, a duplicate) is not prefilled; its cache and next-token logits
        # are read off the longer prompt's, as vLLM's prefix caching does.
        source = extended_by(prompt_ids)
        leaves = sorted(set(source))
        # Shared prompts need the logits at inner positions: [leaves, positions, vocabulary].
        # Past a quarter of a GiB of float32 (large vocabularies), prefill every prompt.
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if len(leaves) * max(len(ids) for ids in prompt_ids) * vocab > 2**26:
            source, leaves = list(range(len(prompt_ids))), list(range(len(prompt_ids)))
        return source, leaves

    def _stops(self, params: SamplingParams) -> Callable[[list[int]], bool]:
        """Whether a row whose tokens are these has just stopped (EOS or a stop string)."""
        window = max((len(s.encode()) for s in params.stop), default=0) + 1
        return lambda tokens: (
            tokens[-1] in self.eos_ids
            or bool(params.stop and self._ends_with_stop(tokens, params.stop, window))
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


class _Drawn:
    """The tokens every row of a call has drawn and its finish reason (``""`` while it runs);
    reports finished prompts to ``progress``."""

    def __init__(
        self,
        prompts: int,
        draws: int,
        params: SamplingParams,
        stops: Callable[[list[int]], bool],
        progress: Progress | None,
    ) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(prompts * draws)]
        self.finish = [""] * (prompts * draws)
        self.draws = draws
        self.max_new_tokens = params.max_new_tokens
        self.stops = stops
        self.running = [draws] * prompts  # rows of each prompt still drawing
        self.prompts_done = 0
        self.new_tokens = 0  # drawn by finished rows
        self.start = time.perf_counter()
        self.progress = RateLimitedProgress(progress, prompts)

    def record(self, batch: DecodeBatch) -> None:
        """Appends the tokens ``batch`` has just chosen to their rows, and retires the rows
        that finish with them."""
        finished = []
        for position, (row, token) in enumerate(
            zip(batch.rows, batch.chosen.tolist(), strict=True)
        ):
            if row < 0:  # finished earlier; the place waits for a new row or compaction
                continue
            tokens = self.tokens[row]
            tokens.append(token)
            if self.stops(tokens):
                self.finish[row] = "stop"
            elif len(tokens) == self.max_new_tokens:
                self.finish[row] = "length"
            else:
                continue
            finished.append(position)
            self.new_tokens += len(tokens)
            self.running[row // self.draws] -= 1
            if self.running[row // self.draws] == 0:
                self.prompts_done += 1
        if finished:
            batch.retire(finished)
            self.progress(self.prompts_done, self.new_tokens)

    def summarize(self, log: Callable[[str], None], sequences: int) -> None:
        """One line through ``log`` for calls longer than a second (quick ones stay quiet)."""
        seconds = time.perf_counter() - self.start
        if seconds >= 1.0:
            log(f"sampled {sequences} sequences, {self.new_tokens / seconds:,.0f} new tokens/s")


def _to_slow_lane(
    main: DecodeBatch, slow: DecodeBatch | None, tokens: list[list[int]]
) -> tuple[DecodeBatch, DecodeBatch | None]:
    """Moves the prompts of ``main`` with a row that has drawn ``_SLOW_LANE_AFTER`` tokens to
    ``slow``; a prompt's samples move together (they share its cache). Called when new rows
    arrive rather than every step, so that the slow lane's cache is copied rarely."""
    old = sorted(
        {
            position // main.draws
            for position, row in enumerate(main.rows)
            if row >= 0 and len(tokens[row]) >= _SLOW_LANE_AFTER
        }
    )
    if old:
        moved = main.take(old)
        main.retire_prompts(old)
        slow = moved if slow is None else slow.compact().merge(moved)
    return main, slow


def extended_by(prompt_ids: list[list[int]]) -> list[int]:
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


def prefix_family_order(prompt_ids: list[list[int]]) -> list[int]:
    """Prompt indices with every prompt next to the longer prompts it begins (so that they
    share a prefill), families by the length of their longest prompt, shortest first (so that
    rows joining a running batch are about as long as the rows already in it)."""
    source = extended_by(prompt_ids)
    families: dict[int, list[int]] = {}
    for i, leaf in enumerate(source):
        families.setdefault(leaf, []).append(i)
    ranked = sorted(families.items(), key=lambda item: len(prompt_ids[item[0]]))
    return [i for leaf, members in ranked for i in [leaf, *(m for m in members if m != leaf)]]
