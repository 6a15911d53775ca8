"""Tests for data_pipelines.corpus: the BERT text format, read and written, and sentence
splitting (the TFDS and embedded sources are in test_corpus_sources.py)."""

from __future__ import annotations

import warnings

import pytest

from data_pipelines import corpus

# ---------------------------------------------------------------------------------------
# The BERT text format.


def _read(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", corpus.CorpusWarning)
        return list(corpus.iter_documents(path, **kwargs))


def test_documents_split_at_blank_lines_crlf_bom_and_whitespace(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(
        b"\xef\xbb\xbfFirst sentence.\r\n  Second one.  \r\n\r\n \t \r\n\r\n"
        b"Doc two.\n\n\n\nDoc three, no final newline."
    )
    assert _read(path) == [
        ["First sentence.", "Second one."],
        ["Doc two."],
        ["Doc three, no final newline."],
    ]


def test_files_are_read_in_sorted_order_and_a_file_end_ends_a_document(tmp_path):
    (tmp_path / "b.txt").write_text("b1\nb2\n")
    (tmp_path / "a.txt").write_text("a1\n")  # no blank line at the end
    (tmp_path / "c.txt").write_text("c1\n\nc2\n")
    docs = _read(str(tmp_path / "*.txt"))
    assert docs == [["a1"], ["b1", "b2"], ["c1"], ["c2"]]
    # The same files as a list and as a comma-separated string give the same stream.
    listed = [str(tmp_path / n) for n in ("c.txt", "a.txt", "b.txt")]
    assert _read(listed) == docs
    assert _read(",".join(listed)) == docs


def test_missing_input_and_directory_are_rejected_by_name(tmp_path):
    with pytest.raises(corpus.CorpusError, match="nope.txt"):
        corpus.expand_input_files([str(tmp_path / "nope.txt")])
    with pytest.raises(corpus.CorpusError, match="no such input"):
        corpus.expand_input_files(str(tmp_path / "*.missing"))
    with pytest.raises(corpus.CorpusError, match="is a directory"):
        corpus.expand_input_files([str(tmp_path)])


def test_empty_file_warns_with_its_name(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    for path in (empty, blank):
        with pytest.warns(corpus.CorpusWarning, match=f"{path}: input file holds no document"):
            assert list(corpus.iter_documents(str(path))) == []


def test_invalid_utf8_strict_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\n\nsecond doc\nbad \xff\xfe bytes\nmore\n")
    with pytest.raises(corpus.CorpusError, match=rf"{path}:4: invalid UTF-8"):
        list(corpus.iter_documents(str(path)))


def test_invalid_utf8_replace_warns_with_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\nbad \xff here\nalso \xc3 bad\n\nfine\n")
    with pytest.warns(corpus.CorpusWarning, match=rf"{path}:2: invalid UTF-8.*2 line\(s\)"):
        docs = list(corpus.iter_documents(str(path), errors="replace"))
    assert docs == [["ok", "bad \ufffd here", "also \ufffd bad"], ["fine"]]


def test_invalid_utf8_far_into_a_big_file_reports_the_right_line(tmp_path):
    path = tmp_path / "big.txt"
    lines = [f"line number {i} of the file." for i in range(60_000)]  # > one 1 MiB block
    data = "\n".join(lines).encode() + b"\n"
    bad_at = data.index(b"line number 50000 ")
    path.write_bytes(data[:bad_at] + b"\x80" + data[bad_at:])
    with pytest.raises(corpus.CorpusError, match=rf"{path}:50001:"):
        list(corpus.iter_documents(str(path)))


def test_overlong_lines_are_split_with_a_warning_and_bounded(tmp_path):
    path = tmp_path / "long.txt"
    sentence = "This is one sentence of the paragraph. "
    path.write_text("short line\n" + sentence * 5000 + "\n\n" + "x" * 300_000 + "\nend\n")
    with pytest.warns(corpus.CorpusWarning, match=rf"{path}:2: line longer than"):
        docs = list(corpus.iter_documents(str(path), max_line_chars=1000))
    assert docs[0][0] == "short line"
    assert docs[0][1:] == ["This is one sentence of the paragraph."] * 5000
    # A 300k-character "word" without spaces is cut into pieces of at most 1000 chars.
    assert all(len(s) <= 1000 for s in docs[1])
    assert "".join(docs[1][:-1]) == "x" * 300_000 and docs[1][-1] == "end"


def test_iter_lines_numbers_every_line_and_strips(tmp_path):
    path = tmp_path / "lines.txt"
    long = "word " * 50_000  # whole, however long: no sentence splitting here
    path.write_bytes(
        b"\xef\xbb\xbf  first. Second sentence.\r\n\n \t \nx ||| y\n" + long.encode() + b"\nlast"
    )
    assert list(corpus.iter_lines(str(path))) == [
        (1, "first. Second sentence."),
        (2, ""),
        (3, ""),
        (4, "x ||| y"),
        (5, long.strip()),
        (6, "last"),
    ]


def test_iter_lines_shares_the_decoding_policy(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"one\ntwo\n\nfour \xd7 bytes\nfive \xff\n")
    with pytest.raises(corpus.CorpusError, match=rf"^{path}:4: invalid UTF-8 .*input_errors"):
        list(corpus.iter_lines(str(path)))
    with pytest.warns(corpus.CorpusWarning, match=rf"{path}:4: .* replaced by U\+FFFD \(2 line"):
        replaced = list(corpus.iter_lines(str(path), errors="replace"))
    assert replaced[3:] == [(4, "four \ufffd bytes"), (5, "five \ufffd")]
    with pytest.warns(corpus.CorpusWarning, match=rf"{path}:4: invalid UTF-8 bytes dropped"):
        ignored = list(corpus.iter_lines(str(path), errors="ignore"))
    assert ignored[3:] == [(4, "four  bytes"), (5, "five")]
    with pytest.raises(ValueError, match="errors must be one of"):
        list(corpus.iter_lines(str(path), errors="surrogateescape"))
    with pytest.raises(corpus.CorpusError, match="nope.txt: cannot open input file"):
        list(corpus.iter_lines(str(tmp_path / "nope.txt")))


def test_write_documents_round_trips_and_is_atomic(tmp_path):
    docs = [["One.", "Two  with\nnewline."], [], ["  "], ["Three."]]
    out = tmp_path / "sub" / "corpus.txt"
    stats = corpus.write_documents(docs, out)
    assert stats.num_documents == 2 and stats.num_sentences == 3
    assert out.read_text() == "One.\nTwo with newline.\n\nThree.\n"
    assert _read(out) == [["One.", "Two with newline."], ["Three."]]
    assert [p.name for p in out.parent.iterdir()] == ["corpus.txt"]


# ---------------------------------------------------------------------------------------
# Sentence splitting.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hello world. This is BERT! Is it? Yes.",
            ["Hello world.", "This is BERT!", "Is it?", "Yes."],
        ),
        (
            "Dr. Smith met Mr. J. Doe, e.g. at noon. Then left.",
            ["Dr. Smith met Mr. J. Doe, e.g. at noon.", "Then left."],
        ),
        ('Pi is 3.14 today. "Quoted." Next one.', ["Pi is 3.14 today.", '"Quoted."', "Next one."]),
        ("lower case after. period stays", ["lower case after. period stays"]),
        ("It ended.) (Then a bracket.", ["It ended.)", "(Then a bracket."]),
        ("第一句。第二句。", ["第一句。", "第二句。"]),
        ("  spaced \n\t out.  ", ["spaced out."]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert corpus.split_sentences(text) == expected


def test_text_to_document_sentences_or_paragraphs():
    text = "Para one. Still one.\n\nPara two is here.\nPara three."
    assert corpus.text_to_document(text) == [
        "Para one.",
        "Still one.",
        "Para two is here.",
        "Para three.",
    ]
    assert corpus.text_to_document(text, segment="paragraph") == [
        "Para one. Still one.",
        "Para two is here.",
        "Para three.",
    ]


def test_a_line_of_undecodable_bytes_is_no_document_boundary(tmp_path):
    """Dropped ("ignore") or replaced, a line of invalid bytes between two sentences of a
    document leaves one document, as with "replace"."""
    path = tmp_path / "c.txt"
    path.write_bytes(b"first sentence .\n\xd7\xd7\nsecond sentence .\n\nother doc .\n")
    for errors in ("replace", "ignore"):
        with pytest.warns(corpus.CorpusWarning, match="c.txt:2"):
            docs = list(corpus.iter_documents([str(path)], errors=errors))
        assert len(docs) == 2, (errors, docs)
        assert docs[0][0] == "first sentence ." and docs[0][-1] == "second sentence ."
        assert docs[1] == ["other doc ."]
    with pytest.warns(corpus.CorpusWarning):  # iter_lines keeps every line, numbered
        lines = list(corpus.iter_lines(str(path), errors="ignore"))
    assert lines[1] == (2, "")
