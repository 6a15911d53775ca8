"""Document streams for BERT pre-training: text files, TFDS datasets, an embedded corpus.

A *document* is a list of sentence strings. Pre-training pairs segments of the same
document ("actual next") or of two documents ("random next"), so document and sentence
boundaries are the only structure this module keeps.

Sources
-------
* **The original BERT text format** (google-research/bert `create_pretraining_data.py`):
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

* **TFDS text datasets** (e.g. ``wikipedia/20230601.en``): `iter_tfds_documents` takes
  one string field of each example (``text`` by default) as a document, splits it into
  paragraphs at line breaks and each paragraph into sentences with `split_sentences`
  (or keeps whole paragraphs as segments with ``segment="paragraph"``).
  `write_tfds_corpus` exports such a stream to sharded files in the BERT text format
  (`export_tfds_corpus` also returns the counts: documents, sentences, bytes),
  which is what `data_pipelines.pretraining_data` consumes; the TFDS read is in file
  order (``shuffle_files=False``), so the export is deterministic.

* **An embedded corpus every machine has offline**: the text of Python's own
  documentation shipped with CPython: every ``pydoc_data.topics`` topic (sorted), then
  one document per standard-library module (sorted by dotted name) holding its
  docstrings and comment blocks read from its source with `ast` (no code runs, so no
  import side effects are possible), followed by the docstrings of its public objects
  as imported in a separate, isolated interpreter (``python -I -S``: no site-packages,
  no environment; stdout/stderr silenced), which adds the C-implemented objects that
  have no source. GUI, test and code-generation packages and modules with import side
  effects (`antigravity`, `this`, `idlelib`, `tkinter`, `turtle`, `turtledemo`,
  `lib2to3`, `test`, ``*.tests``, ``__main__``, ...) are never read; modules that fail
  to import are skipped; a text seen before is not repeated. Docstrings are cut into
  sentences paragraph by paragraph (prose is joined and split, code/doctest/table lines
  stay one per segment). `write_embedded_corpus(path)` writes it in the BERT text format:
  2.86 MB, 522 documents, 40,570 sentences with CPython 3.11.7, byte-identical across
  runs of the same CPython (all CPython's documentation amounts to no more than this:
  the docstrings of the whole standard library are about 2 MB).

The sentence splitter is a small deterministic rule: a sentence ends at ``.``, ``!`` or
``?`` (plus closing quotes/brackets) followed by whitespace and an upper-case letter,
a digit or an opening quote/bracket, unless the word before the period is a known
abbreviation ("e.g.", "Dr.", "etc.") or a single-letter initial. CJK full stops end a
sentence unconditionally. No NLTK models, no downloads.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
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
                    "input_errors='replace' or 'ignore'"
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


# ---------------------------------------------------------------------------------------
# TFDS text datasets.


def iter_tfds_documents(
    name: str,
    *,
    split: str = "train",
    text_field: str = "text",
    data_dir: str | None = None,
    segment: Literal["sentence", "paragraph"] = "sentence",
    download: bool = False,
    max_documents: int | None = None,
    progress: bool = False,
) -> Iterator[Document]:
    """Streams documents from a TFDS dataset (e.g. "wikipedia/20230601.en").

    Args:
      name: TFDS name (with config/version, as `tfds.load` takes it).
      split: TFDS split expression.
      text_field: the string feature holding the document text; nested features as
        "outer/inner".
      data_dir: TFDS data directory (default: TFDS's own default).
      segment: "sentence" splits paragraphs into sentences; "paragraph" keeps each
        paragraph (line) as one segment.
      download: let TFDS download and prepare the dataset when missing (needs network).
      max_documents: stop after this many (non-empty) documents.
      progress: show a tqdm progress bar of the examples read (of the split's total).
    """
    tfds = storage.require_extra("tensorflow_datasets", f"tfds:{name}: reading a TFDS source")

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False, download=download)
    except Exception as e:  # unknown name or split, not prepared without download=True, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        hint = "" if download else " (pass --download to download and prepare it)"
        raise CorpusError(f"tfds:{name}[{split}]: cannot load the dataset: {first}{hint}") from e
    count = 0
    examples = tfds.as_numpy(ds)
    if progress:
        from tqdm.auto import tqdm

        total = int(ds.cardinality())  # negative: unknown
        examples = tqdm(examples, total=total if total >= 0 else None, desc=f"tfds:{name}",
                        unit=" examples")  # fmt: skip
    for index, example in enumerate(examples):
        value = example
        for key in text_field.split("/"):
            if not isinstance(value, dict) or key not in value:
                raise CorpusError(
                    f"tfds:{name}[{split}] example {index}: no text field {text_field!r} "
                    f"(fields: {sorted(example)})"
                )
            value = value[key]
        if isinstance(value, bytes):
            text = value.decode("utf-8", errors="replace")
        elif isinstance(value, str):
            text = value
        else:
            raise CorpusError(
                f"tfds:{name}[{split}] example {index}: field {text_field!r} is "
                f"{type(value).__name__}, not a string"
            )
        document = text_to_document(text, segment=segment)
        if document:
            yield document
            count += 1
            if max_documents is not None and count >= max_documents:
                return


def write_tfds_corpus(
    name: str,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    text_field: str = "text",
    data_dir: str | None = None,
    segment: Literal["sentence", "paragraph"] = "sentence",
    num_shards: int = 1,
    download: bool = False,
    max_documents: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Exports a TFDS text dataset to `num_shards` files in the BERT text format.

    Documents go round-robin to ``corpus-XXXXX-of-YYYYY.txt``; returns the file paths
    (`export_tfds_corpus` returns the counts too).
    """
    return list(
        export_tfds_corpus(
            name, out_dir, split=split, text_field=text_field, data_dir=data_dir,
            segment=segment, num_shards=num_shards, download=download,
            max_documents=max_documents, progress=progress,
        ).files
    )  # fmt: skip


def export_tfds_corpus(
    name: str,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    text_field: str = "text",
    data_dir: str | None = None,
    segment: Literal["sentence", "paragraph"] = "sentence",
    num_shards: int = 1,
    download: bool = False,
    max_documents: int | None = None,
    progress: bool = True,
) -> CorpusStats:
    """`write_tfds_corpus`, returning what it wrote: the counts over all shards and the
    shard files (`path` is `out_dir`)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if storage.is_remote(out_dir):  # written locally, then each shard uploaded whole
        with tempfile.TemporaryDirectory(prefix="bertjax-corpus-") as tmp:
            local = export_tfds_corpus(
                name, tmp, split=split, text_field=text_field, data_dir=data_dir,
                segment=segment, num_shards=num_shards, download=download,
                max_documents=max_documents, progress=progress,
            )  # fmt: skip
            paths = [storage.join(out_dir, os.path.basename(p)) for p in local.files]
            for src, dst in zip(local.files, paths, strict=True):
                storage.copy_file(src, dst)
        return dataclasses.replace(local, path=os.fspath(out_dir), files=tuple(paths))
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"corpus-{i:05d}-of-{num_shards:05d}.txt" for i in range(num_shards)]
    tmps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    files = [open(t, "w", encoding="utf-8", newline="\n") for t in tmps]  # noqa: SIM115
    counts = [0] * num_shards
    num_sentences = 0
    try:
        docs = iter_tfds_documents(
            name,
            split=split,
            text_field=text_field,
            data_dir=data_dir,
            segment=segment,
            download=download,
            max_documents=max_documents,
            progress=progress,
        )
        for index, document in enumerate(docs):
            shard = index % num_shards
            if counts[shard]:
                files[shard].write("\n")
            files[shard].write("\n".join(document))
            files[shard].write("\n")
            counts[shard] += 1
            num_sentences += len(document)
        for f in files:
            f.close()
        for tmp, path in zip(tmps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for f, tmp in zip(files, tmps, strict=True):
            f.close()
            if tmp.exists():
                tmp.unlink()
        if created and not any(out_dir.iterdir()):  # a failed export leaves nothing behind
            out_dir.rmdir()
    size = sum(p.stat().st_size for p in paths)
    return CorpusStats(str(out_dir), sum(counts), num_sentences, size, tuple(map(str, paths)))


# ---------------------------------------------------------------------------------------
# The embedded corpus: CPython's own documentation.

# Never read: GUI, test and code-generation packages (not documentation), and modules
# with side effects on import (browser, printing, writing files).
_EMBEDDED_SKIP_TOP = (
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "encodings",
    "ensurepip",
    "venv",
    "pydoc_data",
    "readline",
    "rlcompleter",
    "site-packages",
    "xxlimited",
    "xxlimited_35",
    "xxsubtype",
)
_EMBEDDED_SKIP_PARTS = ("test", "tests", "idle_test", "__main__", "__pycache__")

# Runs in a fresh `python -I -S` interpreter (standard library only, no user site, no
# environment variables): imports the public standard-library modules in sorted order,
# with stdout/stderr silenced, and writes [[module, [docstring, ...]], ...] as JSON to
# argv[1]. This picks up the docstrings of C-implemented objects, which have no source.
_EMBEDDED_COLLECTOR = r"""
import importlib, inspect, json, os, pkgutil, sys, warnings
warnings.simplefilter("ignore")
skip_top, skip_parts = set(json.loads(sys.argv[2])), set(json.loads(sys.argv[3]))
devnull = open(os.devnull, "w")
real_stdout, real_stderr = sys.stdout, sys.stderr

def allowed(name):
    parts = name.split(".")
    if parts[0] in skip_top:
        return False
    return not any(p.startswith("_") or p in skip_parts for p in parts)

def try_import(name):
    sys.stdout, sys.stderr = devnull, devnull
    try:
        return importlib.import_module(name)
    except BaseException:
        return None
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr

names = set()
for top in sorted(n for n in sys.stdlib_module_names if allowed(n)):
    module = try_import(top)
    if module is None:
        continue
    names.add(top)
    path = getattr(module, "__path__", None)
    if path is None:
        continue
    stack = [(list(path), top)]
    while stack:
        paths, prefix = stack.pop()
        for info in sorted(pkgutil.iter_modules(paths), key=lambda i: i.name):
            sub = prefix + "." + info.name
            if not allowed(sub):
                continue
            child = try_import(sub)
            if child is None:
                continue
            names.add(sub)
            if info.ispkg and getattr(child, "__path__", None) is not None:
                stack.append((list(child.__path__), sub))

def doc_of(obj):
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None

def member_docs(module):
    docs = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        doc = doc_of(obj)
        if doc:
            docs.append(doc)
        if inspect.isclass(obj):
            for attr, value in sorted(vars(obj).items()):
                if attr.startswith("_"):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property):
                    value = value.fget
                if inspect.isroutine(value) or inspect.isdatadescriptor(value):
                    doc = doc_of(value)
                    if doc:
                        docs.append(doc)
    return docs

out = []
for name in sorted(names):
    module = sys.modules.get(name)
    if module is None:
        continue
    docs = []
    doc = doc_of(module)
    if doc:
        docs.append(doc)
    try:
        docs.extend(member_docs(module))
    except Exception:
        pass
    out.append([name, docs])
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(out, f)
"""

_BULLET = re.compile(r"^([-*+\u2022]|\d+[.)]|\(?[a-z]\))\s+")
_CODE_START = re.compile(r"^(>>>|\.\.\.|\||\+[-=]|\$ )")
_RULE_LINE = re.compile(r"^[=\-~^*#+`'\":._]{3,}$")


def docstring_to_sentences(text: str) -> list[str]:
    """Sentences of a docstring, help topic or comment block.

    Paragraphs are separated by blank lines. Plain prose lines (at the paragraph's
    indentation) are joined and split into sentences; a bullet starts a list item whose
    continuation lines join it; doctest, table and deeper-indented (code) lines are kept
    one line per segment; reST underlines are dropped.
    """
    out: list[str] = []
    for paragraph in re.split(r"\n[ \t]*\n", inspect.cleandoc(text)):
        lines = [
            line.rstrip()
            for line in paragraph.splitlines()
            if line.strip() and not _RULE_LINE.match(line.strip())
        ]
        if not lines:
            continue
        base = min(len(line) - len(line.lstrip()) for line in lines)
        segments: list[tuple[str, list[str], int]] = []  # (kind, lines, indent)
        for line in lines:
            indent = len(line) - len(line.lstrip()) - base
            stripped = line.strip()
            last = segments[-1] if segments else None
            if _CODE_START.match(stripped):
                segments.append(("code", [stripped], indent))
            elif indent == 0 and _BULLET.match(stripped):
                segments.append(("item", [stripped], 0))
            elif indent == 0 and last is not None and last[0] in ("prose", "item"):
                last[1].append(stripped)
            elif indent == 0:
                segments.append(("prose", [stripped], 0))
            elif last is not None and last[0] == "item" and indent <= 6:
                last[1].append(stripped)
            elif last is not None and last[0] == "block" and last[2] == indent:
                last[1].append(stripped)
            else:
                segments.append(("block", [stripped], indent))
        for kind, seg_lines, _ in segments:
            if kind == "code" or (kind == "block" and not _looks_like_prose(seg_lines)):
                out.extend(" ".join(line.split()) for line in seg_lines)
            else:
                out.extend(split_sentences(" ".join(seg_lines)))
    return [s for s in out if s]


def _looks_like_prose(lines: list[str]) -> bool:
    """An indented block of wrapped prose (not code): mostly words, ends like a sentence."""
    words = " ".join(lines).split()
    alpha = sum(w.strip(".,;:()\"'*").isalpha() for w in words)
    return len(words) >= 6 and alpha >= 0.75 * len(words) and lines[-1][-1:] in ".:!?)"


def _source_module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _embedded_module_allowed(name: str, *, allow_private: bool) -> bool:
    parts = name.split(".")
    if not parts or parts[0] in _EMBEDDED_SKIP_TOP:
        return False
    if any(p in _EMBEDDED_SKIP_PARTS for p in parts):
        return False
    return allow_private or not any(p.startswith("_") for p in parts)


def _source_docs(path: str) -> list[str]:
    """Docstrings (in source order) and comment blocks of one Python source file."""
    import ast

    with open(path, "rb") as f:
        source = f.read()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    texts: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and doc.strip():
                texts.append(doc)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(tree)
    # Comment blocks: runs of lines starting with '#' (not shebang/coding lines).
    block: list[str] = []
    for raw in source.decode("utf-8", errors="replace").splitlines() + [""]:
        stripped = raw.strip()
        if stripped.startswith("#") and not stripped.startswith(("#!", "# -*-")):
            block.append(stripped.lstrip("#").strip())
            continue
        words = " ".join(block).split()
        if sum(w.isalpha() for w in words) >= 4:
            texts.append("\n\n".join(p for p in "\n".join(block).split("\n\n")))
        block = []
    return texts


def collect_embedded_documents(*, timeout: float = 300.0, progress: bool = False) -> list[Document]:
    """The embedded corpus as documents (see module docstring), deterministically ordered.

    One document per `pydoc_data.topics` topic (sorted by topic name), then one per
    standard-library module (sorted by dotted name) holding, in order: the docstrings
    and comment blocks of its Python source (read with `ast`; no code is executed), and
    the docstrings of its public objects as imported in an isolated interpreter (which
    adds C-implemented objects). A text seen before is not repeated. `progress` shows a
    tqdm bar of the source files read, the import pass counted as one more.
    """
    import sysconfig
    from pydoc_data.topics import topics

    from tqdm.auto import tqdm

    per_module: dict[str, list[str]] = {}
    sources: list[tuple[str, str]] = []  # (module, file), read after the walk: a known total
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if _embedded_module_allowed(
                d if rel_dir == "." else f"{rel_dir.replace(os.sep, '.')}.{d}",
                allow_private=True,
            )
            and "-" not in d
        )
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, filename), root)
            name = _source_module_name(rel)
            if not name or not _embedded_module_allowed(name, allow_private=True):
                continue
            sources.append((name, os.path.join(dirpath, filename)))
    bar = tqdm(total=len(sources) + 1, desc="embedded corpus", unit=" files", disable=not progress)
    for name, path in sources:
        per_module.setdefault(name, []).extend(_source_docs(path))
        bar.update()

    bar.set_postfix_str("importing the modules for their docstrings")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "docs.json")
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
        proc = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _EMBEDDED_COLLECTOR,
                out,
                json.dumps(_EMBEDDED_SKIP_TOP),
                json.dumps(_EMBEDDED_SKIP_PARTS),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
            cwd=tmp,
            check=False,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(
                "collecting the embedded corpus failed: "
                + proc.stderr.decode("utf-8", "replace")[-2000:]
            )
        with open(out, encoding="utf-8") as f:
            for name, docs in json.load(f):
                per_module.setdefault(name, []).extend(docs)
    bar.update()
    bar.close()

    documents: list[Document] = []
    seen: set[str] = set()
    groups = [[topics[t]] for t in sorted(topics)]
    groups += [per_module[name] for name in sorted(per_module)]
    for texts in groups:
        document = []
        for text in texts:
            key = " ".join(text.split())
            if key in seen:
                continue
            seen.add(key)
            document.extend(docstring_to_sentences(text))
        if document:
            documents.append(document)
    return documents


def write_embedded_corpus(out_path: str | os.PathLike, *, progress: bool = True) -> CorpusStats:
    """Writes the embedded corpus (CPython's documentation) in the BERT text format.

    Deterministic: the same CPython version writes the same bytes. `progress`: a tqdm bar
    of the standard-library files read.
    """
    return write_documents(collect_embedded_documents(progress=progress), out_path)
