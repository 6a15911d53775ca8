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
  [UNK], [CLS], [SEP], [MASK] (what `train_vocab` writes) or under their common SentencePiece
  aliases (<pad>, <unk>, <cls>/<s>, <sep>/</s>, <mask>). With `do_lower_case` the text is
  lowercased in Python before encoding (the ALBERT convention); vocabularies trained here also
  case-fold inside the model.

Whole-word masking needs to know which pieces continue a word: "##x" in WordPiece, a piece without
the leading "▁" in SentencePiece. `continuation_mask()` is a precomputed boolean table, so masking
code looks it up with one numpy gather instead of string tests per token.

Hot paths run in native code: `encode_batch` is the Rust `encode_batch_fast` (parallel, no
offsets) or SentencePiece's threaded batch encode. Tokenizers pickle by value (vocabulary or model
bytes), so they can be shipped to data-loader worker processes.

Files: a directory holds `vocab.txt` or `spm.model` plus `tokenizer_config.json` (`kind`,
`do_lower_case`, ...). A WordPiece config also carries `tokenizer_class: BertTokenizer`, so
transformers can load a saved directory, and a Hugging Face BERT directory (vocab.txt +
tokenizer_config.json) loads here.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import sentencepiece as spm

# The Rust library; this module shares its name, hence the alias.
import tokenizers as hf_tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from bertjax import storage
from data_pipelines import corpus

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
        _atomic_write(storage.join(directory, CONFIG_FILE), json.dumps(config, indent=2) + "\n")

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
        tk.normalizer = _bert_normalizer(self.do_lower_case, strip_accents, tokenize_chinese_chars)
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
        _atomic_write(storage.join(directory, VOCAB_FILE), "".join(t + "\n" for t in self._itos))
        return VOCAB_FILE


def _bert_normalizer(
    lowercase: bool, strip_accents: bool | None, handle_chinese_chars: bool
) -> normalizers.Normalizer:
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
        _atomic_write(storage.join(directory, SPM_FILE), self._proto)
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
# Training a vocabulary.

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

    Output goes to a temporary sibling directory and is renamed into `out_dir` when complete. An
    `out_dir` already holding a tokenizer is refused unless `overwrite=True`.

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
            "pass overwrite=True to replace it"
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

    tmp = storage.temp_dir_beside(out_dir)  # the mode os.makedirs would give out_dir
    try:
        sizes = (vocab_size, num_unused, pad_to_multiple_of)
        if kind == "wordpiece":
            tok = _train_wordpiece(documents, files, tmp, *sizes, do_lower_case, limit_alphabet)
        else:
            tok = _train_sentencepiece(documents, files, tmp, *sizes, do_lower_case)
        tok.save(tmp)
        _publish(tmp, out_dir)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
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
    normalizer = _bert_normalizer(do_lower_case, None, True)
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
    _atomic_write(vocab_file, "".join(t + "\n" for t in tokens))
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
    _atomic_write(model_file, model.getvalue())
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


def _publish(tmp: str, out_dir: str) -> None:
    """Move the finished files of `tmp` into `out_dir`: one rename if it is new, else per file."""
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    new = set(os.listdir(tmp))
    for stale in _tokenizer_files(out_dir):
        if stale not in new:
            os.remove(os.path.join(out_dir, stale))
    for n in new:
        os.replace(os.path.join(tmp, n), os.path.join(out_dir, n))


def _atomic_write(path: str, data: str | bytes) -> None:
    storage.write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
