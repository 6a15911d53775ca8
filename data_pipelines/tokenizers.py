"""One tokenizer interface over BERT WordPiece (vocab.txt) and SentencePiece (*.model).

Every pipeline (pre-training data, GLUE, SQuAD) codes against `Tokenizer`; two backends implement
it:

* `WordPieceTokenizer` is built on the Rust `tokenizers` library, configured as the reference BERT
  tokenizer: `BertNormalizer` (clean text, space out CJK characters, lowercase and strip accents
  for uncased vocabularies), `BertPreTokenizer` (split on whitespace and punctuation), a
  `WordPiece` model with `[UNK]` and at most 100 characters per word, and the WordPiece decoder.
  The five special tokens are registered as special added tokens, so a literal "[MASK]" in the
  text becomes the [MASK] id, as in `transformers.BertTokenizer`. Ids are identical to
  `transformers.BertTokenizer` (tested). The pure-Python `BertTokenizerLegacy` of transformers
  (the google-research/bert code path) differs in rare corners that this module does not imitate:
  it lowercases with Python's `str.lower` (Greek final sigma becomes "ς", Rust gives "σ"), applies
  NFC first (decomposed accents in cased text), and spaces out CJK Extension E (U+2B820-U+2B91F),
  which the Rust normalizer misses.
* `SentencePieceTokenizer` wraps the `sentencepiece` package. Special pieces are found as [PAD],
  [UNK], [CLS], [SEP], [MASK] (what `data_pipelines.vocab.train_vocab` writes) or under their
  common SentencePiece aliases (<pad>, <unk>, <cls>/<s>, <sep>/</s>, <mask>). With
  `do_lower_case` the text is lowercased in Python before encoding (the ALBERT convention);
  vocabularies trained by `train_vocab` also case-fold inside the model.

Whole-word masking needs to know which pieces continue a word: "##x" in WordPiece, a piece without
the leading "▁" in SentencePiece. `continuation_mask()` is a precomputed boolean table, so masking
code looks it up with one numpy gather instead of string tests per token.

Hot paths run in native code: `encode_batch` is the Rust `encode_batch_fast` (parallel, no
offsets) or SentencePiece's threaded batch encode. A corpus is tokenized about 3x faster through a
`WordPieceCache` (`make_word_cache`), which tokenizes each distinct word once, with the same ids.
Tokenizers pickle by value (vocabulary or model bytes), so they can be shipped to data-loader
worker processes.

Files: a directory holds `vocab.txt` or `spm.model` plus `tokenizer_config.json` (`kind`,
`do_lower_case`, ...). A WordPiece config also carries `tokenizer_class: BertTokenizer`, so
transformers can load a saved directory, and a Hugging Face BERT directory (vocab.txt +
tokenizer_config.json) loads here.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

# The Rust library; this module shares its name, hence the alias.
import tokenizers as hf_tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from bertjax import storage

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
VOCAB_FILE = "vocab.txt"
SPM_FILE = "spm.model"
CONFIG_FILE = "tokenizer_config.json"
MAX_INPUT_CHARS_PER_WORD = 100
KINDS = ("wordpiece", "sentencepiece")

# Names a SentencePiece model may use for each special role, in order of preference.
_SP_ALIASES = {
    "pad": (PAD, "<pad>"),
    "unk": (UNK, "<unk>"),
    "cls": (CLS, "<cls>", "<s>"),
    "sep": (SEP, "<sep>", "</s>"),
    "mask": (MASK, "<mask>"),
}


class TokenizerFileError(ValueError):
    """A tokenizer file exists but cannot be used; the message names the file (and line)."""


# ----------------------------------------------------------------------------------------------
# The interface.


class Tokenizer(abc.ABC):
    """What every pipeline relies on. Ids never include [CLS]/[SEP] unless a function says so.

    Ids are ints in [0, vocab_size); `vocab_size` is the tokenizer's own size (a model's
    embedding table may have more rows, never fewer: `bertjax.checkpoint.check_vocab_fits`).
    The special ids (`pad_id`, `unk_id`, `cls_id`, `sep_id`, `mask_id`) are those of [PAD],
    [UNK], [CLS], [SEP], [MASK]. `encode_pair` makes the model's input from this interface.
    """

    kind: str
    vocab_size: int
    do_lower_case: bool
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    _continuation: np.ndarray  # bool [V], read-only

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text`, no special tokens added."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of `tokenize(text)`."""

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`[encode(t) for t in texts]`, computed in native code."""

    @abc.abstractmethod
    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Ids of pieces; a piece outside the vocabulary maps to `unk_id`."""

    @abc.abstractmethod
    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Pieces of ids; raises IndexError for an id outside [0, vocab_size)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Best-effort text of ids (lowercased / accent-stripped text stays so)."""

    @abc.abstractmethod
    def _write_model(self, directory: str) -> str:
        """Write the vocabulary / model file into `directory`; return its file name."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The tokenizer_config.json contents that reproduce this tokenizer."""

    def tokenize_with_ids(self, text: str) -> tuple[list[str], list[int]]:
        """`(tokenize(text), encode(text))` in one pass."""
        tokens = self.tokenize(text)
        return tokens, self.convert_tokens_to_ids(tokens)

    def is_continuation(self, token_id: int) -> bool:
        """True when the piece continues the previous word (whole-word masking)."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} outside [0, {self.vocab_size})")
        return bool(self._continuation[token_id])

    def continuation_mask(self) -> np.ndarray:
        """bool [vocab_size]: `is_continuation` for every id (a read-only array)."""
        return self._continuation

    def special_ids(self) -> set[int]:
        """Ids of [PAD], [UNK], [CLS], [SEP], [MASK]."""
        return {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}

    def save(self, directory: str) -> None:
        """Write the model file and tokenizer_config.json; `load_tokenizer` rebuilds from them."""
        directory = os.fspath(directory)
        storage.makedirs(directory)
        name = self._write_model(directory)
        config = {**self.config(), "model_file": name}
        storage.write_json(storage.join(directory, CONFIG_FILE), config, sort_keys=False)

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise IndexError(f"token id {bad} outside [0, {self.vocab_size})")
        return ids

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case})"
        )


# ----------------------------------------------------------------------------------------------
# WordPiece.


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece over a vocab.txt, on the Rust `tokenizers` library (google-research/bert's
    `tokenization.FullTokenizer`: BasicTokenizer then WordpieceTokenizer; the ids of
    transformers' BertTokenizer).

    `do_lower_case=None` infers it from the vocabulary (no uppercase token -> uncased);
    `strip_accents=None` follows `do_lower_case`, as in BERT. Raises FileNotFoundError for a
    missing vocab file and TokenizerFileError (a ValueError) naming the file for a malformed
    one (`read_vocab`) or one that lacks a special token.
    """

    kind = "wordpiece"

    def __init__(
        self,
        vocab_file: str,
        *,
        do_lower_case: bool | None = None,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
    ):
        self.vocab_file = os.fspath(vocab_file)
        tokens = read_vocab(self.vocab_file)
        self._build(tokens, do_lower_case, strip_accents, tokenize_chinese_chars)

    def _build(
        self,
        tokens: list[str],
        do_lower_case: bool | None,
        strip_accents: bool | None,
        tokenize_chinese_chars: bool,
    ) -> None:
        self._itos = tokens
        self._vocab = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in self._vocab]
        if missing:
            raise TokenizerFileError(f"{self.vocab_file}: vocab lacks special token(s) {missing}")
        if do_lower_case is None:
            do_lower_case = not _has_cased_tokens(tokens)
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.vocab_size = len(tokens)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self._vocab[t] for t in SPECIAL_TOKENS
        )

        tk = hf_tokenizers.Tokenizer(
            WordPiece(self._vocab, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        )
        tk.normalizer = bert_normalizer(self.do_lower_case, strip_accents, tokenize_chinese_chars)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece(prefix="##")
        tk.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocab: ids unchanged
        self._tk = tk

        cont = np.fromiter((t.startswith("##") for t in tokens), dtype=bool, count=len(tokens))
        cont.flags.writeable = False
        self._continuation = cont

    # Pickle by value: the Rust object is rebuilt from the token list.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "vocab_file": self.vocab_file,
            "tokens": self._itos,
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.vocab_file = state["vocab_file"]
        self._build(
            state["tokens"],
            state["do_lower_case"],
            state["strip_accents"],
            state["tokenize_chinese_chars"],
        )

    @property
    def backend(self) -> Any:
        """The Rust `tokenizers.Tokenizer` (e.g. for character offsets of the pieces)."""
        return self._tk

    def tokenize(self, text: str) -> list[str]:
        return self._tk.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def tokenize_with_ids(self, text: str) -> tuple[list[str], list[int]]:
        enc = self._tk.encode(text, add_special_tokens=False)
        return enc.tokens, enc.ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = _check_texts(texts)
        return [e.ids for e in self._tk.encode_batch_fast(texts, add_special_tokens=False)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        get, unk = self._vocab.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        itos = self._itos
        return [itos[i] for i in self._check_ids(ids)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self._tk.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tokenizer_class": "BertTokenizer",  # lets transformers load a saved directory too
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
        }

    def _write_model(self, directory: str) -> str:
        storage.write_text(
            storage.join(directory, VOCAB_FILE), "".join(t + "\n" for t in self._itos)
        )
        return VOCAB_FILE


def bert_normalizer(
    lowercase: bool, strip_accents: bool | None, handle_chinese_chars: bool
) -> normalizers.Normalizer:
    """BERT's text normalization (the encoder's, and what `data_pipelines.vocab` trains on)."""
    return normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=handle_chinese_chars,
        strip_accents=strip_accents,  # None: follows lowercase
        lowercase=lowercase,
    )


def read_vocab(path: str) -> list[str]:
    """Tokens of a BERT vocab.txt (one per line, id = line - 1), validated.

    Raises FileNotFoundError for a missing file, and TokenizerFileError (a ValueError) naming the
    file and line for non-UTF-8 bytes, an empty vocabulary, an empty line or a duplicated token.
    """
    path = os.fspath(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"vocab file not found: {path}")
    data = storage.read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TokenizerFileError(
            f"{path}:{line}: vocab is not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    # Split on "\n" only: str.splitlines() would also split on characters that are real tokens.
    tokens = text.split("\n")
    if tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise TokenizerFileError(f"{path}: vocab is empty")
    if len(set(tokens)) != len(tokens) or "" in tokens:
        first_line: dict[str, int] = {}
        for line, token in enumerate(tokens, start=1):
            if token == "":
                raise TokenizerFileError(f"{path}:{line}: empty line in vocab")
            if token in first_line:
                raise TokenizerFileError(
                    f"{path}:{line}: duplicated token {token!r} (first on line {first_line[token]})"
                )
            first_line[token] = line
    return tokens


def _has_cased_tokens(tokens: Iterable[str]) -> bool:
    """True when some non-special token has an uppercase letter (a cased vocabulary)."""
    return any(
        t != t.lower()
        for t in tokens
        if not ((t[:1] == "[" and t[-1:] == "]") or (t[:1] == "<" and t[-1:] == ">"))
    )


# ----------------------------------------------------------------------------------------------
# SentencePiece.


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (unigram or BPE) behind the same interface (the ALBERT
    convention: google-research/albert's `tokenization.FullTokenizer` with an spm model).

    `do_lower_case=None` infers it from the pieces (no uppercase piece -> lowercase the input).
    Raises FileNotFoundError for a missing model file, and TokenizerFileError (a ValueError)
    naming the file when it is not a SentencePiece model or lacks one of the special pieces
    (under any of their aliases).
    """

    kind = "sentencepiece"

    def __init__(self, model_file: str, *, do_lower_case: bool | None = None):
        self.model_file = os.fspath(model_file)
        if not storage.isfile(self.model_file):
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_file}")
        self._build(storage.read_bytes(self.model_file), do_lower_case)

    def _build(self, proto: bytes, do_lower_case: bool | None) -> None:
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except RuntimeError as e:
            raise TokenizerFileError(
                f"{self.model_file}: not a SentencePiece model ({str(e).strip()})"
            ) from None
        self._sp, self._proto = sp, proto
        self.vocab_size = n = sp.GetPieceSize()
        pieces = [sp.IdToPiece(i) for i in range(n)]  # once per load

        ids = {}
        for role, names in _SP_ALIASES.items():
            found = [sp.PieceToId(p) for p in names if sp.IdToPiece(sp.PieceToId(p)) == p]
            if not found:
                raise TokenizerFileError(
                    f"{self.model_file}: SentencePiece model lacks a {role} piece "
                    f"(looked for {', '.join(names)})"
                )
            ids[role] = found[0]
        self.pad_id, self.unk_id = ids["pad"], ids["unk"]
        self.cls_id, self.sep_id, self.mask_id = ids["cls"], ids["sep"], ids["mask"]

        if do_lower_case is None:
            do_lower_case = not _has_cased_tokens(pieces)
        self.do_lower_case = bool(do_lower_case)

        # A normal piece without the word-boundary mark continues the previous word; control,
        # unknown and unused pieces never do.
        cont = np.fromiter(
            (
                not p.startswith("▁") and not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i))
                for i, p in enumerate(pieces)
            ),
            dtype=bool,
            count=n,
        )
        cont.flags.writeable = False
        self._continuation = cont

    def __getstate__(self) -> dict[str, Any]:
        return {"model_file": self.model_file, "proto": self._proto, "lower": self.do_lower_case}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model_file = state["model_file"]
        self._build(state["proto"], state["lower"])

    def _prepare(self, text: str) -> str:
        return text.lower() if self.do_lower_case else text

    def tokenize(self, text: str) -> list[str]:
        # Via ids: out_type=str would give the surface text of unknown pieces instead of [UNK].
        ids = self.encode(text)
        return self._sp.IdToPiece(ids) if ids else []

    def encode(self, text: str) -> list[int]:
        return self._sp.Encode(self._prepare(text), out_type=int)

    def tokenize_with_ids(self, text: str) -> tuple[list[str], list[int]]:
        ids = self.encode(text)
        return (self._sp.IdToPiece(ids) if ids else []), ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = _check_texts(texts)
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return self._sp.Encode(texts, out_type=int, num_threads=os.cpu_count() or 1)

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        tokens = list(tokens)
        return self._sp.PieceToId(tokens) if tokens else []

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        ids = self._check_ids(ids)
        return self._sp.IdToPiece(ids) if ids else []

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        ids = self._check_ids(ids)
        if skip_special_tokens:
            special = self.special_ids()
            ids = [i for i in ids if i not in special]
        return self._sp.Decode(ids)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "do_lower_case": self.do_lower_case}

    def _write_model(self, directory: str) -> str:
        storage.write_bytes(storage.join(directory, SPM_FILE), self._proto)
        return SPM_FILE


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        bad = next(t for t in texts if not isinstance(t, str))
        raise TypeError(f"encode_batch takes a list of str, got an element of type {type(bad)}")
    return texts


# ----------------------------------------------------------------------------------------------
# Loading.


def load_tokenizer(path: str, *, do_lower_case: bool | None = None) -> Tokenizer:
    """A tokenizer from a vocab.txt, a SentencePiece *.model, or a directory holding either.

    A tokenizer_config.json in the directory (or beside the file) may give `kind`, `do_lower_case`,
    `strip_accents`, `tokenize_chinese_chars` and `model_file`; a Hugging Face BERT directory works.
    `do_lower_case` overrides the config; with neither, it is inferred from the vocabulary.

    Raises FileNotFoundError when `path` (or the model file a config names) does not exist or a
    directory holds no tokenizer file, and TokenizerFileError (a ValueError) naming the file for
    a malformed tokenizer_config.json, vocab.txt or SentencePiece model.
    """
    path = os.fspath(path)
    if storage.isdir(path):
        config = _read_config(path)
        model_file, kind = _find_model_file(path, config)
    elif storage.isfile(path):
        kind = "sentencepiece" if path.endswith(".model") else "wordpiece"
        config = _read_config(storage.dirname(path) or ".")
        if config.get("kind", kind) != kind:  # the config describes another file
            config = {}
        model_file = path
    else:
        raise FileNotFoundError(f"no tokenizer at {path}: no such file or directory")

    if do_lower_case is None:
        do_lower_case = config.get("do_lower_case")
    if kind == "wordpiece":
        return WordPieceTokenizer(
            model_file,
            do_lower_case=do_lower_case,
            strip_accents=config.get("strip_accents"),
            tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
        )
    return SentencePieceTokenizer(model_file, do_lower_case=do_lower_case)


def _read_config(directory: str) -> dict[str, Any]:
    path = storage.join(directory, CONFIG_FILE)
    if not storage.isfile(path):
        return {}
    try:
        config = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise TokenizerFileError(f"{path}: not UTF-8 ({e.reason})") from None
    if not isinstance(config, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object, got {type(config).__name__}")
    kind = config.get("kind")
    if kind is not None and kind not in KINDS:
        raise TokenizerFileError(f"{path}: unknown tokenizer kind {kind!r} (expected {KINDS})")
    for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise TokenizerFileError(f"{path}: {key} must be true, false or null")
    return config


def _find_model_file(directory: str, config: dict[str, Any]) -> tuple[str, str]:
    """(model file, kind) for a tokenizer directory."""
    kind = config.get("kind")
    named = config.get("model_file")
    if named:
        model_file = storage.join(directory, named)
        if not storage.isfile(model_file):
            raise FileNotFoundError(
                f"{storage.join(directory, CONFIG_FILE)} names model_file {named!r}, "
                f"but {model_file} does not exist"
            )
        return model_file, kind or ("sentencepiece" if named.endswith(".model") else "wordpiece")

    vocab = storage.join(directory, VOCAB_FILE)
    if kind in (None, "wordpiece") and storage.isfile(vocab):
        return vocab, "wordpiece"
    models = sorted(n for n in storage.listdir(directory) if n.endswith(".model"))
    if kind in (None, "sentencepiece") and models:
        if SPM_FILE in models:
            return storage.join(directory, SPM_FILE), "sentencepiece"
        if len(models) == 1:
            return storage.join(directory, models[0]), "sentencepiece"
        raise TokenizerFileError(
            f"{directory}: several SentencePiece models {models}; "
            f"name one as model_file in {CONFIG_FILE}"
        )
    wanted = {None: f"{VOCAB_FILE} or a SentencePiece *.model", "wordpiece": VOCAB_FILE}
    raise FileNotFoundError(
        f"{directory}: no tokenizer file found (looked for {wanted.get(kind, '*.model')})"
    )


# ----------------------------------------------------------------------------------------------
# Sentence pairs.


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedPair:
    """[CLS] a [SEP] (b [SEP]), padded. Arrays are int32 of length max_seq_length."""

    tokens: list[str]  # unpadded, with the special tokens
    input_ids: np.ndarray  # [T]
    input_mask: np.ndarray  # [T] 1 on real tokens, 0 on padding
    segment_ids: np.ndarray  # [T] 0 for [CLS] a [SEP], 1 for b [SEP], 0 on padding


def truncated_pair_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths left by google-research/bert's `_truncate_seq_pair`, without its pop loop.

    That loop pops one token at a time from the end of the longer list, from b on a tie. So the
    longer one is first cut down to the shorter's length; after that the pops alternate b, a, b, ...
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b:
        cut = min(excess, len_a - len_b)
        len_a -= cut
    else:
        cut = min(excess, len_b - len_a)
        len_b -= cut
    excess -= cut
    return len_a - excess // 2, len_b - (excess + 1) // 2


def encode_pair(
    tokenizer: Tokenizer, text_a: str, text_b: str | None, max_seq_length: int
) -> EncodedPair:
    """BERT classifier input for one text or a pair, truncated and padded as google-research/bert.

    As in its `convert_single_example`, a `text_b` that is empty or tokenizes to nothing (e.g.
    only zero-width characters) counts as no second segment: no second [SEP].

    Returns an `EncodedPair`: input_ids, input_mask, segment_ids, each int32 [T] with
    T = max_seq_length (pad id, 0, 0 after the real tokens), and the unpadded tokens. The pair
    is cut to max_seq_length - 3 pieces (- 2 for a single text) by `truncated_pair_lengths`.
    Raises ValueError when max_seq_length leaves no room for the special tokens.
    """
    tokens_a, ids_a = tokenizer.tokenize_with_ids(text_a)
    tokens_b, ids_b = tokenizer.tokenize_with_ids(text_b) if text_b else ([], [])
    num_special = 3 if ids_b else 2
    if max_seq_length < num_special:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for the special tokens")
    len_a, len_b = truncated_pair_lengths(len(ids_a), len(ids_b), max_seq_length - num_special)
    cls, sep = tokenizer.convert_ids_to_tokens([tokenizer.cls_id, tokenizer.sep_id])

    tokens = [cls, *tokens_a[:len_a], sep]
    ids = [tokenizer.cls_id, *ids_a[:len_a], tokenizer.sep_id]
    first = len(ids)
    if ids_b:
        tokens += [*tokens_b[:len_b], sep]
        ids += [*ids_b[:len_b], tokenizer.sep_id]
    n = len(ids)

    input_ids = np.full(max_seq_length, tokenizer.pad_id, dtype=np.int32)
    input_ids[:n] = ids
    input_mask = np.zeros(max_seq_length, dtype=np.int32)
    input_mask[:n] = 1
    segment_ids = np.zeros(max_seq_length, dtype=np.int32)
    segment_ids[first:n] = 1
    return EncodedPair(tokens, input_ids, input_mask, segment_ids)


# ----------------------------------------------------------------------------------------------
# Tokenizing a corpus: each distinct word once.


class WordPieceCache:
    """Token ids per space-separated word, for BERT WordPiece tokenizers.

    BERT's tokenization is a function of each whitespace-separated word: its basic
    tokenizer cleans the text and splits it on whitespace first, and every later step
    (lowercasing, accent stripping, punctuation and CJK splitting, WordPiece) works
    inside a word. So the ids of a sentence are the concatenation of the ids of its
    pieces split at " " (other whitespace stays inside a piece, where the tokenizer
    handles it itself); `tests/test_tokenizers.py` checks this against
    `encode_batch` on adversarial text. Text repeats its words (Zipf), so tokenizing
    each distinct word once is about 3x faster than tokenizing every sentence.

    New words are tokenized in batches joined by " [SEP] ": the tokenizer maps that
    literal to the [SEP] id, so the ids split back per word; a batch that does not split
    into as many parts as it has words (a word holding "[SEP]") is tokenized word by
    word. The cache is emptied when it exceeds `max_words`; results never depend on it.
    """

    def __init__(
        self, tokenizer: Tokenizer, *, max_words: int = 1_000_000, batch_words: int = 4096
    ):
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


def make_word_cache(tokenizer: Tokenizer) -> WordPieceCache | None:
    """A `WordPieceCache` for BERT WordPiece tokenizers, None for others (SentencePiece
    pieces depend on the spaces around a word)."""
    return WordPieceCache(tokenizer) if getattr(tokenizer, "kind", None) == "wordpiece" else None
