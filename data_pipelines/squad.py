"""SQuAD v1.1 / v2.0: readers (JSON files, TFDS) and BERT featurization with a sliding window.

`TASKS` maps `squad_v1` and `squad_v2` to a `SquadTask`: the standard file names
(train-v1.1.json, dev-v1.1.json, train-v2.0.json, dev-v2.0.json), the TFDS name (squad/v1.1,
squad/v2.0) and whether questions may have no answer (v2.0).

Reading (`read_squad_file`, `load_tfds_split`) gives `SquadExample`s: id, question, context and
the gold answers (text + character offset into the context); v2.0 adds `is_impossible`. A
missing file raises FileNotFoundError naming it; invalid JSON or a structure that is not SQuAD's
(`{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}`) raises
`SquadDataError` naming the file (and line or JSON path).

Featurization (`featurize`) follows google-research/bert's run_squad.py, on character offsets:

* The context is tokenized once (shared by its questions); every piece carries the character
  span it came from in the original context. With `WordPieceTokenizer` these are the Rust
  tokenizer's offsets, which stay on the original text through lowercasing, accent stripping
  ("Café" -> c ##a ##f ##e, the last piece covering "é"), punctuation splitting and WordPiece; a
  piece's span is extended over combining marks that follow it (decomposed accents). Other
  tokenizers (SentencePiece) tokenize each whitespace-separated word and align the pieces inside
  it by their text; a word whose pieces cannot be aligned (an [UNK], NFKC changes) gives every
  piece the whole word's span, so answers then snap to whole words as in BERT's word-level maps.
* The answer's character span must match the context at `answer_start` (exactly, or up to runs
  of whitespace); its token span is every piece overlapping it. That is the span BERT's word map
  plus `_improve_answer_span` look for: "1994" inside "(1994)," is the piece "1994" alone.
* The question is truncated to `max_query_length` pieces. Windows of
  `max_seq_length - len(question) - 3` context pieces start every `doc_stride` pieces, the last
  reaching the end of the context. Each feature is `[CLS] question [SEP] window [SEP]`, padded.
* `start_positions`/`end_positions` index the answer in the feature; a feature whose window does
  not hold the whole answer, and every feature of an unanswerable (v2.0) question, points both at
  0 ([CLS]). In evaluation features they come from the first gold answer (-1 when it cannot be
  located, which only drops the feature from the eval loss).
* `token_is_max_context` marks, for each context piece, the one window where it has the most
  context on both sides (BERT's `_check_is_max_context`): only there may an answer start.

Bad examples never stop featurization: an empty context, a question that leaves no room for the
context, a training answer that does not match the context at its offset (or is missing), a
repeated id are skipped and reported as `Issue`s (example id, reason, detail) and counted in the
log. Evaluation examples with a mismatching answer are kept (they are scored on the answer
texts) and reported with `skipped=False`.

Feature arrays (`SquadFeatures.arrays`, N features of T = max_seq_length tokens):
    input_ids, input_mask, segment_ids   int32 [N, T]
    start_positions, end_positions       int32 [N]
    is_impossible                        int32 [N]  the example has no answer (v2.0)
    example_index                        int64 [N]  index into the examples given to featurize
    unique_id                            int64 [N]  1000000000 + feature number (as BERT)
evaluation features also carry, for decoding answers back to the original text:
    token_start_char, token_end_char     int32 [N, T]  character span of a context piece in
                                                       the context (-1 for other tokens)
    token_is_max_context                 bool  [N, T]
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bertjax import storage
from data_pipelines import features
from data_pipelines.features import END_POSITIONS, EXAMPLE_INDEX, START_POSITIONS
from data_pipelines.tokenizers import Tokenizer

log = logging.getLogger(__name__)

IS_IMPOSSIBLE = "is_impossible"
UNIQUE_ID = "unique_id"
TOKEN_START_CHAR = "token_start_char"
TOKEN_END_CHAR = "token_end_char"
TOKEN_IS_MAX_CONTEXT = "token_is_max_context"
FIRST_UNIQUE_ID = 1_000_000_000

# Issue reasons.
EMPTY_CONTEXT = "empty_context"
QUESTION_TOO_LONG = "question_too_long"
ANSWER_MISMATCH = "answer_mismatch"
NO_ANSWER = "no_answer"
DUPLICATE_ID = "duplicate_id"


class SquadDataError(ValueError):
    """A SQuAD file cannot be read; the message names the file (and line or JSON path)."""


@dataclasses.dataclass(frozen=True)
class SquadTask:
    """One SQuAD version."""

    name: str  # key in TASKS
    display_name: str  # SQuAD v1.1 | SQuAD v2.0
    version_2_with_negative: bool  # questions may have no answer in the context
    train_file: str  # standard file names of the download
    dev_file: str
    tfds_name: str  # squad/v1.1 | squad/v2.0


TASKS: dict[str, SquadTask] = {
    "squad_v1": SquadTask(
        "squad_v1", "SQuAD v1.1", False, "train-v1.1.json", "dev-v1.1.json", "squad/v1.1"
    ),
    "squad_v2": SquadTask(
        "squad_v2", "SQuAD v2.0", True, "train-v2.0.json", "dev-v2.0.json", "squad/v2.0"
    ),
}


def get_task(name: str) -> SquadTask:
    """The SquadTask named `name` (squad_v1 or squad_v2); ValueError listing them otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown SQuAD task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset of the answer in the context


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question about one context, with its gold answers (empty when unanswerable)."""

    qas_id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    is_impossible: bool = False
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Issue:
    """An example featurization could not use as given."""

    qas_id: str
    reason: str  # one of the reason constants above
    detail: str
    skipped: bool = True  # False: kept (evaluation examples with a mismatching answer)


@dataclasses.dataclass
class SquadFeatures:
    """The feature arrays of a list of examples and what went wrong on the way."""

    arrays: dict[str, np.ndarray]
    issues: list[Issue]
    num_examples: int  # examples given (skipped ones included)
    num_truncated_questions: int

    @property
    def size(self) -> int:
        return len(self.arrays[features.INPUT_IDS])

    def issue_counts(self) -> dict[str, int]:
        """{reason: number of examples} over the skipped examples."""
        return dict(collections.Counter(i.reason for i in self.issues if i.skipped))


# ----------------------------------------------------------------------------------------------
# Reading.


def default_file(task: str, data_dir: str, split: str) -> str:
    """The standard path of a split ("train" or "validation") under `data_dir`."""
    spec = get_task(task)
    if split not in ("train", "validation"):
        raise ValueError(f"SQuAD split {split!r}: use 'train' or 'validation'")
    name = spec.train_file if split == "train" else spec.dev_file
    return os.path.join(os.fspath(data_dir), name)


def read_squad_file(path: str) -> list[SquadExample]:
    """The examples of a SQuAD-format JSON file (v1.1 or v2.0), in file order."""
    path = os.fspath(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"SQuAD file not found: {path}")
    try:
        data = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise SquadDataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise SquadDataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return parse_squad(data, source=path)


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SquadDataError(f"{where}: {what} must be {names}, got {type(value).__name__}")
    return value


def _field(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise SquadDataError(f"{where}: missing {key!r}")
    return _expect(obj[key], kind, where, repr(key))


def parse_squad(data: Any, *, source: str = "<json>") -> list[SquadExample]:
    """Examples of an already parsed SQuAD JSON document; `source` names it in errors."""
    _expect(data, dict, source, "the top level")
    articles = _field(data, "data", list, source)
    examples = []
    for i, article in enumerate(articles):
        at = f"{source}: data[{i}]"
        _expect(article, dict, at, "an article")
        title = article.get("title", "")
        title = title if isinstance(title, str) else str(title)
        for j, paragraph in enumerate(_field(article, "paragraphs", list, at)):
            pat = f"{at}.paragraphs[{j}]"
            _expect(paragraph, dict, pat, "a paragraph")
            context = _field(paragraph, "context", str, pat)
            for k, qa in enumerate(_field(paragraph, "qas", list, pat)):
                qat = f"{pat}.qas[{k}]"
                _expect(qa, dict, qat, "a question")
                qas_id = str(_field(qa, "id", (str, int), qat))
                question = _field(qa, "question", str, qat)
                answers = []
                for m, answer in enumerate(_expect(qa.get("answers", []), list, qat, "answers")):
                    aat = f"{qat}.answers[{m}]"
                    _expect(answer, dict, aat, "an answer")
                    answers.append(
                        Answer(
                            _field(answer, "text", str, aat),
                            _field(answer, "answer_start", int, aat),
                        )
                    )
                impossible = _expect(qa.get("is_impossible", False), bool, qat, "is_impossible")
                examples.append(
                    SquadExample(qas_id, question, context, tuple(answers), impossible, title)
                )
    return examples


def load_tfds_split(
    task: str, split: str, *, data_dir: str | None = None, download: bool = True
) -> list[SquadExample]:
    """The examples of TFDS `squad/v1.1` or `squad/v2.0` ("train" or "validation"), by id."""
    spec = get_task(task)
    if split not in ("train", "validation"):
        raise ValueError(f"SQuAD split {split!r}: use 'train' or 'validation'")
    tfds = storage.require_extra("tensorflow_datasets", "reading SQuAD from TFDS (data_dir tfds)")
    ds = tfds.load(
        spec.tfds_name, split=split, data_dir=data_dir, download=download, shuffle_files=False
    )

    def text(x: Any) -> str:
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    examples = []
    for row in tfds.as_numpy(ds):
        answers = row["answers"]
        gold = tuple(
            Answer(text(t), int(s))
            for t, s in zip(answers["text"], answers["answer_start"], strict=True)
        )
        examples.append(
            SquadExample(
                qas_id=text(row["id"]),
                question=text(row["question"]),
                context=text(row["context"]),
                answers=gold,
                is_impossible=bool(row.get("is_impossible", False)),
                title=text(row.get("title", b"")),
            )
        )
    examples.sort(key=lambda e: e.qas_id)
    return examples


# ----------------------------------------------------------------------------------------------
# Context pieces with character offsets.


@dataclasses.dataclass(frozen=True)
class ContextTokens:
    """The pieces of a context and the character span [start, end) each came from."""

    ids: np.ndarray  # int32 [n]
    starts: np.ndarray  # int32 [n]
    ends: np.ndarray  # int32 [n]


def _extend_over_marks(text: str, ends: list[int], starts: list[int]) -> list[int]:
    """Moves each end past combining marks that no piece starts at (decomposed accents)."""
    taken = set(starts)
    out = []
    for e in ends:
        while e < len(text) and e not in taken and unicodedata.category(text[e]) == "Mn":
            e += 1
        out.append(e)
    return out


def _rust_backend(tokenizer: Tokenizer) -> Any:
    """The Rust `tokenizers.Tokenizer` behind a WordPieceTokenizer (None for other kinds)."""
    import tokenizers as hf_tokenizers

    tk = getattr(tokenizer, "backend", None)
    return tk if isinstance(tk, hf_tokenizers.Tokenizer) else None


def _normalized(word: str, lower: bool, strip_accents: bool) -> tuple[str, list[int]]:
    """`word` lowercased/decomposed/accent-stripped, and the source index of each character."""
    chars, source = [], []
    for i, c in enumerate(word):
        t = unicodedata.normalize("NFD", c.lower() if lower else c)
        if strip_accents:
            t = "".join(x for x in t if unicodedata.category(x) != "Mn")
        chars.append(t)
        source.extend([i] * len(t))
    return "".join(chars), source


def align_pieces(word: str, pieces: Sequence[str], *, lower: bool) -> list[tuple[int, int]] | None:
    """Character spans of `pieces` inside `word`, matched by their text; None if they do not
    match (an unknown piece, a normalization the tokenizer applies and this does not)."""
    for strip in (lower, not lower):
        norm, source = _normalized(word, lower, strip)
        spans, pos = [], 0
        for piece in pieces:
            surface = piece[2:] if piece.startswith("##") else piece.lstrip("\u2581")
            surface, _ = _normalized(surface, lower, strip)
            if not surface:
                spans.append((source[pos] if pos < len(source) else len(word),) * 2)
                continue
            at = norm.find(surface, pos)
            if at < 0:
                break
            spans.append((source[at], source[at + len(surface) - 1] + 1))
            pos = at + len(surface)
        else:
            return spans
    return None


def tokenize_context(tokenizer: Tokenizer, context: str) -> ContextTokens:
    """The pieces of `context` with the character span of each (see the module doc)."""
    return tokenize_contexts(tokenizer, [context])[0]


def tokenize_contexts(tokenizer: Tokenizer, contexts: Sequence[str]) -> list[ContextTokens]:
    """`tokenize_context` of each context; WordPiece contexts are encoded in one native batch."""
    rust = _rust_backend(tokenizer)
    out = []
    if rust is not None:
        for text, enc in zip(
            contexts, rust.encode_batch(list(contexts), add_special_tokens=False), strict=True
        ):
            starts = [s for s, _ in enc.offsets]
            ends = _extend_over_marks(text, [e for _, e in enc.offsets], starts)
            out.append(_context_tokens(enc.ids, starts, ends))
        return out
    for text in contexts:
        ids, starts, ends = [], [], []
        for m in re.finditer(r"[^\s\u202f]+", text):
            word = m.group()
            pieces, piece_ids = tokenizer.tokenize_with_ids(word)
            spans = align_pieces(word, pieces, lower=tokenizer.do_lower_case)
            if spans is None:
                spans = [(0, len(word))] * len(pieces)
            ids += piece_ids
            starts += [m.start() + s for s, _ in spans]
            ends += [m.start() + e for _, e in spans]
        out.append(_context_tokens(ids, starts, _extend_over_marks(text, ends, starts)))
    return out


def _context_tokens(
    ids: Sequence[int], starts: Sequence[int], ends: Sequence[int]
) -> ContextTokens:
    return ContextTokens(
        np.asarray(ids, np.int32).reshape(-1),
        np.asarray(starts, np.int32).reshape(-1),
        np.asarray(ends, np.int32).reshape(-1),
    )


# ----------------------------------------------------------------------------------------------
# Answers and windows.


def answer_char_span(context: str, answer: Answer) -> tuple[int, int] | None:
    """[start, end) of `answer` in `context`: its text at its offset, exactly or up to runs of
    whitespace; None when the text is not there."""
    text = answer.text
    if not text.strip() or not 0 <= answer.start < len(context):
        return None
    end = answer.start + len(text)
    if context[answer.start : end] == text:
        return answer.start, end
    pattern = r"\s+".join(re.escape(w) for w in text.split())
    m = re.compile(pattern).match(context, answer.start)
    return (m.start(), m.end()) if m else None


def answer_token_span(tokens: ContextTokens, start: int, end: int) -> tuple[int, int] | None:
    """First and last piece (inclusive) overlapping characters [start, end); None if none do."""
    first = int(np.searchsorted(tokens.ends, start, side="right"))
    last = int(np.searchsorted(tokens.starts, end, side="left")) - 1
    if first >= len(tokens.ids) or last < first:
        return None
    return first, last


def doc_spans(num_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of the windows over `num_tokens` context pieces (BERT's doc_spans)."""
    spans, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def max_context_window(spans: Sequence[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """int [num_tokens]: the window where each piece has the most context on both sides:
    min(left, right) + 0.01 * window length, the first window on a tie."""
    pos = np.arange(num_tokens)
    scores = np.full((len(spans), num_tokens), -np.inf)
    for j, (start, length) in enumerate(spans):
        inside = (pos >= start) & (pos < start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        scores[j] = np.where(inside, score, -np.inf)
    return np.argmax(scores, axis=0)


# ----------------------------------------------------------------------------------------------
# Featurization.


def featurize(
    examples: Sequence[SquadExample],
    tokenizer: Tokenizer,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool,
    version_2_with_negative: bool,
) -> SquadFeatures:
    """Features of `examples` (see the module doc); training features carry no decoding maps.

    `version_2_with_negative=False` (v1.1) makes an unanswerable training example an issue
    (skipped) instead of a [CLS]-pointing example.
    """
    if max_seq_length < 4:
        raise ValueError(f"max_seq_length={max_seq_length}: must be >= 4")
    if doc_stride < 1 or max_query_length < 1:
        raise ValueError(f"doc_stride={doc_stride}, max_query_length={max_query_length}: >= 1")
    issues: list[Issue] = []
    contexts = list(dict.fromkeys(e.context for e in examples))
    context_tokens = dict(zip(contexts, tokenize_contexts(tokenizer, contexts), strict=True))
    questions = tokenizer.encode_batch([e.question for e in examples]) if examples else []

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    truncated = 0
    for index, (ex, q_ids) in enumerate(zip(examples, questions, strict=True)):

        def issue(reason: str, detail: str, skipped: bool = True, ex=ex) -> None:
            issues.append(Issue(ex.qas_id, reason, detail, skipped))

        if ex.qas_id in seen:
            issue(DUPLICATE_ID, "an earlier example has the same id")
            continue
        seen.add(ex.qas_id)
        tokens = context_tokens[ex.context]
        if len(tokens.ids) == 0:
            issue(EMPTY_CONTEXT, f"context {ex.context[:40]!r} has no tokens")
            continue
        if len(q_ids) > max_query_length:
            q_ids = q_ids[:max_query_length]
            truncated += 1
        max_doc = max_seq_length - len(q_ids) - 3
        if max_doc < 1:
            issue(
                QUESTION_TOO_LONG,
                f"{len(q_ids)} question tokens leave no room for the context in "
                f"max_seq_length={max_seq_length}",
            )
            continue

        impossible = ex.is_impossible or not ex.answers
        span: tuple[int, int] | None = None
        if impossible:
            if is_training and not version_2_with_negative:
                issue(NO_ANSWER, "no answer, and SQuAD v1.1 trains on answerable questions only")
                continue
        else:
            answer = ex.answers[0]
            chars = answer_char_span(ex.context, answer)
            span = None if chars is None else answer_token_span(tokens, *chars)
            if span is None:
                found = ex.context[answer.start : answer.start + len(answer.text)]
                issue(
                    ANSWER_MISMATCH,
                    f"answer {answer.text!r} at {answer.start} does not match the context "
                    f"there ({found!r})",
                    skipped=is_training,
                )
                if is_training:
                    continue

        n = len(tokens.ids)
        spans = doc_spans(n, max_doc, doc_stride)
        best = max_context_window(spans, n)
        offset = len(q_ids) + 2
        for j, (start, length) in enumerate(spans):
            if impossible:
                positions = (0, 0)
            elif span is None:
                positions = (-1, -1)
            elif start <= span[0] and span[1] < start + length:
                positions = (span[0] - start + offset, span[1] - start + offset)
            else:
                positions = (0, 0)  # the answer is not (wholly) in this window
            rows.append(
                dict(
                    index=index,
                    q_ids=q_ids,
                    start=start,
                    length=length,
                    positions=positions,
                    impossible=impossible,
                    max_context=best[start : start + length] == j,
                    tokens=tokens,
                )
            )

    arrays = _pack(rows, tokenizer, max_seq_length, with_maps=not is_training)
    _log_issues(issues, len(examples), is_training)
    if truncated:
        log.info("%d question(s) truncated to max_query_length=%d", truncated, max_query_length)
    return SquadFeatures(arrays, issues, len(examples), truncated)


def _pack(
    rows: list[dict[str, Any]], tokenizer: Tokenizer, seq_len: int, *, with_maps: bool
) -> dict[str, np.ndarray]:
    n = len(rows)
    out = {
        features.INPUT_IDS: np.full((n, seq_len), tokenizer.pad_id, np.int32),
        features.INPUT_MASK: np.zeros((n, seq_len), np.int32),
        features.SEGMENT_IDS: np.zeros((n, seq_len), np.int32),
        START_POSITIONS: np.zeros(n, np.int32),
        END_POSITIONS: np.zeros(n, np.int32),
        IS_IMPOSSIBLE: np.zeros(n, np.int32),
        EXAMPLE_INDEX: np.zeros(n, np.int64),
        UNIQUE_ID: FIRST_UNIQUE_ID + np.arange(n, dtype=np.int64),
    }
    if with_maps:
        out[TOKEN_START_CHAR] = np.full((n, seq_len), -1, np.int32)
        out[TOKEN_END_CHAR] = np.full((n, seq_len), -1, np.int32)
        out[TOKEN_IS_MAX_CONTEXT] = np.zeros((n, seq_len), bool)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for i, r in enumerate(rows):
        q, start, length, tok = r["q_ids"], r["start"], r["length"], r["tokens"]
        doc = slice(len(q) + 2, len(q) + 2 + length)  # the window's positions in the feature
        total = doc.stop + 1
        out[features.INPUT_IDS][i, : doc.start] = [cls, *q, sep]
        out[features.INPUT_IDS][i, doc] = tok.ids[start : start + length]
        out[features.INPUT_IDS][i, doc.stop] = sep
        out[features.INPUT_MASK][i, :total] = 1
        out[features.SEGMENT_IDS][i, doc.start : total] = 1
        out[START_POSITIONS][i], out[END_POSITIONS][i] = r["positions"]
        out[IS_IMPOSSIBLE][i] = int(r["impossible"])
        out[EXAMPLE_INDEX][i] = r["index"]
        if with_maps:
            out[TOKEN_START_CHAR][i, doc] = tok.starts[start : start + length]
            out[TOKEN_END_CHAR][i, doc] = tok.ends[start : start + length]
            out[TOKEN_IS_MAX_CONTEXT][i, doc] = r["max_context"]
    return out


def _log_issues(issues: Iterable[Issue], num_examples: int, is_training: bool) -> None:
    issues = list(issues)
    skipped = [i for i in issues if i.skipped]
    kind = "training" if is_training else "evaluation"
    for i in issues[:20]:
        log.warning(
            "SQuAD %s example %s %s: %s (%s)",
            kind,
            i.qas_id,
            "skipped" if i.skipped else "kept",
            i.reason,
            i.detail,
        )
    if len(issues) > 20:
        log.warning("... and %d more issue(s)", len(issues) - 20)
    if skipped:
        counts = collections.Counter(i.reason for i in skipped)
        log.warning(
            "SQuAD %s data: skipped %d of %d examples (%s)",
            kind,
            len(skipped),
            num_examples,
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        )


def context_offsets_to_text(context: str, start: int, end: int) -> str:
    """The original text of characters [start, end), whitespace runs collapsed to one space."""
    return " ".join(context[start:end].split())
