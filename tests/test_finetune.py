"""Fine-tuning one GLUE task (bertjax/finetune.py) with tiny models on synthetic tasks.

The synthetic tasks are written in the GLUE download layout with a rule a model can learn: an
SST-2-format task whose label is whether the word "good" occurs, an STS-B-format regression
whose score counts shared words, MNLI-format pairs (and AX) for the suite tests in test_glue.py.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import WORDS, write_vocab

from bertjax import checkpoint as ckpt
from bertjax import finetune as ft
from bertjax.config import ModelConfig
from bertjax.model import BertForSequenceClassification
from bertjax.optim import OptimConfig, make_optimizer
from data_pipelines.tokenizers import load_tokenizer
from experiments.glue import common

POOL = [w for w in WORDS if w not in ("good", "bad", "cat", "dog")]
T = "\t"


def _sentence(rng: np.random.Generator, lo: int = 3, hi: int = 9) -> list[str]:
    return [str(w) for w in rng.choice(POOL, rng.integers(lo, hi))]


def _write(path: str, header: list[str] | None, rows: list[list[str]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ([T.join(header)] if header else []) + [T.join(r) for r in rows]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def write_sst2(data_dir: str, n_train: int, n_dev: int, n_test: int, seed: int = 0) -> list[int]:
    """SST-2 files: label 1 iff the sentence contains "good". Returns the test labels."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> list[tuple[str, int]]:
        out = []
        for i in range(n):
            words, label = _sentence(rng), int(i % 2)
            if label:
                words.insert(int(rng.integers(0, len(words) + 1)), "good")
            out.append((" ".join(words) + " ", label))
        return out

    for name, n in (("train", n_train), ("dev", n_dev)):
        _write(
            f"{data_dir}/SST-2/{name}.tsv", ["sentence", "label"], [[s, str(y)] for s, y in rows(n)]
        )
    test = rows(n_test)
    # Test ids in the file are not in row order: the submission must sort by them.
    ids = rng.permutation(n_test) + 100
    _write(
        f"{data_dir}/SST-2/test.tsv",
        ["index", "sentence"],
        [[str(i), s] for i, (s, _) in zip(ids, test, strict=True)],
    )
    return [y for _, y in test]


STSB_HEADER = [
    "index", "genre", "filename", "year", "old_index", "source1", "source2",
    "sentence1", "sentence2", "score",
]  # fmt: skip


def write_stsb(data_dir: str, n_train: int, n_dev: int, n_test: int, seed: int = 0) -> None:
    """STS-B files: score = 5 * the share of sentence1's words that sentence2 repeats."""
    rng = np.random.default_rng(seed)

    def rows(n: int, labelled: bool) -> list[list[str]]:
        out = []
        for i in range(n):
            a = _sentence(rng, 4, 7)
            keep = int(rng.integers(0, len(a) + 1))
            b = a[:keep] + _sentence(rng, 1, 4)
            meta = [str(i), "main-news", "x", "2012", str(i), "none", "none"]
            out.append(
                meta
                + [" ".join(a), " ".join(b)]
                + ([f"{5.0 * keep / len(a):.3f}"] if labelled else [])
            )
        return out

    _write(f"{data_dir}/STS-B/train.tsv", STSB_HEADER, rows(n_train, True))
    _write(f"{data_dir}/STS-B/dev.tsv", STSB_HEADER, rows(n_dev, True))
    _write(f"{data_dir}/STS-B/test.tsv", STSB_HEADER[:-1], rows(n_test, False))


def tiny_config(checkpoint: str, data_dir: str, task: str, **train):
    """The task's defaults, shrunk for a tiny model on CPU."""
    c = common.task_config(task, None)
    c.init_checkpoint = checkpoint
    c.task.data_dir = data_dir
    c.task.max_seq_length = 16
    c.optim.learning_rate = 3e-3
    c.train.batch_size = 32
    c.train.num_epochs = 4.0
    c.train.log_every = 4
    for k, v in train.items():
        c.train[k] = v
    return c


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _read_tsv(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


@pytest.mark.slow
def test_learns_synthetic_sst2(bertjax_dir, tmp_path):
    data = str(tmp_path / "glue")
    test_labels = write_sst2(data, n_train=384, n_dev=100, n_test=37)
    work = str(tmp_path / "run")
    r = ft.finetune(tiny_config(bertjax_dir, data, "sst2"), work)

    # Learns the rule; the best epoch's dev accuracy is reported.
    assert r["metrics"]["accuracy"] >= 90.0, r["history"]
    assert r["score"] == max(h["score"] for h in r["history"])
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3, 4]
    assert r["num_steps"] == 4 * 12  # ceil(384 / 32) per epoch
    # Dev accuracy is over all 100 examples (the padded last batch is not dropped).
    assert all(round(h["metrics"]["accuracy"] * 100) % 100 == 0 for h in r["history"])

    # Files: metrics.jsonl (train + eval records), finished eval_results.json.
    records = _read_jsonl(os.path.join(work, "metrics.jsonl"))
    train = [x for x in records if "split" not in x]
    evals = [x for x in records if x.get("split") == "eval"]
    assert [x["step"] for x in train] == list(range(4, 49, 4))
    assert train[-1]["loss"] < train[0]["loss"]
    assert len(evals) == 4 and "accuracy" in evals[0] and "loss" in evals[0]
    with open(os.path.join(work, ft.RESULTS_FILE)) as f:
        saved = json.load(f)
    assert saved["complete"] and saved["metrics"] == r["metrics"]
    assert saved["config"]["task"]["name"] == "sst2"

    # The best checkpoint is a bertjax model dir whose params reproduce the dev accuracy.
    config, params, _ = ckpt.load_model_dir(r["best_dir"])
    assert sorted(params) == ["bert", "classifier"]
    tokenizer = ckpt.load_tokenizer_from(r["best_dir"])
    _, evals_data, _ = ft.load_data(ft.TaskConfig("sst2", data, max_seq_length=16), tokenizer)
    feats = evals_data[0].features
    logits = BertForSequenceClassification(config, 2).apply(
        {"params": params}, {k: feats[k] for k in ft.MODEL_INPUTS}, train=False
    )["logits"]
    accuracy = 100.0 * float(np.mean(np.argmax(logits, -1) == feats["label"]))
    assert accuracy == pytest.approx(r["metrics"]["accuracy"])

    # Test predictions: sorted by the file's ids, label strings, and they follow the rule.
    rows = _read_tsv(r["submission_files"]["SST-2.tsv"])
    assert rows[0] == ["index", "prediction"]
    ids = [int(x[0]) for x in rows[1:]]
    assert ids == sorted(range(100, 137))
    assert {x[1] for x in rows[1:]} <= {"0", "1"}
    pred = r["predictions"]["sst2"]["test"]
    assert sorted(pred["index"].tolist()) == ids
    assert np.mean(pred["prediction"] == np.array(test_labels)) >= 0.9


@pytest.mark.slow
def test_stsb_regression(bertjax_dir, tmp_path):
    data = str(tmp_path / "glue")
    write_stsb(data, n_train=96, n_dev=40, n_test=10)
    work = str(tmp_path / "run")
    c = tiny_config(bertjax_dir, data, "stsb", num_epochs=8.0, log_every=3)
    c.optim.learning_rate = 1e-2
    r = ft.finetune(c, work)
    assert set(r["metrics"]) == {"pearson", "spearman"}
    assert all(np.isfinite(v) and -100 <= v <= 100 for v in r["metrics"].values())
    assert r["score"] == pytest.approx(np.mean(list(r["metrics"].values())))
    assert r["score"] > 50.0  # the score counts shared words: learnable
    train = [x for x in _read_jsonl(os.path.join(work, "metrics.jsonl")) if "split" not in x]
    assert "accuracy" not in train[0]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]  # MSE falls from ~(mean score)^2
    assert r["history"][-1]["losses"]["loss"] < r["history"][0]["losses"]["loss"]
    rows = _read_tsv(r["submission_files"]["STS-B.tsv"])
    assert rows[0] == ["index", "prediction"] and len(rows) == 11
    values = [float(x[1]) for x in rows[1:]]
    assert all(0.0 <= v <= 5.0 for v in values)
    assert all(len(x[1].split(".")[1]) == 3 for x in rows[1:])
    assert r["predictions"]["stsb"]["test"]["prediction"].dtype == np.float32


# --- Padding, sharding --------------------------------------------------------------------------


def test_batch_rows_pad_with_zero_weight():
    order = np.array([5, 3, 9, 1, 7])
    batches = list(ft.batch_rows(order, 2))
    assert [n for _, n in batches] == [2, 2, 1]
    assert batches[-1][0].tolist() == [7, 7]
    feats = {"input_ids": np.arange(10)[:, None] * np.ones((1, 3), np.int32)}
    b = ft.take(feats, *batches[-1], keys=["input_ids"])
    assert b[ft.WEIGHT].tolist() == [1.0, 0.0] and b["input_ids"][:, 0].tolist() == [7, 7]


def _small_model_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=152,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return ModelConfig(**{**base, **kw})


def test_zero_weight_rows_do_not_change_the_step():
    """A batch of 3 real rows filled up to 8 with weight-0 garbage steps like the 3 rows."""
    config = _small_model_config(num_layers=1, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    model = BertForSequenceClassification(config, 3)
    tx = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0), 10)
    init = jax.jit(lambda key: nn.meta.unbox(ft.init_state(key, model, tx, 8)))
    state = init(jax.random.key_data(jax.random.key(0)))
    rng = np.random.default_rng(0)
    real = {
        "input_ids": rng.integers(5, 150, (3, 8)).astype(np.int32),
        "input_mask": np.ones((3, 8), np.int32),
        "segment_ids": np.zeros((3, 8), np.int32),
        "label": rng.integers(0, 3, 3).astype(np.int32),
        ft.WEIGHT: np.ones(3, np.float32),
    }
    garbage = {k: np.concatenate([v, v[:1].repeat(5, 0)]) for k, v in real.items()}
    garbage["input_ids"][3:] = 7
    garbage["label"][3:] = 2
    garbage[ft.WEIGHT][3:] = 0.0
    step = jax.jit(
        lambda s, b: ft.train_step(
            s,
            b,
            model=model,
            tx=tx,
            schedule=optax.constant_schedule(1e-3),
            regression=False,
            grad_accum_steps=1,
        )
    )
    s1, m1 = step(state, real)
    s2, m2 = step(state, garbage)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(s1.params), leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def divisible_dir(tmp_path_factory):
    """A random tiny checkpoint whose dimensions all split over a tensor axis of 2."""
    from conftest import tiny_vocab

    root = tmp_path_factory.mktemp("divisible")
    write_vocab(str(root))
    tokenizer = load_tokenizer(str(root / "vocab.txt"))
    config = _small_model_config()
    assert tokenizer.vocab_size <= config.vocab_size == 152 and len(tiny_vocab()) < 152
    model = BertForSequenceClassification(config, 2)
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in ft.MODEL_INPUTS}
    params = nn.meta.unbox(model.init(jax.random.key(1), batch, train=False)["params"])
    return ckpt.save_model_dir(
        str(root / "ckpt"), {"bert": jax.device_get(params["bert"])}, config, tokenizer=tokenizer
    )


@pytest.mark.slow
def test_sharded_matches_single_device(divisible_dir, tmp_path):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=24, n_dev=20, n_test=4)
    results, losses = {}, {}
    for name, devices, mesh in (
        ("one", jax.devices()[:1], dict(data=1, fsdp=1, tensor=1)),
        ("mesh", jax.devices(), dict(data=2, fsdp=2, tensor=2)),
    ):
        c = tiny_config(divisible_dir, data, "sst2", batch_size=8, num_epochs=1.0, log_every=1)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
        work = str(tmp_path / name)
        results[name] = ft.finetune(c, work, devices=devices)
        records = _read_jsonl(os.path.join(work, "metrics.jsonl"))
        losses[name] = [x["loss"] for x in records if "split" not in x]
    assert len(losses["one"]) == 3  # 24 examples / 8
    np.testing.assert_allclose(losses["mesh"][0], losses["one"][0], rtol=1e-5)
    np.testing.assert_allclose(losses["mesh"], losses["one"], rtol=1e-4)
    assert results["mesh"]["metrics"] == pytest.approx(results["one"]["metrics"])
    np.testing.assert_array_equal(
        results["mesh"]["predictions"]["sst2"]["test"]["prediction"],
        results["one"]["predictions"]["sst2"]["test"]["prediction"],
    )


# --- Bad input ----------------------------------------------------------------------------------


def test_bad_config_errors(bertjax_dir, hf_dir, tmp_path):
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=8, n_dev=4, n_test=0)
    work = str(tmp_path / "run")

    def run(**edits):
        c = tiny_config(bertjax_dir, data, "sst2")
        for key, value in edits.items():
            group, field = key.split("__") if "__" in key else (None, key)
            (c[group] if group else c)[field] = value
        return ft.finetune(c, work)

    with pytest.raises(ValueError, match="init_checkpoint is required"):
        run(init_checkpoint="")
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        run(task__name="sst3")
    with pytest.raises(ValueError, match="predicted with the mnli model"):
        run(task__name="ax")
    with pytest.raises(ValueError, match="data_dir is required"):
        run(task__data_dir="")
    with pytest.raises(ckpt.CheckpointError, match="not a bertjax checkpoint"):
        run(init_checkpoint=hf_dir[0])
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        run(task__max_seq_length=128)
    with pytest.raises(FileNotFoundError, match="MRPC directory not found"):
        run(task__name="mrpc")
    with pytest.raises(ValueError, match="warmup_fraction"):
        run(optim__warmup_fraction=1.5)
    with pytest.raises(ValueError, match="num_epochs"):
        run(train__num_epochs=0.0)
    c = tiny_config(bertjax_dir, data, "sst2")
    c.train.batch_size = 6
    c.mesh.data = 4
    with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
        ft.finetune(c, work, devices=jax.devices()[:4])
    assert not os.path.exists(work)  # nothing written before the inputs are checked
