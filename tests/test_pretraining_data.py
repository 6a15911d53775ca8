"""Tests for data_pipelines.pretraining_data: example semantics, windows, output files."""

from __future__ import annotations

import hashlib
import os
import re
import warnings

import numpy as np
import pytest
from _data_helpers import (
    example_params,
    make_documents,
    unmasked_ids,
    vocab_tokens,
    write_corpus,
    write_vocab,
)

from data_pipelines import corpus
from data_pipelines import features as F
from data_pipelines import pretraining_data as pdata
from data_pipelines.records import decode_record, decode_records, load_dataset_info, read_examples
from data_pipelines.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def examples(tok, token_docs):
    return pdata.create_examples(token_docs, example_params(tok))


# ---------------------------------------------------------------------------------------
# Structure of the examples.


def test_structure_cls_sep_segments_mask_and_lengths(tok, examples):
    ids, mask, seg = examples[F.INPUT_IDS], examples[F.INPUT_MASK], examples[F.SEGMENT_IDS]
    n, t = ids.shape
    assert n > 2000 and t == 64
    lengths = mask.sum(axis=1)
    assert (lengths <= 64).all()
    orig = unmasked_ids(examples)
    for i in range(n):
        length = lengths[i]
        assert (mask[i, :length] == 1).all() and (mask[i, length:] == 0).all()
        assert (ids[i, length:] == tok.pad_id).all()
        assert orig[i, 0] == tok.cls_id
        seps = np.flatnonzero(orig[i, :length] == tok.sep_id)
        assert len(seps) == 2 and seps[1] == length - 1
        assert 1 < seps[0] < length - 2  # A and B are both non-empty
        # Segment 0 up to and including the first [SEP], 1 up to the last, 0 on padding.
        assert (seg[i, : seps[0] + 1] == 0).all()
        assert (seg[i, seps[0] + 1 : length] == 1).all()
        assert (seg[i, length:] == 0).all()
        assert not np.isin(orig[i, 1:length], [tok.cls_id, tok.pad_id]).any()


def test_next_sentence_labels_are_balanced(examples):
    labels = examples[F.NEXT_SENTENCE_LABELS]
    assert set(np.unique(labels)) == {0, 1}
    # 50% random next, plus one-sentence chunks that are always random: a bit over 0.5
    # (google-research/bert's script gives 0.59 on such a corpus at length 128).
    assert 0.5 < labels.mean() < 0.65


def _pair_docs(num_docs=60, seed=3):
    """Documents whose token ids encode (document, position): doc d, token k -> 1000*d+k."""
    rnd = np.random.default_rng(seed)
    docs = []
    for d in range(num_docs):
        sizes = rnd.integers(1, 30, size=rnd.integers(1, 9))
        start = 1000 * (d + 1)
        sents = []
        for s in sizes:
            sents.append(list(range(start, start + s)))
            start += s
        docs.append(sents)
    return docs


class _FakeTokenizer:
    """Just the fields ExampleParams needs; ids 0-4 are the specials."""

    vocab_size = 100_000
    pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
    kind, do_lower_case = "fake", True

    def special_ids(self):
        return {0, 1, 2, 3, 4}

    def continuation_mask(self):
        return np.zeros(self.vocab_size, bool)


def test_actual_next_follows_a_and_random_next_is_another_document():
    params = pdata.ExampleParams.from_tokenizer(
        _FakeTokenizer(), max_seq_length=32, dupe_factor=4, dynamic_masking=True
    )
    ex = pdata.create_examples(_pair_docs(), params)
    assert (ex[F.MASKED_LM_WEIGHTS] == 0).all()  # dynamic masking: stored unmasked
    for ids, seg, mask, label in zip(
        ex[F.INPUT_IDS],
        ex[F.SEGMENT_IDS],
        ex[F.INPUT_MASK],
        ex[F.NEXT_SENTENCE_LABELS],
        strict=True,
    ):
        length = mask.sum()
        a = ids[1 : np.argmax(seg == 1) - 1]
        b = ids[np.argmax(seg == 1) : length - 1]
        # Each segment is a contiguous run of one document (truncation only trims ends).
        for s in (a, b):
            assert (np.diff(s) == 1).all()
            assert s[0] // 1000 == s[-1] // 1000
        if label == 0:
            assert a[0] // 1000 == b[0] // 1000 and b[0] > a[-1]
        else:
            assert a[0] // 1000 != b[0] // 1000
    assert ex[F.NEXT_SENTENCE_LABELS].min() == 0 and ex[F.NEXT_SENTENCE_LABELS].max() == 1


def test_truncation_trims_front_and_back_at_random(tok):
    # One-sentence documents of 200 tokens: A and B are cut to 11 + 10 tokens (on a tie
    # B loses a token first), each removal from the front or the back with p = 1/2.
    docs = [[list(range(1000 * (d + 1), 1000 * (d + 1) + 200))] for d in range(40)]
    params = pdata.ExampleParams.from_tokenizer(
        _FakeTokenizer(), max_seq_length=24, dupe_factor=10, dynamic_masking=True
    )
    ex = pdata.create_examples(docs, params)
    seg = ex[F.SEGMENT_IDS]
    assert (ex[F.INPUT_MASK].sum(1) == 24).all()
    assert ((seg[:, :13] == 0).all(axis=1) & (seg[:, 13:] == 1).all(axis=1)).all()
    front_cut = ex[F.INPUT_IDS][:, 1] % 1000  # tokens removed from the front of A
    # Binomial(189, 1/2): mean 94.5, standard deviation 6.9.
    assert abs(front_cut.mean() - 94.5) < 2 and 4 < front_cut.std() < 10


def test_short_seq_prob_gives_shorter_examples(tok, token_docs):
    long_ = pdata.create_examples(token_docs[:100], example_params(tok, short_seq_prob=0.0))
    short = pdata.create_examples(token_docs[:100], example_params(tok, short_seq_prob=1.0))
    assert short[F.INPUT_MASK].sum(1).mean() < 0.8 * long_[F.INPUT_MASK].sum(1).mean()
    assert len(short[F.INPUT_IDS]) > len(long_[F.INPUT_IDS])


def test_special_ids_inside_text_become_unk(tok):
    docs = [
        [tok.encode("the [SEP] cat [MASK] sat ."), tok.encode("a dog ran .")],
        [tok.encode("red car ."), tok.encode("blue [CLS] road .")],
    ]
    assert tok.sep_id in docs[0][0]  # the tokenizer maps the literal to the special id
    ex = pdata.create_examples(docs, example_params(tok, dupe_factor=5, dynamic_masking=True))
    for ids, length in zip(ex[F.INPUT_IDS], ex[F.INPUT_MASK].sum(1), strict=True):
        assert (ids[:length] == tok.sep_id).sum() == 2
        assert (ids[:length] == tok.cls_id).sum() == 1
        assert tok.mask_id not in ids
    assert (ex[F.INPUT_IDS] == tok.unk_id).any()


def test_windows_do_not_depend_on_chunking_and_merge_a_short_tail(tok, token_docs):
    params = example_params(tok)
    docs = pdata.TokenizedDocs.from_token_lists(token_docs[:240], params)

    def windows(chunk_docs, window_documents):
        asm = pdata._WindowAssembler(window_documents, max_tokens=10**9)
        out = []
        for start in range(0, docs.num_docs, chunk_docs):
            out += asm.add(docs.slice_docs(start, min(start + chunk_docs, docs.num_docs)))
        return out + asm.finish()

    a, b = windows(7, 100), windows(240, 100)
    assert [w.num_docs for w in a] == [w.num_docs for w in b] == [100, 140]  # 40 < 100 / 2
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.tokens, y.tokens)
        np.testing.assert_array_equal(x.sentence_lengths, y.sentence_lengths)
    assert [w.num_docs for w in windows(13, 80)] == [80, 80, 80]
    assert np.concatenate([w.tokens for w in a]).tolist() == docs.tokens.tolist()


def test_single_document_is_rejected(tok):
    with pytest.raises(ValueError, match="at least two documents"):
        pdata.create_examples(
            [[tok.encode("a cat sat ."), tok.encode("the dog .")]], example_params(tok)
        )


def test_one_sentence_documents_use_random_next(tok):
    docs = [[tok.encode(f"{w} cat sat .")] for w in ("a", "the", "big", "red")]
    ex = pdata.create_examples(docs, example_params(tok, dupe_factor=4))
    assert len(ex[F.NEXT_SENTENCE_LABELS]) == 16
    assert (ex[F.NEXT_SENTENCE_LABELS] == 1).all()


# ---------------------------------------------------------------------------------------
# create_pretraining_data: files, determinism, bad input.


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    docs = make_documents(240, seed=5)
    return [
        write_corpus(d / "part-1.txt", docs[:100]),
        write_corpus(d / "part-0.txt", docs[100:]),
    ]


def _create(files, tok, out, **kwargs):
    kwargs.setdefault("max_seq_length", 48)
    kwargs.setdefault("max_predictions_per_seq", 8)
    kwargs.setdefault("dupe_factor", 2)
    kwargs.setdefault("num_output_shards", 3)
    kwargs.setdefault("num_workers", 1)
    kwargs.setdefault("window_documents", 64)
    kwargs.setdefault("progress", False)
    return pdata.create_pretraining_data(files, tok, out, **kwargs)


def _digests(directory):
    return {
        name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(directory))
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus_files, tok):
    out = tmp_path_factory.mktemp("ds") / "data"
    info = _create(corpus_files, tok, out)
    return str(out), info


def test_output_files_and_dataset_info(dataset, corpus_files):
    out, info = dataset
    assert sorted(os.listdir(out)) == [
        "dataset_info.json",
        "examples-00000-of-00003.array_record",
        "examples-00001-of-00003.array_record",
        "examples-00002-of-00003.array_record",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    on_disk = load_dataset_info(out)
    assert on_disk.to_json() == info.to_json()  # what create_pretraining_data returned
    assert on_disk.num_examples == info.num_examples == sum(s.num_examples for s in on_disk.shards)
    assert on_disk.num_documents == 240 and on_disk.num_windows == 4  # 64+64+64+48
    assert list(on_disk.input_files) == sorted(os.path.abspath(f) for f in corpus_files)
    for key, value in dict(
        format="arrayrecord",
        max_seq_length=48,
        max_predictions_per_seq=8,
        dupe_factor=2,
        dynamic_masking=False,
        random_seed=12345,
        vocab_size=len(vocab_tokens()),
    ).items():
        assert getattr(on_disk, key) == value, key
    records = list(read_examples(out))
    assert len(records) == info.num_examples
    ex = decode_records(records, max_seq_length=48, max_predictions_per_seq=8)
    assert ex[F.INPUT_IDS].shape == (len(records), 48)
    # google-research/bert's script gives 0.60 on this corpus at this length (one-sentence
    # chunks are always "random next").
    assert 0.5 < ex[F.NEXT_SENTENCE_LABELS].mean() < 0.7
    assert ex[F.MASKED_LM_WEIGHTS].sum() == on_disk.num_predictions


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory, corpus_files):
    from data_pipelines.vocab import train_vocab

    out = tmp_path_factory.mktemp("spm") / "spm"
    return train_vocab(corpus_files, kind="sentencepiece", vocab_size=80, num_unused=2, out_dir=out)


VARIANTS = {
    "static": {},
    "dynamic_masking": {"dynamic_masking": True},
    "whole_word_mask": {"do_whole_word_mask": True},
    "tfrecord": {"output_format": "tfrecord"},
    "sentencepiece": {"do_whole_word_mask": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_output_is_byte_identical_for_a_seed_and_any_worker_count(
    variant, corpus_files, tok, spm_tok, tmp_path
):
    if variant == "sentencepiece":
        tok = spm_tok
    # dupe_factor 3: one task per pass with 3 workers, uneven groups (1 + 2) with 2.
    kwargs = dict(VARIANTS[variant], dupe_factor=3)
    runs = {
        w: _create(corpus_files, tok, tmp_path / f"w{w}", num_workers=w, **kwargs)
        for w in (1, 2, 3)
    }
    assert runs[1].num_windows == 4 and runs[1].num_examples > 1000
    expected = _digests(tmp_path / "w1")
    assert len(expected) == 3 + 3  # shards, dataset_info.json, tokenizer config and model
    assert _digests(tmp_path / "w2") == expected
    assert _digests(tmp_path / "w3") == expected


def test_output_does_not_depend_on_how_the_input_files_are_named(
    corpus_files, tok, tmp_path, dataset, monkeypatch
):
    # The dataset fixture reads /abs/part-1.txt and /abs/part-0.txt. The same files as
    # relative and absolute paths whose spellings sort the other way round, one of them
    # named twice; and through a glob.
    directory = os.path.dirname(corpus_files[0])
    monkeypatch.chdir(directory)
    spelled = ["part-0.txt", os.path.join(directory, "part-1.txt"), "./part-1.txt"]
    _create(spelled, tok, tmp_path / "spelled")
    _create(["part-*.txt", "part-1.txt"], tok, tmp_path / "glob")
    assert _digests(tmp_path / "spelled") == _digests(dataset[0])
    assert _digests(tmp_path / "glob") == _digests(dataset[0])
    _create(corpus_files, tok, tmp_path / "other", random_seed=1)
    differ = [n for n, h in _digests(tmp_path / "other").items() if _digests(dataset[0])[n] != h]
    assert "examples-00000-of-00003.array_record" in differ


def test_tfrecord_examples_are_serialized_with_sorted_feature_keys(corpus_files, tok, tmp_path):
    # The default serialization of a protobuf map follows a hash seed drawn per process,
    # so two runs would write different bytes; the canonical form (sorted keys) does not.
    import tensorflow as tf

    info = _create(corpus_files, tok, tmp_path / "tfr", output_format="tfrecord")
    records = [
        r.numpy()
        for s in info.shards
        for r in tf.data.TFRecordDataset(str(tmp_path / "tfr" / s.file))
    ]
    assert len(records) == info.num_examples
    for record in records:
        example = tf.train.Example.FromString(record)
        assert record == example.SerializeToString(deterministic=True)


def test_dynamic_masking_stores_unmasked_pairs(corpus_files, tok, tmp_path, dataset):
    info = _create(corpus_files, tok, tmp_path / "dyn", dynamic_masking=True)
    assert info.dynamic_masking and info.num_predictions == 0
    assert info.masking.masked_lm_prob == 0.15
    ex = decode_records(
        list(read_examples(tmp_path / "dyn")), max_seq_length=48, max_predictions_per_seq=8
    )
    assert (ex[F.MASKED_LM_WEIGHTS] == 0).all()
    assert not (ex[F.INPUT_IDS] == tok.mask_id).any()
    # Same pairs as the statically masked dataset (masking draws from its own stream).
    static = decode_records(
        list(read_examples(dataset[0])), max_seq_length=48, max_predictions_per_seq=8
    )
    np.testing.assert_array_equal(ex[F.SEGMENT_IDS], static[F.SEGMENT_IDS])
    np.testing.assert_array_equal(ex[F.INPUT_IDS], unmasked_ids(static))


def test_tfrecord_output_matches_arrayrecord(corpus_files, tok, tmp_path, dataset):
    import tensorflow as tf

    info = _create(corpus_files, tok, tmp_path / "tfr", output_format="tfrecord")
    assert info.format == "tfrecord"
    spec = {
        F.INPUT_IDS: tf.io.FixedLenFeature([48], tf.int64),
        F.INPUT_MASK: tf.io.FixedLenFeature([48], tf.int64),
        F.SEGMENT_IDS: tf.io.FixedLenFeature([48], tf.int64),
        F.MASKED_LM_POSITIONS: tf.io.FixedLenFeature([8], tf.int64),
        F.MASKED_LM_IDS: tf.io.FixedLenFeature([8], tf.int64),
        F.MASKED_LM_WEIGHTS: tf.io.FixedLenFeature([8], tf.float32),
        F.NEXT_SENTENCE_LABELS: tf.io.FixedLenFeature([1], tf.int64),
    }
    files = [str(tmp_path / "tfr" / s.file) for s in info.shards]
    assert all(f.endswith(".tfrecord") for f in files)
    parsed = [
        {k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()}
        for f in files
        for r in tf.data.TFRecordDataset(f)
    ]
    ar_records = []
    for shard in load_dataset_info(dataset[0]).shards:
        from array_record.python.array_record_module import ArrayRecordReader

        reader = ArrayRecordReader(os.path.join(dataset[0], shard.file))
        ar_records.extend(reader.read_all())
        reader.close()
    assert len(parsed) == len(ar_records)
    expected = decode_record(ar_records[5], max_seq_length=48, max_predictions_per_seq=8)
    got = parsed[5]
    for k in F.PRETRAINING_FEATURES:
        np.testing.assert_array_equal(got[k].reshape(expected[k].shape), expected[k], err_msg=k)


def test_existing_output_dir_is_refused_unless_overwrite(corpus_files, tok, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=f"{out}: output directory exists"):
        _create(corpus_files, tok, out)
    assert (out / "keep.txt").read_text() == "precious"
    _create(corpus_files, tok, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset_info.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    _create(corpus_files, tok, empty)  # an empty directory is fine
    assert sorted(os.listdir(tmp_path)) == ["empty", "out"]


def test_failure_leaves_no_output_and_no_temporary_files(corpus_files, tok, tmp_path):
    bad = tmp_path / "zz_bad.txt"
    bad.write_bytes(b"fine line .\n\nbad \xff line .\n")
    out = tmp_path / "out"
    with pytest.raises(corpus.CorpusError, match=rf"{bad}:3: invalid UTF-8"):
        _create([*corpus_files, str(bad)], tok, out)
    assert sorted(os.listdir(tmp_path)) == ["zz_bad.txt"]
    with pytest.warns(corpus.CorpusWarning, match=rf"{bad}:3"):
        info = _create([*corpus_files, str(bad)], tok, out, input_errors="replace")
    assert info.num_documents == 242


def test_bad_inputs_are_rejected_with_their_names(corpus_files, tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing/vocab.txt"):
        _create(corpus_files, str(tmp_path / "missing" / "vocab.txt"), tmp_path / "o1")
    with pytest.raises(corpus.CorpusError, match="nothing.txt"):
        _create([str(tmp_path / "nothing.txt")], tok, tmp_path / "o2")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.warns(corpus.CorpusWarning, match="empty.txt: input file holds no document"):
        with pytest.raises(
            ValueError, match=f"{re.escape(str(empty))}: the input holds 0 documents"
        ):
            _create([str(empty)], tok, tmp_path / "o3")
    one = tmp_path / "one.txt"
    one.write_text("a cat sat .\nthe dog ran .\n")
    with pytest.raises(
        ValueError,
        match=f"^{re.escape(str(one))}: the input holds 1 document with text; next sentence "
        "prediction needs at least two",
    ):
        _create([str(one)], tok, tmp_path / "o4")
    with pytest.raises(ValueError, match="max_seq_length"):
        _create(corpus_files, tok, tmp_path / "o5", max_seq_length=4)
    assert sorted(os.listdir(tmp_path)) == ["empty.txt", "one.txt"]


def test_odd_documents_and_long_lines_are_handled(tok, tmp_path):
    path = tmp_path / "odd.txt"
    long_line = " ".join(["the cat sat ."] * 3000)  # 42k characters on one line
    path.write_text(
        "\n\n\nsolo sentence .\n\n\n\nred car .\nblue road .\r\n\r\n" + long_line + "\n\nend .\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = _create([str(path)], tok, tmp_path / "out", max_line_chars=1000)
    assert any(f"{path}:11: line longer" in str(w.message) for w in caught)
    assert info.num_documents == 4 and info.num_examples > 0
    ex = decode_records(
        list(read_examples(tmp_path / "out")), max_seq_length=48, max_predictions_per_seq=8
    )
    assert (ex[F.INPUT_MASK].sum(1) <= 48).all()


# ---------------------------------------------------------------------------------------
# Windows: every window holds two documents or more, whatever the stream.


def _stream(token_counts):
    """One one-sentence document per count; document d's tokens all equal 10 + d."""
    counts = np.asarray(token_counts, dtype=np.int64)
    tokens = np.repeat(10 + np.arange(counts.size), counts).astype(np.int32)
    ones = np.ones(counts.size, dtype=np.int64)
    return pdata.TokenizedDocs(tokens, counts, ones)


def _assemble(docs, window_documents, max_tokens, chunk_sizes):
    asm = pdata._WindowAssembler(window_documents, max_tokens)
    out, start = [], 0
    for size in chunk_sizes:
        stop = min(start + size, docs.num_docs)
        out += asm.add(docs.slice_docs(start, stop))
        start = stop
    assert start == docs.num_docs
    return out + asm.finish()


@pytest.mark.parametrize(
    "counts, expected",
    [
        # At most 4 documents or 4,000 tokens; documents of 4,100 tokens exceed the limit
        # alone, those of 2,600 tokens exceed half of it.
        ([3, 4100, 2600], [3]),  # the last document joins the window it follows
        ([4100, 2600, 3], [3]),  # the huge first document waits for a second one
        ([3, 3, 4100], [3]),
        ([3, 3, 3, 3, 4100], [5]),  # a full window takes in the lone last document
        ([4100, 4100, 4100], [3]),
        ([4100, 4100, 4100, 4100], [2, 2]),
        ([3, 3000, 3000, 3, 3], [3, 2]),
        ([3, 3, 3, 3, 3, 3, 3, 3, 3], [4, 5]),
        ([4100], [1]),  # one document: one window (the caller rejects such an input)
    ],
)
def test_window_rule_for_huge_documents_anywhere(counts, expected):
    for chunks in ([1] * len(counts), [len(counts)]):
        windows = _assemble(_stream(counts), 4, 4000, chunks)
        assert [w.num_docs for w in windows] == expected


def test_windows_never_hold_fewer_than_two_documents_whatever_the_stream():
    rng = np.random.default_rng(0)
    for _ in range(400):
        num_docs = int(rng.integers(1, 14))
        window_documents = int(rng.integers(2, 6))
        max_tokens = int(rng.integers(1, 60))
        # Mostly small documents, some far larger than the token limit, anywhere.
        huge = rng.random(num_docs) < 0.3
        counts = np.where(huge, rng.integers(100, 400, num_docs), rng.integers(1, 6, num_docs))
        docs = _stream(counts)
        one_chunk = _assemble(docs, window_documents, max_tokens, [num_docs])
        chunks = rng.integers(1, 4, num_docs)
        random_chunks = _assemble(docs, window_documents, max_tokens, chunks)
        for windows in (one_chunk, random_chunks):
            sizes = [w.num_docs for w in windows]
            if num_docs >= 2:
                assert min(sizes) >= 2, (counts.tolist(), window_documents, max_tokens, sizes)
            else:
                assert sizes == [1]
            assert max(sizes) < window_documents + max(2, window_documents // 2)
            # Nothing lost, duplicated or reordered.
            assert np.concatenate([w.tokens for w in windows]).tolist() == docs.tokens.tolist()
        assert [w.num_docs for w in one_chunk] == [w.num_docs for w in random_chunks]


# ---------------------------------------------------------------------------------------
# End to end: random-next segments come from another document.


def _word_vocab(directory, num_words):
    """A vocab of the specials and the words w0 .. w{num_words-1} (ids 5 + k)."""
    path = os.path.join(str(directory), "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join([*SPECIAL_TOKENS, *(f"w{k}" for k in range(num_words))]) + "\n")
    return load_tokenizer(path)


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _document_text(word, num_tokens, per_line=100):
    """`num_tokens` copies of `word`, `per_line` to a line (one sentence a line)."""
    full, rest = divmod(num_tokens, per_line)
    line = " ".join([word] * per_line) + "\n"
    return line * full + (" ".join([word] * rest) + "\n" if rest else "")


def _write_word_documents(path, token_counts, first=0):
    """Document d of the file is made of the word w{first + d} only."""
    text = "\n".join(_document_text(f"w{first + d}", n) for d, n in enumerate(token_counts))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def _check_pairs_by_document(out, tok, max_seq_length, max_predictions):
    """Every example: A and B each from one document; B from another one exactly when
    the label says random next. Returns (labels, document of A, document of B)."""
    ex = decode_records(
        list(read_examples(out)),
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions,
    )
    ids = unmasked_ids(ex)  # a word's id identifies its document: id 5 + d
    length = ex[F.INPUT_MASK].sum(1, keepdims=True)
    pos = np.arange(ids.shape[1])[None, :]
    seg = ex[F.SEGMENT_IDS]
    in_a = (seg == 0) & (pos > 0) & (pos < length) & (ids != tok.sep_id)
    in_b = (seg == 1) & (pos < length - 1)
    docs = []
    for part in (in_a, in_b):
        assert part.any(axis=1).all()
        lo = np.where(part, ids, np.iinfo(np.int32).max).min(1)
        hi = np.where(part, ids, -1).max(1)
        np.testing.assert_array_equal(lo, hi)  # one document per segment
        docs.append(lo - 5)
    labels = ex[F.NEXT_SENTENCE_LABELS]
    np.testing.assert_array_equal(labels == 1, docs[0] != docs[1])
    return labels, docs[0], docs[1]


def test_reported_corpus_prepares_at_the_default_limits(tmp_path):
    # One file: a one-sentence document, then 4.1M and 2.6M tokens of lines of 100
    # one-letter words. The window reaches the 4M-token limit with the second document;
    # the third, over half the limit but alone, joins it.
    tok = _word_vocab(tmp_path, 3)
    text = "w0 w0 w0\n\n" + _document_text("w1", 4_100_000) + "\n" + _document_text("w2", 2_600_000)
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    info = pdata.create_pretraining_data(
        [str(path)], tok, tmp_path / "out", dupe_factor=1, num_output_shards=1, progress=False
    )
    assert info.window_documents == pdata.DEFAULT_WINDOW_DOCUMENTS
    assert info.window_max_tokens == pdata.WINDOW_MAX_TOKENS == 4_000_000
    assert info.num_documents == 3 and info.num_windows == 1
    labels, doc_a, doc_b = _check_pairs_by_document(tmp_path / "out", tok, 128, 20)
    assert info.num_random_next == labels.sum()
    assert set(doc_a[labels == 1]) == {0, 1, 2}  # each document's random nexts: elsewhere
    assert (labels[doc_a == 0] == 1).all()  # a one-sentence document: always random next


@pytest.mark.parametrize(
    "counts, num_windows",
    [
        ([3, 4100, 2600], 1),  # the reported shape at a 4,000-token limit
        ([40] * 7 + [9000], 2),  # a huge last document
        ([9000] + [40] * 7, 3),  # a huge first document: waits for the next one
        ([40] * 4 + [9000], 1),  # a huge document right after a full window
        ([40, 40, 9000, 40, 40, 40, 9000], 2),
        ([9000, 9000], 1),
    ],
)
def test_any_corpus_of_two_or_more_documents_prepares(counts, num_windows, tmp_path):
    tok = _word_vocab(tmp_path, len(counts))
    path = _write_word_documents(tmp_path / "corpus.txt", counts)
    info = _create(
        [path],
        tok,
        tmp_path / "out",
        dupe_factor=3,
        window_documents=4,
        window_max_tokens=4000,
        max_seq_length=64,
    )
    assert info.num_documents == len(counts) and info.num_windows == num_windows
    labels, doc_a, _ = _check_pairs_by_document(tmp_path / "out", tok, 64, 8)
    assert set(doc_a) == set(range(len(counts)))
    assert set(doc_a[labels == 1]) == set(range(len(counts)))


def test_many_files_of_one_document_each(tmp_path):
    sizes = np.random.default_rng(4).integers(1, 600, 11).tolist()
    tok = _word_vocab(tmp_path, len(sizes))
    files = [
        _write_word_documents(tmp_path / f"part-{d:02d}.txt", [n], first=d)
        for d, n in enumerate(sizes)
    ]
    info = _create(
        files, tok, tmp_path / "out", dupe_factor=4, window_documents=3, window_max_tokens=300
    )
    assert info.num_documents == 11 and info.num_windows >= 4
    labels, doc_a, _ = _check_pairs_by_document(tmp_path / "out", tok, 48, 8)
    assert set(doc_a[labels == 1]) == set(range(11))
    # A single document spread over no matter how many files is still one document.
    lonely = [files[0]] + [str(tmp_path / f"z-empty-{k}.txt") for k in range(3)]
    for name in lonely[1:]:
        open(name, "w").close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", corpus.CorpusWarning)
        with pytest.raises(
            ValueError, match=f"^{re.escape(files[0])} and 3 more input files: the input holds 1 "
        ):
            _create(lonely, tok, tmp_path / "one")


# ---------------------------------------------------------------------------------------
# The dataset carries its tokenizer.


def _tokenizer_round_trip(src, out_dir, sentences):
    copy = load_tokenizer(out_dir)
    assert type(copy) is type(src) and copy.kind == src.kind
    assert copy.vocab_size == src.vocab_size and copy.do_lower_case == src.do_lower_case
    assert copy.encode_batch(sentences) == src.encode_batch(sentences)
    assert load_dataset_info(out_dir).vocab_size == src.vocab_size


def test_dataset_directory_holds_its_wordpiece_tokenizer(corpus_files, tmp_path):
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    vocab = write_vocab(vocab_dir)
    # A cased reading of the lowercase vocab: "The" is [UNK] unless lowercased, so the
    # copy must keep the setting the examples were made with.
    src = load_tokenizer(vocab, do_lower_case=False)
    _create(corpus_files, src, tmp_path / "data")
    sentences = ["The cat sat .", "the cats walked", "Red CAR"]
    assert src.encode("The") == [src.unk_id]
    _tokenizer_round_trip(src, tmp_path / "data", sentences)
    # The copy does not depend on where the source vocab was: it may move away.
    os.rename(vocab_dir, tmp_path / "moved")
    _tokenizer_round_trip(src, tmp_path / "data", sentences)


def test_dataset_directory_holds_its_sentencepiece_tokenizer(corpus_files, spm_tok, tmp_path):
    src = spm_tok
    info = _create(corpus_files, src, tmp_path / "data")
    assert info.tokenizer_kind == "sentencepiece"
    assert "spm.model" in os.listdir(tmp_path / "data")
    _tokenizer_round_trip(src, tmp_path / "data", ["the cats sat on the mat .", "Red roads"])


# ---------------------------------------------------------------------------------------
# Invalid UTF-8 in the input.


def test_input_errors_policy(tok, tmp_path, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"red car .\nblue road .\n\nthe \xff cat sat .\nthe dog ran .\n")
    with pytest.raises(corpus.CorpusError, match=rf"^{re.escape(str(bad))}:4: invalid UTF-8"):
        _create([str(bad)], tok, tmp_path / "strict")
    with pytest.raises(corpus.CorpusError, match=rf"{re.escape(str(bad))}:4"):
        _create([str(bad)], tok, tmp_path / "strict", input_errors="strict")
    assert not (tmp_path / "strict").exists()
    # The policy reaches the reader of every file.
    seen = []
    read = corpus.iter_file_documents

    def spy(path, **kwargs):
        seen.append((os.path.basename(path), kwargs["errors"]))
        return read(path, **kwargs)

    monkeypatch.setattr(corpus, "iter_file_documents", spy)
    for policy in ("replace", "ignore"):
        with pytest.warns(corpus.CorpusWarning, match=rf"{re.escape(str(bad))}:4: invalid UTF-8"):
            info = _create([str(bad)], tok, tmp_path / policy, input_errors=policy)
        assert info.num_documents == 2 and info.num_sentences == 4
    assert seen == [("bad.txt", "replace"), ("bad.txt", "ignore")]
    with pytest.raises(
        ValueError, match="input_errors must be 'strict', 'replace' or 'ignore', got 'skip'"
    ):
        _create([str(bad)], tok, tmp_path / "x", input_errors="skip")
