"""Fine-tuning one GLUE task (bertjax/finetune.py) with tiny models on synthetic tasks.

The synthetic tasks are written in the GLUE download layout with a rule a model can learn: an
SST-2-format task whose label is whether the word "good" occurs, an STS-B-format regression
whose score counts shared words, MNLI-format pairs (and AX) for the suite tests in test_glue.py.
"""

from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _data_helpers import tiny_model_config
from conftest import WORDS, write_vocab

from bertjax import checkpoint as ckpt
from bertjax import finetune as ft
from bertjax import glue_task, tasks
from bertjax.config import ModelConfig
from bertjax.finetune_batching import WEIGHT, take
from bertjax.finetune_state import init_state
from bertjax.finetune_task import MODEL_INPUTS, SequenceObjective, Split, TokenObjective
from bertjax.model import BertForSequenceClassification
from bertjax.optim import OptimConfig, make_optimizer
from data_pipelines import features as F
from data_pipelines.bucketing import Batch
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
    c.data.bucket_multiple = 8  # two bucket lengths, 8 and 16
    for k, v in train.items():
        c.train[k] = v
    return c


def _read_json_file(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
    r = tasks.finetune(tiny_config(bertjax_dir, data, "sst2"), work)

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
    _, evals_data, _ = glue_task.load_data(
        glue_task.GlueTaskConfig("sst2", data, max_seq_length=16), tokenizer
    )
    feats = evals_data[0].arrays
    logits = BertForSequenceClassification(config, 2).apply(
        {"params": params}, {k: feats[k] for k in MODEL_INPUTS}, train=False
    )["logits"]
    accuracy = 100.0 * float(np.mean(np.argmax(logits, -1) == feats[F.LABEL]))
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
    r = tasks.finetune(c, work)
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


def test_take_pads_with_zero_weight_copies_and_cuts_to_the_batch_length():
    batch = Batch(np.array([7]), 2)
    feats = {
        F.INPUT_IDS: np.arange(10)[:, None] * np.ones((1, 3), np.int32),
        F.LABEL: np.arange(10),
    }
    b = take(feats, batch, 2, keys=[F.INPUT_IDS, F.LABEL])
    assert b[WEIGHT].tolist() == [1.0, 0.0] and b[F.INPUT_IDS][:, 0].tolist() == [7, 7]
    assert b[F.INPUT_IDS].shape == (2, 2) and b[F.LABEL].tolist() == [7, 7]
    full = take(feats, Batch(np.array([5, 3]), 3), 2, keys=[F.INPUT_IDS])
    assert full[WEIGHT].tolist() == [1.0, 1.0] and full[F.INPUT_IDS].shape == (2, 3)


def _small_model_config(**kw) -> ModelConfig:
    return tiny_model_config(**{"vocab_size": 152, **kw})


def test_zero_weight_rows_do_not_change_the_step():
    """A batch of 3 real rows filled up to 8 with weight-0 garbage steps like the 3 rows."""
    config = _small_model_config(num_layers=1, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    model = BertForSequenceClassification(config, 3)
    tx = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0), 10)
    init = jax.jit(lambda key: nn.meta.unbox(init_state(key, model, tx, 8)))
    state = init(jax.random.key_data(jax.random.key(0)))
    rng = np.random.default_rng(0)
    real = {
        F.INPUT_IDS: rng.integers(5, 150, (3, 8)).astype(np.int32),
        F.INPUT_MASK: np.ones((3, 8), np.int32),
        F.SEGMENT_IDS: np.zeros((3, 8), np.int32),
        F.LABEL: rng.integers(0, 3, 3).astype(np.int32),
        WEIGHT: np.ones(3, np.float32),
    }
    garbage = {k: np.concatenate([v, v[:1].repeat(5, 0)]) for k, v in real.items()}
    garbage[F.INPUT_IDS][3:] = 7
    garbage[F.LABEL][3:] = 2
    garbage[WEIGHT][3:] = 0.0
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
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in MODEL_INPUTS}
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
        results[name] = tasks.finetune(c, work, devices=devices)
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
        return tasks.finetune(c, work)

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
        tasks.finetune(c, work, devices=jax.devices()[:4])
    assert not os.path.exists(work)  # nothing written before the inputs are checked


# --- The engine: one loop for every task ---------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_aliases(tree) -> set[str]:
    """Names a module binds to other modules (`import m as x`, `from pkg import m`)."""
    import ast
    import importlib.util

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                try:
                    is_module = importlib.util.find_spec(f"{node.module}.{a.name}") is not None
                except ModuleNotFoundError:
                    is_module = False
                if is_module:
                    names.add(a.asname or a.name)
    return names


@pytest.mark.parametrize(
    "module",
    [
        "finetune",
        "finetune_task",
        "finetune_batching",
        "finetune_state",
        "glue_task",
        "tasks",
        "squad",
        "squad_metrics",
        "glue",
        "trainer",
        "pretrain",
    ],
)
def test_no_private_names_of_other_modules(module):
    """The loops share code through public names only: no `ft._helper`, no `from m import _x`."""
    import ast

    with open(os.path.join(ROOT, "bertjax", f"{module}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    aliases = _module_aliases(tree)
    private = [
        f"{node.value.id}.{node.attr} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]
    private += [
        f"from {node.module} import {a.name} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if a.name.startswith("_")
    ]
    assert not private, private


def test_glue_and_squad_are_tasks_of_the_one_engine():
    from bertjax import squad

    glue_cfg = common.task_config("sst2", None)
    squad_cfg = __import__("experiments.squad.v1", fromlist=["get_config"]).get_config()
    assert tasks.task_family(glue_cfg) is glue_task.FAMILY
    assert tasks.task_family(squad_cfg) is squad.FAMILY
    for task_cls in (glue_task.GlueTask, squad.SpanTask):
        for name in ("load_data", "describe", "summary", "evaluate", "write_best", "finish"):
            assert callable(getattr(task_cls, name)), (task_cls, name)
        for name in ("head", "targets", "outputs", "token_outputs", "output_files"):
            assert hasattr(task_cls, name), (task_cls, name)
    # squad.py holds no loop of its own: it runs finetune's.
    with open(os.path.join(ROOT, "bertjax", "squad.py"), encoding="utf-8") as f:
        source = f.read()
    assert "ft.finetune(" in source
    for name in ("squad.py", "glue_task.py"):
        with open(os.path.join(ROOT, "bertjax", name), encoding="utf-8") as f:
            source = f.read()
        for loop_part in ("jax.jit(", "MetricWriter", "TrainCheckpointer", "tqdm"):
            assert loop_part not in source, (name, loop_part)


@pytest.mark.parametrize(
    "module", ["finetune", "finetune_task", "finetune_batching", "finetune_state"]
)
def test_the_engine_imports_no_task(module):
    """Tasks plug into the engine, never the other way round: the engine's modules import no
    task module (tasks.py, above them all, picks one for a config)."""
    import ast

    with open(os.path.join(ROOT, "bertjax", f"{module}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    tasks_ = {f"bertjax.{m}" for m in ("glue_task", "squad", "ner", "tasks", "glue")}
    assert not imported & tasks_, sorted(imported & tasks_)


def _rows(kind: str, rng: np.random.Generator, lengths: np.ndarray, seq_len: int):
    """(model, objective, arrays [B, seq_len]) of a tiny task of `kind`; padding beyond each
    row's length holds garbage ids (the mask alone must keep it out)."""
    from bertjax.model import BertForQuestionAnswering, BertForTokenClassification
    from bertjax.squad import SpanObjective

    config = _small_model_config(hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    b = len(lengths)
    mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
    arrays = {
        F.INPUT_IDS: rng.integers(5, 150, (b, seq_len)).astype(np.int32),
        F.INPUT_MASK: mask,
        F.SEGMENT_IDS: ((np.arange(seq_len)[None] > lengths[:, None] // 2) * mask).astype(np.int32),
    }
    if kind == "classification":
        arrays[F.LABEL] = rng.integers(0, 3, b).astype(np.int32)
        return BertForSequenceClassification(config, 3), SequenceObjective(), arrays
    if kind == "regression":
        arrays[F.LABEL] = rng.uniform(0, 5, b).astype(np.float32)
        return BertForSequenceClassification(config, 1), SequenceObjective(True), arrays
    if kind == "span":
        start = rng.integers(0, lengths).astype(np.int32)
        arrays[F.START_POSITIONS] = start
        arrays[F.END_POSITIONS] = np.minimum(start + 2, lengths - 1).astype(np.int32)
        return BertForQuestionAnswering(config), SpanObjective(), arrays
    labels = rng.integers(0, 5, (b, seq_len)).astype(np.int32)
    labels[mask == 0] = -100
    labels[:, 0] = -100  # [CLS]
    arrays[F.LABEL] = labels
    return BertForTokenClassification(config, 5), TokenObjective(), arrays


@pytest.mark.parametrize("kind", ["classification", "regression", "span", "token"])
def test_bucket_length_changes_no_per_row_loss_nor_the_step(kind):
    """The same rows cut to their bucket length (16) and at max_seq_length (40): the same
    per-row losses, metrics, step loss and updated parameters, up to float rounding."""
    rng = np.random.default_rng(0)
    lengths = np.array([5, 16, 9, 3, 12, 7])
    model, objective, arrays = _rows(kind, rng, lengths, 40)
    split = Split("dev", arrays)
    assert split.lengths.tolist() == lengths.tolist()
    keys = [k for k in arrays]
    rows = Batch(np.arange(6), 16)
    cut = take(arrays, rows, 8, keys)  # 6 examples + 2 weight-0 rows, at length 16
    full = take(arrays, Batch(np.arange(6), 40), 8, keys)
    assert cut[F.INPUT_IDS].shape == (8, 16) and full[F.INPUT_IDS].shape == (8, 40)
    if kind == "token":
        assert cut[F.LABEL].shape == (8, 16)
    tx = optax.sgd(0.1)  # the update is the gradient (Adam would magnify float noise)
    state = jax.jit(lambda key: nn.meta.unbox(init_state(key, model, tx, 40)))(
        jax.random.key_data(jax.random.key(0))
    )
    per_row = {}
    for name, batch in (("cut", cut), ("full", full)):
        out = model.apply({"params": state.params}, batch, train=False)
        per_row[name] = jax.device_get(objective.row_losses(out, batch))
    assert set(per_row["cut"]) >= {"loss"}
    for k in per_row["full"]:
        np.testing.assert_allclose(per_row["cut"][k], per_row["full"][k], rtol=2e-5, atol=2e-6)
    step = jax.jit(
        lambda s, b: ft.train_step(
            s, b, model=model, tx=tx, schedule=optax.constant_schedule(1e-3),
            grad_accum_steps=2, objective=objective,
        )
    )  # fmt: skip
    s_cut, m_cut = step(state, cut)
    s_full, m_full = step(state, full)
    expected = np.sum(per_row["full"]["loss"][:6]) / np.sum(
        jax.device_get(objective.row_counts(full))[:6]
    )
    np.testing.assert_allclose(m_full["loss"], expected, rtol=1e-5)
    for k in m_full:
        np.testing.assert_allclose(m_cut[k], m_full[k], rtol=1e-4, atol=1e-6, err_msg=k)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(s_cut.params), leaves(s_full.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def finetuned_dir(tmp_path_factory):
    """A tiny SST-2 classifier model dir (random encoder and head) with its task metadata, as
    a fine-tuning run leaves in WORKDIR/best."""
    from data_pipelines import glue as glue_data

    root = tmp_path_factory.mktemp("finetuned")
    write_vocab(str(root))
    tokenizer = load_tokenizer(str(root / "vocab.txt"))
    config = _small_model_config()
    model = BertForSequenceClassification(config, 2)
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in MODEL_INPUTS}
    params = nn.meta.unbox(model.init(jax.random.key(2), batch, train=False)["params"])
    return ckpt.save_model_dir(
        str(root / "best"),
        jax.device_get(params),
        config,
        tokenizer=tokenizer,
        task=glue_task.task_metadata(glue_data.get_task("sst2")),
    )


def test_evaluate_only_predicts_in_input_order_with_bucketing(finetuned_dir, tmp_path):
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=8, n_dev=40, n_test=37)
    # Sentences of 3-8 words (5-30 tokens with word pieces), max_seq_length 32, buckets of 8.
    runs = {}
    for multiple in (8, 0, "packed"):
        c = tiny_config(finetuned_dir, data, "sst2", num_epochs=0.0, batch_size=8)
        c.task.max_seq_length = 32
        c.data.bucket_multiple = 8 if multiple == "packed" else multiple
        c.data.packing = multiple == "packed"
        work = str(tmp_path / f"eval{multiple}")
        runs[multiple] = tasks.finetune(c, work)  # num_epochs=0: evaluate_checkpoint
        assert not os.path.exists(os.path.join(work, ft.BEST_DIR))
    r = runs[8]
    assert r["num_steps"] == 0 and r["best_epoch"] == 0 and r["best_dir"] == finetuned_dir
    assert [h["epoch"] for h in r["history"]] == [0]
    figures = r["bucketing"]["predict"]["sst2 test"]
    assert figures["num_shapes"] >= 2 and figures["shapes"][-1] <= 32
    assert figures["padding_fraction"] < figures["padding_fraction_unbucketed"]
    assert runs[0]["bucketing"]["predict"]["sst2 test"]["shapes"] == [32]

    # The checkpoint applied directly to every row at max_seq_length, in file order.
    config, params, _ = ckpt.load_model_dir(finetuned_dir)
    tokenizer = ckpt.load_tokenizer_from(finetuned_dir)
    _, evals, tests = glue_task.load_data(
        glue_task.GlueTaskConfig("sst2", data, max_seq_length=32), tokenizer
    )
    model = BertForSequenceClassification(config, 2)

    def logits(arrays):
        return model.apply({"params": params}, {k: arrays[k] for k in MODEL_INPUTS}, train=False)[
            "logits"
        ]

    pred = r["predictions"]["sst2"]["test"]
    np.testing.assert_array_equal(pred["index"], tests[0].arrays[F.EXAMPLE_INDEX])
    np.testing.assert_array_equal(pred["prediction"], np.argmax(logits(tests[0].arrays), -1))
    np.testing.assert_array_equal(
        pred["prediction"], runs[0]["predictions"]["sst2"]["test"]["prediction"]
    )
    dev = evals[0].arrays
    accuracy = 100.0 * float(np.mean(np.argmax(logits(dev), -1) == dev[F.LABEL]))
    assert r["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert r["history"][0]["losses"]["loss"] == pytest.approx(
        glue_task.eval_loss(np.asarray(logits(dev)), dev[F.LABEL], False), rel=1e-5
    )
    assert runs[0]["metrics"] == pytest.approx(r["metrics"])
    # Packed rows (several sentences per row of 32, each attending only to itself) predict
    # what each sentence predicts alone, in far fewer token slots.
    packed = runs["packed"]
    assert packed["metrics"] == pytest.approx(r["metrics"])
    assert packed["history"][0]["losses"]["loss"] == pytest.approx(
        r["history"][0]["losses"]["loss"], rel=1e-5
    )
    np.testing.assert_array_equal(
        packed["predictions"]["sst2"]["test"]["prediction"], pred["prediction"]
    )
    pf = packed["bucketing"]["predict"]["sst2 test"]
    assert packed["bucketing"]["packing"] and pf["num_shapes"] == 1
    assert pf["padding_fraction"] < pf["padding_fraction_unbucketed"]
    rows = _read_tsv(r["submission_files"]["SST-2.tsv"])
    assert len(rows) == 38


def _preempt_on_check(monkeypatch, call: int) -> None:
    """SIGTERM as the loop sees it: `Preemption.check` says yes on its `call`-th call."""
    from bertjax import trainer

    count = {"n": 0}

    def check(self):
        count["n"] += 1
        return count["n"] == call

    monkeypatch.setattr(trainer.Preemption, "check", check)


def _best_params(path: str):
    return jax.tree_util.tree_leaves(ckpt.load_model_dir(path)[1])


@pytest.mark.slow
def test_preempted_runs_resume_bit_identically(divisible_dir, tmp_path, monkeypatch):
    from bertjax import trainer

    data = str(tmp_path / "glue")
    write_sst2(data, n_train=24, n_dev=20, n_test=6)
    c = tiny_config(divisible_dir, data, "sst2", batch_size=8, num_epochs=2.0, log_every=2)
    c.train.checkpoint_every = 4
    c.mesh.data = 1
    finetune = functools.partial(tasks.finetune, devices=jax.devices()[:1])
    ref = finetune(c, str(tmp_path / "ref"))
    assert ref["num_steps"] == 6 and ref["bucketing"]["train"]["num_shapes"] == 2

    work = str(tmp_path / "run")
    # Stopped after step 1, mid-epoch (the window of unlogged metrics holds step 1).
    _preempt_on_check(monkeypatch, 1)
    with pytest.raises(trainer.Preempted, match="checkpoint saved at step 1"):
        finetune(c, work)
    assert os.listdir(os.path.join(work, ft.CHECKPOINTS_DIR)) == ["1"]
    # Resumed, stopped again after step 3: the end of epoch 1, before its evaluation.
    _preempt_on_check(monkeypatch, 2)
    with pytest.raises(trainer.Preempted, match="checkpoint saved at step 3"):
        finetune(c, work)
    monkeypatch.undo()
    r = finetune(c, work)

    for a, b in zip(_best_params(ref["best_dir"]), _best_params(r["best_dir"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert r["history"] == ref["history"] and r["metrics"] == ref["metrics"]
    np.testing.assert_array_equal(
        r["predictions"]["sst2"]["test"]["prediction"],
        ref["predictions"]["sst2"]["test"]["prediction"],
    )
    assert _read_jsonl(os.path.join(work, "metrics.jsonl")) == _read_jsonl(
        str(tmp_path / "ref" / "metrics.jsonl")
    )  # every record once, the same values
    assert _read_tsv(r["submission_files"]["SST-2.tsv"]) == _read_tsv(
        ref["submission_files"]["SST-2.tsv"]
    )
    assert not os.path.exists(os.path.join(work, ft.CHECKPOINTS_DIR))  # complete: not needed

    # Finished: a restart has nothing to do. Checkpoints of another config are refused.
    again = finetune(c, work)
    assert again["already_complete"] and again["metrics"] == r["metrics"]
    other = tmp_path / "other"
    os.makedirs(other / ft.CHECKPOINTS_DIR / "3")
    with open(other / ft.RUN_CONFIG_FILE, "w") as f:
        json.dump(ft.config_to_json(c), f)
    lr = c.optim.learning_rate
    c.optim.learning_rate = 1e-3
    with pytest.raises(ValueError, match="holds checkpoints of a run with another config"):
        finetune(c, str(other))
    # The finished run is not replaced by a run of another config (nor an evaluation).
    best = sorted(os.listdir(os.path.join(work, ft.BEST_DIR)))
    with pytest.raises(
        ValueError,
        match=rf"finished run of another config \(optim.learning_rate: {lr!r} -> 0.001\)",
    ):
        finetune(c, work)
    c.train.num_epochs = 0.0  # evaluate-only with the run's own best model
    c.init_checkpoint = os.path.join(work, ft.BEST_DIR)
    with pytest.raises(ValueError, match="finished run of another config"):
        finetune(c, work)
    assert _read_json_file(os.path.join(work, ft.RESULTS_FILE))["metrics"] == r["metrics"]
    assert sorted(os.listdir(os.path.join(work, ft.BEST_DIR))) == best


def _cli_finetune(workdir: str, checkpoint: str, data: str) -> list[str]:
    import sys

    return [
        sys.executable, "-m", "bertjax.main", "finetune",
        "--config", os.path.join(ROOT, "experiments", "glue", "sst2.py"),
        "--workdir", workdir,
        f"--config.init_checkpoint={checkpoint}", f"--config.task.data_dir={data}",
        "--config.task.max_seq_length=16", "--config.data.bucket_multiple=8",
        "--config.optim.learning_rate=3e-3", "--config.train.batch_size=8",
        "--config.train.num_epochs=1.0", "--config.train.log_every=1",
        "--config.train.checkpoint_every=50",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_mid_epoch_exits_143_and_the_restart_ends_bit_identical(divisible_dir, tmp_path):
    import signal
    import subprocess
    import time

    data = str(tmp_path / "glue")
    write_sst2(data, n_train=1600, n_dev=16, n_test=4)  # 200 steps in one epoch
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env["JAX_PLATFORMS"] = "cpu"
    ref, work = str(tmp_path / "ref"), str(tmp_path / "run")
    done = subprocess.run(
        _cli_finetune(ref, divisible_dir, data), env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        _cli_finetune(work, divisible_dir, data), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = os.path.join(work, "metrics.jsonl")
    t0 = time.time()
    while not (os.path.exists(metrics) and len(_read_jsonl(metrics)) >= 2):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 300, "timed out waiting for the first steps"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    saved = int(out.split("checkpoint saved at step")[1].split()[0])
    assert 2 <= saved < 200
    assert os.listdir(os.path.join(work, ft.CHECKPOINTS_DIR)) == [str(saved)]

    done = subprocess.run(
        _cli_finetune(work, divisible_dir, data), env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {saved}" in done.stderr
    with open(os.path.join(ref, ft.RESULTS_FILE)) as f:
        expected = json.load(f)
    with open(os.path.join(work, ft.RESULTS_FILE)) as f:
        got = json.load(f)
    assert got["history"] == expected["history"] and got["metrics"] == expected["metrics"]
    for a, b in zip(_best_params(f"{ref}/best"), _best_params(f"{work}/best"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _read_jsonl(metrics) == _read_jsonl(os.path.join(ref, "metrics.jsonl"))
    assert _read_tsv(f"{work}/submission/SST-2.tsv") == _read_tsv(f"{ref}/submission/SST-2.tsv")

    # A finished workdir: nothing to do.
    done = subprocess.run(
        _cli_finetune(work, divisible_dir, data), env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_packed_rows_change_no_per_example_loss_nor_the_step(kind):
    """Six examples packed into rows of 40 (several per row, each with its own positions,
    [CLS] and attention) against the same examples one per row: the same per-example
    losses, step metrics and updated parameters, up to float rounding."""
    from data_pipelines import bucketing

    rng = np.random.default_rng(0)
    lengths = np.array([5, 16, 9, 3, 12, 7])
    model, objective, arrays = _rows(kind, rng, lengths, 40)
    keys = list(arrays)
    rows, slots, starts, used = bucketing.pack(lengths, 40, max_slots=4)
    # Best fit decreasing: 16, 12, 9 into row 0, 7 and 5 into row 1, 3 fills row 0 exactly.
    assert used == 2 and np.bincount(rows).tolist() == [4, 2]
    packed_batch = Batch(np.arange(6), 40, (rows, slots, starts), 2)
    packed = bucketing.take_packed(
        arrays,
        packed_batch,
        keys,
        lengths=lengths,
        max_slots=4,
        token_keys=MODEL_INPUTS,
        weight_key=WEIGHT,
    )
    assert packed[F.INPUT_IDS].shape == (2, 40) and packed[F.LABEL].shape == (2, 4)
    assert packed[WEIGHT].sum() == 6
    single = take(arrays, Batch(np.arange(6), 16), 6, keys)
    tx = optax.sgd(0.1)
    state = jax.jit(lambda key: nn.meta.unbox(init_state(key, model, tx, 40)))(
        jax.random.key_data(jax.random.key(0))
    )
    out_p = jax.device_get(
        objective.row_losses(model.apply({"params": state.params}, packed, train=False), packed)
    )
    out_s = jax.device_get(
        objective.row_losses(model.apply({"params": state.params}, single, train=False), single)
    )
    for k in out_s:
        np.testing.assert_allclose(out_p[k][rows, slots], out_s[k], rtol=2e-5, atol=2e-6)
    step = jax.jit(
        lambda s, b: ft.train_step(
            s, b, model=model, tx=tx, schedule=optax.constant_schedule(1e-3),
            grad_accum_steps=2, objective=objective,
        )
    )  # fmt: skip
    s_p, m_p = step(state, packed)
    s_s, m_s = step(state, single)
    for k in m_s:
        np.testing.assert_allclose(m_p[k], m_s[k], rtol=1e-4, atol=1e-6, err_msg=k)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(s_p.params), leaves(s_s.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
