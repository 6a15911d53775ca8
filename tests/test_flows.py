"""The README's multi-command flows, end to end through the `bertjax` command line, on tiny data.

Each step is the README's command with only sizes shrunk: vocab -> prepare -> train -> convert ->
features; convert -> glue; convert -> finetune SQuAD.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _data_helpers import make_documents, write_corpus
from test_finetune import write_sst2
from test_squad import _squad_file

from bertjax.main import main


def _bertjax(*argv: str) -> str:
    """Runs one command in-process; asserts exit status 0 and returns its stdout."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as e,
    ):
        main(["bertjax", *argv])
    assert e.value.code == 0, f"bertjax {' '.join(argv)}: {err.getvalue()[-3000:]}"
    return out.getvalue()


TINY_MODEL = [
    "--config.model.size=custom",
    "--config.model.num_layers=2",
    "--config.model.hidden_size=32",
    "--config.model.num_heads=2",
    "--config.model.intermediate_size=64",
    "--config.model.hidden_dropout_rate=0.1",  # the demo config has none; keep it exercised
]


@pytest.mark.slow
def test_pretraining_flow_vocab_prepare_train_convert_features(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", make_documents(60, seed=3))
    vocab, data, work = (str(tmp_path / n) for n in ("vocab", "data", "run"))

    _bertjax("vocab", "--input", corpus, "--kind", "wordpiece", "--vocab_size", "120",
             "--num_unused", "2", "--out", vocab)  # fmt: skip
    _bertjax("prepare", "--input", corpus, "--vocab", vocab, "--output", data,
             "--max_seq_length", "32", "--max_predictions_per_seq", "5", "--dupe_factor", "2",
             "--num_workers", "1", "--num_shards", "2")  # fmt: skip
    out = _bertjax(
        "train", "--config", "experiments/pretrain/tiny_demo.py", "--workdir", work,
        f"--config.data.train_dir={data}", "--config.train.num_steps=3",
        "--config.train.batch_size=8", "--config.train.log_every=1", *TINY_MODEL,
    )  # fmt: skip
    assert "final:" in out
    with open(os.path.join(work, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps[-1] == 3

    # The workdir carries the data's tokenizer: same ids as the vocab the data was made with.
    from data_pipelines.tokenizers import load_tokenizer

    text = "the cats walked north along the river ."
    assert load_tokenizer(work).encode(text) == load_tokenizer(vocab).encode(text)

    hf = str(tmp_path / "hf")
    _bertjax("convert", "--to", "hf", "--src", work, "--out", hf)
    back = str(tmp_path / "back")
    _bertjax("convert", "--from", "hf", "--src", hf, "--out", back)

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("the cat sat on the mat .\nwho ran north ? ||| the dog ran north .\n")
    feats = {}
    for name, checkpoint in (("workdir", work), ("round trip", back)):
        path = tmp_path / f"{name}.jsonl"
        _bertjax("features", "--checkpoint", checkpoint, "--input", str(sentences),
                 "--output", str(path), "--layers", "-1,-2", "--max_seq_length", "32")  # fmt: skip
        feats[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["line"] for r in feats["workdir"]] == [0, 1]
    assert feats["workdir"][1]["tokens"][0] == "[CLS]"
    for a, b in zip(feats["workdir"], feats["round trip"], strict=True):
        assert a["tokens"] == b["tokens"]
        np.testing.assert_allclose(a["layers"]["-1"], b["layers"]["-1"], atol=1e-5)


@pytest.mark.slow
def test_convert_then_glue_flow(hf_dir, tmp_path):
    ck = str(tmp_path / "ck")
    _bertjax("convert", "--from", "hf", "--src", hf_dir[0], "--out", ck)
    glue_data = str(tmp_path / "glue_data")
    write_sst2(glue_data, n_train=64, n_dev=16, n_test=8)
    work = str(tmp_path / "glue")
    out = _bertjax("glue", "--checkpoint", ck, "--tasks", "sst2", "--data_dir", glue_data,
                   "--workdir", work, "--max_seq_length", "16", "--num_epochs", "1",
                   "--batch_size", "16")  # fmt: skip
    assert "GLUE average" in out
    with open(os.path.join(work, "glue_results.json")) as f:
        results = json.load(f)
    assert 0.0 <= results["tasks"]["sst2"]["accuracy"] <= 100.0
    with open(os.path.join(work, "submission", "SST-2.tsv")) as f:
        rows = f.read().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 8


@pytest.mark.slow
def test_convert_then_finetune_squad_flow(hf_dir, tmp_path):
    ck = str(tmp_path / "ck")
    _bertjax("convert", "--from", "hf", "--src", hf_dir[0], "--out", ck)
    squad = tmp_path / "squad"
    squad.mkdir()
    _squad_file(str(squad / "train-v1.1.json"), 32, 0, v2=False)
    _squad_file(str(squad / "dev-v1.1.json"), 8, 1, v2=False)
    work = str(tmp_path / "squad1")
    out = _bertjax(
        "finetune", "--config", "experiments/squad/v1.py", "--workdir", work,
        f"--config.init_checkpoint={ck}", f"--config.task.data_dir={squad}",
        "--config.task.max_seq_length=32", "--config.task.doc_stride=8",
        "--config.task.max_query_length=8", "--config.train.batch_size=16",
        "--config.train.num_epochs=1.0",
    )  # fmt: skip
    assert "best dev" in out
    with open(os.path.join(work, "predictions.json")) as f:
        predictions = json.load(f)
    assert len(predictions) == 8
    with open(os.path.join(work, "eval_results.json")) as f:
        results = json.load(f)
    assert results["complete"] is True
    assert {"exact_match", "f1"} <= set(results["metrics"])
    assert os.path.isfile(os.path.join(results["best_dir"], "bertjax_config.json"))


@pytest.mark.slow
def test_same_config_twice_in_fresh_workdirs_is_byte_identical(tmp_path):
    """A config that trains its own vocab and prepares its own data: two runs in fresh
    workdirs give the same vocab, the same shards and the same loss curve, bit for bit."""
    corpus = write_corpus(tmp_path / "corpus.txt", make_documents(80, seed=5))
    runs = []
    for name in ("a", "b"):
        work = str(tmp_path / name)
        _bertjax(
            "train", "--config", "experiments/pretrain/tiny_demo.py", "--workdir", work,
            f"--config.data.corpus={corpus}", "--config.data.vocab_size=150",
            "--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
            "--config.data.eval_fraction=0.1", "--config.train.num_steps=3",
            "--config.train.batch_size=8", "--config.train.log_every=1",
            "--config.train.eval_every=3", "--config.train.eval_steps=1", *TINY_MODEL,
        )  # fmt: skip
        runs.append(work)

    def data_files(work: str) -> dict[str, bytes]:
        root = os.path.join(work, "data")
        out = {}
        for dirpath, _, files in os.walk(root):
            for f in files:
                path = os.path.join(dirpath, f)
                out[os.path.relpath(path, root)] = open(path, "rb").read()
        return out

    a, b = (data_files(w) for w in runs)
    assert "vocab/vocab.txt" in a and any(k.startswith("train/") for k in a)
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("dataset_info.json"):  # names its own directory
            info_a, info_b = (json.loads(x[key].decode().replace(r, "")) for x, r in
                              ((a, runs[0]), (b, runs[1])))  # fmt: skip
            assert info_a == info_b, key
        else:
            assert a[key] == b[key], key

    def curve(work: str) -> list[dict]:
        with open(os.path.join(work, "metrics.jsonl")) as f:
            return [
                {k: v for k, v in json.loads(line).items() if "per_sec" not in k and k != "mfu"}
                for line in f
            ]

    assert curve(runs[0]) == curve(runs[1])
    assert len(curve(runs[0])) >= 3
