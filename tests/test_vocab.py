"""Tests for data_pipelines.vocab: training WordPiece and SentencePiece vocabularies."""

import os
import pickle
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from _data_helpers import TRICKY_TEXT, syllable_corpus

from data_pipelines import tokenizers as tk
from data_pipelines import vocab
from data_pipelines.corpus import CorpusError, CorpusWarning


def _hf_ids(vocab_file: Path, lines: list[str]) -> list[list[int]]:
    """transformers' BertTokenizer (lowercasing) on the same vocab: the ids of each line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import BertTokenizer

        ref = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    return [ref.encode(s, add_special_tokens=False) for s in lines]


def test_train_wordpiece(tmp_path):
    corpus = syllable_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "wp"
    tok = vocab.train_vocab(
        [str(corpus)], kind="wordpiece", vocab_size=300, out_dir=str(out),
        num_unused=10, pad_to_multiple_of=64,
    )  # fmt: skip
    tokens = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    unused = [f"[unused{i}]" for i in range(10)]
    assert tokens[:15] == ["[PAD]", *unused, "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not tokens[15].startswith("[")
    assert len(tokens) == tok.vocab_size and tok.vocab_size % 64 == 0 and tok.vocab_size >= 300
    learned = [t for t in tokens if not t.startswith("[")]
    assert len(learned) == 300 - 15  # the trainer filled the unpadded budget
    assert tokens[-1] == f"[unused{tok.vocab_size - 300 + 9}]"  # padding continues the numbering
    assert any(t.startswith("##") for t in learned)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 11, 12, 13, 14)
    assert tok.do_lower_case and "Capital" not in tokens

    lines = corpus.read_text(encoding="utf-8").splitlines()[:50]
    ids = tok.encode_batch(lines)
    assert all(tok.unk_id not in x for x in ids)  # the alphabet covers the corpus
    assert ids == _hf_ids(out / "vocab.txt", lines)
    assert tk.load_tokenizer(str(out)).encode_batch(lines) == ids
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dir left


def test_train_refuses_existing_vocab(tmp_path):
    corpus = syllable_corpus(tmp_path / "corpus.txt", lines=300)
    out = tmp_path / "wp"
    vocab.train_vocab(
        [str(corpus)], kind="wordpiece", vocab_size=120, out_dir=str(out), num_unused=2
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vocab.train_vocab([str(corpus)], kind="wordpiece", vocab_size=150, out_dir=str(out))
    assert len((out / "vocab.txt").read_text().split("\n")) - 1 == 120  # untouched
    tok = vocab.train_vocab(
        [str(corpus)], kind="wordpiece", vocab_size=150, out_dir=str(out), num_unused=2,
        overwrite=True,
    )  # fmt: skip
    assert tok.vocab_size == 150 and tk.load_tokenizer(str(out)).vocab_size == 150
    # An existing directory without a tokenizer is written into, keeping other files.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("keep")
    vocab.train_vocab(
        [str(corpus)], kind="wordpiece", vocab_size=120, out_dir=str(tmp_path / "other")
    )
    kept = sorted(os.listdir(tmp_path / "other"))
    assert kept == ["notes.md", "tokenizer_config.json", "vocab.txt"]


def test_a_tokenizer_of_another_kind_is_replaced_and_other_files_kept(tmp_path):
    corpus = syllable_corpus(tmp_path / "corpus.txt", lines=300)
    out = tmp_path / "tok"
    vocab.train_vocab(
        [str(corpus)], kind="sentencepiece", vocab_size=100, out_dir=str(out), num_unused=2
    )
    (out / "notes.md").write_text("keep")
    tok = vocab.train_vocab(
        [str(corpus)], kind="wordpiece", vocab_size=120, out_dir=str(out), num_unused=2,
        overwrite=True,
    )  # fmt: skip
    assert sorted(os.listdir(out)) == ["notes.md", "tokenizer_config.json", "vocab.txt"]
    assert tk.load_tokenizer(str(out)).kind == tok.kind == "wordpiece"
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "tok"]  # no temporary left


def test_train_sentencepiece_round_trip(tmp_path):
    corpus = syllable_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "sp"
    tok = vocab.train_vocab(
        [str(corpus)], kind="sentencepiece", vocab_size=250, out_dir=str(out), num_unused=4,
        pad_to_multiple_of=32,
    )  # fmt: skip
    assert isinstance(tok, tk.SentencePieceTokenizer) and tok.kind == "sentencepiece"
    assert tok.vocab_size == 256
    assert sorted(os.listdir(out)) == ["spm.model", "tokenizer_config.json"]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.convert_ids_to_tokens(range(5)) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.convert_ids_to_tokens(range(5, 15)) == [f"[unused{i}]" for i in range(10)]

    lines = corpus.read_text(encoding="utf-8").splitlines()[:40]
    ids = tok.encode_batch(lines)
    assert ids == [tok.encode(s) for s in lines]
    for s, x in zip(lines, ids, strict=True):
        pieces = tok.tokenize(s)
        assert tok.convert_tokens_to_ids(pieces) == x and tok.convert_ids_to_tokens(x) == pieces
        assert tok.decode(x) == s.lower()  # case-folded, otherwise lossless
        assert tok.unk_id not in x
        assert not tok.special_ids() & set(x)
        # Word starts: exactly one non-continuation piece per whitespace word.
        starts = [not tok.is_continuation(i) for i in x]
        assert sum(starts) == len(s.split()) and starts[0]
    assert tok.encode("CAPITAL words") == tok.encode("capital words")
    assert tok.tokenize("ka ü") == ["▁ka", "▁", "[UNK]"]  # unknown characters give [UNK]
    assert tok.encode("") == [] and tok.tokenize("") == []
    mask = tok.continuation_mask()
    pieces = tok.convert_ids_to_tokens(range(tok.vocab_size))
    assert mask.tolist() == [i >= 15 and not p.startswith("▁") for i, p in enumerate(pieces)]
    assert tok.special_ids() == {0, 1, 2, 3, 4}

    loaded = tk.load_tokenizer(str(out))
    clone = pickle.loads(pickle.dumps(tok))
    tok.save(str(tmp_path / "saved"))
    resaved = tk.load_tokenizer(str(tmp_path / "saved"))
    bare = tk.load_tokenizer(str(out / "spm.model"))  # no config beside it is needed
    for other in (loaded, clone, resaved, bare):
        assert isinstance(other, tk.SentencePieceTokenizer) and other.do_lower_case
        assert other.encode_batch(lines) == ids

    with pytest.raises(ValueError, match="SentencePiece training"):
        vocab.train_vocab(
            [str(corpus)], kind="sentencepiece", vocab_size=50_000, out_dir=str(tmp_path / "big")
        )
    assert not (tmp_path / "big").exists()


def test_train_argument_errors(tmp_path):
    corpus = syllable_corpus(tmp_path / "corpus.txt", lines=10)
    with pytest.raises(ValueError, match="kind"):
        vocab.train_vocab([str(corpus)], kind="bpe", vocab_size=100, out_dir=str(tmp_path / "o"))
    with pytest.raises(CorpusError, match=r"missing.txt: no such input file"):
        vocab.train_vocab(
            [str(tmp_path / "missing.txt")], kind="wordpiece", vocab_size=200, out_dir=str(tmp_path)
        )
    with pytest.raises(ValueError, match="input_errors must be one of"):
        vocab.train_vocab(
            [str(corpus)], kind="wordpiece", vocab_size=200, out_dir=str(tmp_path / "o"),
            input_errors="surrogateescape",
        )  # fmt: skip
    with pytest.raises(ValueError, match="no room"):
        vocab.train_vocab(
            [str(corpus)], kind="wordpiece", vocab_size=100, out_dir=str(tmp_path / "o")
        )


# A corpus full of ties: 200 words seen exactly 5 times each (equally frequent merges) and
# characters of equal counts around the alphabet cut, plus a few frequent words.
def _tied_corpus(path: Path) -> Path:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choices(letters, k=rng.randint(3, 7))) for _ in range(200)})
    lines = []
    for _ in range(5):
        rng.shuffle(words)
        lines += [
            " ".join(["the", *words[i : i + 8], "of", "and"]) + " ." for i in range(0, 200, 8)
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_TRAIN_IN_SUBPROCESS = """
import sys
from data_pipelines import vocab
kind, corpus, out, size, sample = sys.argv[1:]
if sample != "all":  # sample the corpus down to about this many sentences
    vocab.SPM_INPUT_SENTENCE_SIZE = int(sample)
vocab.train_vocab(
    [corpus], kind=kind, vocab_size=int(size), out_dir=out, num_unused=0, limit_alphabet=18
)
"""


@pytest.mark.parametrize(
    "kind,sample",
    [("wordpiece", "all"), ("sentencepiece", "all"), ("sentencepiece", "500")],
    ids=["wordpiece", "sentencepiece", "sentencepiece-sampled"],
)
def test_training_is_deterministic_across_processes(tmp_path, kind, sample):
    """Each process has its own hash seeds (the Rust trainer's HashMaps) and SentencePiece its own
    sampling seed: 3 runs, one output."""
    if kind == "wordpiece":
        text, size, frequent = _tied_corpus(tmp_path / "corpus.txt"), 300, ["the", "of", "and"]
    else:
        text, size, frequent = (
            syllable_corpus(tmp_path / "corpus.txt"),
            200,
            ["capital", "words", "here"],
        )
    root = Path(__file__).resolve().parent.parent
    outs = []
    for run in range(3):
        out = tmp_path / f"v{run}"
        subprocess.run(
            [sys.executable, "-c", _TRAIN_IN_SUBPROCESS, kind, str(text), str(out), str(size),
             sample],
            cwd=root, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        outs.append(out)
    name = "vocab.txt" if kind == "wordpiece" else "spm.model"
    first = (outs[0] / name).read_bytes()
    assert all((o / name).read_bytes() == first for o in outs[1:])

    # Still a good vocab: the asked size, the frequent words whole, the corpus covered.
    tok = tk.load_tokenizer(str(outs[0]))
    assert tok.vocab_size == size
    start = "" if kind == "wordpiece" else "\u2581"
    assert tok.tokenize(" ".join(frequent)) == [start + w for w in frequent]
    words = sorted(set(text.read_text(encoding="utf-8").split()))
    if kind == "sentencepiece":
        assert all(tok.unk_id not in ids for ids in tok.encode_batch(words))
    else:
        tokens = first.decode().split("\n")[:-1]
        alphabet = [t for t in tokens if len(t) == 1]
        # limit_alphabet=18 of 27 characters: the most frequent, ties to the lower code point
        # (the cut falls among c, j, p, y, all seen 180 times).
        counts = {c: text.read_text().count(c) for c in "abcdefghijklmnopqrstuvwxyz."}
        assert sorted(c for c in counts if counts[c] == 180) == ["c", "j", "p", "y"]
        assert alphabet == sorted(sorted(counts, key=lambda c: (-counts[c], c))[:18])
        assert "c" in alphabet and "j" in alphabet and "p" not in alphabet
        # A word is [UNK] exactly when it holds a character left out of the alphabet.
        for w, ids in zip(words, tok.encode_batch(words), strict=True):
            assert (ids == [tok.unk_id]) == (not set(w) <= set(alphabet)), w
        # The continuation of every kept letter is there, and nothing else is a bare "##c".
        assert sorted(t for t in tokens if t.startswith("##") and len(t) == 3) == sorted(
            f"##{c}" for c in alphabet if c != "."
        )


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_wordpiece_alphabet_is_that_of_the_normalized_words(do_lower_case):
    """The alphabet counted character by character is the one of the normalized words."""
    from tokenizers import pre_tokenizers

    lines = [
        *TRICKY_TEXT,
        "\u01c4emo \u03a3\u0391\u03a3 \ufb01ne \u1e9e \u00c5str\u00f6m \uff46\uff55\uff4c\uff4c",
    ]
    normalizer = tk.bert_normalizer(do_lower_case, None, True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for line in lines:  # what the Rust trainer sees: whole lines normalized and split
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            for char in word:
                counts[char] = counts.get(char, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    for limit in (5, 17, 40, 10_000):
        alphabet = vocab._wordpiece_alphabet([lines], normalizer, pre_tokenizer, limit)
        assert alphabet == sorted(ranked[:limit])
    assert {"!", "(", "\u201c", "\u6211"} <= set(alphabet)  # punctuation, CJK: words alone


def test_wordpiece_continuations_are_those_of_the_words(tmp_path):
    """Only the "##c" pieces the words of the text make are in the vocab, so a small
    --vocab_size is not exceeded by pieces that never occur."""
    text = "abc bca cab dd. e! 北京 ü\n" * 3
    path = tmp_path / "t.txt"
    path.write_text(text)
    tok = vocab.train_vocab(
        [str(path)], kind="wordpiece", vocab_size=40, out_dir=str(tmp_path / "v"), num_unused=0
    )
    tokens = tk.read_vocab(str(tmp_path / "v" / "vocab.txt"))
    continuations = sorted(t for t in tokens if t.startswith("##") and len(t) == 3)
    assert continuations == ["##a", "##b", "##c", "##d"]  # not ##e, ##ü, ##北, ##!, ...
    assert len(tokens) <= 40 and tok.vocab_size == len(tokens)


def test_sentencepiece_sample_is_seeded_and_about_the_asked_size():
    documents = [[f"s{d}.{i}" for i in range(d % 7 + 1)] for d in range(1000)]  # 3,997 sentences
    n = sum(map(len, documents))
    everything = list(vocab._SentenceStream(iter(documents), 1.0))
    assert everything == [s for d in documents for s in d]
    half = list(vocab._SentenceStream(iter(documents), 0.5))
    assert half == list(vocab._SentenceStream(iter(documents), 0.5))  # the same draw every time
    assert abs(len(half) - n / 2) < 5 * (n / 4) ** 0.5  # binomial: within 5 sigma
    kept = set(half)
    assert kept < set(everything) and half == [s for s in everything if s in kept]  # in order


def _bad_corpus(path: Path) -> Path:
    """A corpus whose 4th line, and every 20th after it, holds the byte 0xD7 alone (not UTF-8).

    Often enough that SentencePiece, reading the file itself, learns the U+FFFD it decodes as.
    """
    lines = syllable_corpus(path.with_name("good.txt"), lines=400).read_bytes().split(b"\n")
    for i in range(3, len(lines), 20):
        lines[i] = b"ka to \xd7 ri mu."
    path.write_bytes(b"\n".join(lines))
    return path


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_invalid_utf8_in_training_text(tmp_path, kind):
    bad = _bad_corpus(tmp_path / "bad.txt")
    size = 150
    with pytest.raises(CorpusError, match=rf"{bad}:4: invalid UTF-8"):
        vocab.train_vocab([str(bad)], kind=kind, vocab_size=size, out_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()

    # "replace": the byte reads as U+FFFD, which the normalizers drop: never learned.
    with pytest.warns(CorpusWarning, match=rf"{bad}:4: invalid UTF-8 bytes replaced"):
        tok = vocab.train_vocab(
            [str(bad)], kind=kind, vocab_size=size, out_dir=str(tmp_path / "r"),
            input_errors="replace",
        )  # fmt: skip
    pieces = tok.convert_ids_to_tokens(range(tok.vocab_size))
    assert not [p for p in pieces if "\ufffd" in p]
    assert tok.encode("ka \ufffd ri") == tok.encode("ka ri")  # the normalizer drops it
    with pytest.warns(CorpusWarning, match=rf"{bad}:4: invalid UTF-8 bytes dropped"):
        ignored = vocab.train_vocab(
            [str(bad)], kind=kind, vocab_size=size, out_dir=str(tmp_path / "i"),
            input_errors="ignore",
        )  # fmt: skip
    # What is learned from the repaired text is the same either way.
    assert ignored.convert_ids_to_tokens(range(ignored.vocab_size)) == pieces


def test_vocab_refuses_empty_input_and_a_file_as_output(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with (
        pytest.warns(CorpusWarning),
        pytest.raises(CorpusError, match="blank.txt: the input holds no"),
    ):
        vocab.train_vocab(
            [str(blank)], kind="wordpiece", vocab_size=50, num_unused=0, out_dir=str(tmp_path / "v")
        )
    assert not (tmp_path / "v").exists()
    text = tmp_path / "t.txt"
    text.write_text("some words here\n")
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        vocab.train_vocab(
            [str(text)], kind="wordpiece", vocab_size=50, num_unused=0, out_dir=str(out)
        )
    assert out.read_text() == "x"
