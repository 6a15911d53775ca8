"""Corpus sources: BERT-format text files built from a TFDS text dataset or from an
embedded corpus every machine has (`bertjax corpus`).

Both write the BERT text format of `data_pipelines.corpus` (one sentence per line, a blank
line between documents) and return its `CorpusStats`.

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from bertjax import storage
from data_pipelines.corpus import (
    CorpusError,
    CorpusStats,
    Document,
    split_sentences,
    text_to_document,
    write_documents,
)

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


def write_tfds_corpus(name: str, out_dir: str | os.PathLike, **kwargs: Any) -> list[str]:
    """Exports a TFDS text dataset to `num_shards` files in the BERT text format.

    Takes the arguments of `export_tfds_corpus`. Documents go round-robin to
    ``corpus-XXXXX-of-YYYYY.txt``; returns the file paths (`export_tfds_corpus` returns
    the counts too).
    """
    return list(export_tfds_corpus(name, out_dir, **kwargs).files)


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
    """Exports a TFDS text dataset to `num_shards` files in the BERT text format, returning
    what it wrote: the counts over all shards and the shard files (`path` is `out_dir`).

    Documents go round-robin to ``corpus-XXXXX-of-YYYYY.txt``.
    """
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
    counts = [0] * num_shards
    num_sentences = 0
    try:
        # Each shard is written under a temporary name and renamed once all are complete.
        with contextlib.ExitStack() as shards:
            files = [
                shards.enter_context(storage.atomic_open(p, "w", encoding="utf-8", newline="\n"))
                for p in paths
            ]
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
    finally:
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
# argv[1], a scratch file that `collect_embedded_documents` reads back (the isolated
# interpreter cannot import bertjax). This picks up the docstrings of C-implemented objects,
# which have no source.
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
