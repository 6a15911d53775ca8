"""Training a WordPiece or SentencePiece (unigram) vocabulary on text files: `train_vocab`.

The text is streamed from `data_pipelines.corpus` to the trainers (which never open the
files), and every source of variation is fixed: the WordPiece alphabet and its "##"
continuations are chosen here before the Rust trainer assigns ids, SentencePiece runs
with a fixed thread count and samples a large corpus with a fixed seed. So the same text
and arguments give the same vocab bytes in every process and on every machine. The result
is a directory that `data_pipelines.tokenizers.load_tokenizer` reads.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import sentencepiece as spm

# The Rust library; data_pipelines.tokenizers shares its name, hence the alias.
import tokenizers as hf_tokenizers
from tokenizers import normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from bertjax import storage
from data_pipelines import corpus
from data_pipelines.tokenizers import (
    CLS,
    CONFIG_FILE,
    KINDS,
    MASK,
    MAX_INPUT_CHARS_PER_WORD,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    SPM_FILE,
    UNK,
    VOCAB_FILE,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    bert_normalizer,
    load_tokenizer,
)

# SentencePiece's unigram trainer sums its E-step over threads, so its scores depend on the
# thread count: it is fixed, not `os.cpu_count()`, so every machine learns the same model.
SPM_NUM_THREADS = 16
# SentencePiece trains on at most about this many sentences: a larger corpus is sampled here,
# with this seed (SentencePiece's own sampling draws a new seed in every process).
SPM_INPUT_SENTENCE_SIZE = 10_000_000
SPM_SEED = 12345


def train_vocab(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    kind: str,
    vocab_size: int,
    out_dir: str | os.PathLike,
    do_lower_case: bool = True,
    num_unused: int = 100,
    pad_to_multiple_of: int | None = None,
    limit_alphabet: int = 1000,
    overwrite: bool = False,
    input_errors: Literal["strict", "replace", "ignore"] = "strict",
    progress: bool = True,
) -> Tokenizer:
    """Train a WordPiece or SentencePiece (unigram) vocabulary on text files (one sentence a line).

    The text is read by `data_pipelines.corpus.iter_documents` (files and glob patterns; UTF-8
    under the `input_errors` policy: "strict" raises `CorpusError` naming file:line, "replace"
    substitutes U+FFFD, "ignore" drops the bad bytes; both warn) and streamed to the trainers;
    they never open the files themselves. U+FFFD is never learned: both normalizers (BERT's and
    SentencePiece's nmt_nfkc) remove it, in training as in encoding, so a replaced byte leaves
    no trace in the vocab or the ids.

    `vocab_size` counts everything: the five special tokens, `num_unused` [unusedN] slots and the
    learned pieces; `pad_to_multiple_of` then rounds the size up with extra [unusedN] tokens.
    WordPiece order follows BERT: [PAD], [unused0..], [UNK], [CLS], [SEP], [MASK], the alphabet,
    its "##" continuations, the learned pieces, padding. A small corpus may yield fewer WordPiece
    tokens than asked; SentencePiece instead fails with a ValueError. SentencePiece reserves
    [PAD]=0, [UNK]=1, then [CLS], [SEP], [MASK] and the [unusedN] slots as control symbols (never
    produced from text); with `do_lower_case` the model case-folds its input (nmt_nfkc_cf).
    `limit_alphabet` applies to WordPiece only: the most frequent characters after normalization
    (ties: the lower code point) form the alphabet.

    Deterministic: the same text and arguments give the same bytes, whatever the process, machine
    or core count (see `_train_wordpiece` and `_train_sentencepiece`).

    A new `out_dir` is written under a temporary sibling name and renamed when complete
    (`storage.publish_dir`); into an existing directory the tokenizer's files are written one by
    one, each atomically, after the training, and its other files are kept. An `out_dir` already
    holding a tokenizer is refused unless `overwrite=True`.

    `progress` shows a tqdm bar of the text read, in bytes, over all the passes the training
    makes (WordPiece 3, SentencePiece 1, or 2 on a corpus large enough to be sampled).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    files = corpus.expand_input_files(files)
    if input_errors not in corpus.ERROR_POLICIES:
        raise ValueError(
            f"input_errors must be one of {corpus.ERROR_POLICIES}, got {input_errors!r}"
        )
    if num_unused < 0:
        raise ValueError(f"num_unused must be >= 0, got {num_unused}")
    if vocab_size <= len(SPECIAL_TOKENS) + num_unused:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for learned pieces after "
            f"{len(SPECIAL_TOKENS)} special tokens and {num_unused} unused slots"
        )
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    if limit_alphabet < 1:
        raise ValueError(f"limit_alphabet must be >= 1, got {limit_alphabet}")

    storage.require_local(out_dir, "the vocab output directory")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a directory; --out takes a directory")
    existing = _tokenizer_files(out_dir)
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a tokenizer ({', '.join(existing)}); "
            "pass --overwrite (overwrite=True) to replace it"
        )

    from tqdm.auto import tqdm

    total_bytes = sum(storage.path(f).stat().length for f in files)
    # The passes over the text: WordPiece's alphabet, continuation and training passes;
    # SentencePiece's counting pass (when it may sample, as `_train_sentencepiece`) and
    # training pass.
    passes = 3 if kind == "wordpiece" else 1 + (total_bytes >= 2 * SPM_INPUT_SENTENCE_SIZE)
    bar = tqdm(
        total=passes * total_bytes,
        unit="B",
        unit_scale=True,
        desc=f"vocab ({passes} pass{'es' if passes > 1 else ''} over the text)",
        disable=not progress,
    )

    def documents() -> Iterator[list[str]]:
        return corpus.iter_documents(files, errors=input_errors, on_bytes=bar.update)

    def train(directory: str) -> Tokenizer:
        """Trains, writing the model file into `directory`."""
        sizes = (vocab_size, num_unused, pad_to_multiple_of)
        if kind == "wordpiece":
            return _train_wordpiece(
                documents, files, directory, *sizes, do_lower_case, limit_alphabet
            )
        return _train_sentencepiece(documents, files, directory, *sizes, do_lower_case)

    try:
        if os.path.isdir(out_dir):
            _train_into(out_dir, train)
        else:  # a new directory appears whole, with the mode os.makedirs would give it
            storage.publish_dir(out_dir, lambda tmp: train(tmp).save(tmp), overwrite=False)
    finally:
        bar.close()
    return load_tokenizer(out_dir)


def _train_wordpiece(
    documents: Callable[[], Iterator[list[str]]],
    files: list[str],
    tmp: str,
    vocab_size: int,
    num_unused: int,
    pad_to_multiple_of: int | None,
    do_lower_case: bool,
    limit_alphabet: int,
) -> Tokenizer:
    """The Rust WordPiece trainer, made deterministic.

    That trainer (BPE underneath) numbers the "##c" continuation pieces as it meets them in a
    per-process hash order, breaks ties between equally frequent merges by those numbers, and
    breaks ties at the `limit_alphabet` cut arbitrarily; left alone it learns a different vocab
    in every process. So the alphabet is chosen here (`_wordpiece_alphabet`, a first pass over
    the text) and handed over whole, and the continuation pieces the words make (the vocab of a
    pass without merges) are registered up front in code-point order: every id the trainer
    assigns then follows from the text alone. That costs one more pass of the trainer's word
    count over the text.
    """
    normalizer = bert_normalizer(do_lower_case, None, True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = _wordpiece_alphabet(documents(), normalizer, pre_tokenizer, limit_alphabet)
    if not alphabet:
        names = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise corpus.CorpusError(f"{names}: the input holds no text to learn a vocab from")

    def train(size: int, specials: list[str]) -> dict[str, int]:
        tk = hf_tokenizers.Tokenizer(
            WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        )
        tk.normalizer = normalizer
        tk.pre_tokenizer = pre_tokenizer
        trainer = trainers.WordPieceTrainer(
            vocab_size=size,  # the trainer's count includes the special tokens
            special_tokens=specials,
            initial_alphabet=alphabet,
            limit_alphabet=len(alphabet),
            continuing_subword_prefix="##",
            show_progress=False,
        )
        with warnings.catch_warnings():  # the alphabet pass has reported them
            warnings.simplefilter("ignore", corpus.CorpusWarning)
            tk.train_from_iterator(documents(), trainer)  # a document is a batch of sentences
        return tk.get_vocab()

    # A pass without merges gives the set of continuation pieces the words of the text make
    # (only their numbering follows hash order); registered in code-point order, they get
    # fixed ids in the pass that learns the vocab.
    continuations = sorted(
        t for t in train(0, list(SPECIAL_TOKENS)) if t.startswith("##") and t[2:] in alphabet
    )
    vocab = train(vocab_size - num_unused, [*SPECIAL_TOKENS, *continuations])
    group = {**dict.fromkeys(alphabet, 0), **dict.fromkeys(continuations, 1)}
    rest = sorted(
        (t for t in vocab if t not in SPECIAL_TOKENS), key=lambda t: (group.get(t, 2), vocab[t])
    )
    tokens = [PAD, *(f"[unused{i}]" for i in range(num_unused)), UNK, CLS, SEP, MASK, *rest]
    extra = _round_up(len(tokens), pad_to_multiple_of) - len(tokens)
    tokens += [f"[unused{i}]" for i in range(num_unused, num_unused + extra)]

    vocab_file = os.path.join(tmp, VOCAB_FILE)
    storage.write_text(vocab_file, "".join(t + "\n" for t in tokens))
    return WordPieceTokenizer(vocab_file, do_lower_case=do_lower_case)


def _wordpiece_alphabet(
    documents: Iterable[list[str]],
    normalizer: normalizers.Normalizer,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
    limit: int,
) -> list[str]:
    """The alphabet, in code-point order.

    The alphabet is the `limit` most frequent characters of the words the trainer sees
    (normalized, pre-tokenized text), ties broken by the lower code point. Characters are
    counted in the raw text (numpy, per 1 MiB of text) and mapped through the normalizer and
    pre-tokenizer one distinct character at a time; BERT's normalization acts on each character
    alone, so the counts are those of the normalized text.
    """
    raw = np.zeros(0x110000, dtype=np.int64)
    chunk: list[str] = []
    size = 0

    def flush() -> None:
        codes = np.frombuffer("\n".join(chunk).encode("utf-32-le"), dtype=np.uint32)
        raw[:] += np.bincount(codes, minlength=raw.size)
        chunk.clear()

    for document in documents:
        chunk.extend(document)
        size += sum(map(len, document))
        if size >= 1 << 20:
            flush()
            size = 0
    if chunk:
        flush()

    counts: dict[str, int] = {}
    for code in np.flatnonzero(raw).tolist():
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(chr(code)))
        for word, _ in words:
            for char in word:
                counts[char] = counts.get(char, 0) + int(raw[code])
    ranked = sorted(counts, key=lambda c: (-counts[c], ord(c)))
    return sorted(ranked[:limit])


def _train_sentencepiece(
    documents: Callable[[], Iterator[list[str]]],
    files: list[str],
    tmp: str,
    vocab_size: int,
    num_unused: int,
    pad_to_multiple_of: int | None,
    do_lower_case: bool,
) -> Tokenizer:
    """SentencePiece's unigram trainer on the text stream, made deterministic.

    A fixed thread count (`SPM_NUM_THREADS`); a corpus of more than `SPM_INPUT_SENTENCE_SIZE`
    sentences sampled here with a fixed seed (`_SentenceStream`), SentencePiece's own sampling
    off; the model written from memory, so no temporary path is recorded in it.
    """
    total = _round_up(vocab_size, pad_to_multiple_of)
    unused = [f"[unused{i}]" for i in range(num_unused + total - vocab_size)]
    fraction = 1.0
    # A sentence takes at least two bytes, so a smaller corpus cannot exceed the limit.
    counted = sum(storage.path(f).stat().length for f in files) >= 2 * SPM_INPUT_SENTENCE_SIZE
    if counted:
        count = sum(len(document) for document in documents())  # a first pass to count them
        fraction = min(1.0, SPM_INPUT_SENTENCE_SIZE / max(count, 1))
    stream = _SentenceStream(documents(), fraction)
    model = io.BytesIO()
    try:
        with warnings.catch_warnings():
            if counted:  # the first pass has reported them
                warnings.simplefilter("ignore", corpus.CorpusWarning)
            spm.SentencePieceTrainer.Train(
                sentence_iterator=iter(stream),
                model_writer=model,
                model_type="unigram",
                vocab_size=total,
                pad_id=0,
                pad_piece=PAD,
                unk_id=1,
                unk_piece=UNK,
                bos_id=-1,
                eos_id=-1,
                control_symbols=[CLS, SEP, MASK, *unused],
                normalization_rule_name="nmt_nfkc_cf" if do_lower_case else "nmt_nfkc",
                input_sentence_size=0,  # all it is given: `stream` samples
                num_threads=SPM_NUM_THREADS,
                minloglevel=1,
            )
    except RuntimeError as e:
        if stream.error is not None:  # the reader's own error, e.g. a CorpusError naming file:line
            raise stream.error from None
        message = " ".join(str(e).split())
        raise ValueError(
            f"SentencePiece training on {_describe(files)} failed: {message}"
        ) from None
    model_file = os.path.join(tmp, SPM_FILE)
    storage.write_bytes(model_file, model.getvalue())
    return SentencePieceTokenizer(model_file, do_lower_case=do_lower_case)


class _SentenceStream:
    """The sentences of a document stream for SentencePiece, each kept with probability
    `fraction` (a seeded draw per sentence, in stream order).

    SentencePiece reports an exception of the iterator as a RuntimeError holding only its text;
    the exception itself is kept here so that the caller can raise it unchanged.
    """

    def __init__(self, documents: Iterator[list[str]], fraction: float):
        self.documents = documents
        self.fraction = fraction
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[str]:
        rng = np.random.default_rng(SPM_SEED)
        try:
            for document in self.documents:
                if self.fraction >= 1.0:
                    yield from document
                    continue
                keep = rng.random(len(document)) < self.fraction
                yield from (s for s, k in zip(document, keep, strict=True) if k)
        except Exception as e:
            self.error = e
            raise


def _describe(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{files[0]} and {len(files) - 1} more file(s)"


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _tokenizer_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(
        n for n in os.listdir(directory) if n in (VOCAB_FILE, CONFIG_FILE) or n.endswith(".model")
    )


def _train_into(out_dir: str, train: Callable[[str], Tokenizer]) -> None:
    """Trains in a temporary directory beside the existing `out_dir`, then writes the
    tokenizer's files into it, each atomically (model file first, config last), and removes
    the tokenizer files of `out_dir` the new tokenizer does not have; other files stay."""
    tmp = storage.temp_dir_beside(out_dir)
    try:
        tok = train(tmp)
        tok.save(out_dir)
        new = {CONFIG_FILE, *os.listdir(tmp)}  # what save() writes: the config, the model file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in _tokenizer_files(out_dir):
        if stale not in new:
            os.remove(os.path.join(out_dir, stale))
