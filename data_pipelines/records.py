"""A prepared pre-training dataset on disk: the record format, the shards, dataset_info.json.

`data_pipelines.pretraining_data.create_pretraining_data` writes a dataset directory;
the training-time reader (`data_pipelines.pretrain_input`, `data_pipelines.packing`)
reads it with this module and `data_pipelines.masking` alone.

Directory
---------
``examples-XXXXX-of-YYYYY.array_record`` (or ``.tfrecord``; `shard_file_name`), examples
dealt round-robin over the shards; the tokenizer the examples were made with (its own
`save()`: ``vocab.txt`` or ``spm.model`` plus ``tokenizer_config.json``); and
``dataset_info.json`` (`DatasetInfo`: format, counts per shard, lengths, masking spec,
seed, ...). ``dataset_info.json`` is written last, so a directory without it is never
complete: `load_dataset_info` refuses it, and a shard holding fewer or more records than
the file lists.

ArrayRecord record layout (``record_encoding: "bertjax-pretrain-v1"``), little endian,
parseable with numpy alone (`decode_record`); ArrayRecord files are written with
``group_size:1,uncompressed`` (one record per chunk, as grain wants for random access;
records of a few hundred bytes gain little from per-record compression, and the
default Brotli made writing about 8x slower)::

  offset size  field
  0      2     magic b"BJ"
  2      1     version = 1
  3      1     flags: bit 0 = masked (static masking: predictions stored),
                      bit 1 = wide ids (int32 token ids; else uint16)
  4      2     length: number of tokens, [CLS] A [SEP] B [SEP]          (uint16)
  6      2     segment_a_length: positions with segment id 0 ([CLS] A [SEP]) (uint16)
  8      2     num_predictions (0 for unmasked records)                 (uint16)
  10     1     next_sentence_label (1 = random next)                    (uint8)
  11     1     reserved, 0
  12     W*length            input_ids (masked when bit 0 is set), W = 2 or 4 bytes
  ..     2*num_predictions   masked_lm_positions (uint16, ascending)
  ..     W*num_predictions   masked_lm_ids (the original ids)

Padding, ``input_mask`` (``pos < length``), ``segment_ids`` (``segment_a_length <= pos
< length``) and ``masked_lm_weights`` (1.0 for the first ``num_predictions``) are
rebuilt by the reader. With ``dynamic_masking=True`` records are unmasked (bit 0 clear)
and `data_pipelines.pretrain_input` masks each example on the fly with
`masking.mask_example`, seeded from (seed, epoch, example index) (RoBERTa-style);
`dupe_factor` then still re-draws the pairing, so 1 is the usual choice.
``output_format="tfrecord"`` writes `tf.train.Example` records with google-research/bert's
features (int64 lists, ``masked_lm_weights`` float, ``next_sentence_labels`` of shape
[1]) for interop; it needs TensorFlow and always stores masked examples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from bertjax import storage
from data_pipelines import features as F
from data_pipelines.masking import MaskedExamples, MaskingSpec

RECORD_ENCODING = "bertjax-pretrain-v1"
DATASET_INFO = "dataset_info.json"
MAGIC = b"BJ"
VERSION = 1
FLAG_MASKED = 1
FLAG_WIDE = 2
HEADER = struct.Struct("<2sBBHHHBx")  # 12 bytes
ARRAYRECORD_WRITER_OPTIONS = "group_size:1,uncompressed"

OutputFormat = Literal["arrayrecord", "tfrecord"]


def shard_file_name(index: int, count: int, output_format: OutputFormat) -> str:
    ext = "array_record" if output_format == "arrayrecord" else "tfrecord"
    return f"examples-{index:05d}-of-{count:05d}.{ext}"


# ---------------------------------------------------------------------------------------
# Records.


def encode_records(
    ids: np.ndarray,
    lengths: np.ndarray,
    seg_a: np.ndarray,
    nsp: np.ndarray,
    masked: MaskedExamples | None,
    wide: bool,
) -> tuple[bytes, np.ndarray]:
    """Records in the layout of the module docstring: (concatenated bytes, sizes).

    `ids` [N, T] unmasked ids, `lengths` [N] real tokens, `seg_a` [N] segment A lengths
    ([CLS] A [SEP]), `nsp` [N] labels; `masked` the masking of the rows (None: unmasked
    records); `wide`: int32 ids instead of uint16. `split_records` cuts the result.
    """
    n, t = ids.shape
    flags = (FLAG_MASKED if masked is not None else 0) | (FLAG_WIDE if wide else 0)
    npred = (
        masked.masked_lm_weights.sum(axis=1).astype(np.int64)
        if masked is not None
        else np.zeros(n, dtype=np.int64)
    )
    header = np.zeros((n, 6), dtype=np.uint16)
    header[:, 0] = MAGIC[0] | (MAGIC[1] << 8)
    header[:, 1] = VERSION | (flags << 8)
    header[:, 2] = lengths
    header[:, 3] = seg_a
    header[:, 4] = npred
    header[:, 5] = nsp
    id_dtype = np.int32 if wide else np.uint16
    w = 2 if wide else 1  # uint16 words per id
    tok = ids if masked is None else masked.input_ids
    cols = [header, _as_words(tok, id_dtype)]
    valid = [np.ones((n, 6), bool), np.repeat(np.arange(t)[None, :] < lengths[:, None], w, axis=1)]
    if masked is not None:
        p = masked.masked_lm_positions.shape[1]
        pvalid = np.arange(p)[None, :] < npred[:, None]
        cols += [
            _as_words(masked.masked_lm_positions, np.uint16),
            _as_words(masked.masked_lm_ids, id_dtype),
        ]
        valid += [pvalid, np.repeat(pvalid, w, axis=1)]
    matrix = np.concatenate(cols, axis=1)
    mask = np.concatenate(valid, axis=1)
    blob = matrix[mask].astype("<u2").tobytes()
    sizes = mask.sum(axis=1) * 2
    return blob, sizes


def _as_words(a: np.ndarray, dtype: type) -> np.ndarray:
    """Little-endian uint16 words of `a` cast to `dtype` ([N, K] -> [N, K * bytes / 2])."""
    a = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return a.view("<u2")


def split_records(blob: bytes, sizes: np.ndarray) -> list[bytes]:
    """Cuts a concatenation of records at the given sizes."""
    ends = np.cumsum(sizes).tolist()
    starts = [0, *ends[:-1]]
    return [blob[s:e] for s, e in zip(starts, ends, strict=True)]


def decode_record(
    record: bytes, *, max_seq_length: int, max_predictions_per_seq: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One record (layout in the module docstring) -> the 7 features, padded.

    Unmasked (dynamic-masking) records give empty predictions (all weights 0).
    """
    magic, version, flags, length, seg_a, npred, nsp = HEADER.unpack_from(record)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a {RECORD_ENCODING} record (magic {magic!r}, version {version})")
    if length > max_seq_length or npred > max_predictions_per_seq:
        raise ValueError(
            f"record of length {length} with {npred} predictions exceeds max_seq_length="
            f"{max_seq_length} / max_predictions_per_seq={max_predictions_per_seq}"
        )
    id_dtype = "<i4" if flags & FLAG_WIDE else "<u2"
    w = 4 if flags & FLAG_WIDE else 2
    off = HEADER.size
    ids = np.full(max_seq_length, pad_id, dtype=np.int32)
    ids[:length] = np.frombuffer(record, id_dtype, length, off)
    off += w * length
    positions = np.zeros(max_predictions_per_seq, dtype=np.int32)
    labels = np.zeros(max_predictions_per_seq, dtype=np.int32)
    weights = np.zeros(max_predictions_per_seq, dtype=np.float32)
    if npred:
        positions[:npred] = np.frombuffer(record, "<u2", npred, off)
        off += 2 * npred
        labels[:npred] = np.frombuffer(record, id_dtype, npred, off)
        weights[:npred] = 1.0
    input_mask = np.zeros(max_seq_length, dtype=np.int32)
    input_mask[:length] = 1
    segment_ids = np.zeros(max_seq_length, dtype=np.int32)
    segment_ids[seg_a:length] = 1
    return {
        F.INPUT_IDS: ids,
        F.INPUT_MASK: input_mask,
        F.SEGMENT_IDS: segment_ids,
        F.MASKED_LM_POSITIONS: positions,
        F.MASKED_LM_IDS: labels,
        F.MASKED_LM_WEIGHTS: weights,
        F.NEXT_SENTENCE_LABELS: np.asarray(nsp, dtype=np.int32),
    }


def decode_records(
    records: Sequence[bytes], *, max_seq_length: int, max_predictions_per_seq: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Decodes and stacks records into a batch of the 7 features."""
    decoded = [
        decode_record(
            r,
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            pad_id=pad_id,
        )
        for r in records
    ]
    if not decoded:
        t, p = max_seq_length, max_predictions_per_seq
        return {
            F.INPUT_IDS: np.zeros((0, t), np.int32),
            F.INPUT_MASK: np.zeros((0, t), np.int32),
            F.SEGMENT_IDS: np.zeros((0, t), np.int32),
            F.MASKED_LM_POSITIONS: np.zeros((0, p), np.int32),
            F.MASKED_LM_IDS: np.zeros((0, p), np.int32),
            F.MASKED_LM_WEIGHTS: np.zeros((0, p), np.float32),
            F.NEXT_SENTENCE_LABELS: np.zeros((0,), np.int32),
        }
    return {k: np.stack([d[k] for d in decoded]) for k in F.PRETRAINING_FEATURES}


def read_examples(data_dir: str | os.PathLike) -> Iterator[bytes]:
    """All records of an ArrayRecord dataset directory, in shard order (for tools/tests)."""
    from array_record.python.array_record_module import ArrayRecordReader

    info = load_dataset_info(data_dir)
    if info.format != "arrayrecord":
        raise ValueError(f"{data_dir}: format {info.format!r}; read_examples reads arrayrecord")
    for shard in info.shards:
        if not shard.num_examples:
            continue
        reader = ArrayRecordReader(os.path.join(str(data_dir), shard.file))
        try:
            yield from reader.read_all()
        finally:
            reader.close()


# ---------------------------------------------------------------------------------------
# dataset_info.json.


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard file of a dataset and the number of records it holds."""

    file: str  # the file name, in the dataset directory
    num_examples: int


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DatasetInfo:
    """The contents of dataset_info.json: how a dataset was made and what it holds.

    The fields are the file's keys, in its order (`to_json`); a key an older file lacks
    takes the field's default. Compare two infos by their `to_json()`.
    """

    format: OutputFormat  # "arrayrecord" (the training format) or "tfrecord"
    record_encoding: str | None = None  # RECORD_ENCODING, or "tf.train.Example"
    num_examples: int  # in all shards
    shards: tuple[Shard, ...]  # in order; examples were dealt round-robin over them
    max_seq_length: int  # T: tokens per example, [CLS] A [SEP] B [SEP] and padding
    max_predictions_per_seq: int | None = None  # P: masked positions per example
    masked_lm_prob: float = 0.15  # fraction of the tokens masked
    do_whole_word_mask: bool = False  # words masked whole
    dynamic_masking: bool = False  # records stored unmasked; the reader masks them
    dupe_factor: int | None = None  # passes over the text, each with new pairs
    short_seq_prob: float | None = None  # probability of a shorter target length
    random_seed: int | None = None  # the seed of every random draw
    window_documents: int | None = None  # documents at which a window closes
    window_max_tokens: int | None = None  # tokens at which a window closes
    vocab_size: int  # of the tokenizer the examples were made with
    pad_id: int | None = None  # [PAD]
    cls_id: int | None = None  # [CLS]
    sep_id: int | None = None  # [SEP]
    mask_id: int | None = None  # [MASK]
    unk_id: int | None = None  # [UNK]
    tokenizer_kind: str | None = None  # "wordpiece" or "sentencepiece"
    do_lower_case: bool | None = None  # the tokenizer's setting
    masking: MaskingSpec | None = None  # the masking, for the reader's dynamic masking
    input_files: tuple[str, ...] = ()  # absolute paths, in the order they were read
    input_bytes: int | None = None  # their total size
    num_documents: int | None = None  # documents with text
    num_sentences: int | None = None  # sentences read (empty ones included)
    num_tokens: int | None = None  # tokens of the text (once, not per pass)
    num_random_next: int | None = None  # examples whose B is a random next
    num_predictions: int | None = None  # stored masked positions (0: dynamic masking)
    num_windows: int | None = None  # windows random nexts were drawn from

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetInfo:
        """From the parsed file; keys that are not fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["shards"] = tuple(Shard(s["file"], s["num_examples"]) for s in data["shards"])
        if data.get("masking") is not None:
            values["masking"] = MaskingSpec.from_json(data["masking"])
        values["input_files"] = tuple(data.get("input_files") or ())
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The contents of dataset_info.json: every field, in order; `from_json` of it gives
        the same info, and `write_dataset_info` the same bytes."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["shards"] = [{"file": s.file, "num_examples": s.num_examples} for s in self.shards]
        out["masking"] = None if self.masking is None else self.masking.to_json()
        out["input_files"] = list(self.input_files)
        return out


def write_dataset_info(directory: str | os.PathLike, info: DatasetInfo) -> None:
    """Writes directory/dataset_info.json (atomically; keys in field order, indent 2)."""
    path = os.path.join(os.fspath(directory), DATASET_INFO)
    storage.write_json(path, info.to_json(), sort_keys=False)


def load_dataset_info(data_dir: str | os.PathLike) -> DatasetInfo:
    """The dataset_info.json of a finished dataset; refuses incomplete directories, and a
    bucket URI (ArrayRecord shards are read with random access from a local or mounted path)."""
    storage.require_local(data_dir, "a prepared dataset (ArrayRecord shards, read by grain)")
    path = os.path.join(str(data_dir), DATASET_INFO)
    if not os.path.isdir(str(data_dir)):
        raise FileNotFoundError(f"{data_dir}: no such dataset directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{data_dir}: no {DATASET_INFO}; not a finished pre-training dataset "
            "(was create_pretraining_data interrupted?)"
        )
    try:
        data = storage.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid dataset_info.json ({e})") from None
    required = ("format", "shards", "num_examples", "vocab_size", "max_seq_length")
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if data.get("dynamic_masking") and data.get("masking") is None:
        raise ValueError(f"{path}: missing keys ['masking'] (a dynamic-masking dataset)")
    info = DatasetInfo.from_json(data)
    for shard in info.shards:
        shard_path = os.path.join(str(data_dir), shard.file)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{path} lists {shard.file}, which is missing")
        if info.format == "arrayrecord" and shard.num_examples:
            _check_shard(shard_path, int(shard.num_examples))
    return info


def _check_shard(path: str, expected: int) -> None:
    """An ArrayRecord shard that holds the number of records dataset_info.json lists (a
    truncated or damaged file would otherwise fail, or read wrong, in the middle of training)."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
        try:
            found = reader.num_records()
        finally:
            reader.close()
    except Exception as e:  # the reader reports a damaged footer in several ways
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: damaged ArrayRecord shard ({first})") from None
    if found != expected:
        raise ValueError(
            f"{path}: holds {found} records but dataset_info.json lists {expected}; "
            "the shard is damaged or from another dataset"
        )
