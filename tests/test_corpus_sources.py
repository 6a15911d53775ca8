"""Tests for data_pipelines.corpus_sources: TFDS text datasets and the embedded corpus."""

from __future__ import annotations

import os

import pytest
from test_corpus import _read

from data_pipelines import corpus, corpus_sources

# ---------------------------------------------------------------------------------------
# TFDS.


def _mock_wikipedia(texts):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def as_dataset(self, *args, **kwargs):
        del self, args, kwargs
        return tf.data.Dataset.from_tensor_slices(
            {"text": texts, "title": [f"t{i}" for i in range(len(texts))]}
        )

    return tfds.testing.mock_data(num_examples=len(texts), as_dataset_fn=as_dataset)


WIKI = [
    "Alpha is first. It has two sentences.\n\nA second paragraph here.",
    "",
    "Beta stands alone.",
    "Gamma one. Gamma two. Gamma three.",
]


def test_tfds_documents_with_mock_data():
    with _mock_wikipedia(WIKI):
        docs = list(corpus_sources.iter_tfds_documents("wikipedia/20230601.en", split="train"))
        paras = list(
            corpus_sources.iter_tfds_documents("wikipedia/20230601.en", segment="paragraph")
        )
        with pytest.raises(corpus.CorpusError, match="no text field 'body'"):
            list(corpus_sources.iter_tfds_documents("wikipedia/20230601.en", text_field="body"))
    assert docs == [
        ["Alpha is first.", "It has two sentences.", "A second paragraph here."],
        ["Beta stands alone."],
        ["Gamma one.", "Gamma two.", "Gamma three."],
    ]
    assert paras[0] == ["Alpha is first. It has two sentences.", "A second paragraph here."]


def test_write_tfds_corpus_shards_round_robin(tmp_path):
    with _mock_wikipedia(WIKI):
        files = corpus_sources.write_tfds_corpus("wikipedia/20230601.en", tmp_path, num_shards=2)
    assert [os.path.basename(f) for f in files] == [
        "corpus-00000-of-00002.txt",
        "corpus-00001-of-00002.txt",
    ]
    assert _read(files[0]) == [
        ["Alpha is first.", "It has two sentences.", "A second paragraph here."],
        ["Gamma one.", "Gamma two.", "Gamma three."],
    ]
    assert _read(files[1]) == [["Beta stands alone."]]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files)


# ---------------------------------------------------------------------------------------
# The embedded corpus.


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedded") / "python_docs.txt"
    return corpus_sources.write_embedded_corpus(path)


def test_embedded_corpus_is_large_and_well_formed(embedded):
    assert embedded.num_bytes > 2_000_000
    assert embedded.num_documents > 300 and embedded.num_sentences > 20_000
    docs = _read(embedded.path)
    assert len(docs) == embedded.num_documents
    text = open(embedded.path, encoding="utf-8").read()
    # From pydoc_data.topics (the "assert" topic) and from module docstrings.
    assert "Assert statements are a convenient way to insert debugging assertions" in text
    assert "JSON (JavaScript Object Notation)" in text
    # Documents are multi-sentence (NSP needs pairs) and sentences are single lines.
    assert sum(len(d) >= 2 for d in docs) > 0.8 * len(docs)
    assert "\n\n\n" not in text


def test_embedded_corpus_is_deterministic(embedded, tmp_path):
    again = corpus_sources.write_embedded_corpus(tmp_path / "again.txt")
    with open(embedded.path, "rb") as a, open(again.path, "rb") as b:
        assert a.read() == b.read()


def test_unknown_tfds_dataset_is_one_error_and_leaves_no_directory(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(corpus.CorpusError, match=r"tfds:no_such_dataset_xyz\[train\]"):
        corpus_sources.write_tfds_corpus(
            "no_such_dataset_xyz", out, data_dir=str(tmp_path / "tfds")
        )
    assert not out.exists()
