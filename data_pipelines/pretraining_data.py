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
the reference. Masking (`data_pipelines.masking`, where its rules and its two deliberate
deviations are described) picks ``min(max_predictions_per_seq, max(1, round(len * p)))``
positions, never [CLS], [SEP] or [PAD]; each is replaced by [MASK] with probability 0.8,
kept with 0.1 and replaced by a random token with 0.1; whole-word masking masks a piece
and its "##" continuations together. Input ids are padded with [PAD].

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
* **Masking**: random replacement tokens are never special tokens, and whole words
  never cross a special token (`data_pipelines.masking`).
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
`encode_batch` calls; exact, see its docstring in `data_pipelines.tokenizers`) and
through `encode_batch` otherwise. Pair construction is a Python loop per *chunk* (not
per token or sentence: chunk ends are found with `bisect` on cumulative sentence
offsets), producing (start, length) ranges into one flat token array; examples are then
gathered, masked and serialized with vectorized numpy in blocks of a few thousand. Two
kinds of tasks run on `num_workers` processes (`data_pipelines.example_writer.TaskPool`):
tokenizing ~256 KB chunks of documents, and building the examples of a group of passes
over a window (one group per worker). Workers are spawned (safe from a process that
already imported JAX or TensorFlow; they do not re-run the caller's ``__main__``), at
most ``2 * num_workers`` tasks of each kind are in flight, and the parent process reads
text and writes the shards. With ``num_workers <= 1`` everything runs in the calling
process.

Output
------
A dataset directory (`data_pipelines.records`: the record layout, the shards,
``dataset_info.json`` and the readers): `num_output_shards` shards with the examples dealt
round-robin, the tokenizer the examples were made with (so `load_tokenizer(output_dir)`
gives the same ids and ``bertjax train --config.data.train_dir=output_dir`` finds it), and
``dataset_info.json``, written last. The directory is written under a temporary sibling
name and renamed to `output_dir` when complete (`storage.publish_dir`); an existing
non-empty `output_dir` is refused unless ``overwrite=True``. With ``dynamic_masking=True``
the records are stored unmasked and the input pipeline masks them per epoch;
``output_format="tfrecord"`` writes google-research/bert's TFRecord features (needs
TensorFlow; always statically masked).
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures.process
import dataclasses
import itertools
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from bertjax import storage
from data_pipelines import corpus, records
from data_pipelines import example_writer as writer
from data_pipelines.masking import MaskingSpec, mask_batch
from data_pipelines.tokenizers import WordPieceCache, load_tokenizer, make_word_cache

DEFAULT_WINDOW_DOCUMENTS = 10_000
WINDOW_MAX_TOKENS = 4_000_000  # default tokens at which a window closes (at two documents)
TOKENIZE_CHUNK_CHARS = 256_000  # characters of text per tokenization task
BLOCK_EXAMPLES = 4096  # examples gathered / masked / serialized at a time
BYTES_PER_WORKER = 8_000_000  # default num_workers: one per 8 MB of input, up to the cores


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
            blob, size = records.encode_records(
                ids, lengths, a_len[sl] + 2, nsp[sl], masked, params.wide
            )
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
    return records.decode_records(
        records.split_records(result.blob, result.sizes),
        max_seq_length=params.max_seq_length,
        max_predictions_per_seq=params.masking.max_predictions_per_seq,
        pad_id=params.pad_id,
    )


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


class _Worker(NamedTuple):
    """What every task of a worker process uses, built once per process."""

    tokenizer: Any
    params: ExampleParams
    cache: WordPieceCache | None


def _make_worker(tokenizer: Any, params: ExampleParams) -> _Worker:
    return _Worker(tokenizer, params, make_word_cache(tokenizer))


def _tokenize_task(worker: _Worker, documents: list[list[str]]) -> TokenizedDocs:
    return tokenize_documents(documents, worker.tokenizer, worker.params, worker.cache)


def _pairs_task(
    worker: _Worker, window_index: int, passes: Sequence[int], docs: TokenizedDocs
) -> PassResult:
    return create_pass_records(window_index, passes, docs, worker.params)


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
    # With workers, one task per pass over a window, so that this process writes the
    # records of a pass while the workers build the next ones (each task receives the
    # window's tokens: a few ms per pass, against ~0.1 s per pass per million tokens);
    # all passes in one task when serial.
    if workers > 1:
        groups = [range(d, d + 1) for d in range(params.dupe_factor)]
    else:
        groups = [range(params.dupe_factor)]
    pool = writer.TaskPool(num_workers, _make_worker, (tokenizer, params))

    assembler = _WindowAssembler(window_documents, window_max_tokens)
    tok_q: collections.deque = collections.deque()
    pair_q: collections.deque = collections.deque()

    def dispatch(windows: list[TokenizedDocs]) -> None:
        for window in windows:
            for group in groups:
                pair_q.append(pool.submit(_pairs_task, stats.windows, group, window))
            stats.windows += 1

    def take_tokenized() -> None:
        chunk = tok_q.popleft().result()
        stats.documents += chunk.num_docs
        stats.sentences += chunk.num_input_sentences
        stats.tokens += chunk.num_tokens
        dispatch(assembler.add(chunk))

    try:
        for chunk in _chunk_documents(documents, TOKENIZE_CHUNK_CHARS):
            tok_q.append(pool.submit(_tokenize_task, chunk))
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
        pool.close()


# ---------------------------------------------------------------------------------------
# The entry point.


def _describe_files(files: Sequence[str]) -> str:
    """The input files for an error message: all of up to three, else the first."""
    if len(files) <= 3:
        return ", ".join(files)
    return f"{files[0]} and {len(files) - 1} more input files"


def _not_empty(output_dir: str | os.PathLike) -> FileExistsError:
    return FileExistsError(
        f"{output_dir}: output directory exists and is not empty; pass --overwrite (overwrite=True) to replace it"
    )


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuses a file, and a non-empty directory unless `overwrite`, before any work."""
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"{output_dir}: exists and is not a directory")
        if any(output_dir.iterdir()) and not overwrite:
            raise _not_empty(output_dir)


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
    output_format: records.OutputFormat = "arrayrecord",
    overwrite: bool = False,
    window_documents: int = DEFAULT_WINDOW_DOCUMENTS,
    window_max_tokens: int = WINDOW_MAX_TOKENS,
    input_errors: Literal["strict", "replace", "ignore"] = "strict",
    max_line_chars: int = corpus.DEFAULT_MAX_LINE_CHARS,
    progress: bool = True,
) -> records.DatasetInfo:
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
      The `records.DatasetInfo` written to output_dir/dataset_info.json.
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
        raise ValueError(f"--num_shards (num_output_shards) must be >= 1, got {num_output_shards}")
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
        storage.require_extra("tensorflow", writer.TFRECORD_NEEDS)  # before any work
    if not 0 <= random_seed < 2**63:
        raise ValueError(f"random_seed must be a non-negative 63-bit integer, got {random_seed}")

    # The order of the files (and so of the documents) is that of their absolute paths,
    # whatever the spelling of the patterns.
    by_path = {storage.abspath(f): f for f in corpus.expand_input_files(input_files)}
    files = [by_path[k] for k in sorted(by_path)]
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(os.fspath(tokenizer))
    storage.require_local(output_dir, "the prepared dataset (ArrayRecord shards)")
    output_dir = Path(output_dir).absolute()
    _check_output_dir(output_dir, overwrite)
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

    made: list[records.DatasetInfo] = []

    def write(tmp: str) -> None:
        bar = None
        try:
            shards = writer.ShardWriter(
                tmp,
                num_output_shards,
                output_format,
                max_seq_length=max_seq_length,
                max_predictions_per_seq=max_predictions_per_seq,
                pad_id=params.pad_id,
            )
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
                    shards.write(records.split_records(result.blob, result.sizes))
                    num_random_next += result.num_random_next
                    num_predictions += result.num_predictions
                    if bar is not None:
                        bar.set_postfix(examples=shards.num_examples, refresh=False)
            finally:
                results.close()  # stops the worker processes now, also on errors
            shards.close()
            # A copy of the tokenizer's files: the dataset carries the tokenizer it was made
            # with, wherever the source vocabulary goes.
            tokenizer.save(tmp)
            info = records.DatasetInfo(
                format=output_format,
                record_encoding=records.RECORD_ENCODING
                if output_format == "arrayrecord"
                else "tf.train.Example",
                num_examples=shards.num_examples,
                shards=tuple(
                    records.Shard(n, c) for n, c in zip(shards.names, shards.counts, strict=True)
                ),
                max_seq_length=max_seq_length,
                max_predictions_per_seq=max_predictions_per_seq,
                masked_lm_prob=masked_lm_prob,
                do_whole_word_mask=do_whole_word_mask,
                dynamic_masking=dynamic_masking,
                dupe_factor=dupe_factor,
                short_seq_prob=short_seq_prob,
                random_seed=random_seed,
                window_documents=window_documents,
                window_max_tokens=window_max_tokens,
                vocab_size=int(tokenizer.vocab_size),
                pad_id=params.pad_id,
                cls_id=params.cls_id,
                sep_id=params.sep_id,
                mask_id=int(tokenizer.mask_id),
                unk_id=params.unk_id,
                tokenizer_kind=getattr(tokenizer, "kind", None),
                do_lower_case=getattr(tokenizer, "do_lower_case", None),
                masking=params.masking,
                input_files=tuple(storage.abspath(f) for f in files),
                input_bytes=total_bytes,
                num_documents=stats.documents,
                num_sentences=stats.sentences,
                num_tokens=stats.tokens,
                num_random_next=num_random_next,
                num_predictions=num_predictions,
                num_windows=stats.windows,
            )
            records.write_dataset_info(tmp, info)  # last: it marks the dataset complete
            made.append(info)
        finally:
            if bar is not None:
                bar.close()

    storage.publish_dir(output_dir, write, overwrite=overwrite, exists_error=_not_empty)
    return made[0]
