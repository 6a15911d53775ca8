"""SQuAD fine-tuning: the span task of the engine (bertjax/squad.py) and experiments/squad.

The end-to-end runs train the tiny random BERT of conftest on a synthetic SQuAD written here:
the answer is the word after the marker "cat" (a capitalised, accented, multi-piece word,
sometimes followed by punctuation); in the v2.0 version a third of the contexts have no marker
and no answer.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from conftest import WORDS
from ml_collections import config_flags

from bertjax import checkpoint as ckpt
from bertjax import squad, squad_metrics
from bertjax.finetune_task import DataConfig, ModelOverrides
from data_pipelines import squad as sq
from experiments.glue import common as glue_common
from experiments.squad import common, v1, v2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSWERS = ["hello", "Café", "naïve", "jaxes", "tensors", "meshed", "World", "flax"]
FILLER = [
    w
    for w in WORDS
    if w not in ("cat", "hello", "world", "flax", "jax", "tensor", "mesh", "a", "an", "the")
]


# --- Configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, name, batch, epochs", [(v1, "squad_v1", 32, 3.0), (v2, "squad_v2", 48, 2.0)]
)
def test_configs_hold_the_paper_recipe(module, name, batch, epochs):
    c = module.get_config()
    assert squad.is_squad_config(c)
    c.init_checkpoint, c.task.data_dir = "/ckpt", "/squad"
    cfg = squad.SquadConfig.from_config_dict(c)
    assert cfg.task.name == name and cfg.task.spec.name == name
    assert (cfg.train.batch_size, cfg.train.num_epochs) == (batch, epochs)
    assert cfg.optim.learning_rate == 5e-5 and cfg.optim.weight_decay == 0.01
    assert cfg.optim_for(1000).warmup_steps == 100
    t = cfg.task
    assert (t.max_seq_length, t.doc_stride, t.max_query_length) == (384, 128, 64)
    assert (cfg.eval.n_best_size, cfg.eval.max_answer_length) == (20, 30)
    assert t.file("train") == f"/squad/{t.spec.train_file}"
    assert module.get_config("3e-5").optim.learning_rate == 3e-5
    version = "1" if name == "squad_v1" else "2"
    doc = module.__doc__
    assert (
        f"bertjax finetune --config experiments/squad/v{version}.py --workdir runs/squad{version}"
        in doc
    )
    assert "--config.init_checkpoint=CKPT --config.task.data_dir=DIR" in doc
    assert "runtime" in doc and "metric" in doc
    assert ("88.5" if version == "1" else "83.1") in doc
    glue = glue_common.task_config("mrpc", None)
    assert not squad.is_squad_config(glue) and not squad.is_squad_config({"task": {}})


def test_common_fields_documented_and_complete():
    """Every field has a one-line comment on its dataclass (the one place its default is
    declared); the config's groups hold exactly the fields the dataclasses know."""
    import inspect

    groups = (squad.SquadTaskConfig, squad.SquadTrainConfig, squad.SquadEvalConfig)
    for cls in (*groups, ModelOverrides, DataConfig):
        lines = [x.strip() for k in cls.__mro__[:-1] for x in inspect.getsource(k).splitlines()]
        for f in dataclasses.fields(cls):
            assert any(x.startswith(f"{f.name}:") and "  # " in x for x in lines), f.name
    c = common.get_config()
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}
    assert set(c.task) == fields(squad.SquadTaskConfig)
    assert set(c.train) == fields(squad.SquadTrainConfig)
    assert set(c.eval) == fields(squad.SquadEvalConfig)
    assert set(c.model) == fields(ModelOverrides)
    assert set(c.data) == fields(DataConfig)
    assert set(c) == fields(squad.SquadConfig) - {"warmup_fraction"}


def test_config_file_flag_and_overrides():
    argv = [
        "bertjax",
        f"--config={os.path.join(ROOT, 'experiments', 'squad', 'v2.py')}:3e-5",
        "--config.init_checkpoint=/ckpt",
        "--config.task.data_dir=tfds",
        "--config.eval.null_score_diff_threshold=-1.5",
        "--config.train.num_epochs=0",
    ]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    assert squad.is_squad_config(fv.config)
    cfg = squad.SquadConfig.from_config_dict(fv.config)
    assert cfg.optim.learning_rate == 3e-5 and cfg.eval.null_score_diff_threshold == -1.5
    assert cfg.task.data_dir == "tfds" and cfg.train.num_epochs == 0.0


# --- End to end ---------------------------------------------------------------------------------


def _squad_file(path: str, n: int, seed: int, *, v2: bool, bad: bool = False) -> None:
    """n questions: "what follows the cat?"; the answer is the word after "cat"."""
    rng = np.random.default_rng(seed)
    articles = []
    for i in range(n):
        words = [str(w) for w in rng.choice(FILLER, rng.integers(6, 24))]
        qa: dict = {"id": f"s{seed}-{i}", "question": "what follows the cat?", "answers": []}
        if v2 and i % 3 == 0:
            qa["is_impossible"] = True
        else:
            k = int(rng.integers(0, len(words)))
            answer = str(rng.choice(ANSWERS))
            words[k:k] = ["cat", answer + str(rng.choice(["", "", ",", ".", ")"]))]
            start = len(" ".join(words[: k + 1])) + 1
            qa["answers"] = [{"text": answer, "answer_start": start}]
            if v2:
                qa["is_impossible"] = False
        articles.append({"title": "t", "paragraphs": [{"context": " ".join(words), "qas": [qa]}]})
    if bad:
        bad_qas = [
            {"id": "bad-offset", "question": "q?", "answers": [{"text": "cat", "answer_start": 1}]},
            {"id": "bad-empty", "question": "q?", "answers": [{"text": "x", "answer_start": 0}]},
        ]
        articles.append(
            {
                "paragraphs": [
                    {"context": "the cat", "qas": bad_qas[:1]},
                    {"context": "", "qas": bad_qas[1:]},
                ]
            }
        )
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": "2.0" if v2 else "1.1", "data": articles}, f, ensure_ascii=False)


def tiny_config(module, checkpoint: str, data_dir: str, **train):
    c = module.get_config()
    c.init_checkpoint = checkpoint
    c.task.data_dir = data_dir
    c.task.max_seq_length = 32
    c.task.doc_stride = 8
    c.task.max_query_length = 8
    c.optim.learning_rate = 5e-3
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.log_every = 5
    c.eval.max_answer_length = 6
    c.data.bucket_multiple = 8  # bucket lengths 8, 16, 24 and 32
    for k, v in train.items():
        c.train[k] = v
    return c


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_learns_synthetic_squad_v1(bertjax_dir, tmp_path):
    data = str(tmp_path / "squad")
    os.makedirs(data)
    _squad_file(f"{data}/train-v1.1.json", 400, 0, v2=False, bad=True)
    _squad_file(f"{data}/dev-v1.1.json", 100, 1, v2=False, bad=True)
    work = str(tmp_path / "run")
    r = squad.finetune_squad(tiny_config(v1, bertjax_dir, data), work)

    # Learns the span rule: answers are the whole word after "cat", punctuation excluded.
    assert r["metrics"]["exact_match"] >= 95.0, r["history"]  # 98.04 = 100 of 102 measured
    assert r["metrics"]["total"] == 102  # every dev question (the bad ones count as wrong)
    assert r["score"] == r["metrics"]["f1"] == max(h["score"] for h in r["history"])
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
    assert r["history"][-1]["losses"]["loss"] < r["history"][0]["losses"]["loss"]
    assert r["num_train_features"] > r["num_train_examples"] - 2  # windows: more features
    assert r["num_steps"] == 3 * -(-r["num_train_features"] // 32)
    # Bad input is skipped and reported with the question ids; the run goes on.
    assert r["data"]["train"]["skipped"] == {"answer_mismatch": 1, "empty_context": 1}
    assert {i["qas_id"] for i in r["data"]["train"]["issues"]} == {"bad-offset", "bad-empty"}
    assert r["data"]["validation"]["skipped"] == {"empty_context": 1}

    # Files: predictions of the best epoch, scored again from disk; the results file.
    files = r["prediction_files"]
    assert set(files) == {"predictions.json", "nbest_predictions.json"}
    preds = _read_json(files["predictions.json"])
    assert preds == r["predictions"] and len(preds) == 102  # bad-offset is answered too
    assert preds["bad-empty"] == ""
    dev = sq.read_squad_file(f"{data}/dev-v1.1.json")
    gold = {e.qas_id: e.answers[0].text for e in dev if e.answers}
    assert any(preds[q] == "Café" == gold[q] for q in gold), "accents survive decoding"
    again = squad_metrics.evaluate_files(f"{data}/dev-v1.1.json", files["predictions.json"])
    assert again == pytest.approx(r["metrics"])
    nbest = _read_json(files["nbest_predictions.json"])
    assert nbest["s1-0"][0]["text"] == preds["s1-0"] and len(nbest["s1-0"]) <= 20
    saved = _read_json(os.path.join(work, "eval_results.json"))
    assert saved["complete"] and saved["metrics"] == pytest.approx(r["metrics"])
    records = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"), encoding="utf-8")]
    train = [x for x in records if "split" not in x]
    assert train[-1]["loss"] < train[0]["loss"] and "start_accuracy" in train[0]
    assert len([x for x in records if x.get("split") == "eval"]) == 3

    # The best checkpoint holds encoder + span head; evaluating it alone gives the same scores.
    _, params, _ = ckpt.load_model_dir(r["best_dir"])
    assert sorted(params) == ["bert", "qa_outputs"] and "pooler" not in params["bert"]
    c = tiny_config(v1, r["best_dir"], data, num_epochs=0.0, batch_size=8)
    again = squad.finetune_squad(c, str(tmp_path / "eval_only"))
    assert again["metrics"] == pytest.approx(r["metrics"]) and again["num_steps"] == 0
    assert again["best_epoch"] == 0 and again["best_dir"] == r["best_dir"]
    assert not os.path.exists(str(tmp_path / "eval_only" / "best"))
    # The span logits of each feature come back to it from the length-sorted batches: the
    # same answers and n-best logits as with every batch at max_seq_length.
    c.data.bucket_multiple = 0
    flat = squad.finetune_squad(c, str(tmp_path / "eval_flat"))
    figures = again["bucketing"]["predict"]["squad_v1 validation"]
    assert (
        figures["num_shapes"] >= 2
        and figures["padding_fraction"] < 0.9 * (figures["padding_fraction_unbucketed"])
    )
    assert flat["bucketing"]["predict"]["squad_v1 validation"]["shapes"] == [32]
    assert flat["predictions"] == again["predictions"] == r["predictions"]
    assert flat["metrics"] == pytest.approx(again["metrics"])
    nbest_flat = _read_json(flat["prediction_files"]["nbest_predictions.json"])
    nbest = _read_json(again["prediction_files"]["nbest_predictions.json"])
    for q, entries in nbest.items():
        for a, b in zip(entries, nbest_flat[q], strict=True):
            assert a["text"] == b["text"]
            assert a["start_logit"] == pytest.approx(b["start_logit"], rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_squad_v2_on_a_sharded_mesh(bertjax_dir, tmp_path):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    data = str(tmp_path / "squad")
    os.makedirs(data)
    _squad_file(f"{data}/train-v2.0.json", 300, 0, v2=True)
    _squad_file(f"{data}/dev-v2.0.json", 90, 1, v2=True)
    c = tiny_config(v2, bertjax_dir, data, num_epochs=4.0, eval_every_epoch=False)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    work = str(tmp_path / "run")
    r = squad.finetune_squad(c, work)
    m = r["metrics"]
    assert (m["total"], m["HasAns_total"], m["NoAns_total"]) == (90, 60, 30)
    # Learns both the span and when there is none (at the threshold tuned on dev).
    assert m["tuned_f1"] >= 95.0, m  # 100.0 measured
    assert r["score"] == m["tuned_f1"] and [h["epoch"] for h in r["history"]] == [4]
    assert m["best_f1"] >= m["f1"] - 1e-9  # best over thresholds includes the one used

    files = r["prediction_files"]
    assert set(files) == {
        "predictions.json", "nbest_predictions.json", "null_odds.json", "predictions_tuned.json",
    }  # fmt: skip
    odds = _read_json(files["null_odds.json"])
    preds = _read_json(files["predictions.json"])
    assert set(odds) == set(preds) and len(preds) == 90
    assert all((preds[q] == "") == (odds[q] > 0.0) for q in preds)  # threshold 0.0
    dev = f"{data}/dev-v2.0.json"
    official = squad_metrics.evaluate_files(
        dev, files["predictions.json"], null_odds_file=files["null_odds.json"]
    )
    assert official == pytest.approx({k: v for k, v in m.items() if not k.startswith("tuned")})
    tuned = squad_metrics.evaluate_files(dev, files["predictions_tuned.json"])
    assert tuned["f1"] == pytest.approx(m["tuned_f1"])
    assert tuned["exact"] == pytest.approx(m["tuned_exact"])


@pytest.mark.slow
def test_sharded_matches_single_device(bertjax_dir, tmp_path):
    data = str(tmp_path / "squad")
    os.makedirs(data)
    _squad_file(f"{data}/train-v1.1.json", 40, 0, v2=False)
    _squad_file(f"{data}/dev-v1.1.json", 12, 1, v2=False)
    losses, nbest = {}, {}
    for name, devices, mesh in (
        ("one", jax.devices()[:1], (1, 1, 1)),
        ("mesh", jax.devices(), (2, 2, 2)),
    ):
        c = tiny_config(v1, bertjax_dir, data, batch_size=8, num_epochs=1.0, log_every=1)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
        work = str(tmp_path / name)
        r = squad.finetune_squad(c, work, devices=devices)
        records = [json.loads(x) for x in open(f"{work}/metrics.jsonl", encoding="utf-8")]
        losses[name] = [x["loss"] for x in records if "split" not in x]
        nbest[name] = _read_json(r["prediction_files"]["nbest_predictions.json"])
    assert len(losses["one"]) >= 5
    np.testing.assert_allclose(losses["mesh"], losses["one"], rtol=1e-4)
    assert nbest["mesh"].keys() == nbest["one"].keys()
    for q in nbest["one"]:
        a, b = nbest["one"][q][0], nbest["mesh"][q][0]
        assert a["text"] == b["text"]
        np.testing.assert_allclose(a["start_logit"], b["start_logit"], rtol=1e-3, atol=1e-4)


# --- Bad input ----------------------------------------------------------------------------------


def test_bad_config_and_files(bertjax_dir, tmp_path):
    data = str(tmp_path / "squad")
    os.makedirs(data)
    _squad_file(f"{data}/dev-v1.1.json", 4, 1, v2=False)
    work = str(tmp_path / "run")

    def run(**edits):
        c = tiny_config(v1, bertjax_dir, data)
        for key, value in edits.items():
            group, field = key.split("__") if "__" in key else (None, key)
            (c[group] if group else c)[field] = value
        return squad.finetune_squad(c, work)

    with pytest.raises(ValueError, match="init_checkpoint is required"):
        run(init_checkpoint="")
    with pytest.raises(ValueError, match="unknown SQuAD task 'squad_v3'"):
        run(task__name="squad_v3")
    with pytest.raises(ValueError, match="data_dir is required"):
        run(task__data_dir="")
    with pytest.raises(FileNotFoundError, match=f"SQuAD file not found: {data}/train-v1.1.json"):
        run()
    with open(f"{data}/train-v1.1.json", "w") as f:
        f.write('{"data": [}')
    with pytest.raises(sq.SquadDataError, match=f"{data}/train-v1.1.json:1:"):
        run()
    with pytest.raises(ckpt.CheckpointError, match="no 'qa_outputs' span head"):
        run(train__num_epochs=0.0)  # a pre-trained (not fine-tuned) checkpoint
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        run(task__max_seq_length=128)
    with pytest.raises(ValueError, match="num_epochs"):
        run(train__num_epochs=-1.0)
    with pytest.raises(ValueError, match="n_best_size"):
        c = tiny_config(v1, bertjax_dir, data)
        c.eval.n_best_size = 0
        squad.finetune_squad(c, work)
    with pytest.raises(ValueError, match=r"unknown keys \['predict_test'\]"):
        c = tiny_config(v1, bertjax_dir, data)
        c.train.predict_test = True
        squad.finetune_squad(c, work)
    assert not os.path.exists(work)  # nothing written before the inputs are checked
