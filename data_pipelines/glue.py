"""GLUE tasks: the task table, readers for the standard download layout and TFDS, featurization.

`TASKS` maps a task name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax) to a `TaskSpec`
that says everything the readers, the fine-tuning runner and `bertjax.glue_metrics` need: where
each split lives in the standard download layout (the directories written by the GLUE download
script: `CoLA/`, `SST-2/`, ..., and `diagnostic/diagnostic.tsv` for AX), which columns hold the
texts, the label and the id, the class order, the TFDS name and feature keys, the metrics and the
GLUE-server submission file of each test split. AX (the diagnostic set) has only a test split; it
is predicted with the MNLI model (`predict_with="mnli"`) and does not count in the GLUE score.

Split names are TFDS's: `train`, `validation`, `test`, and for MNLI `validation_matched`,
`validation_mismatched`, `test_matched`, `test_mismatched`.

Class order (`label_names`, the model's class ids) is TFDS's (and Hugging Face datasets'), so ids
from either source agree: MNLI entailment/neutral/contradiction, QNLI and RTE
entailment/not_entailment; CoLA, SST-2, MRPC, QQP and WNLI use the file labels "0"/"1", which are
also what their submission files hold. google-research/bert orders MNLI as contradiction,
entailment, neutral: a classifier head imported from one of its MNLI checkpoints needs permuting.

Reading the local TSV files (`read_split`), deliberately:

* Quoting is off (as csv.QUOTE_NONE): sentences contain unbalanced quotes. A row is one line
  split on tabs; lines end at "\\n" only (a trailing "\\r" is dropped), so a stray carriage return
  inside a sentence neither splits a row nor crashes the reader. Blank lines are skipped.
* Bytes are UTF-8; a byte-order mark at the start of a file (some MRPC copies) is dropped.
* Files with a header (all but CoLA's train/dev) are checked against it: the columns used must
  carry the expected names, and every row must have as many fields as the header (CoLA: 4). MNLI's
  label is the last column (`gold_label`; train and dev have different widths).
* Labels are mapped by name to class ids (`label_names.index`); STS-B scores are floats.
* Malformed rows (wrong field count, unknown label, bad UTF-8) in a *train* file are skipped, as
  the original processors do for QQP's broken rows, with one `GlueDataWarning` giving their count
  and the first file:line. In dev and test files they raise `GlueDataError` naming file:line.
* A train or dev file without a single example (only a header, or every train row malformed)
  raises `GlueDataError` naming the file; a test file with only a header has nothing to predict.
  `check_split` reads a split the same way without keeping it, to check the files up front.
* `Example.index` is the test file's `index`/`id` column (the id the GLUE server expects); for
  train/dev files it is the 0-based data-row number (counting skipped rows, like TFDS's `idx`).

`load_tfds_split` reads the same examples from the TFDS `glue/*` datasets (label -1 in their test
splits means unlabelled) and returns them sorted by `idx`. `featurize` turns examples into the
arrays the classifier consumes, through `tokenizers.encode_pair` (BERT's truncation).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from bertjax import storage
from data_pipelines import features
from data_pipelines.features import EXAMPLE_INDEX  # featurize(): each row's Example.index
from data_pipelines.tokenizers import Tokenizer, encode_pair

TFDS_NEEDS = "reading GLUE from TFDS (data_dir tfds)"  # what needs the `tf` extra
_BOM = b"\xef\xbb\xbf"


class GlueDataError(ValueError):
    """A GLUE file cannot be read as its task's layout; the message names file:line."""


class GlueDataWarning(UserWarning):
    """Rows of a train file were skipped as malformed."""


class Column(NamedTuple):
    """A TSV column: 0-based position (-1 = last) and its header name (None: the file has none)."""

    position: int
    name: str | None


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """Where one split lives in the download layout and how its rows read."""

    split: str  # TFDS split name: train, validation, test, validation_matched, ...
    file: str  # relative to the task directory
    has_header: bool  # the first line names the columns
    text_a: Column
    text_b: Column | None  # None for single-sentence tasks
    label: Column | None  # None for unlabelled (test) files
    index: Column | None  # the id column of test files; None: the row number is the id
    num_columns: int | None = None  # fields per row of a header-less file (else the header's)
    metric_suffix: str = ""  # appended to metric names in the results dict (MNLI: _m, _mm)
    submission: str | None = None  # GLUE-server file name of this split's predictions

    @property
    def is_labelled(self) -> bool:
        return self.label is not None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One GLUE task."""

    name: str  # key in TASKS
    display_name: str  # as on the leaderboard
    directory: str  # the task's directory in the download layout
    label_names: tuple[str, ...] | None  # class names in class-id order; None: regression
    metrics: tuple[str, ...]  # matthews_corrcoef, accuracy, f1, pearson, spearman
    splits: tuple[SplitFile, ...]
    tfds_name: str  # e.g. glue/mnli
    tfds_text_keys: tuple[str, ...]  # TFDS feature keys of text_a (and text_b)
    tfds_label_names: tuple[str, ...] | None  # TFDS ClassLabel names, same order as label_names
    predict_with: str  # the task whose fine-tuned model predicts this one (AX: mnli)
    scored: bool = True  # counts in the GLUE score (AX does not)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Classifier outputs: the number of classes, 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.tfds_text_keys) == 2

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s.split for s in self.splits)

    @property
    def train_split(self) -> str | None:
        return "train" if "train" in self.split_names else None

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The labelled splits scored on the dev set (MNLI: matched and mismatched)."""
        return tuple(s for s in self.split_names if s.startswith("validation"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.split_names if s.startswith("test"))

    @property
    def submission_files(self) -> tuple[str, ...]:
        return tuple(s.submission for s in self.splits if s.submission)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Keys of this task's entry in a results dict: each metric per eval split suffix.

        MNLI: ("accuracy_m", "accuracy_mm"); MRPC: ("f1", "accuracy"). AX (no eval split):
        its metric names.
        """
        suffixes = [self.split(s).metric_suffix for s in self.eval_splits] or [""]
        return tuple(m + sfx for sfx in suffixes for m in self.metrics)

    def split(self, name: str) -> SplitFile:
        """The SplitFile of split `name`; ValueError listing the task's splits otherwise."""
        for s in self.splits:
            if s.split == name:
                return s
        raise ValueError(f"{self.name} has no split {name!r}; its splits: {self.split_names}")


@dataclasses.dataclass(frozen=True)
class Example:
    """One GLUE example."""

    index: int  # submission id (test files' index/id column), else the data-row number
    text_a: str
    text_b: str | None  # None for single-sentence tasks
    label: int | float | None  # class id, float score (STS-B), None when unlabelled


# ----------------------------------------------------------------------------------------------
# The task table.

_BINARY = ("0", "1")
_MNLI_LABELS = ("entailment", "neutral", "contradiction")
_NLI2_LABELS = ("entailment", "not_entailment")
Col = tuple[int, "str | None"]


def _cols(
    a: Col, b: Col | None = None, *, label: Col | None = None, index: Col | None = None
) -> dict[str, Column | None]:
    """SplitFile column fields from (position, header name) pairs."""
    as_col = lambda c: Column(*c) if c else None
    return dict(text_a=Column(*a), text_b=as_col(b), label=as_col(label), index=as_col(index))


def _splits(labelled: dict, test: dict, submission: str, **kw) -> tuple[SplitFile, ...]:
    """train.tsv, dev.tsv (same layout) and test.tsv (with a header and an id column)."""
    return (
        SplitFile("train", "train.tsv", **labelled, **kw),
        SplitFile("validation", "dev.tsv", **labelled, **kw),
        SplitFile("test", "test.tsv", True, **test, submission=submission),
    )


def _nli_splits(a: str, b: str, submission: str) -> tuple[SplitFile, ...]:
    """QNLI, RTE, WNLI: `index a b label`; test `index a b`."""
    labelled = _cols((1, a), (2, b), label=(3, "label"))
    return _splits(labelled, _cols((1, a), (2, b), index=(0, "index")), submission, has_header=True)


def _mnli_splits() -> tuple[SplitFile, ...]:
    # index, promptID, pairID, genre, 4 parse columns, sentence1, sentence2, [labels.., gold_label]
    labelled = _cols((8, "sentence1"), (9, "sentence2"), label=(-1, "gold_label"))
    test = _cols((8, "sentence1"), (9, "sentence2"), index=(0, "index"))
    return (
        SplitFile("train", "train.tsv", True, **labelled),
        SplitFile("validation_matched", "dev_matched.tsv", True, **labelled, metric_suffix="_m"),
        SplitFile(
            "validation_mismatched", "dev_mismatched.tsv", True, **labelled, metric_suffix="_mm"
        ),
        SplitFile("test_matched", "test_matched.tsv", True, **test, submission="MNLI-m.tsv"),
        SplitFile("test_mismatched", "test_mismatched.tsv", True, **test, submission="MNLI-mm.tsv"),
    )


_TASK_LIST = (
    TaskSpec(
        name="cola", display_name="CoLA", directory="CoLA",
        label_names=_BINARY, metrics=("matthews_corrcoef",),
        # train/dev without header: source, label, original mark, sentence. test: index, sentence.
        splits=_splits(
            _cols((3, None), label=(1, None)), _cols((1, "sentence"), index=(0, "index")),
            "CoLA.tsv", has_header=False, num_columns=4,
        ),
        tfds_name="glue/cola", tfds_text_keys=("sentence",),
        tfds_label_names=("unacceptable", "acceptable"), predict_with="cola",
    ),
    TaskSpec(
        name="sst2", display_name="SST-2", directory="SST-2",
        label_names=_BINARY, metrics=("accuracy",),
        splits=_splits(
            _cols((0, "sentence"), label=(1, "label")), _cols((1, "sentence"), index=(0, "index")),
            "SST-2.tsv", has_header=True,
        ),
        tfds_name="glue/sst2", tfds_text_keys=("sentence",),
        tfds_label_names=("negative", "positive"), predict_with="sst2",
    ),
    TaskSpec(
        name="mrpc", display_name="MRPC", directory="MRPC",
        label_names=_BINARY, metrics=("f1", "accuracy"),
        # Quality, #1 ID, #2 ID, #1 String, #2 String; test: index, #1 ID, #2 ID, #1 String, ...
        splits=_splits(
            _cols((3, "#1 String"), (4, "#2 String"), label=(0, "Quality")),
            _cols((3, "#1 String"), (4, "#2 String"), index=(0, "index")),
            "MRPC.tsv", has_header=True,
        ),
        tfds_name="glue/mrpc", tfds_text_keys=("sentence1", "sentence2"),
        tfds_label_names=("not_equivalent", "equivalent"), predict_with="mrpc",
    ),
    TaskSpec(
        name="stsb", display_name="STS-B", directory="STS-B",
        label_names=None, metrics=("pearson", "spearman"),
        # index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score
        splits=_splits(
            _cols((7, "sentence1"), (8, "sentence2"), label=(9, "score")),
            _cols((7, "sentence1"), (8, "sentence2"), index=(0, "index")),
            "STS-B.tsv", has_header=True,
        ),
        tfds_name="glue/stsb", tfds_text_keys=("sentence1", "sentence2"),
        tfds_label_names=None, predict_with="stsb",
    ),
    TaskSpec(
        name="qqp", display_name="QQP", directory="QQP",
        label_names=_BINARY, metrics=("f1", "accuracy"),
        # id, qid1, qid2, question1, question2, is_duplicate; test: id, question1, question2
        splits=_splits(
            _cols((3, "question1"), (4, "question2"), label=(5, "is_duplicate")),
            _cols((1, "question1"), (2, "question2"), index=(0, "id")),
            "QQP.tsv", has_header=True,
        ),
        tfds_name="glue/qqp", tfds_text_keys=("question1", "question2"),
        tfds_label_names=("not_duplicate", "duplicate"), predict_with="qqp",
    ),
    TaskSpec(
        name="mnli", display_name="MNLI", directory="MNLI",
        label_names=_MNLI_LABELS, metrics=("accuracy",),
        splits=_mnli_splits(),
        tfds_name="glue/mnli", tfds_text_keys=("premise", "hypothesis"),
        tfds_label_names=_MNLI_LABELS, predict_with="mnli",
    ),
    TaskSpec(
        name="qnli", display_name="QNLI", directory="QNLI",
        label_names=_NLI2_LABELS, metrics=("accuracy",),
        splits=_nli_splits("question", "sentence", "QNLI.tsv"),
        tfds_name="glue/qnli", tfds_text_keys=("question", "sentence"),
        tfds_label_names=_NLI2_LABELS, predict_with="qnli",
    ),
    TaskSpec(
        name="rte", display_name="RTE", directory="RTE",
        label_names=_NLI2_LABELS, metrics=("accuracy",),
        splits=_nli_splits("sentence1", "sentence2", "RTE.tsv"),
        tfds_name="glue/rte", tfds_text_keys=("sentence1", "sentence2"),
        tfds_label_names=_NLI2_LABELS, predict_with="rte",
    ),
    TaskSpec(
        name="wnli", display_name="WNLI", directory="WNLI",
        label_names=_BINARY, metrics=("accuracy",),  # 1 = entailment
        splits=_nli_splits("sentence1", "sentence2", "WNLI.tsv"),
        tfds_name="glue/wnli", tfds_text_keys=("sentence1", "sentence2"),
        tfds_label_names=("not_entailment", "entailment"), predict_with="wnli",
    ),
    TaskSpec(
        name="ax", display_name="AX", directory="diagnostic",
        label_names=_MNLI_LABELS, metrics=("matthews_corrcoef",),  # the server's R3 statistic
        splits=(
            SplitFile(
                "test", "diagnostic.tsv", True,
                **_cols((1, "sentence1"), (2, "sentence2"), index=(0, "index")),
                submission="AX.tsv",
            ),
        ),
        tfds_name="glue/ax", tfds_text_keys=("premise", "hypothesis"),
        tfds_label_names=_MNLI_LABELS, predict_with="mnli", scored=False,
    ),
)  # fmt: skip
TASKS: dict[str, TaskSpec] = {t.name: t for t in _TASK_LIST}


def get_task(task: str) -> TaskSpec:
    """The TaskSpec of `task`; case and dashes are ignored ("SST-2" -> sst2, "STS-B" -> stsb)."""
    key = task.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {tuple(TASKS)}")
    return TASKS[key]


def split_names(task: str) -> tuple[str, ...]:
    """All splits of `task` in order: train (absent for AX), eval split(s), test split(s)."""
    return get_task(task).split_names


def task_file(task: str, data_dir: str, split: str) -> str:
    """Path of `split`'s TSV under a GLUE root `data_dir` (the download script's layout)."""
    spec = get_task(task)
    return os.path.join(os.fspath(data_dir), spec.directory, spec.split(split).file)


# ----------------------------------------------------------------------------------------------
# Local TSV files.


class _BadRow(Exception):
    """A malformed row; the reader turns it into an error (dev/test) or a skip (train)."""


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its end) for every line, split on b"\\n" only."""
    with storage.open_file(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            yield lineno, raw.rstrip(b"\n").removesuffix(b"\r")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadRow(f"not UTF-8 ({e.reason} at byte {e.start})") from None


def _check_header(sf: SplitFile, header: list[str], where: str) -> None:
    for col in (sf.index, sf.text_a, sf.text_b, sf.label):
        if col is None:
            continue
        found = header[col.position] if -len(header) <= col.position < len(header) else None
        if found != col.name:
            raise GlueDataError(
                f"{where}: expected column {col.position} named {col.name!r}, found {found!r} "
                f"(header {header}); is this the {sf.split} file of the right task?"
            )


def _parse_row(spec: TaskSpec, sf: SplitFile, fields: list[str], row_number: int) -> Example:
    if sf.index is not None:
        try:
            index = int(fields[sf.index.position])
        except ValueError:
            raise _BadRow(f"index {fields[sf.index.position]!r} is not an integer") from None
    else:
        index = row_number
    label: int | float | None = None
    if sf.label is not None:
        text = fields[sf.label.position]
        if spec.label_names is None:
            try:
                label = float(text)
            except ValueError:
                label = math.nan
            if not math.isfinite(label):
                raise _BadRow(f"score {text!r} is not a finite number")
        elif text in spec.label_names:
            label = spec.label_names.index(text)
        else:
            raise _BadRow(f"unknown label {text!r} (expected one of {spec.label_names})")
    text_b = fields[sf.text_b.position] if sf.text_b is not None else None
    return Example(index, fields[sf.text_a.position], text_b, label)


def read_split(task: str, data_dir: str, split: str) -> list[Example]:
    """The examples of one split from the local GLUE files under `data_dir` (see module doc).

    Raises FileNotFoundError naming the expected directory or file, and GlueDataError naming
    the file (file:line for a wrong header or a malformed row in a dev/test file; the file for
    an empty file, or a train/dev file with no examples: a header only, or every row
    malformed). Malformed train rows are skipped with one GlueDataWarning.
    """
    return list(_examples(task, data_dir, split, warn=True))


def check_split(task: str, data_dir: str, split: str) -> int:
    """Reads one split as `read_split` does, raising the same errors, without keeping the
    examples or warning about skipped train rows; returns the number of examples. For a
    check of the files before any training."""
    return sum(1 for _ in _examples(task, data_dir, split, warn=False))


def _examples(task: str, data_dir: str, split: str, *, warn: bool) -> Iterator[Example]:
    spec = get_task(task)
    sf = spec.split(split)
    directory = os.path.join(os.fspath(data_dir), spec.directory)
    path = os.path.join(directory, sf.file)
    if not storage.isdir(directory):
        raise FileNotFoundError(
            f"GLUE {spec.display_name} directory not found: {directory} (expected {path})"
        )
    if not storage.isfile(path):
        raise FileNotFoundError(f"GLUE {spec.display_name} {split} file not found: {path}")

    lenient = split == "train"
    width = None if sf.has_header else sf.num_columns
    skipped, first_skipped = 0, ""
    row_number = 0
    for lineno, raw in _lines(path):
        where = f"{path}:{lineno}"
        if not raw.strip():
            continue
        try:
            fields = _decode(raw).split("\t")
            if width is None:  # the header line
                _check_header(sf, fields, where)
                width = len(fields)
                continue
            if len(fields) != width:
                raise _BadRow(f"{len(fields)} fields, expected {width}")
            example = _parse_row(spec, sf, fields, row_number)
        except _BadRow as e:
            if not lenient or width is None:
                raise GlueDataError(f"{where}: {e}") from None
            skipped += 1
            first_skipped = first_skipped or f"{where}: {e}"
        else:
            yield example
        row_number += 1
    if width is None or (row_number == 0 and not sf.has_header):
        raise GlueDataError(f"{path}: empty file")
    if sf.is_labelled and row_number == skipped:  # nothing to train or evaluate on
        what = (
            "only a header, no rows"
            if row_number == 0
            else f"every one of its {row_number} rows is malformed; first: {first_skipped}"
        )
        raise GlueDataError(f"{path}: no {spec.display_name} {split} examples ({what})")
    if skipped and warn:
        warnings.warn(
            f"{path}: skipped {skipped} malformed row(s) of {row_number}; first: {first_skipped}",
            GlueDataWarning,
            stacklevel=3,  # read_split's caller
        )


# ----------------------------------------------------------------------------------------------
# TFDS.


def load_tfds_split(
    task: str, split: str, *, data_dir: str | None = None, download: bool = True
) -> list[Example]:
    """The examples of one split from TFDS `glue/<task>`, sorted by `idx` (the Example.index).

    Label -1 (test splits) becomes None. The dataset's ClassLabel names must equal the task's
    `tfds_label_names` (then TFDS class ids are our class ids). `download=False` only reads an
    already prepared dataset.
    """
    spec = get_task(task)
    spec.split(split)  # validates the split name
    tfds = storage.require_extra("tensorflow_datasets", TFDS_NEEDS)
    ds, info = tfds.load(
        spec.tfds_name,
        split=split,
        data_dir=data_dir,
        download=download,
        shuffle_files=False,
        with_info=True,
    )
    if spec.tfds_label_names is not None:
        names = tuple(info.features["label"].names)
        if names != spec.tfds_label_names:
            raise GlueDataError(
                f"{spec.tfds_name}: TFDS label names {names} differ from the expected "
                f"{spec.tfds_label_names}; class ids would not match"
            )
    key_a, key_b = (*spec.tfds_text_keys, None)[:2]
    examples = []
    for batch in tfds.as_numpy(ds.batch(1024)):
        labels = batch["label"].tolist()
        texts_b = batch[key_b] if key_b else [None] * len(labels)
        for idx, a, b, label in zip(
            batch["idx"].tolist(), batch[key_a], texts_b, labels, strict=True
        ):
            if label == -1:
                label = None
            elif spec.is_regression:
                label = float(label)
            else:
                label = int(label)
            b = b.decode("utf-8") if b is not None else None
            examples.append(Example(int(idx), a.decode("utf-8"), b, label))
    examples.sort(key=lambda e: e.index)
    return examples


# ----------------------------------------------------------------------------------------------
# Features.


def featurize(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    max_seq_length: int,
    *,
    regression: bool | None = None,
) -> dict[str, np.ndarray]:
    """Classifier inputs of `examples`, each through `encode_pair` ([CLS] a [SEP] b [SEP]).

    Returns input_ids, input_mask, segment_ids (int32 [N, T]), label (int32 [N], -1 when
    unlabelled; float32 [N], nan when unlabelled, for regression) and example_index (int64 [N]).
    `regression=None` infers it from the labels (any float label); pass it for an unlabelled
    STS-B split so the label array is float32.
    """
    if regression is None:
        regression = any(isinstance(e.label, float) for e in examples)
    n, t = len(examples), max_seq_length
    out = {
        features.INPUT_IDS: np.zeros((n, t), np.int32),  # [N, T]
        features.INPUT_MASK: np.zeros((n, t), np.int32),  # [N, T]
        features.SEGMENT_IDS: np.zeros((n, t), np.int32),  # [N, T]
    }
    if regression:
        labels = np.full(n, np.nan, np.float32)
    else:
        labels = np.full(n, -1, np.int32)
    index = np.zeros(n, np.int64)
    for i, ex in enumerate(examples):
        enc = encode_pair(tokenizer, ex.text_a, ex.text_b, max_seq_length)
        out[features.INPUT_IDS][i] = enc.input_ids
        out[features.INPUT_MASK][i] = enc.input_mask
        out[features.SEGMENT_IDS][i] = enc.segment_ids
        index[i] = ex.index
        if ex.label is None:
            continue
        if not regression and not isinstance(ex.label, int):
            raise TypeError(f"example {ex.index}: label {ex.label!r} is not a class id")
        labels[i] = ex.label
    out[features.LABEL] = labels
    out[EXAMPLE_INDEX] = index
    return out
