"""Named-entity recognition data: CoNLL files, tag schemes, WordPiece alignment and windows.

Files (`read_conll`): one token per line, the token in the first column and its tag in the
last, whatever lies between (CoNLL-2003 has token, POS, chunk, NER; copies with two columns
exist), a blank line between sentences, `-DOCSTART-` lines skipped. Chinese corpora (MSRA,
People's Daily) are the same format with one character per line. The TFDS `conll2003` dataset
gives the same sentences (`load_tfds_split`).

Tag schemes. Every corpus is read into IOB2 (BIO: B- begins an entity, I- continues it, O is
outside), the scheme the model predicts and `seqeval` scores:

    iob2   as is
    iob1   (the original CoNLL-2003 tags) I- begins an entity unless it continues one of its
           type; such an I- becomes B-
    bioes  (also BMES) S- -> B-, E- and M- -> I-; the entities are unchanged
    auto   bioes when any E-/S-/M- tag occurs, else iob2

In an iob2 or bioes file, an I- (E-, M-) tag that does not continue an entity of its type is
read as B- (a new entity), which is what seqeval and conlleval do with it; each such repair is
counted (`Corpus.repaired`) and the first few are named with their file:line.

Alignment (`featurize`): every word is split into WordPiece pieces by the Rust tokenizer
(pre-tokenized input, its `word_ids` say which word each piece comes from). The word's label
goes on its first piece; the other pieces, [CLS], [SEP] and padding get IGNORE (-100) and take
no part in the loss or the prediction, as in the BERT paper. A word that makes no piece at all
(e.g. a lone control character) is given [UNK] so that it is still predicted. Optionally
(`label_continuations`) the other pieces are labelled too, I-<type> after B-/I-<type>, so
that readers that tag every piece (transformers' token-classification pipeline) see whole
entities; predictions are still read at first pieces.

Windows: a sentence whose pieces do not fit `max_seq_length - 2` is cut into windows of whole
words; consecutive windows overlap by up to `window_overlap` pieces, and each word of an
overlap belongs to one window only (the first half to the earlier window, the rest to the
later), so that every word is labelled and predicted exactly once, with context on both sides
wherever the sentence has it. `Features.word_index` maps each labelled position back to its
sentence and word.

Bad input is a `NerDataError` (one line naming file:line where there is one): a line with one
column, a malformed tag, an empty file; tags of dev/test that training never saw
(`check_tags`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from bertjax import storage
from data_pipelines import features

log = logging.getLogger(__name__)

IGNORE = -100  # the label of positions that are not the first piece of a word
OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
SCHEMES = ("auto", "iob2", "iob1", "bioes")
PREFIXES = ("B", "I", "E", "S", "M")
SPLIT_FILES = {
    "train": ("train.txt",),
    "dev": ("valid.txt", "dev.txt"),
    "test": ("test.txt",),
}
TFDS_NAME = "conll2003"
TFDS_SPLITS = {"train": "train", "dev": "dev", "test": "test"}
SENTENCE_INDEX = "sentence_index"  # [N] the sentence of each window row
WORD_INDEX = "word_index"  # [N, T] the word whose first piece is there (owned words), else -1


class NerDataError(ValueError):
    """A malformed or unusable NER data file; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words and their IOB2 tags (None when unlabelled); `where` is the
    file:line of its first word (or the TFDS split and index)."""

    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    where: str = ""


@dataclasses.dataclass
class Corpus:
    """The sentences of one file or split, in IOB2, and what reading them changed."""

    source: str
    sentences: list[Sentence]
    scheme: str  # the scheme the file was read as (auto resolved)
    repaired: int = 0  # I-/E-/M- tags that began an entity, read as B-
    repairs: list[str] = dataclasses.field(default_factory=list)  # first few file:line

    @property
    def num_words(self) -> int:
        return sum(len(s.words) for s in self.sentences)

    def tag_set(self) -> set[str]:
        return {t for s in self.sentences for t in (s.tags or ())}


# --- Tags ----------------------------------------------------------------------------------------


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER", ("O", "") for "O"; raises ValueError otherwise."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in PREFIXES or not kind:
        raise ValueError(
            f"tag {tag!r} is neither O nor PREFIX-TYPE with PREFIX one of {'/'.join(PREFIXES)}"
        )
    return prefix, kind


def detect_scheme(tags: Sequence[Sequence[str]]) -> str:
    """'bioes' when any E-, S- or M- tag occurs, else 'iob2' (IOB1 cannot be told from IOB2
    with errors; name it with scheme='iob1')."""
    for seq in tags:
        for tag in seq:
            if tag[:2] in ("E-", "S-", "M-"):
                return "bioes"
    return "iob2"


def to_iob2(tags: Sequence[str], scheme: str) -> tuple[list[str], list[int]]:
    """(the IOB2 tags of one sentence in `scheme`, the positions whose I-/E-/M- tag began an
    entity and became B-). For iob1 these are conversions, for iob2/bioes repairs. Raises
    ValueError on a malformed tag or a prefix the scheme does not have."""
    if scheme not in ("iob2", "iob1", "bioes"):
        raise ValueError(f"tag scheme {scheme!r} is not one of iob2, iob1, bioes")
    allowed = {"iob2": "BI", "iob1": "BI", "bioes": "BIESM"}[scheme]
    out: list[str] = []
    began: list[int] = []
    prev_kind = ""  # the type of the entity the previous tag leaves open ("" after O or E/S)
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix == OUTSIDE:
            out.append(OUTSIDE)
            prev_kind = ""
            continue
        if prefix not in allowed:
            raise ValueError(f"tag {tag!r}: prefix {prefix}- is not part of the {scheme} scheme")
        if prefix in ("B", "S"):
            out.append(f"B-{kind}")
        elif prev_kind == kind:  # I, E, M continuing an open entity of its type
            out.append(f"I-{kind}")
        else:
            out.append(f"B-{kind}")
            began.append(i)
        prev_kind = "" if prefix in ("E", "S") else kind
    return out, began


# --- Files ---------------------------------------------------------------------------------------


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NerDataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None


def read_conll(path: str | epath.PathLike, scheme: str = "auto") -> Corpus:
    """The sentences of a CoNLL-format file, their tags in IOB2 (see the module doc).

    Raises FileNotFoundError, NerDataError (naming file:line) for a line with one column, a
    malformed tag or undecodable bytes, and for a file without sentences (empty)."""
    if scheme not in SCHEMES:
        raise NerDataError(f"tag scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    raw_sentences: list[tuple[list[str], list[str], list[int]]] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush() -> None:
        if words:
            raw_sentences.append((list(words), list(tags), list(lines)))
        words.clear(), tags.clear(), lines.clear()

    for number, raw in enumerate(p.read_bytes().splitlines(), start=1):
        line = _decode(raw, f"{p}:{number}").strip()
        if not line:
            flush()
            continue
        fields = line.split()
        if fields[0] == DOCSTART:
            flush()
            continue
        if len(fields) < 2:
            raise NerDataError(
                f"{p}:{number}: one column ({line!r}); a line holds a token and its tag (the "
                "tag in the last column), a blank line ends a sentence"
            )
        words.append(fields[0])
        tags.append(fields[-1])
        lines.append(number)
    flush()
    if not raw_sentences:
        raise NerDataError(f"{p}: empty (no tagged sentences); is it the right file?")

    resolved = detect_scheme([t for _, t, _ in raw_sentences]) if scheme == "auto" else scheme
    corpus = Corpus(str(p), [], resolved)
    for ws, ts, ls in raw_sentences:
        try:
            iob2, began = to_iob2(ts, resolved)
        except ValueError as e:
            bad = next((n for t, n in zip(ts, ls, strict=True) if _bad_tag(t, resolved)), ls[0])
            raise NerDataError(f"{p}:{bad}: {e}") from None
        if resolved != "iob1":
            corpus.repaired += len(began)
            corpus.repairs += [f"{p}:{ls[i]}" for i in began][: max(0, 5 - len(corpus.repairs))]
        corpus.sentences.append(Sentence(tuple(ws), tuple(iob2), f"{p}:{ls[0]}"))
    report_repairs(corpus)
    return corpus


def _bad_tag(tag: str, scheme: str) -> bool:
    try:
        to_iob2([tag], scheme)
        return False
    except ValueError:
        return True


def report_repairs(corpus: Corpus) -> None:
    """Logs the tags that began an entity without its B- (repaired as seqeval reads them)."""
    if corpus.repaired:
        log.warning(
            "%s: %d I- tag(s) began an entity without its B- (first at %s); read as B- as "
            "seqeval and conlleval do%s",
            corpus.source, corpus.repaired, ", ".join(corpus.repairs),
            "; if the file is IOB1, set the tag scheme to iob1" if corpus.scheme == "iob2" else "",
        )  # fmt: skip


def split_file(data_dir: str | epath.PathLike, split: str) -> epath.Path:
    """The file of `split` (train, dev, test) in `data_dir`: train.txt, valid.txt or dev.txt,
    test.txt (the first that exists; the first name when none does)."""
    names = SPLIT_FILES[split]
    d = epath.Path(data_dir)
    for name in names:
        if (d / name).exists():
            return d / name
    return d / names[0]


def load_tfds_split(split: str, *, data_dir: str | None = None, download: bool = False) -> Corpus:
    """The sentences of the TFDS `conll2003` split `split` (train, dev, test); its tags are
    IOB2 already (checked: repairs are counted as for files)."""
    if split not in TFDS_SPLITS:
        raise NerDataError(f"{TFDS_NAME}: no split {split!r}; one of {sorted(TFDS_SPLITS)}")
    tfds = storage.require_extra(
        "tensorflow_datasets", f"reading {TFDS_NAME} from TFDS (data_dir tfds)"
    )
    ds, info = tfds.load(
        TFDS_NAME,
        split=TFDS_SPLITS[split],
        data_dir=data_dir,
        download=download,
        shuffle_files=False,
        with_info=True,
    )
    names = list(info.features["ner"].names)
    corpus = Corpus(f"tfds:{TFDS_NAME}/{split}", [], "iob2")
    for i, ex in enumerate(tfds.as_numpy(ds)):
        words = tuple(w.decode("utf-8") for w in ex["tokens"])
        where = f"{corpus.source}[{i}]"
        if len(words) != len(ex["ner"]):
            raise NerDataError(f"{where}: {len(words)} tokens but {len(ex['ner'])} tags")
        if not words:
            continue
        iob2, began = to_iob2([names[int(t)] for t in ex["ner"]], "iob2")
        corpus.repaired += len(began)
        corpus.repairs += [where] * (bool(began) and len(corpus.repairs) < 5)
        corpus.sentences.append(Sentence(words, tuple(iob2), where))
    if not corpus.sentences:
        raise NerDataError(f"{corpus.source}: empty (no sentences)")
    report_repairs(corpus)
    return corpus


# --- Labels --------------------------------------------------------------------------------------


def label_list(corpus: Corpus) -> list[str]:
    """The label set of a training corpus in a stable order: O, then per entity type (sorted)
    its B- and I- tags, whether or not the corpus has both (so that every IOB2 sequence of its
    types can be predicted)."""
    kinds = sorted({split_tag(t)[1] for t in corpus.tag_set()} - {""})
    return [OUTSIDE] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]


def check_tags(corpus: Corpus, labels: Sequence[str], *, trained_on: str) -> None:
    """Raises NerDataError listing the tags of `corpus` that `labels` (the training data's)
    lack, with where the first of each occurs."""
    known = set(labels)
    first: dict[str, str] = {}
    for s in corpus.sentences:
        for tag in s.tags or ():
            if tag not in known and tag not in first:
                first[tag] = s.where
    if first:
        listed = ", ".join(f"{t} (first in the sentence at {w})" for t, w in sorted(first.items()))
        raise NerDataError(
            f"{corpus.source}: tags unseen in {trained_on}: {listed}; the model can only "
            f"predict {list(labels)}"
        )


# --- Pieces and windows --------------------------------------------------------------------------


def word_pieces(tokenizer: Any, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """The WordPiece ids of every word of every sentence ([sentence][word][piece]), from the
    Rust tokenizer's word ids on pre-tokenized input (per-word encoding for tokenizers without
    a Rust backend). A word without pieces gets [UNK]."""
    unk = tokenizer.convert_tokens_to_ids(["[UNK]"])[0]
    backend = getattr(tokenizer, "backend", None)
    out: list[list[list[int]]] = []
    if backend is not None:
        encodings = backend.encode_batch(
            [list(s) for s in sentences], is_pretokenized=True, add_special_tokens=False
        )
        for words, enc in zip(sentences, encodings, strict=True):
            pieces: list[list[int]] = [[] for _ in words]
            for piece, w in zip(enc.ids, enc.word_ids, strict=True):
                if w is not None:
                    pieces[w].append(piece)
            out.append([p or [unk] for p in pieces])
        return out
    flat = [w for s in sentences for w in s]
    encoded = iter(tokenizer.encode_batch(flat) if flat else [])
    for s in sentences:
        out.append([next(encoded) or [unk] for _ in s])
    return out


@dataclasses.dataclass(frozen=True)
class Window:
    """Words [start, end) of a sentence in one row; it labels and predicts [own_start, own_end)."""

    start: int
    end: int
    own_start: int
    own_end: int


def plan_windows(piece_counts: Sequence[int], budget: int, overlap: int) -> list[Window]:
    """Windows of whole words, each of at most `budget` pieces (a longer word counts as
    `budget`), consecutive ones sharing up to `overlap` pieces; the words of an overlap are
    owned half by each side, so every word is owned by exactly one window."""
    if budget < 1:
        raise ValueError(f"window budget {budget}: must be >= 1")
    counts = [min(max(c, 1), budget) for c in piece_counts]
    n = len(counts)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end, total = start, 0
        while end < n and total + counts[end] <= budget:
            total += counts[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            break
        nxt, shared = end, 0
        while nxt - 1 > start and shared + counts[nxt - 1] <= overlap:
            nxt -= 1
            shared += counts[nxt]
        start = nxt
    windows = []
    own_start = 0
    for k, (s, e) in enumerate(spans):
        own_end = e if k + 1 == len(spans) else (spans[k + 1][0] + e + 1) // 2
        windows.append(Window(s, e, own_start, own_end))
        own_start = own_end
    return windows


@dataclasses.dataclass
class Features:
    """Window rows of a list of sentences: `arrays` (input_ids, input_mask, segment_ids, label
    int32 [N, T], label IGNORE except at owned first pieces; sentence_index [N]; word_index
    [N, T]) and the number of words per sentence."""

    arrays: dict[str, np.ndarray]
    num_words: list[int]
    num_windowed: int = 0  # sentences cut into more than one window
    num_truncated_words: int = 0  # words of more pieces than a window holds (first kept)

    @property
    def size(self) -> int:
        return len(self.arrays[features.INPUT_IDS])


def featurize_pieces(
    pieces: Sequence[Sequence[Sequence[int]]],
    labels: Sequence[Sequence[int] | None],
    *,
    cls_id: int,
    sep_id: int,
    max_seq_length: int,
    window_overlap: int,
    continuation: dict[int, int] | None = None,
) -> Features:
    """Window rows ([CLS] pieces [SEP]) of sentences given as word pieces, with each owned
    word's label id (`labels[s][w]`; None: unlabelled) on its first piece. With
    `continuation` ({label id: id}, e.g. B-PER -> I-PER) the word's other pieces are labelled
    too, with the continuation of its label (they are IGNORE otherwise)."""
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length}: must be >= 3")
    budget = max_seq_length - 2
    if not 0 <= window_overlap < budget:
        raise ValueError(
            f"window_overlap={window_overlap}: must be >= 0 and < max_seq_length - 2 = {budget}"
        )
    rows: list[tuple[int, list[int], list[int], list[int]]] = []
    windowed = truncated = 0
    for s, words in enumerate(pieces):
        plan = plan_windows([len(p) for p in words], budget, window_overlap)
        windowed += len(plan) > 1
        truncated += sum(len(p) > budget for p in words)
        for win in plan:
            ids, label_row, word_row = [cls_id], [IGNORE], [-1]
            for w in range(win.start, win.end):
                word = list(words[w])[:budget]
                owned = win.own_start <= w < win.own_end
                known = owned and labels[s] is not None
                ids += word
                rest = IGNORE
                if known and continuation is not None:
                    rest = continuation[labels[s][w]]
                label_row += [labels[s][w] if known else IGNORE] + [rest] * (len(word) - 1)
                word_row += [w if owned else -1] + [-1] * (len(word) - 1)
            ids.append(sep_id)
            label_row.append(IGNORE)
            word_row.append(-1)
            rows.append((s, ids, label_row, word_row))
    n, t = len(rows), max_seq_length
    arrays = {
        features.INPUT_IDS: np.zeros((n, t), np.int32),
        features.INPUT_MASK: np.zeros((n, t), np.int32),
        features.SEGMENT_IDS: np.zeros((n, t), np.int32),
        features.LABEL: np.full((n, t), IGNORE, np.int32),
        SENTENCE_INDEX: np.zeros(n, np.int32),
        WORD_INDEX: np.full((n, t), -1, np.int32),
    }
    for i, (s, ids, label_row, word_row) in enumerate(rows):
        k = len(ids)
        arrays[features.INPUT_IDS][i, :k] = ids
        arrays[features.INPUT_MASK][i, :k] = 1
        arrays[features.LABEL][i, :k] = label_row
        arrays[WORD_INDEX][i, :k] = word_row
        arrays[SENTENCE_INDEX][i] = s
    return Features(arrays, [len(p) for p in pieces], windowed, truncated)


def featurize(
    sentences: Sequence[Sentence],
    tokenizer: Any,
    label_ids: dict[str, int],
    *,
    max_seq_length: int,
    window_overlap: int,
    label_continuations: bool = False,
) -> Features:
    """`featurize_pieces` of tagged (or untagged) sentences (see the module doc); with
    `label_continuations` a word's pieces after the first are labelled I-<type> (O for O)."""
    pieces = word_pieces(tokenizer, [s.words for s in sentences])
    continuation = None
    if label_continuations:
        continuation = {
            i: label_ids.get(f"I-{split_tag(t)[1]}", i) if t != OUTSIDE else i
            for t, i in label_ids.items()
        }
    labels = [None if s.tags is None else [label_ids[t] for t in s.tags] for s in sentences]
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    return featurize_pieces(
        pieces,
        labels,
        cls_id=cls_id,
        sep_id=sep_id,
        max_seq_length=max_seq_length,
        window_overlap=window_overlap,
        continuation=continuation,
    )


def word_predictions(feats: Features, predicted: np.ndarray, *, fill: int = 0) -> list[list[int]]:
    """Per sentence, the predicted label id of every word, read at its owned first piece
    (`predicted` int [N, T], e.g. argmax of the logits). Words never seen get `fill`."""
    out = [[fill] * n for n in feats.num_words]
    rows, cols = np.nonzero(feats.arrays[WORD_INDEX] >= 0)
    sent = feats.arrays[SENTENCE_INDEX][rows]
    word = feats.arrays[WORD_INDEX][rows, cols]
    for s, w, p in zip(sent.tolist(), word.tolist(), predicted[rows, cols].tolist(), strict=True):
        out[s][w] = p
    return out


def word_piece_values(
    feats: Features, values: np.ndarray, pieces: Sequence[Sequence[Sequence[int]]]
) -> list[list[np.ndarray]]:
    """Per sentence and word, `values` ([N, T, ...], e.g. per-position probabilities) at the
    word's pieces in the window that owns it: an array [n, ...] for its n pieces (those a
    window holds, `featurize_pieces`'s truncation). `pieces` is what was featurized."""
    budget = feats.arrays[features.INPUT_IDS].shape[1] - 2
    out: list[list[Any]] = [[None] * n for n in feats.num_words]
    rows, cols = np.nonzero(feats.arrays[WORD_INDEX] >= 0)
    sent = feats.arrays[SENTENCE_INDEX][rows]
    word = feats.arrays[WORD_INDEX][rows, cols]
    for r, c, s, w in zip(rows.tolist(), cols.tolist(), sent.tolist(), word.tolist(), strict=True):
        n = min(len(pieces[s][w]), budget)
        out[s][w] = values[r, c : c + n]
    return out


# --- Raw text ------------------------------------------------------------------------------------


def text_words(
    tokenizer: Any, texts: Sequence[str]
) -> list[tuple[list[list[int]], list[list[tuple[int, int]]]]]:
    """For each raw text, (the pieces of each word, the character span [start, end) of each of
    those pieces) with words as the tokenizer's pre-tokenizer splits the text (whitespace and
    punctuation; every CJK character is a word of its own). A word's span runs from its first
    piece's start to its last piece's end. Needs a WordPiece (Rust) tokenizer."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        raise NerDataError(
            f"{type(tokenizer).__name__}: raw-text NER needs a WordPiece checkpoint (character "
            "offsets of the words come from its Rust tokenizer)"
        )
    out = []
    for enc in backend.encode_batch(list(texts), add_special_tokens=False):
        pieces: list[list[int]] = []
        spans: list[list[tuple[int, int]]] = []
        last = None
        for piece, w, (a, b) in zip(enc.ids, enc.word_ids, enc.offsets, strict=True):
            if w is None:
                continue
            if w != last:
                pieces.append([])
                spans.append([])
                last = w
            pieces[-1].append(piece)
            spans[-1].append((a, b))
        out.append((pieces, spans))
    return out
