"""Tests for data_pipelines.records: the record format and dataset_info.json."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from _data_helpers import make_documents, wide_masked_rows, write_corpus, write_vocab

from data_pipelines import features as F
from data_pipelines import records
from data_pipelines.masking import MaskingSpec
from data_pipelines.pretraining_data import create_pretraining_data
from data_pipelines.tokenizers import load_tokenizer

T, P = 32, 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dynamic whole-word-masking dataset: its info holds the continuation ids too."""
    d = tmp_path_factory.mktemp("records")
    tok = load_tokenizer(write_vocab(d))
    files = [write_corpus(d / "corpus.txt", make_documents(60, seed=2))]
    out = d / "data"
    create_pretraining_data(
        files,
        tok,
        out,
        max_seq_length=T,
        max_predictions_per_seq=P,
        dupe_factor=1,
        num_output_shards=2,
        num_workers=1,
        dynamic_masking=True,
        do_whole_word_mask=True,
        progress=False,
    )
    return out


def test_dataset_info_round_trips_the_file_bytes(dataset, tmp_path):
    text = (dataset / records.DATASET_INFO).read_text()
    info = records.load_dataset_info(dataset)
    assert isinstance(info, records.DatasetInfo) and isinstance(info.masking, MaskingSpec)
    assert info.dynamic_masking and info.masking.do_whole_word_mask
    assert info.num_examples == sum(s.num_examples for s in info.shards) > 0
    assert [s.file for s in info.shards] == [
        records.shard_file_name(i, 2, "arrayrecord") for i in range(2)
    ]
    # The same keys, in the same order, with the same values: the same bytes.
    assert list(info.to_json()) == list(json.loads(text))
    assert json.dumps(info.to_json(), indent=2) + "\n" == text
    records.write_dataset_info(tmp_path, info)
    assert (tmp_path / records.DATASET_INFO).read_text() == text
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_examples = 0


def test_an_older_dataset_info_loads_with_defaults(dataset, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    data = json.loads((old / records.DATASET_INFO).read_text())
    del data["window_max_tokens"]  # written since window_max_tokens exists
    data["a_key_of_a_newer_version"] = 1
    (old / records.DATASET_INFO).write_text(json.dumps(data))
    info = records.load_dataset_info(old)
    assert info.window_max_tokens is None and info.num_examples == data["num_examples"]
    # A dynamic-masking dataset without its masking spec cannot be masked: refused.
    del data["masking"]
    (old / records.DATASET_INFO).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"missing keys \['masking'\]"):
        records.load_dataset_info(old)


def test_encoded_records_decode_to_the_features():
    ids, masked = wide_masked_rows(T)
    for wide, mask in ((True, masked), (False, None)):
        rows = ids if wide else np.minimum(ids, 65_535)
        blob, sizes = records.encode_records(
            rows, np.full(3, 6), np.full(3, 3), np.array([1, 0, 1]), mask, wide=wide
        )
        assert len(blob) == sizes.sum()
        decoded = records.decode_records(
            records.split_records(blob, sizes), max_seq_length=T, max_predictions_per_seq=P
        )
        np.testing.assert_array_equal(decoded[F.INPUT_IDS], rows)
        np.testing.assert_array_equal(decoded[F.INPUT_MASK].sum(1), [6, 6, 6])
        np.testing.assert_array_equal(decoded[F.SEGMENT_IDS][:, :7], [[0, 0, 0, 1, 1, 1, 0]] * 3)
        np.testing.assert_array_equal(decoded[F.NEXT_SENTENCE_LABELS], [1, 0, 1])
        targets = (F.MASKED_LM_POSITIONS, F.MASKED_LM_IDS, F.MASKED_LM_WEIGHTS)
        for name, stored in zip(targets, masked[1:], strict=True):
            # Unmasked records store no predictions: all padding.
            want = stored if mask is not None else np.zeros_like(stored)
            np.testing.assert_array_equal(decoded[name], want, err_msg=name)
    with pytest.raises(ValueError, match="not a bertjax-pretrain-v1 record"):
        records.decode_record(b"XY" + blob[2:], max_seq_length=T, max_predictions_per_seq=P)
    with pytest.raises(ValueError, match="exceeds max_seq_length"):
        records.decode_record(blob, max_seq_length=4, max_predictions_per_seq=P)


def test_damaged_dataset_files_are_reported_by_name(dataset, tmp_path):
    info = records.load_dataset_info(dataset)
    shard = next(s.file for s in info.shards if s.num_examples)
    assert len(list(records.read_examples(dataset))) == info.num_examples

    cut = tmp_path / "cut"
    shutil.copytree(dataset, cut)
    data = (cut / shard).read_bytes()
    (cut / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(cut / shard))):
        records.load_dataset_info(cut)

    bad_json = tmp_path / "bad_json"
    shutil.copytree(dataset, bad_json)
    (bad_json / "dataset_info.json").write_text('{"format": "arrayrecord", ')
    with pytest.raises(ValueError, match="not a valid dataset_info.json"):
        records.load_dataset_info(bad_json)
    (bad_json / "dataset_info.json").write_text('{"format": "arrayrecord"}')
    with pytest.raises(ValueError, match=r"missing keys \['shards'"):
        records.load_dataset_info(bad_json)

    missing = tmp_path / "missing"
    shutil.copytree(dataset, missing)
    (missing / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"lists {shard}, which is missing"):
        records.load_dataset_info(missing)
