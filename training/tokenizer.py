"""The tokenizer of the tiny from-scratch model: byte-level BPE trained on the task's own text.

Real models (``model.name`` a Hugging Face folder) bring their own tokenizer; this one exists
because the tiny Llama is built here and needs a vocabulary sized for a ~1M-parameter model.

Design
------
- **Byte-level**: the pre-tokenizer maps every byte to a visible character and the decoder
  maps it back, so ``decode(encode(text)) == text`` for any text (spaces, the ``"\\n"`` step
  separators, unicode), and no input ever becomes ``<unk>``. All 256 bytes are in the vocabulary.
- **GPT-2 word splitting**: a word or a run of digits is one pre-token together with its
  leading space (``" has"``, ``" 13"``), punctuation and newlines are separate ones. BPE merges
  never cross these boundaries.
- **Whole numbers**: because digit runs are pre-tokens of their own, BPE learns each frequent
  number as one token (every ``" 0"`` .. ``" 22"`` for the default modulus 23, which the task's
  text uses constantly). Each step ``a op b = c`` is then a lookup in a ``p x p`` table of
  single tokens that a tiny model can memorise; with one token per digit it would have to
  learn multi-digit carries and a reduction modulo ``p`` from digit pieces, which is far
  harder at this size and makes sequences longer. Numbers that are too rare to earn a merge
  (large moduli with a small ``vocab_size``) still round-trip, as several tokens.
- **Special tokens** ``<pad>`` (id 0), ``<bos>``, ``<eos>``, ``<unk>``. Encoding with special
  tokens (the default) prepends ``<bos>``, as Llama tokenizers do; the trainer appends
  ``<eos>`` to each completion. ``padding_side`` is ``"left"``, what batched generation needs.

Training is deterministic: the same texts and ``vocab_size`` give the same vocabulary.
The result is a ``transformers`` fast tokenizer; ``save_pretrained(folder)`` writes a folder
that ``AutoTokenizer.from_pretrained(folder, local_files_only=True)`` loads offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from training.prompts import format_prompt

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
_MIN_VOCAB = len(SPECIAL_TOKENS) + 256


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (see the module docstring).

    ``vocab_size`` is an upper bound: training stops early once every word of the texts is a
    single token. It must leave room for the 256 bytes and the 4 special tokens.
    """
    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + 4 specials)")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_with_prompt_words(texts), trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, backend.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        # The default clean-up rewrites " ." to "." and the like, which breaks round trips.
        clean_up_tokenization_spaces=False,
    )


def _with_prompt_words(texts: Iterable[str]) -> Iterator[str]:
    # Every training example starts with the prompt template, so its words get merged as
    # often as the texts are seen, even if the caller passes bare questions and solutions.
    template = format_prompt("")
    for text in texts:
        yield text
        yield template
