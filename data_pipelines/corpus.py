"""Document streams for BERT pre-training: the BERT text format, read and written.

A *document* is a list of sentence strings. Pre-training pairs segments of the same
document ("actual next") or of two documents ("random next"), so document and sentence
boundaries are the only structure this module keeps.

**The original BERT text format** (google-research/bert `create_pretraining_data.py`):
one sentence per line, a blank (or whitespace-only) line between documents.
`iter_documents(paths)` streams it line by line from local files or glob patterns, in
sorted, de-duplicated path order, so the stream is identical on every machine. Design
decisions, all deliberate:

- The end of a file ends the current document (the original lets a document run on
  into the next file, which makes the result depend on how a corpus was sharded).
- Lines are split on ``\\n`` only; the surrounding whitespace is stripped, so CRLF
  files read like LF files. A UTF-8 byte-order mark at the start of a file is dropped.
- Bytes are decoded as UTF-8. ``errors="strict"`` (default) raises `CorpusError`
  naming ``file:line`` at the first invalid byte sequence; ``errors="replace"``
  substitutes U+FFFD and emits one `CorpusWarning` per file naming the first bad
  ``file:line`` and the number of bad lines; ``errors="ignore"`` drops the bad bytes
  (same warning).
- An input file that holds no document emits a `CorpusWarning` naming it.
- Memory stays bounded on any input: a line longer than `max_line_chars` is read in
  pieces, cut into sentences by `split_sentences`, and sentences still over the limit
  are cut at whitespace; a `CorpusWarning` names the first such ``file:line``.

`iter_lines(path)` is the same reader line by line, with line numbers and without the
document structure, for files with a line format of their own (`bertjax features`).
Every command that reads text (vocab, prepare, features) reads it through these two,
under the one ``errors`` policy (the ``--input_errors`` flag).

`write_documents` writes documents in that format (atomically). Where a corpus comes from when
there are no text files yet (a TFDS text dataset, the embedded corpus of Python's own
documentation) is `data_pipelines.corpus_sources`.

The sentence splitter is a small deterministic rule: a sentence ends at ``.``, ``!`` or
``?`` (plus closing quotes/brackets) followed by whitespace and an upper-case letter,
a digit or an opening quote/bracket, unless the word before the period is a known
abbreviation ("e.g.", "Dr.", "etc.") or a single-letter initial. CJK full stops end a
sentence unconditionally. No NLTK models, no downloads.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

from bertjax import storage

Document = list[str]

DEFAULT_MAX_LINE_CHARS = 100_000
ERROR_POLICIES = ("strict", "replace", "ignore")  # the UTF-8 decoding policies


class CorpusError(ValueError):
    """Bad corpus input; the message names the file (and line) at fault."""


class CorpusWarning(UserWarning):
    """Recoverable corpus problem (empty file, replaced bytes, overlong line)."""


@dataclasses.dataclass(frozen=True)
class CorpusStats:
    """What a corpus writer wrote: `path` (the file, or the directory of shards), the
    totals over its files, and the files."""

    path: str
    num_documents: int
    num_sentences: int
    num_bytes: int
    files: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# Sentence splitting.

_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr jr st mt ft vs etc cf al fig figs eq eqs no nos vol vols ch
    sec secs p pp ed eds inc ltd co corp dept univ approx est gen col lt sgt capt cmdr
    gov sen rep rev hon jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e
    u.s u.k u.n a.m p.m ph.d viz resp op ibid
    """.split()
)
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f]+")
_SENTENCE_OPENERS = "\"'(\u201c\u2018["


def split_sentences(text: str) -> list[str]:
    """Splits `text` into sentences with a deterministic rule (see module docstring).

    Whitespace inside a sentence is collapsed to single spaces; empty pieces are dropped.
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        punct = match.group()
        if punct[0] in ".!?":
            if end >= len(text):
                continue
            following = text[end]
            if not (following.isupper() or following.isdigit() or following in _SENTENCE_OPENERS):
                continue
            if punct.startswith(".") and _is_abbreviation(text, start, match.start()):
                continue
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _is_abbreviation(text: str, start: int, period: int) -> bool:
    """Whether the word ending at `period` (an index of '.') is an abbreviation."""
    word_start = text.rfind(" ", start, period) + 1
    word = text[max(word_start, start) : period].lstrip("\"'(\u201c\u2018[").lower()
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith"
    return word in _ABBREVIATIONS


def split_paragraphs(text: str) -> list[str]:
    """Splits `text` at line breaks into non-empty, whitespace-collapsed paragraphs."""
    return [" ".join(p.split()) for p in text.splitlines() if p.strip()]


def text_to_document(
    text: str, *, segment: Literal["sentence", "paragraph"] = "sentence"
) -> Document:
    """One document from raw text: paragraphs at line breaks, then sentences or not."""
    if segment not in ("sentence", "paragraph"):
        raise ValueError(f"segment must be 'sentence' or 'paragraph', got {segment!r}")
    paragraphs = split_paragraphs(text)
    if segment == "paragraph":
        return paragraphs
    return [s for p in paragraphs for s in split_sentences(p)]


# ---------------------------------------------------------------------------------------
# The BERT text format: reading.


def expand_input_files(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands paths and glob patterns (a comma-separated string is also accepted).

    Returns sorted, de-duplicated paths. Raises `CorpusError` for a pattern matching
    nothing or a path that is a directory.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p for p in str(patterns).split(",") if p.strip()]
    files: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern).strip())
        matches = storage.glob(pattern) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if storage.exists(m)]
        if not matches:
            raise CorpusError(f"{pattern}: no such input file")
        for match in matches:
            if storage.isdir(match):
                raise CorpusError(f"{match}: is a directory, expected a text file")
            files.add(match)
    if not files:
        raise CorpusError("no input files given")
    return sorted(files)


def iter_documents(
    input_files: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    errors: Literal["strict", "replace", "ignore"] = "strict",
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Document]:
    """Streams documents from files in the BERT text format (see module docstring).

    Args:
      input_files: paths or glob patterns; expanded with `expand_input_files`.
      errors: UTF-8 decoding policy: "strict" raises `CorpusError` naming file:line,
        "replace"/"ignore" repair the line and warn (`CorpusWarning`, naming file:line).
      max_line_chars: longer lines are split into sentences (bounded memory).
      on_bytes: called with the number of bytes consumed since its previous call (for
        progress bars).
    Yields:
      Non-empty documents: lists of non-empty, stripped sentence strings.
    """
    for path in expand_input_files(input_files):
        yield from iter_file_documents(
            path, errors=errors, max_line_chars=max_line_chars, on_bytes=on_bytes
        )


def iter_file_documents(
    path: str | os.PathLike,
    *,
    errors: Literal["strict", "replace", "ignore"] = "strict",
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Document]:
    """Streams the documents of one file in the BERT text format; see `iter_documents`.

    Reads 1 MiB blocks and decodes whole blocks of complete lines at once (the fast
    path); a line longer than `max_line_chars` is consumed in pieces cut at spaces.
    """
    if max_line_chars < 16:
        raise ValueError(f"max_line_chars must be >= 16, got {max_line_chars}")
    reader = _LineReader(str(path), _check_errors(errors), max_line_chars)
    document: Document = []
    num_documents = 0
    for line in _read(reader, on_bytes):
        if line:
            document.append(line)
        elif document:
            num_documents += 1
            yield document
            document = []
    if document:
        num_documents += 1
        yield document
    if reader.first_overlong:
        warnings.warn(
            f"{reader.path}:{reader.first_overlong}: line longer than max_line_chars="
            f"{max_line_chars} was split into sentences",
            CorpusWarning,
            stacklevel=2,
        )
    if num_documents == 0:
        warnings.warn(f"{reader.path}: input file holds no document", CorpusWarning, stacklevel=2)


def iter_lines(
    path: str | os.PathLike,
    *,
    errors: Literal["strict", "replace", "ignore"] = "strict",
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every line of one UTF-8 text file, blank ones too.

    The same reading as `iter_documents` (byte-order mark, ``\\n`` line ends, stripping,
    the `errors` policy and its `CorpusError` / `CorpusWarning` naming ``file:line``) for
    files with a line format of their own; lines are whole, however long. Line numbers
    start at 1.
    """
    reader = _LineReader(str(path), _check_errors(errors), None)
    for line in _read(reader, on_bytes):
        yield reader.lineno, line


def _check_errors(errors: str) -> str:
    if errors not in ERROR_POLICIES:
        raise ValueError(f"errors must be one of {ERROR_POLICIES}, got {errors!r}")
    return errors


_BLOCK_BYTES = 1 << 20


def count_lines(path: str | os.PathLike) -> int:
    """The number of lines `iter_lines` yields for a local file (a total for progress bars):
    its line ends, plus one for a last line without one."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(_BLOCK_BYTES):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _read(reader: _LineReader, on_bytes: Callable[[int], None] | None) -> Iterator[str]:
    """What `reader` makes of its file's lines, read in 1 MiB blocks; warns of bad bytes."""
    try:
        f = storage.open_file(reader.path, "rb")  # noqa: SIM115 (closed in finally)
    except OSError as e:
        raise CorpusError(f"{reader.path}: cannot open input file: {e.strerror}") from e
    limit = reader.max_line_chars
    try:
        carry = b""
        first = True
        while True:
            block = f.read(_BLOCK_BYTES)
            if on_bytes is not None and block:
                on_bytes(len(block))
            if first:
                block = block.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
                first = False
            if block:
                data = carry + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    if limit is not None and len(data) > limit:  # an overlong line, still open
                        piece, carry = _cut_piece(data)
                        yield from reader.overlong_piece(piece)
                    else:
                        carry = data
                    continue
                complete, carry = data[:cut], data[cut + 1 :]
            elif carry:
                complete, carry = carry, b""
            else:
                break
            yield from reader.lines(complete)
    finally:
        f.close()
    if reader.bad_lines:
        warnings.warn(
            f"{reader.path}:{reader.first_bad}: invalid UTF-8 bytes "
            f"{'replaced by U+FFFD' if reader.errors == 'replace' else 'dropped'} "
            f"({reader.bad_lines} line(s) in this file)",
            CorpusWarning,
            stacklevel=3,
        )


class _LineReader:
    """Decodes complete lines, tracking line numbers, bad bytes and overlong lines.

    With `max_line_chars` None, every line is yielded whole; otherwise a longer line
    is yielded as its sentences (see `iter_documents`).
    """

    def __init__(self, path: str, errors: str, max_line_chars: int | None):
        self.path = path
        self.errors = errors
        self.max_line_chars = max_line_chars
        self.lineno = 0  # lines completed
        self.in_overlong = False  # the current line was partly consumed as pieces
        self.bad_lines = 0
        self.bad_rows: set[int] = set()  # lines of the last decoded block with invalid bytes
        self.first_bad = 0
        self.first_overlong = 0

    def _decode(self, data: bytes) -> str:
        """Decodes lines (starting at line lineno + 1), applying the error policy."""
        self.bad_rows = set()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = self.lineno + data.count(b"\n", 0, e.start) + 1
            if self.errors == "strict":
                start = data.rfind(b"\n", 0, e.start) + 1
                raise CorpusError(
                    f"{self.path}:{line}: invalid UTF-8 (byte {e.start - start} of the line: "
                    f"{data[e.start : e.start + 4]!r}); fix the file or read it with "
                    "--input_errors replace or ignore (input_errors='replace' or 'ignore')"
                ) from None
        for k, raw in enumerate(data.split(b"\n")):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_lines += 1
                self.first_bad = self.first_bad or self.lineno + k + 1
                self.bad_rows.add(k)
        return data.decode("utf-8", errors=self.errors)

    def _sentences(self, text: str) -> list[str]:
        assert self.max_line_chars is not None
        return [p for s in split_sentences(text) for p in _cut_long(s, self.max_line_chars)]

    def overlong_piece(self, piece: bytes) -> list[str]:
        """Sentences of a piece of a line too long to hold (the line is not complete)."""
        self.first_overlong = self.first_overlong or self.lineno + 1
        self.in_overlong = True
        return self._sentences(self._decode(piece))

    def lines(self, data: bytes) -> Iterator[str]:
        """Stripped lines of `data` (complete lines, without the final newline).

        An overlong line yields its sentences one per item; a blank line yields "".
        """
        limit = self.max_line_chars
        text = self._decode(data)
        bad_rows = self.bad_rows
        for k, line in enumerate(text.split("\n")):
            self.lineno += 1
            if k == 0 and self.in_overlong:
                self.in_overlong = False
                yield from self._sentences(line)
                continue
            if limit is not None and len(line) > limit:
                self.first_overlong = self.first_overlong or self.lineno
                yield from self._sentences(line)
                continue
            line = line.strip()
            if not line and k in bad_rows and limit is not None:
                continue  # only undecodable bytes, dropped: no document boundary in documents
            yield line


def _cut_piece(data: bytes) -> tuple[bytes, bytes]:
    """Splits an incomplete overlong line at its last space (else at a UTF-8 boundary)."""
    cut = data.rfind(b" ")
    if cut <= 0:
        cut = len(data)
        while cut > 0 and data[cut - 1] & 0xC0 == 0x80:  # continuation bytes
            cut -= 1
        if cut > 0 and data[cut - 1] >= 0xC0:  # the lead byte of an incomplete character
            cut -= 1
        if cut == 0:
            cut = len(data)
    return data[:cut], data[cut:]


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    """Cuts a sentence longer than `max_chars` at whitespace (or hard, if it has none)."""
    pieces = []
    while len(sentence) > max_chars:
        cut = sentence.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        pieces.append(sentence)
    return [p for p in pieces if p]


# ---------------------------------------------------------------------------------------
# The BERT text format: writing.


def write_documents(documents: Iterable[Document], out_path: str | os.PathLike) -> CorpusStats:
    """Writes documents in the BERT text format (atomically: temporary name, then rename).

    Sentences are whitespace-collapsed so a sentence never spans lines; empty sentences
    and empty documents are dropped.
    """
    out_path = os.fspath(out_path)
    num_documents = num_sentences = 0
    with storage.atomic_open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for document in documents:
            lines = [" ".join(s.split()) for s in document]
            lines = [s for s in lines if s]
            if not lines:
                continue
            if num_documents:
                f.write("\n")
            f.write("\n".join(lines))
            f.write("\n")
            num_documents += 1
            num_sentences += len(lines)
    size = storage.path(out_path).stat().length
    return CorpusStats(out_path, num_documents, num_sentences, size, (out_path,))
