"""BERT pre-training examples (MLM + NSP) from text, written as sharded ArrayRecord files.

This is the capability of google-research/bert's `create_pretraining_data.py`, with the
same example semantics, made fast, streaming and deterministic.

Semantics kept from google-research/bert
----------------------------------------
For every document and each of `dupe_factor` passes: a target length is drawn once
(`max_seq_length - 3`, or with probability `short_seq_prob` a uniform length in
``[2, max_seq_length - 3]``); sentences are gathered into a chunk until it reaches the
target or the document ends; a random split point puts the first ``a_end`` sentences into
segment A; with probability 1/2 (always for a one-sentence chunk) B is a "random next":
sentences from a random start in another document until B reaches the remaining target
length, and the chunk's unused sentences are put back; otherwise B is the rest of the
chunk. The pair is truncated to ``max_seq_length - 3`` tokens by removing tokens from the
longer side (B on a tie), each removal from its front or back with probability 1/2. The
example is ``[CLS] A [SEP] B [SEP]`` with segment ids 0 up to the first [SEP] and 1
after. ``next_sentence_labels`` is 1 for a random next and 0 for the actual next, as in
the reference. Masking picks ``min(max_predictions_per_seq, max(1, round(len * p)))``
positions (``len`` counts [CLS]/[SEP]; Python's half-to-even rounding), never [CLS],
[SEP] or [PAD]; each is replaced by [MASK] with probability 0.8, kept with 0.1 and
replaced by a random token with 0.1. Whole-word masking shuffles words (a piece and its
"##" continuations) instead of pieces and skips a word that would overflow the budget.
Masked positions are sorted; positions and labels are padded with 0 (weights 0.0) to
`max_predictions_per_seq`, input ids with [PAD].

Deliberate deviations (documented, tested)
------------------------------------------
* **Streaming windows.** The reference holds the whole corpus in memory and draws a
  "random next" from any document. Here the document stream is cut into windows and a
  random next comes from another document *of the same window*; memory is constant in
  corpus size. The rule (`_WindowAssembler`): every window holds at least two
  documents. A window closes after the document that brings it to `window_documents`
  documents (default 10,000) or to `window_max_tokens` tokens (default 4M), but never
  before it holds two documents (a huge document waits for the next one); the
  documents after the last close join the previous window when they are fewer than two
  or fewer than half of both limits. Documents are never split: a window holding huge
  documents is as large as they are. Examples are shuffled within each pass over a
  window and written window by window, pass by pass (the reference shuffles all
  examples globally); the input pipeline shuffles globally at read time anyway.
* **Random next is never the same document.** The reference retries 10 times and then
  silently uses the same document; here the other document is drawn uniformly from the
  rest of the window. An input with fewer than two documents is rejected (no valid
  "random next" exists).
* **Truncation in closed form.** How many tokens each side loses is deterministic (the
  reference loop's counts); the front/back split of those removals is Binomial(n, 1/2),
  the same distribution as the reference's one-coin-per-token loop.
* **Random replacement tokens** are drawn uniformly from the vocabulary *minus* the
  special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]); the reference draws from the whole
  vocabulary, occasionally inserting [CLS]/[SEP]/[PAD] into the text.
* **Whole words never cross a special token.** The reference attaches a "##" piece
  right after [SEP] to the last word before it; here it starts its own word.
* **Special tokens in the text.** The tokenizer maps a literal "[SEP]" or "[MASK]" in
  the text to the special id; such ids inside text are replaced by [UNK], so [CLS]/[SEP]
  occur only at the structural positions and masking invariants hold.
* **Randomness** comes from numpy / `random.Random` streams seeded from
  ``(random_seed, window index, pass)``. Nothing else on the path from text to records
  varies between runs: input files are read in the order of their absolute paths
  (however they were spelled or globbed), windows are cut by the document sequence
  alone (not by how documents arrive in tokenization chunks), word batches are tokenized in sorted
  order, results are consumed in submission order whatever finishes first, and
  TFRecord examples are serialized with sorted feature keys. So for a fixed seed and
  input the output (every shard and ``dataset_info.json``) is byte-identical whatever
  `num_workers`, scheduling, hash seed or tokenizer thread count. It does not reproduce
  the reference's exact random stream (which is impossible without its exact call
  order and its slow Python loops); the statistics match (on the test corpus at
  length 128, 20 passes: NSP label mean 0.588-0.593 vs the reference's 0.583-0.589,
  mean length 76.2-76.6 vs 75.9-76.2 over three seeds each).
* **The end of an input file ends a document** (see `data_pipelines.corpus`).

Speed
-----
Text is read in 1 MiB blocks. Tokenization goes through a `WordPieceCache` for BERT
WordPiece tokenizers (each distinct space-separated word is tokenized once, in large
`encode_batch` calls; exact, see its docstring) and through `encode_batch` otherwise.
Pair construction is a Python loop per *chunk* (not per token or sentence: chunk ends
are found with `bisect` on cumulative sentence offsets), producing (start, length)
ranges into one flat token array; examples are then gathered, masked and serialized
with vectorized numpy in blocks of a few thousand. Two kinds of tasks run on
`num_workers` processes: tokenizing ~256 KB chunks of documents, and building the
examples of a group of passes over a window (one group per worker). Workers are
spawned (safe from a process that already imported JAX or TensorFlow; they do not
re-run the caller's ``__main__``), at most ``2 * num_workers`` tasks of each kind are in
flight, and the parent process reads text and writes the shards. With
``num_workers <= 1`` everything runs in the calling process.

Output
------
``output_dir/examples-XXXXX-of-YYYYY.array_record`` (or ``.tfrecord``), examples
dealt round-robin over `num_output_shards` shards in a deterministic order, the
tokenizer the examples were made with (its own `save()`: ``vocab.txt`` or
``spm.model`` plus ``tokenizer_config.json``, so `load_tokenizer(output_dir)` gives the
same ids and ``bertjax train --config.data.train_dir=output_dir`` finds it), and
``dataset_info.json`` (format, counts per shard, lengths, masking spec, seed, ...).
Everything is written into a temporary sibling directory that is renamed to
`output_dir` at the end; ``dataset_info.json`` is written last, so a directory without
it is never complete (the reader refuses it). An existing non-empty `output_dir` is
refused unless ``overwrite=True``.

ArrayRecord record layout (``record_encoding: "bertjax-pretrain-v1"``), little endian,
parseable with numpy alone (`decode_record`); ArrayRecord files are written with
``group_size:1,uncompressed`` (one record per chunk, as grain wants for random access;
records of a few hundred bytes gain little from per-record compression, and the
default Brotli made writing about 8x slower)::

  offset size  field
  0      2     magic b"BJ"
  2      1     version = 1
  3      1     flags: bit 0 = masked (static masking: predictions stored),
                      bit 1 = wide ids (int32 token ids; else uint16)
  4      2     length: number of tokens, [CLS] A [SEP] B [SEP]          (uint16)
  6      2     segment_a_length: positions with segment id 0 ([CLS] A [SEP]) (uint16)
  8      2     num_predictions (0 for unmasked records)                 (uint16)
  10     1     next_sentence_label (1 = random next)                    (uint8)
  11     1     reserved, 0
  12     W*length            input_ids (masked when bit 0 is set), W = 2 or 4 bytes
  ..     2*num_predictions   masked_lm_positions (uint16, ascending)
  ..     W*num_predictions   masked_lm_ids (the original ids)

Padding, ``input_mask`` (``pos < length``), ``segment_ids`` (``segment_a_length <= pos
< length``) and ``masked_lm_weights`` (1.0 for the first ``num_predictions``) are
rebuilt by the reader. With ``dynamic_masking=True`` records are unmasked (bit 0 clear)
and `data_pipelines.pretrain_input` masks each example on the fly with `mask_example`,
seeded from (seed, epoch, example index) (RoBERTa-style); `dupe_factor` then still
re-draws the pairing, so 1 is the usual choice. ``output_format="tfrecord"`` writes
`tf.train.Example` records with google-research/bert's features (int64 lists,
``masked_lm_weights`` float, ``next_sentence_labels`` of shape [1]) for interop; it
needs TensorFlow and always stores masked examples.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import itertools
import json
import multiprocessing
import os
import random
import shutil
import struct
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from bertjax import storage
from data_pipelines import corpus
from data_pipelines import features as F

RECORD_ENCODING = "bertjax-pretrain-v1"
DATASET_INFO = "dataset_info.json"
MAGIC = b"BJ"
VERSION = 1
FLAG_MASKED = 1
FLAG_WIDE = 2
HEADER = struct.Struct("<2sBBHHHBx")  # 12 bytes
ARRAYRECORD_WRITER_OPTIONS = "group_size:1,uncompressed"
DEFAULT_WINDOW_DOCUMENTS = 10_000
WINDOW_MAX_TOKENS = 4_000_000  # default tokens at which a window closes (at two documents)
TOKENIZE_CHUNK_CHARS = 256_000  # characters of text per tokenization task
BLOCK_EXAMPLES = 4096  # examples gathered / masked / serialized at a time
BYTES_PER_WORKER = 8_000_000  # default num_workers: one per 8 MB of input, up to the cores

OutputFormat = Literal["arrayrecord", "tfrecord"]
TFRECORD_NEEDS = "writing TFRecord files (output_format tfrecord)"


# ---------------------------------------------------------------------------------------
# Masking: one pure numpy function for the writer and the input pipeline.


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingSpec:
    """Tokenizer-derived tables and parameters of masked-LM masking.

    `never_mask_ids` are never chosen as a prediction ([CLS], [SEP], [PAD], [MASK]; [UNK]
    may be masked, as in the reference); `special_ids` are never drawn as a random
    replacement; `continuation_mask[id]` marks "##" pieces (whole-word masking).
    """

    vocab_size: int
    mask_id: int
    never_mask_ids: tuple[int, ...]
    special_ids: tuple[int, ...]
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    do_whole_word_mask: bool = False
    continuation_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.masked_lm_prob <= 1.0:
            raise ValueError(f"masked_lm_prob must be in [0, 1], got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(
                f"max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}"
            )
        never = np.zeros(self.vocab_size, dtype=bool)
        never[list(self.never_mask_ids)] = True
        special = np.zeros(self.vocab_size, dtype=bool)
        special[list(self.special_ids)] = True
        replacement = np.flatnonzero(~special).astype(np.int32)
        if replacement.size == 0:
            raise ValueError("the vocabulary has no non-special token to draw replacements from")
        cont = self.continuation_mask
        if cont is None:
            cont = np.zeros(self.vocab_size, dtype=bool)
        cont = np.asarray(cont, dtype=bool)
        if cont.shape != (self.vocab_size,):
            raise ValueError(f"continuation_mask must have shape [{self.vocab_size}]")
        object.__setattr__(self, "continuation_mask", cont)
        object.__setattr__(self, "_never", never)
        object.__setattr__(self, "_replacement", replacement)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        do_whole_word_mask: bool = False,
    ) -> MaskingSpec:
        """The spec for a `data_pipelines.tokenizers.Tokenizer`."""
        never = sorted({tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id})
        return cls(
            vocab_size=int(tokenizer.vocab_size),
            mask_id=int(tokenizer.mask_id),
            never_mask_ids=tuple(int(i) for i in never),
            special_ids=tuple(sorted(int(i) for i in tokenizer.special_ids())),
            masked_lm_prob=float(masked_lm_prob),
            max_predictions_per_seq=int(max_predictions_per_seq),
            do_whole_word_mask=bool(do_whole_word_mask),
            continuation_mask=np.asarray(tokenizer.continuation_mask(), dtype=bool),
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "never_mask_ids": list(self.never_mask_ids),
            "special_ids": list(self.special_ids),
            "masked_lm_prob": self.masked_lm_prob,
            "max_predictions_per_seq": self.max_predictions_per_seq,
            "do_whole_word_mask": self.do_whole_word_mask,
        }
        if self.do_whole_word_mask:
            out["continuation_ids"] = np.flatnonzero(self.continuation_mask).tolist()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MaskingSpec:
        cont = None
        if data.get("continuation_ids") is not None:
            cont = np.zeros(int(data["vocab_size"]), dtype=bool)
            cont[np.asarray(data["continuation_ids"], dtype=np.int64)] = True
        return cls(
            vocab_size=int(data["vocab_size"]),
            mask_id=int(data["mask_id"]),
            never_mask_ids=tuple(data["never_mask_ids"]),
            special_ids=tuple(data["special_ids"]),
            masked_lm_prob=float(data["masked_lm_prob"]),
            max_predictions_per_seq=int(data["max_predictions_per_seq"]),
            do_whole_word_mask=bool(data["do_whole_word_mask"]),
            continuation_mask=cont,
        )


class MaskedExamples(NamedTuple):
    """Masked-LM inputs and targets; leading batch dims as given."""

    input_ids: np.ndarray  # int32 [..., T], masked
    masked_lm_positions: np.ndarray  # int32 [..., P], ascending, padded with 0
    masked_lm_ids: np.ndarray  # int32 [..., P], original ids, padded with 0
    masked_lm_weights: np.ndarray  # float32 [..., P], 1.0 for real predictions


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for dynamically masking example `index` in `epoch`."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch, index])))


def mask_example(
    input_ids: np.ndarray,
    length: int,
    spec: MaskingSpec,
    *,
    rng: np.random.Generator | None = None,
    seed: int | Sequence[int] | None = None,
) -> MaskedExamples:
    """Masks one example ([T] ids of which the first `length` are real); see `mask_batch`.

    Pass a generator (`rng`) or a seed (int or sequence of ints, e.g. (seed, epoch,
    index)); the same inputs give the same output.
    """
    if rng is None:
        if seed is None:
            raise ValueError("mask_example needs rng or seed")
        rng = np.random.default_rng(seed)
    ids = np.asarray(input_ids)[None, :]
    out = mask_batch(ids, np.asarray([length]), spec, rng=rng)
    return MaskedExamples(*(a[0] for a in out))


def mask_batch(
    input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec, *, rng: np.random.Generator
) -> MaskedExamples:
    """google-research/bert's `create_masked_lm_predictions`, vectorized over a batch.

    Args:
      input_ids: int [N, T] unmasked ids; positions >= length are padding.
      lengths: int [N] number of real tokens per row.
      spec: tables and parameters (see `MaskingSpec`).
      rng: consumed in a fixed pattern for a given shape, so results are reproducible.
    """

    def draw(key_sizes, key_width, dtype, width, high):
        n = len(key_sizes)  # every row's keys in one [N, key_width] block
        keys = rng.random((n, key_width), dtype=dtype)
        return keys, rng.random((n, width)), rng.integers(0, high, size=(n, width))

    return _mask(input_ids, lengths, spec, draw)


def mask_rows(
    input_ids: np.ndarray,
    lengths: np.ndarray,
    spec: MaskingSpec,
    rngs: Sequence[np.random.Generator],
) -> MaskedExamples:
    """Row i masked with generator ``rngs[i]``, all rows computed at once.

    The result is exactly ``mask_example(input_ids[i], lengths[i], spec, rng=rngs[i])``
    for every row, taken in row order: rows that share one generator draw from it one
    after the other, as successive `mask_example` calls would. Only the draws are made
    row by row (a few per row); the masking itself is vectorized over the batch.
    """
    if len(rngs) != len(input_ids):
        raise ValueError(f"{len(input_ids)} rows but {len(rngs)} generators")

    def draw(key_sizes, key_width, dtype, width, high):
        n = len(key_sizes)
        keys = np.empty((n, key_width), dtype)
        r = np.empty((n, width))
        picks = np.empty((n, width), np.int64)
        for i, (g, size) in enumerate(zip(rngs, key_sizes.tolist(), strict=True)):
            keys[i, :size] = g.random(size, dtype=dtype)
            r[i] = g.random(width)
            picks[i] = g.integers(0, high, size=width)
        return keys, r, picks

    return _mask(input_ids, lengths, spec, draw)


def _mask(
    input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec, draw: Callable
) -> MaskedExamples:
    """The masking of `mask_batch` with its random numbers from `draw`.

    ``draw(key_sizes, key_width, dtype, width, high)`` returns ``(keys, r, picks)``:
    ``keys`` [N, key_width] of `dtype` in [0, 1), of which row i needs the first
    ``key_sizes[i]``; ``r`` [N, width] float64 in [0, 1) (mask / keep / replace);
    ``picks`` [N, width] integers in [0, high) (replacement tokens). A row draws its keys,
    then r, then picks, so one row masked alone consumes its generator as in `mask_example`.
    """
    ids = np.asarray(input_ids, dtype=np.int32)
    lengths = np.asarray(lengths, dtype=np.int64)
    n, t = ids.shape
    p = spec.max_predictions_per_seq
    pos = np.arange(t)
    cand = (pos[None, :] < lengths[:, None]) & ~spec._never[ids]  # [N, T]
    num_cand = cand.sum(axis=1)
    k = np.rint(lengths * spec.masked_lm_prob).astype(np.int64)
    k = np.minimum(np.minimum(p, np.maximum(1, k)), num_cand)  # [N]

    width = min(p, t)
    high = spec._replacement.size
    if spec.do_whole_word_mask:
        prev = np.zeros_like(cand)
        prev[:, 1:] = cand[:, :-1]
        start = cand & ~(spec.continuation_mask[ids] & prev)  # a word starts here
        words_per_row = start.sum(axis=1)
        w = max(1, int(words_per_row.max(initial=0)))
        keys, r, picks = draw(np.maximum(1, words_per_row), w, np.float64, width, high)
        keys[np.arange(w)[None, :] >= words_per_row[:, None]] = 2.0
        selected = _select_whole_words(cand, start, words_per_row, k, keys)
        rows, cols = np.nonzero(selected)  # row-major: ascending positions per row
        count = selected.sum(axis=1)
        rank = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)
        positions = np.zeros((n, width), dtype=np.int64)
        positions[rows, rank] = cols
    else:
        # The k candidates with the smallest random keys: a uniform draw without
        # replacement, like shuffling the candidates and taking the first k.
        keys, r, picks = draw(np.full(n, t), t, np.float32, width, high)
        keys[~cand] = 2.0
        part = np.argpartition(keys, width - 1, axis=1)[:, :width] if width < t else None
        if part is None:
            part = np.broadcast_to(np.arange(t), (n, t))
        order = np.take_along_axis(
            part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1), axis=1
        )
        take = np.arange(width)[None, :] < k[:, None]
        positions = np.sort(np.where(take, order, t), axis=1)  # ascending, padding last
        count = k
    valid = np.arange(width)[None, :] < count[:, None]
    positions = np.where(valid, positions, 0)
    labels = np.where(valid, np.take_along_axis(ids, positions, axis=1), 0)

    random_ids = spec._replacement[picks]
    new = np.where(r < 0.8, spec.mask_id, np.where(r < 0.9, labels, random_ids))
    masked = ids.copy()
    rows = np.broadcast_to(np.arange(n)[:, None], positions.shape)
    masked[rows[valid], positions[valid]] = new[valid]

    out_pos = np.zeros((n, p), dtype=np.int32)
    out_ids = np.zeros((n, p), dtype=np.int32)
    weights = np.zeros((n, p), dtype=np.float32)
    out_pos[:, :width] = positions
    out_ids[:, :width] = labels
    weights[:, :width] = valid
    return MaskedExamples(masked, out_pos, out_ids, weights)


def _select_whole_words(
    cand: np.ndarray,
    start: np.ndarray,
    words_per_row: np.ndarray,
    k: np.ndarray,
    keys: np.ndarray,
) -> np.ndarray:
    """Whole-word selection: order each row's words by `keys` [N, W] (2.0 past the row's
    words), greedily take those that fit the budget `k`."""
    n, t = cand.shape
    w = keys.shape[1]
    rows, cols = np.nonzero(cand)
    word = (np.cumsum(start, axis=1) - 1)[rows, cols]  # word index (in its row) per candidate
    word_len = np.bincount(rows * w + word, minlength=n * w).reshape(n, w)
    order = np.argsort(keys, axis=1)  # a random order of each row's words
    shuffled_len = np.take_along_axis(word_len, order, axis=1).T.copy()  # [W, N]
    chosen = np.zeros((w, n), dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    for r in range(w):
        length = shuffled_len[r]
        fits = (length > 0) & (count + length <= k)
        chosen[r] = fits
        count += np.where(fits, length, 0)
        if np.all(count >= k):
            break
    chosen_word = np.zeros((n, w), dtype=bool)
    np.put_along_axis(chosen_word, order, chosen.T, axis=1)
    selected = np.zeros((n, t), dtype=bool)
    selected[rows, cols] = chosen_word[rows, word]
    return selected


# ---------------------------------------------------------------------------------------
# Tokenized documents and pair construction.


@dataclasses.dataclass(frozen=True, eq=False)
class ExampleParams:
    """Everything a worker needs besides the tokenizer."""

    max_seq_length: int
    short_seq_prob: float
    dupe_factor: int
    random_seed: int
    dynamic_masking: bool
    masking: MaskingSpec
    pad_id: int
    cls_id: int
    sep_id: int
    unk_id: int

    @property
    def wide(self) -> bool:
        return self.masking.vocab_size > 65535

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        max_seq_length: int = 128,
        max_predictions_per_seq: int = 20,
        masked_lm_prob: float = 0.15,
        dupe_factor: int = 10,
        short_seq_prob: float = 0.1,
        random_seed: int = 12345,
        do_whole_word_mask: bool = False,
        dynamic_masking: bool = False,
    ) -> ExampleParams:
        spec = MaskingSpec.from_tokenizer(
            tokenizer,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            do_whole_word_mask=do_whole_word_mask,
        )
        return cls(
            max_seq_length=max_seq_length,
            short_seq_prob=short_seq_prob,
            dupe_factor=dupe_factor,
            random_seed=random_seed,
            dynamic_masking=dynamic_masking,
            masking=spec,
            pad_id=int(tokenizer.pad_id),
            cls_id=int(tokenizer.cls_id),
            sep_id=int(tokenizer.sep_id),
            unk_id=int(tokenizer.unk_id),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedDocs:
    """Non-empty documents of non-empty sentences, as one flat token array.

    With ``offsets = [0, *cumsum(sentence_lengths)]`` sentence s is
    ``tokens[offsets[s]:offsets[s + 1]]``; documents hold consecutive runs of
    `doc_sentences[d]` sentences.
    """

    tokens: np.ndarray  # int32 [num_tokens]
    sentence_lengths: np.ndarray  # int64 [num_sentences], all > 0
    doc_sentences: np.ndarray  # int64 [num_docs], all > 0
    num_input_sentences: int = 0  # before dropping empty ones (statistics)

    @property
    def num_docs(self) -> int:
        return int(self.doc_sentences.size)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def doc_token_counts(self) -> np.ndarray:
        ends = np.cumsum(self.sentence_lengths)
        doc_end = np.cumsum(self.doc_sentences)
        tok_end = ends[doc_end - 1] if doc_end.size else np.zeros(0, np.int64)
        return np.diff(tok_end, prepend=0)

    def slice_docs(self, start: int, stop: int) -> TokenizedDocs:
        doc_start = np.concatenate([[0], np.cumsum(self.doc_sentences)])
        s0, s1 = int(doc_start[start]), int(doc_start[stop])
        tok_start = np.concatenate([[0], np.cumsum(self.sentence_lengths)])
        t0, t1 = int(tok_start[s0]), int(tok_start[s1])
        return TokenizedDocs(
            self.tokens[t0:t1],
            self.sentence_lengths[s0:s1],
            self.doc_sentences[start:stop],
            0,
        )

    @staticmethod
    def concat(parts: Sequence[TokenizedDocs]) -> TokenizedDocs:
        if not parts:
            return TokenizedDocs(
                np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
            )
        return TokenizedDocs(
            np.concatenate([p.tokens for p in parts]),
            np.concatenate([p.sentence_lengths for p in parts]),
            np.concatenate([p.doc_sentences for p in parts]),
            sum(p.num_input_sentences for p in parts),
        )

    def doc_bounds(self) -> list[list[int]]:
        """Per document, the cumulative token offsets of its sentences (Python ints)."""
        offsets = np.concatenate([[0], np.cumsum(self.sentence_lengths)]).tolist()
        out = []
        s = 0
        for n in self.doc_sentences.tolist():
            out.append(offsets[s : s + n + 1])
            s += n
        return out

    @classmethod
    def from_token_lists(
        cls, documents: Sequence[Sequence[Sequence[int]]], params: ExampleParams
    ) -> TokenizedDocs:
        """From `documents[d][s]` = token ids of sentence s of document d."""
        sentences = [list(s) for doc in documents for s in doc]
        return _pack(sentences, [len(d) for d in documents], params)


def _pack(encoded: list[list[int]], doc_sizes: list[int], params: ExampleParams) -> TokenizedDocs:
    """Flattens per-sentence id lists; see `_pack_arrays`."""
    sent_len = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    tokens = np.fromiter(
        itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(sent_len.sum())
    )
    return _pack_arrays(tokens, sent_len, doc_sizes, params)


def _pack_arrays(
    tokens: np.ndarray, sent_len: np.ndarray, doc_sizes: list[int], params: ExampleParams
) -> TokenizedDocs:
    """Drops empty sentences and documents; [CLS]/[SEP]/[PAD]/[MASK] inside text -> [UNK]."""
    # A literal "[SEP]" or "[MASK]" in the text is tokenized to the special id; inside
    # text it would break the example structure, so it becomes [UNK].
    if tokens.size:
        tokens = np.where(params.masking._never[tokens], params.unk_id, tokens).astype(np.int32)
    doc_of_sentence = np.repeat(np.arange(len(doc_sizes)), doc_sizes)
    keep = sent_len > 0
    doc_sentences = np.bincount(doc_of_sentence[keep], minlength=len(doc_sizes))
    return TokenizedDocs(tokens, sent_len[keep], doc_sentences[doc_sentences > 0], len(sent_len))


class WordPieceCache:
    """Token ids per space-separated word, for BERT WordPiece tokenizers.

    BERT's tokenization is a function of each whitespace-separated word: its basic
    tokenizer cleans the text and splits it on whitespace first, and every later step
    (lowercasing, accent stripping, punctuation and CJK splitting, WordPiece) works
    inside a word. So the ids of a sentence are the concatenation of the ids of its
    pieces split at " " (other whitespace stays inside a piece, where the tokenizer
    handles it itself); `tests/test_pretraining_data.py` checks this against
    `encode_batch` on adversarial text. Text repeats its words (Zipf), so tokenizing
    each distinct word once is about 3x faster than tokenizing every sentence.

    New words are tokenized in batches joined by " [SEP] ": the tokenizer maps that
    literal to the [SEP] id, so the ids split back per word; a batch that does not split
    into as many parts as it has words (a word holding "[SEP]") is tokenized word by
    word. The cache is emptied when it exceeds `max_words`; results never depend on it.
    """

    def __init__(self, tokenizer: Any, *, max_words: int = 1_000_000, batch_words: int = 4096):
        self.tokenizer = tokenizer
        self.sep = int(tokenizer.sep_id)
        self.max_words = max_words
        self.batch_words = batch_words
        self._reset()

    def _reset(self) -> None:
        self.slot: dict[str, int] = {}
        self.store = np.zeros(1 << 16, dtype=np.int32)
        self.size = 0  # tokens used in store
        self.starts = np.zeros(1 << 12, dtype=np.int64)
        self.lengths = np.zeros(1 << 12, dtype=np.int64)

    @staticmethod
    def _grow(a: np.ndarray, need: int) -> np.ndarray:
        if need <= a.size:
            return a
        out = np.zeros(max(need, 2 * a.size), dtype=a.dtype)
        out[: a.size] = a
        return out

    def _add(self, words: list[str]) -> None:
        batches = [words[i : i + self.batch_words] for i in range(0, len(words), self.batch_words)]
        joined = self.tokenizer.encode_batch([" [SEP] ".join(b) for b in batches])
        for batch, encoded in zip(batches, joined, strict=True):
            ids = np.asarray(encoded, dtype=np.int32)
            is_sep = ids == self.sep
            if int(is_sep.sum()) + 1 == len(batch):
                tokens = ids[~is_sep]
                lengths = np.bincount(np.cumsum(is_sep)[~is_sep], minlength=len(batch))
            else:  # a word holds a literal "[SEP]": no reliable split
                each = self.tokenizer.encode_batch(batch)
                lengths = np.fromiter(map(len, each), np.int64, len(each))
                tokens = np.fromiter(
                    itertools.chain.from_iterable(each), np.int32, int(lengths.sum())
                )
            first, n = len(self.slot), len(batch)
            self.store = self._grow(self.store, self.size + tokens.size)
            self.store[self.size : self.size + tokens.size] = tokens
            self.starts = self._grow(self.starts, first + n)
            self.lengths = self._grow(self.lengths, first + n)
            self.starts[first : first + n] = self.size + np.cumsum(lengths) - lengths
            self.lengths[first : first + n] = lengths
            self.size += tokens.size
            self.slot.update(zip(batch, range(first, first + n), strict=True))

    def encode(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(flat ids of all sentences, ids per sentence) == flattening encode_batch."""
        split = [s.split(" ") for s in sentences]
        words = list(itertools.chain.from_iterable(split))
        slot = self.slot
        new = set(words).difference(slot)
        if len(slot) + len(new) > self.max_words:
            self._reset()
            slot = self.slot
            new = set(words)
        if new:
            self._add(sorted(new))  # sorted: the same batches on every run
        slots = np.fromiter(map(slot.__getitem__, words), np.int64, len(words))
        lengths = self.lengths[slots]
        starts = self.starts[slots]
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if ends.size else 0
        # Token j of word w comes from store[starts[w] + j]: one gather for everything.
        offsets = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        tokens = self.store[offsets]
        per_sentence = np.fromiter(map(len, split), np.int64, len(split))
        word_end = np.cumsum(per_sentence)
        sent_end = np.concatenate([[0], ends])[word_end]
        sent_len = np.diff(np.concatenate([[0], sent_end]))
        return tokens, sent_len


def tokenize_documents(
    documents: Sequence[Sequence[str]],
    tokenizer: Any,
    params: ExampleParams,
    cache: WordPieceCache | None = None,
) -> TokenizedDocs:
    """Tokenizes documents: with a `WordPieceCache`, or one `encode_batch` call."""
    sentences = [s for doc in documents for s in doc]
    sizes = [len(d) for d in documents]
    if cache is not None:
        tokens, sent_len = cache.encode(sentences)
        return _pack_arrays(tokens, sent_len, sizes, params)
    encoded = tokenizer.encode_batch(sentences) if sentences else []
    return _pack(encoded, sizes, params)


def make_word_cache(tokenizer: Any) -> WordPieceCache | None:
    """A `WordPieceCache` for BERT WordPiece tokenizers, None for others (SentencePiece
    pieces depend on the spaces around a word)."""
    return WordPieceCache(tokenizer) if getattr(tokenizer, "kind", None) == "wordpiece" else None


def _pairs_for_pass(
    doc_bounds: list[list[int]], params: ExampleParams, rnd: random.Random
) -> tuple[np.ndarray, ...]:
    """(a_start, a_len, b_start, b_len, is_random_next) for one pass over a window.

    `doc_bounds[d]` holds the cumulative token offsets of document d's sentences in the
    window's flat token array: sentence s is ``tokens[bounds[s]:bounds[s + 1]]``.
    """
    max_num_tokens = params.max_seq_length - 3
    num_docs = len(doc_bounds)
    out: list[int] = []  # (a_start, a_len, b_start, b_len, is_random_next) per example
    push = out.extend
    # int(random() * n) instead of randrange/randint: 5x cheaper; its bias (< n / 2**53)
    # is immaterial.
    random_, getrandbits, bisect_left = rnd.random, rnd.getrandbits, bisect.bisect_left
    short = params.short_seq_prob
    for d, bounds in enumerate(doc_bounds):
        target = max_num_tokens
        if random_() < short:
            target = 2 + int(random_() * (max_num_tokens - 1))
        m = len(bounds) - 1
        i = 0
        while i < m:
            lo = bounds[i]
            # The chunk: sentences i..e-1, until it reaches the target or the document ends.
            e = bisect_left(bounds, lo + target, i + 1)
            if e > m:
                e = m
            n_seg = e - i
            a_end = 1 if n_seg < 2 else 1 + int(random_() * (n_seg - 1))
            hi = bounds[i + a_end]
            if n_seg == 1 or random_() < 0.5:
                is_random = 1
                other = int(random_() * (num_docs - 1))
                if other >= d:
                    other += 1
                ob = doc_bounds[other]
                om = len(ob) - 1
                rs = int(random_() * om)
                blo = ob[rs]
                j = bisect_left(ob, blo + target - (hi - lo), rs + 1)
                bhi = ob[j if j <= om else om]
                i += a_end  # put the unused sentences back
            else:
                is_random = 0
                blo, bhi = hi, bounds[e]
                i = e
            la, lb = hi - lo, bhi - blo
            excess = la + lb - max_num_tokens
            if excess > 0:
                # The reference's loop: drop from the longer side (B on a tie) until the
                # sides are even, then alternate B, A, ...; each drop from the front or
                # the back with probability 1/2.
                if la > lb:
                    cut_a, cut_b = min(excess, la - lb), 0
                else:
                    cut_a, cut_b = 0, min(excess, lb - la)
                rest = excess - cut_a - cut_b
                cut_a += rest // 2
                cut_b += rest - rest // 2
                if cut_a:
                    lo += bin(getrandbits(cut_a)).count("1")  # removals from the front
                if cut_b:
                    blo += bin(getrandbits(cut_b)).count("1")
                la -= cut_a
                lb -= cut_b
            push((lo, la, blo, lb, is_random))
    pairs = np.asarray(out, dtype=np.int64).reshape(-1, 5)
    return tuple(pairs[:, k] for k in range(5))


def _gather_pairs(
    flat: np.ndarray,
    a_start: np.ndarray,
    a_len: np.ndarray,
    b_start: np.ndarray,
    b_len: np.ndarray,
    params: ExampleParams,
) -> tuple[np.ndarray, np.ndarray]:
    """([N, T] ids of [CLS] A [SEP] B [SEP] + [PAD]..., [N] lengths)."""
    t = params.max_seq_length
    pos = np.arange(t, dtype=np.int32)[None, :]
    la = a_len.astype(np.int32)[:, None]
    end = la + 2 + b_len.astype(np.int32)[:, None]  # one past B
    shift = np.where(
        pos <= la, a_start.astype(np.int32)[:, None] - 1, b_start.astype(np.int32)[:, None] - la - 2
    )
    real = (pos < end) & (pos != 0) & (pos != la + 1)
    ids = flat[np.where(real, pos + shift, 0)]
    ids[~real] = params.pad_id
    ids[:, 0] = params.cls_id
    ids[pos == la + 1] = params.sep_id
    ids[pos == end] = params.sep_id
    return ids, (a_len + b_len + 3)


def _serialize(
    ids: np.ndarray,
    lengths: np.ndarray,
    seg_a: np.ndarray,
    nsp: np.ndarray,
    masked: MaskedExamples | None,
    wide: bool,
) -> tuple[bytes, np.ndarray]:
    """Records in the layout of the module docstring: (concatenated bytes, sizes)."""
    n, t = ids.shape
    flags = (FLAG_MASKED if masked is not None else 0) | (FLAG_WIDE if wide else 0)
    npred = (
        masked.masked_lm_weights.sum(axis=1).astype(np.int64)
        if masked is not None
        else np.zeros(n, dtype=np.int64)
    )
    header = np.zeros((n, 6), dtype=np.uint16)
    header[:, 0] = MAGIC[0] | (MAGIC[1] << 8)
    header[:, 1] = VERSION | (flags << 8)
    header[:, 2] = lengths
    header[:, 3] = seg_a
    header[:, 4] = npred
    header[:, 5] = nsp
    id_dtype = np.int32 if wide else np.uint16
    w = 2 if wide else 1  # uint16 words per id
    tok = ids if masked is None else masked.input_ids
    cols = [header, _as_words(tok, id_dtype)]
    valid = [np.ones((n, 6), bool), np.repeat(np.arange(t)[None, :] < lengths[:, None], w, axis=1)]
    if masked is not None:
        p = masked.masked_lm_positions.shape[1]
        pvalid = np.arange(p)[None, :] < npred[:, None]
        cols += [
            _as_words(masked.masked_lm_positions, np.uint16),
            _as_words(masked.masked_lm_ids, id_dtype),
        ]
        valid += [pvalid, np.repeat(pvalid, w, axis=1)]
    matrix = np.concatenate(cols, axis=1)
    mask = np.concatenate(valid, axis=1)
    blob = matrix[mask].astype("<u2").tobytes()
    sizes = mask.sum(axis=1) * 2
    return blob, sizes


def _as_words(a: np.ndarray, dtype: type) -> np.ndarray:
    """Little-endian uint16 words of `a` cast to `dtype` ([N, K] -> [N, K * bytes / 2])."""
    a = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return a.view("<u2")


@dataclasses.dataclass
class PassResult:
    """Serialized records of some passes over one window, plus statistics."""

    blob: bytes
    sizes: np.ndarray
    num_random_next: int = 0
    num_predictions: int = 0


def _pass_generators(
    seed: int, window: int, dupe: int
) -> tuple[random.Random, np.random.Generator]:
    py_ss, np_ss = np.random.SeedSequence([seed, window, dupe]).spawn(2)
    state = py_ss.generate_state(4, dtype=np.uint64)
    rnd = random.Random(int.from_bytes(state.tobytes(), "little"))
    return rnd, np.random.Generator(np.random.PCG64(np_ss))


def create_pass_records(
    window_index: int, passes: Sequence[int], docs: TokenizedDocs, params: ExampleParams
) -> PassResult:
    """Serialized examples of the given `dupe_factor` passes over one window.

    Each pass draws from its own generators, seeded from (random_seed, window_index,
    pass), and its examples are shuffled; so the result does not depend on how passes
    are grouped into tasks.
    """
    if docs.num_docs < 2:
        raise ValueError(
            f"next sentence prediction needs at least two documents with text; got {docs.num_docs}"
        )
    bounds = docs.doc_bounds()
    blobs: list[bytes] = []
    sizes: list[np.ndarray] = []
    result = PassResult(b"", np.zeros(0, np.int64))
    for dupe in passes:
        rnd, np_rng = _pass_generators(params.random_seed, window_index, dupe)
        pairs = _pairs_for_pass(bounds, params, rnd)
        perm = np_rng.permutation(pairs[0].size)
        a_start, a_len, b_start, b_len, nsp = (x[perm] for x in pairs)
        result.num_random_next += int(nsp.sum())
        for lo in range(0, a_start.size, BLOCK_EXAMPLES):
            sl = slice(lo, lo + BLOCK_EXAMPLES)
            ids, lengths = _gather_pairs(
                docs.tokens, a_start[sl], a_len[sl], b_start[sl], b_len[sl], params
            )
            masked = None
            if not params.dynamic_masking:
                masked = mask_batch(ids, lengths, params.masking, rng=np_rng)
                result.num_predictions += int(masked.masked_lm_weights.sum())
            blob, size = _serialize(ids, lengths, a_len[sl] + 2, nsp[sl], masked, params.wide)
            blobs.append(blob)
            sizes.append(size)
    result.blob = b"".join(blobs)
    result.sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return result


def create_examples(
    documents: Sequence[Sequence[Sequence[int]]],
    params: ExampleParams,
    *,
    window_index: int = 0,
) -> dict[str, np.ndarray]:
    """All examples of one window of tokenized documents, decoded into a feature batch.

    `documents[d][s]` is the token-id list of sentence s of document d. This runs the
    code `create_pretraining_data` runs on a window (all `dupe_factor` passes, in order)
    and returns the 7 features as arrays [N, T] / [N, P] / [N].
    """
    docs = TokenizedDocs.from_token_lists(documents, params)
    result = create_pass_records(window_index, range(params.dupe_factor), docs, params)
    return decode_records(
        split_records(result.blob, result.sizes),
        max_seq_length=params.max_seq_length,
        max_predictions_per_seq=params.masking.max_predictions_per_seq,
        pad_id=params.pad_id,
    )


# ---------------------------------------------------------------------------------------
# Records.


def split_records(blob: bytes, sizes: np.ndarray) -> list[bytes]:
    """Cuts a concatenation of records at the given sizes."""
    ends = np.cumsum(sizes).tolist()
    starts = [0, *ends[:-1]]
    return [blob[s:e] for s, e in zip(starts, ends, strict=True)]


def decode_record(
    record: bytes, *, max_seq_length: int, max_predictions_per_seq: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One record (layout in the module docstring) -> the 7 features, padded.

    Unmasked (dynamic-masking) records give empty predictions (all weights 0).
    """
    magic, version, flags, length, seg_a, npred, nsp = HEADER.unpack_from(record)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a {RECORD_ENCODING} record (magic {magic!r}, version {version})")
    if length > max_seq_length or npred > max_predictions_per_seq:
        raise ValueError(
            f"record of length {length} with {npred} predictions exceeds max_seq_length="
            f"{max_seq_length} / max_predictions_per_seq={max_predictions_per_seq}"
        )
    id_dtype = "<i4" if flags & FLAG_WIDE else "<u2"
    w = 4 if flags & FLAG_WIDE else 2
    off = HEADER.size
    ids = np.full(max_seq_length, pad_id, dtype=np.int32)
    ids[:length] = np.frombuffer(record, id_dtype, length, off)
    off += w * length
    positions = np.zeros(max_predictions_per_seq, dtype=np.int32)
    labels = np.zeros(max_predictions_per_seq, dtype=np.int32)
    weights = np.zeros(max_predictions_per_seq, dtype=np.float32)
    if npred:
        positions[:npred] = np.frombuffer(record, "<u2", npred, off)
        off += 2 * npred
        labels[:npred] = np.frombuffer(record, id_dtype, npred, off)
        weights[:npred] = 1.0
    input_mask = np.zeros(max_seq_length, dtype=np.int32)
    input_mask[:length] = 1
    segment_ids = np.zeros(max_seq_length, dtype=np.int32)
    segment_ids[seg_a:length] = 1
    return {
        F.INPUT_IDS: ids,
        F.INPUT_MASK: input_mask,
        F.SEGMENT_IDS: segment_ids,
        F.MASKED_LM_POSITIONS: positions,
        F.MASKED_LM_IDS: labels,
        F.MASKED_LM_WEIGHTS: weights,
        F.NEXT_SENTENCE_LABELS: np.asarray(nsp, dtype=np.int32),
    }


def decode_records(
    records: Sequence[bytes], *, max_seq_length: int, max_predictions_per_seq: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Decodes and stacks records into a batch of the 7 features."""
    decoded = [
        decode_record(
            r,
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            pad_id=pad_id,
        )
        for r in records
    ]
    if not decoded:
        t, p = max_seq_length, max_predictions_per_seq
        return {
            F.INPUT_IDS: np.zeros((0, t), np.int32),
            F.INPUT_MASK: np.zeros((0, t), np.int32),
            F.SEGMENT_IDS: np.zeros((0, t), np.int32),
            F.MASKED_LM_POSITIONS: np.zeros((0, p), np.int32),
            F.MASKED_LM_IDS: np.zeros((0, p), np.int32),
            F.MASKED_LM_WEIGHTS: np.zeros((0, p), np.float32),
            F.NEXT_SENTENCE_LABELS: np.zeros((0,), np.int32),
        }
    return {k: np.stack([d[k] for d in decoded]) for k in F.PRETRAINING_FEATURES}


def read_examples(data_dir: str | os.PathLike) -> Iterator[bytes]:
    """All records of an ArrayRecord dataset directory, in shard order (for tools/tests)."""
    from array_record.python.array_record_module import ArrayRecordReader

    info = load_dataset_info(data_dir)
    if info["format"] != "arrayrecord":
        raise ValueError(f"{data_dir}: format {info['format']!r}; read_examples reads arrayrecord")
    for shard in info["shards"]:
        if not shard["num_examples"]:
            continue
        reader = ArrayRecordReader(os.path.join(str(data_dir), shard["file"]))
        try:
            yield from reader.read_all()
        finally:
            reader.close()


def load_dataset_info(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The dataset_info.json of a finished dataset; refuses incomplete directories, and a
    bucket URI (ArrayRecord shards are read with random access from a local or mounted path)."""
    storage.require_local(data_dir, "a prepared dataset (ArrayRecord shards, read by grain)")
    path = os.path.join(str(data_dir), DATASET_INFO)
    if not os.path.isdir(str(data_dir)):
        raise FileNotFoundError(f"{data_dir}: no such dataset directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{data_dir}: no {DATASET_INFO}; not a finished pre-training dataset "
            "(was create_pretraining_data interrupted?)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid dataset_info.json ({e})") from None
    required = ("format", "shards", "num_examples", "vocab_size", "max_seq_length")
    missing = [k for k in required if not isinstance(info, dict) or k not in info]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    for shard in info["shards"]:
        shard_path = os.path.join(str(data_dir), shard["file"])
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{path} lists {shard['file']}, which is missing")
        if info["format"] == "arrayrecord" and shard["num_examples"]:
            _check_shard(shard_path, int(shard["num_examples"]))
    return info


def _check_shard(path: str, expected: int) -> None:
    """An ArrayRecord shard that holds the number of records dataset_info.json lists (a
    truncated or damaged file would otherwise fail, or read wrong, in the middle of training)."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
        try:
            found = reader.num_records()
        finally:
            reader.close()
    except Exception as e:  # the reader reports a damaged footer in several ways
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: damaged ArrayRecord shard ({first})") from None
    if found != expected:
        raise ValueError(
            f"{path}: holds {found} records but dataset_info.json lists {expected}; "
            "the shard is damaged or from another dataset"
        )


# ---------------------------------------------------------------------------------------
# Writing shards.


class _ArrayRecordShard:
    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._writer = ArrayRecordWriter(path, ARRAYRECORD_WRITER_OPTIONS)

    def write(self, record: bytes) -> None:
        self._writer.write(record)

    def close(self) -> None:
        self._writer.close()


class _TFRecordShard:
    def __init__(self, path: str, params: ExampleParams):
        tf = storage.require_extra("tensorflow", TFRECORD_NEEDS)
        self._tf = tf
        self._writer = tf.io.TFRecordWriter(path)
        self._params = params

    def write(self, record: bytes) -> None:
        tf = self._tf
        ex = decode_record(
            record,
            max_seq_length=self._params.max_seq_length,
            max_predictions_per_seq=self._params.masking.max_predictions_per_seq,
            pad_id=self._params.pad_id,
        )

        def ints(v: np.ndarray) -> Any:
            return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(v).tolist()))

        feats = {k: ints(ex[k]) for k in F.PRETRAINING_FEATURES if k != F.MASKED_LM_WEIGHTS}
        feats[F.MASKED_LM_WEIGHTS] = tf.train.Feature(
            float_list=tf.train.FloatList(value=ex[F.MASKED_LM_WEIGHTS].tolist())
        )
        example = tf.train.Example(features=tf.train.Features(feature=feats))
        # Sorted feature keys: the default order of a protobuf map follows a per-process
        # hash seed, so the bytes would differ from run to run.
        self._writer.write(example.SerializeToString(deterministic=True))

    def close(self) -> None:
        self._writer.close()


def shard_file_name(index: int, count: int, output_format: OutputFormat) -> str:
    ext = "array_record" if output_format == "arrayrecord" else "tfrecord"
    return f"examples-{index:05d}-of-{count:05d}.{ext}"


# ---------------------------------------------------------------------------------------
# Windows and workers.


def _chunk_documents(documents: Iterable[list[str]], chunk_chars: int) -> Iterator[list[list[str]]]:
    """Groups documents into tokenization tasks of about `chunk_chars` characters."""
    chunk: list[list[str]] = []
    chars = 0
    for doc in documents:
        chunk.append(doc)
        chars += sum(map(len, doc))
        if chars >= chunk_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


class _WindowAssembler:
    """Cuts the stream of tokenized documents into windows of at least two documents.

    A window closes after the document that brings it to `window_documents` documents or
    to `max_tokens` tokens, but only once it holds two documents; so a closed window
    always has two or more, however large its documents. Only the documents after the
    last close can be fewer: `finish` puts them into the previous window when they are
    fewer than two, or fewer than half of both limits. One window with fewer than two
    documents is left only when the whole stream has fewer than two (the caller rejects
    that input). The cut points depend only on the document sequence, not on how it
    arrives in chunks.
    """

    def __init__(self, window_documents: int, max_tokens: int):
        if window_documents < 2:
            raise ValueError(f"window_documents must be >= 2, got {window_documents}")
        if max_tokens < 1:
            raise ValueError(f"window_max_tokens must be >= 1, got {max_tokens}")
        self.window_documents = window_documents
        self.max_tokens = max_tokens
        self.parts: list[TokenizedDocs] = []
        self.docs = 0
        self.tokens = 0
        self.pending: TokenizedDocs | None = None  # the last closed window, held back

    def add(self, chunk: TokenizedDocs) -> list[TokenizedDocs]:
        out = []
        counts = chunk.doc_token_counts().tolist()
        start = 0
        for i, n_tok in enumerate(counts):
            self.docs += 1
            self.tokens += n_tok
            full = self.docs >= self.window_documents or self.tokens >= self.max_tokens
            if full and self.docs >= 2:
                self.parts.append(chunk.slice_docs(start, i + 1))
                start = i + 1
                out.extend(self._close())
        if start < len(counts):
            self.parts.append(chunk.slice_docs(start, len(counts)))
        return out

    def _close(self) -> list[TokenizedDocs]:
        window = TokenizedDocs.concat(self.parts)
        self.parts, self.docs, self.tokens = [], 0, 0
        previous, self.pending = self.pending, window
        return [previous] if previous is not None else []

    def finish(self) -> list[TokenizedDocs]:
        rest = TokenizedDocs.concat(self.parts) if self.parts else None
        self.parts, self.docs, self.tokens = [], 0, 0
        previous, self.pending = self.pending, None
        if rest is None:
            return [previous] if previous is not None else []
        if previous is None:
            return [rest]
        small = (
            rest.num_docs < self.window_documents // 2 and rest.num_tokens < self.max_tokens // 2
        )
        if rest.num_docs < 2 or small:
            return [TokenizedDocs.concat([previous, rest])]
        return [previous, rest]


class _SpawnWithoutMainProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not re-run the parent's `__main__` script.

    Spawned children normally re-execute the main script (as `__mp_main__`); a script
    that calls `create_pretraining_data` without an `if __name__ == "__main__":` guard
    then recurses and the pool breaks or hangs. The workers need nothing from
    `__main__` (tasks live in this module, tokenizers pickle by value), so the main
    module is hidden while a child's preparation data is collected.
    """

    @staticmethod
    def _Popen(process_obj: Any) -> Any:  # noqa: N802 (multiprocessing's name)
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            return multiprocessing.context.SpawnProcess._Popen(process_obj)
        finally:
            sys.modules["__main__"] = main


class _SpawnWithoutMain(multiprocessing.context.SpawnContext):
    Process = _SpawnWithoutMainProcess


_WORKER: dict[str, Any] = {}


def _worker_init(tokenizer: Any, params: ExampleParams) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core instead
    _WORKER["tokenizer"] = tokenizer
    _WORKER["params"] = params
    _WORKER["cache"] = make_word_cache(tokenizer)


def _run_task(
    kind: str, args: tuple, tokenizer: Any, params: ExampleParams, cache: WordPieceCache | None
) -> Any:
    if kind == "tokenize":
        return tokenize_documents(args[0], tokenizer, params, cache)
    return create_pass_records(*args, params)


def _worker_task(kind: str, args: tuple) -> Any:
    return _run_task(kind, args, _WORKER["tokenizer"], _WORKER["params"], _WORKER["cache"])


class _Lazy:
    """A serial stand-in for a Future: runs the task when its result is needed."""

    def __init__(self, fn: Any, *args: Any):
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)


@dataclasses.dataclass
class _Stats:
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    windows: int = 0


def _generate(
    documents: Iterable[list[str]],
    tokenizer: Any,
    params: ExampleParams,
    *,
    num_workers: int,
    window_documents: int,
    window_max_tokens: int,
    stats: _Stats,
    source: str,
) -> Iterator[PassResult]:
    """Pass results in (window, pass) order; tasks run on `num_workers` processes.

    Two kinds of tasks share one pool: tokenizing chunks of documents, and building the
    examples of a group of passes over a window. At most ``2 * num_workers`` of each
    kind are in flight, so memory is bounded whatever the corpus size. Results are
    taken in submission order, never in completion order. `source` names the input in
    the error for a stream of fewer than two documents.
    """
    workers = max(1, num_workers)
    limit = 2 * workers
    # The passes over a window are split into one task per worker (each task receives
    # the window's tokens once); all passes in one task when serial.
    cuts = np.linspace(0, params.dupe_factor, min(params.dupe_factor, workers) + 1).astype(int)
    groups = [range(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    pool = None
    if num_workers > 1:
        pool = concurrent.futures.ProcessPoolExecutor(
            num_workers,
            mp_context=_SpawnWithoutMain(),
            initializer=_worker_init,
            initargs=(tokenizer, params),
        )

    cache = make_word_cache(tokenizer) if pool is None else None

    def submit(kind: str, args: tuple) -> Any:
        if pool is None:
            return _Lazy(_run_task, kind, args, tokenizer, params, cache)
        return pool.submit(_worker_task, kind, args)

    assembler = _WindowAssembler(window_documents, window_max_tokens)
    tok_q: collections.deque = collections.deque()
    pair_q: collections.deque = collections.deque()

    def dispatch(windows: list[TokenizedDocs]) -> None:
        for window in windows:
            for group in groups:
                pair_q.append(submit("pairs", (stats.windows, group, window)))
            stats.windows += 1

    def take_tokenized() -> None:
        chunk = tok_q.popleft().result()
        stats.documents += chunk.num_docs
        stats.sentences += chunk.num_input_sentences
        stats.tokens += chunk.num_tokens
        dispatch(assembler.add(chunk))

    try:
        for chunk in _chunk_documents(documents, TOKENIZE_CHUNK_CHARS):
            tok_q.append(submit("tokenize", (chunk,)))
            while len(tok_q) > limit:
                take_tokenized()
            while len(pair_q) > limit:
                yield pair_q.popleft().result()
        while tok_q:
            take_tokenized()
            while len(pair_q) > limit:
                yield pair_q.popleft().result()
        if stats.documents < 2:
            raise ValueError(
                f"{source}: the input holds {stats.documents} document"
                f"{'' if stats.documents == 1 else 's'} with text; next sentence prediction "
                "needs at least two (documents are separated by a blank line)"
            )
        dispatch(assembler.finish())
        while pair_q:
            yield pair_q.popleft().result()
    except concurrent.futures.process.BrokenProcessPool as e:
        raise RuntimeError(
            "a pre-training data worker process died (out of memory? killed?); "
            "num_workers=1 runs everything in this process"
        ) from e
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------
# The entry point.


def _describe_files(files: Sequence[str]) -> str:
    """The input files for an error message: all of up to three, else the first."""
    if len(files) <= 3:
        return ", ".join(files)
    return f"{files[0]} and {len(files) - 1} more input files"


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"{output_dir}: exists and is not a directory")
        if any(output_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{output_dir}: output directory exists and is not empty; "
                "pass overwrite=True to replace it"
            )


def _publish(tmp: Path, output_dir: Path) -> None:
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        os.rename(output_dir, old)
        os.rename(tmp, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, output_dir)


def create_pretraining_data(
    input_files: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Any,
    output_dir: str | os.PathLike,
    *,
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    dupe_factor: int = 10,
    short_seq_prob: float = 0.1,
    random_seed: int = 12345,
    do_whole_word_mask: bool = False,
    dynamic_masking: bool = False,
    num_output_shards: int = 8,
    num_workers: int | None = None,
    output_format: OutputFormat = "arrayrecord",
    overwrite: bool = False,
    window_documents: int = DEFAULT_WINDOW_DOCUMENTS,
    window_max_tokens: int = WINDOW_MAX_TOKENS,
    input_errors: Literal["strict", "replace", "ignore"] = "strict",
    max_line_chars: int = corpus.DEFAULT_MAX_LINE_CHARS,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes BERT pre-training examples for text files in the BERT text format.

    Args:
      input_files: paths / glob patterns (one sentence per line, blank line between
        documents); see `data_pipelines.corpus.iter_documents`. They are read in the
        order of their absolute paths; a file named twice is read once.
      tokenizer: a `data_pipelines.tokenizers.Tokenizer`, or a path for `load_tokenizer`.
      output_dir: created (atomically) with the shards, the tokenizer's files and
        dataset_info.json.
      max_seq_length .. do_whole_word_mask: as google-research/bert (module docstring).
      dynamic_masking: store unmasked pairs; the input pipeline masks per epoch.
      num_output_shards: number of output files (examples dealt round-robin).
      num_workers: worker processes (default: `os.cpu_count()`, but at most one per 8 MB
        of input; <= 1: everything in this process). The output does not depend on it.
      output_format: "arrayrecord" (training format) or "tfrecord" (interop, needs TF).
      overwrite: replace a non-empty `output_dir`.
      window_documents, window_max_tokens: a window (the documents random-next
        segments are drawn from) closes at this many documents or tokens, once it holds
        two documents (module docstring).
      input_errors: invalid UTF-8 in the input: "strict" raises `corpus.CorpusError`
        naming file:line, "replace" / "ignore" replace / drop the bad bytes with a
        warning (`corpus.iter_documents(errors=...)`).
      max_line_chars: longer lines are cut (see `corpus.iter_documents`).
      progress: show a tqdm progress bar (bytes of input read).
    Returns:
      The dataset info (also written to output_dir/dataset_info.json).
    """
    if max_seq_length < 5 or max_seq_length > 65535:
        raise ValueError(f"max_seq_length must be in [5, 65535], got {max_seq_length}")
    if not 1 <= max_predictions_per_seq <= 65535:
        raise ValueError(
            f"max_predictions_per_seq must be in [1, 65535], got {max_predictions_per_seq}"
        )
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor must be >= 1, got {dupe_factor}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if num_output_shards < 1:
        raise ValueError(f"num_output_shards must be >= 1, got {num_output_shards}")
    if window_documents < 2:
        raise ValueError(f"window_documents must be >= 2, got {window_documents}")
    if window_max_tokens < 1:
        raise ValueError(f"window_max_tokens must be >= 1, got {window_max_tokens}")
    if input_errors not in ("strict", "replace", "ignore"):
        raise ValueError(
            f"input_errors must be 'strict', 'replace' or 'ignore', got {input_errors!r}"
        )
    if output_format not in ("arrayrecord", "tfrecord"):
        raise ValueError(
            f"output_format must be 'arrayrecord' or 'tfrecord', got {output_format!r}"
        )
    if output_format == "tfrecord" and dynamic_masking:
        raise ValueError("dynamic_masking needs output_format='arrayrecord'")
    if output_format == "tfrecord":
        storage.require_extra("tensorflow", TFRECORD_NEEDS)  # before any work
    if not 0 <= random_seed < 2**63:
        raise ValueError(f"random_seed must be a non-negative 63-bit integer, got {random_seed}")

    # The order of the files (and so of the documents) is that of their absolute paths,
    # whatever the spelling of the patterns.
    by_path = {storage.abspath(f): f for f in corpus.expand_input_files(input_files)}
    files = [by_path[k] for k in sorted(by_path)]
    if isinstance(tokenizer, (str, os.PathLike)):
        from data_pipelines.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(os.fspath(tokenizer))
    storage.require_local(output_dir, "the prepared dataset (ArrayRecord shards)")
    output_dir = Path(output_dir).absolute()
    _prepare_output_dir(output_dir, overwrite)
    inside = [
        f
        for f in files
        if not storage.is_remote(f)
        and Path(os.path.realpath(f)).is_relative_to(output_dir.resolve())
    ]
    if inside:  # replacing the output directory would delete them
        raise FileExistsError(
            f"{output_dir}: the output directory holds the input file {inside[0]}; "
            "choose another output"
        )

    params = ExampleParams.from_tokenizer(
        tokenizer,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob,
        dupe_factor=dupe_factor,
        short_seq_prob=short_seq_prob,
        random_seed=random_seed,
        do_whole_word_mask=do_whole_word_mask,
        dynamic_masking=dynamic_masking,
    )
    total_bytes = sum(storage.path(f).stat().length for f in files)
    if num_workers is None:
        # Starting a worker costs ~0.5 CPU-second (imports, tokenizer, word cache): small
        # inputs are faster in this process.
        num_workers = min(os.cpu_count() or 1, max(1, total_bytes // BYTES_PER_WORKER))

    tmp = Path(storage.temp_dir_beside(output_dir))  # the mode os.makedirs would give it
    bar = None
    start = time.perf_counter()
    try:
        names = [
            shard_file_name(i, num_output_shards, output_format) for i in range(num_output_shards)
        ]
        if output_format == "arrayrecord":
            writers: list[Any] = [_ArrayRecordShard(str(tmp / n)) for n in names]
        else:
            writers = [_TFRecordShard(str(tmp / n), params) for n in names]
        counts = [0] * num_output_shards
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pretraining data")
        on_bytes = bar.update if bar is not None else None
        # File by file in this order (`iter_documents` would expand and sort the names
        # again, by their spelling).
        documents = itertools.chain.from_iterable(
            corpus.iter_file_documents(
                f, errors=input_errors, max_line_chars=max_line_chars, on_bytes=on_bytes
            )
            for f in files
        )
        stats = _Stats()
        num_random_next = num_predictions = 0
        next_shard = 0
        results = _generate(
            documents,
            tokenizer,
            params,
            num_workers=num_workers,
            window_documents=window_documents,
            window_max_tokens=window_max_tokens,
            stats=stats,
            source=_describe_files(files),
        )
        try:
            for result in results:
                for record in split_records(result.blob, result.sizes):
                    writers[next_shard].write(record)
                    counts[next_shard] += 1
                    next_shard = (next_shard + 1) % num_output_shards
                num_random_next += result.num_random_next
                num_predictions += result.num_predictions
                if bar is not None:
                    bar.set_postfix(examples=sum(counts), refresh=False)
        finally:
            results.close()  # stops the worker processes now, also on errors
        for w in writers:
            w.close()
        num_examples = sum(counts)
        # A copy of the tokenizer's files: the dataset carries the tokenizer it was made
        # with, wherever the source vocabulary goes.
        tokenizer.save(str(tmp))
        info = {
            "format": output_format,
            "record_encoding": RECORD_ENCODING
            if output_format == "arrayrecord"
            else "tf.train.Example",
            "num_examples": num_examples,
            "shards": [{"file": n, "num_examples": c} for n, c in zip(names, counts, strict=True)],
            "max_seq_length": max_seq_length,
            "max_predictions_per_seq": max_predictions_per_seq,
            "masked_lm_prob": masked_lm_prob,
            "do_whole_word_mask": do_whole_word_mask,
            "dynamic_masking": dynamic_masking,
            "dupe_factor": dupe_factor,
            "short_seq_prob": short_seq_prob,
            "random_seed": random_seed,
            "window_documents": window_documents,
            "window_max_tokens": window_max_tokens,
            "vocab_size": int(tokenizer.vocab_size),
            "pad_id": params.pad_id,
            "cls_id": params.cls_id,
            "sep_id": params.sep_id,
            "mask_id": int(tokenizer.mask_id),
            "unk_id": params.unk_id,
            "tokenizer_kind": getattr(tokenizer, "kind", None),
            "do_lower_case": getattr(tokenizer, "do_lower_case", None),
            "masking": params.masking.to_json(),
            "input_files": [storage.abspath(f) for f in files],
            "input_bytes": total_bytes,
            "num_documents": stats.documents,
            "num_sentences": stats.sentences,
            "num_tokens": stats.tokens,
            "num_random_next": num_random_next,
            "num_predictions": num_predictions,
            "num_windows": stats.windows,
        }
        with open(tmp / DATASET_INFO, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        _publish(tmp, output_dir)
        # Not in the file, which must not depend on timing or scheduling.
        info["seconds"] = round(time.perf_counter() - start, 3)
        info["num_workers"] = num_workers
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info
