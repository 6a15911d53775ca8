"""TensorBoard tells what metrics.jsonl tells: after a kill and a resume each tag has one value
per step, metrics.jsonl's, as TensorBoard's own loader reads the event files back; the run
config is there as text and the resolved hyper-parameters through the hparams plugin.

Pre-training and GLUE fine-tuning are killed without a checkpoint after the steps that the
resumed run computes again (with other timings, so another value at the same steps)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import types

import jax
import numpy as np
import pytest
from test_finetune import divisible_dir, tiny_config, write_sst2  # noqa: F401 - a fixture
from test_pretrain import _config, data_dirs  # noqa: F401 - a fixture

from bertjax import pretrain, storage, tasks, trainer

# TensorBoard's loader as an install without TensorFlow runs it (its stub instead of
# TensorFlow's file reader: the same events, without importing TensorFlow for seconds).
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import (  # noqa: E402
    EventFileLoader,
)
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402


class Killed(Exception):
    """The process dies: nothing after it runs (no checkpoint, no close)."""


def _kill_after_write(monkeypatch, kill_step: int, kill_split: str = "train") -> None:
    """The run dies right after logging `kill_split` at `kill_step`."""
    write = trainer.MetricWriter.write

    def killing_write(self, step, values, split="train"):
        write(self, step, values, split)
        if (step, split) == (kill_step, kill_split):
            raise Killed

    monkeypatch.setattr(trainer.MetricWriter, "write", killing_write)


def _jsonl(work: str) -> dict[tuple[str, int], float]:
    """{(tag, step): value} of metrics.jsonl, as TensorBoard tags them."""
    out = {}
    for line in storage.read_text(os.path.join(work, "metrics.jsonl")).splitlines():
        record = json.loads(line)
        split = record.pop("split", "train")
        step = record.pop("step")
        for k, v in record.items():
            assert (f"{split}/{k}", step) not in out
            out[(f"{split}/{k}", step)] = v
    return out


def _accumulator(tb_dir: str) -> ea.EventAccumulator:
    sizes = {ea.SCALARS: 0, ea.TENSORS: 0}  # 0: keep every value
    return ea.EventAccumulator(tb_dir, size_guidance=sizes).Reload()


def _check_matches_jsonl(work: str, tb_dir: str | None = None) -> ea.EventAccumulator:
    """Every scalar tag holds one value per step, the one metrics.jsonl holds (to float32),
    for TensorBoard's loader and for a plain reader of the event files alike."""
    tb_dir = tb_dir or os.path.join(work, "tensorboard")
    want = _jsonl(work)
    acc = _accumulator(tb_dir)
    got = {}
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step twice: {steps}"
        got.update({(tag, e.step): e.value for e in acc.Scalars(tag)})
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_equal(np.float32(got[key]), np.float32(value), err_msg=str(key))
    files = [n for n in os.listdir(tb_dir) if "tfevents" in n]
    assert len(files) == 1, files  # and so a raw reader sees each (tag, step) once too
    raw = [
        (v.tag, e.step)
        for e in EventFileLoader(os.path.join(tb_dir, files[0])).Load()
        for v in e.summary.value
    ]
    assert len(raw) == len(set(raw))
    return acc


def _config_text(acc: ea.EventAccumulator) -> list[tuple[int, dict]]:
    """(step, config) of each config text."""
    out = []
    for e in acc.Tensors(trainer.CONFIG_TAG):
        text = e.tensor_proto.string_val[0].decode()
        assert text.startswith("```json\n") and text.endswith("\n```")
        out.append((e.step, json.loads(text[len("```json\n") : -len("\n```")])))
    return out


def _hparams(acc: ea.EventAccumulator) -> tuple[dict, list[str]]:
    """(hparams, metric tags) the hparams plugin reads."""
    content = acc.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    content = acc.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = hparams_metadata.parse_experiment_plugin_data(content)
    assert sorted(h.name for h in experiment.hparam_infos) == sorted(hparams)
    for tag in (hparams_metadata.SESSION_START_INFO_TAG, hparams_metadata.EXPERIMENT_TAG):
        assert len(acc.Tensors(tag)) == 1
    return hparams, [m.name.tag for m in experiment.metric_infos]


# --- The writer alone ---------------------------------------------------------------------------


def test_restarts_leave_one_value_per_step_and_config_once(tmp_path):
    work = str(tmp_path)
    config = {"optim": {"learning_rate": 1e-3}, "train": {"num_steps": 6}}
    hp = trainer.flat_hparams(config)
    opened = functools.partial(trainer.MetricWriter, work, config=config, hparams=hp,
                               metrics=["train/loss"])  # fmt: skip
    w = opened(-1)
    for step in range(1, 7):
        w.write(step, {"loss": float(step), "epoch": 1})
    w.write(2, {"score": 1.0}, split="eval")
    w.write(4, {"score": 2.0}, split="eval")
    # Killed after step 6; resumed from 4, whose evaluation the restored state does not hold.
    w = opened(4, keep=lambda r: r.get("split") != "eval" or r["step"] == 2)
    w.write(4, {"score": 2.5}, split="eval")
    w.write(5, {"loss": 50.0, "epoch": 2})
    acc = _check_matches_jsonl(work)
    assert [(e.step, e.value) for e in acc.Scalars("eval/score")] == [(2, 1.0), (4, 2.5)]
    assert [e.value for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 50]
    assert _config_text(acc) == [(0, config)]  # not again: the same config
    assert _hparams(acc) == (hp, ["train/loss"])

    # Killed while reopening, between writing the new file and deleting the old one: both
    # files are there. TensorBoard's loader still shows each step once (the new file
    # starts by purging what came before); the next opening removes the copies.
    tb = os.path.join(work, "tensorboard")
    (old,) = os.listdir(tb)
    shutil.copy(os.path.join(tb, old), tmp_path / "old")
    w.close()
    opened(5).close()
    shutil.copy(tmp_path / "old", os.path.join(tb, old))
    assert len(os.listdir(tb)) == 2
    acc = _accumulator(tb)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)
    ]  # fmt: skip

    # Resumed with another config: its text from the resume step on, its hparams instead.
    other = {**config, "train": {"num_steps": 8}}
    w = trainer.MetricWriter(work, 5, config=other, hparams=trainer.flat_hparams(other))
    w.write(6, {"loss": 60.0, "epoch": 2})
    w.close()
    acc = _check_matches_jsonl(work)
    assert _config_text(acc) == [(0, config), (5, other)]
    assert _hparams(acc)[0]["train.num_steps"] == 8

    w = trainer.MetricWriter(work, -1, config=config)  # a fresh run: nothing of the old one
    w.close()
    acc = _check_matches_jsonl(work)
    assert acc.Tags()["scalars"] == [] and _config_text(acc) == [(0, config)]


def test_a_torn_last_event_is_dropped(tmp_path):
    work = str(tmp_path)
    w = trainer.MetricWriter(work, -1)
    for step in (1, 2, 3):
        w.write(step, {"loss": float(step)})
    w.close()
    tb = os.path.join(work, "tensorboard")
    path = os.path.join(tb, os.listdir(tb)[0])
    with open(path, "r+b") as f:  # killed while writing the event of step 3
        f.truncate(os.path.getsize(path) - 10)
    trainer.MetricWriter(work, 2).close()
    acc = _check_matches_jsonl(work)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_in_a_bucket(gcs, tmp_path):
    from conftest import GCS_BUCKET

    work = f"gs://{GCS_BUCKET}/tensorboard-{time.time_ns()}"
    w = trainer.MetricWriter(work, -1, config={"seed": 1}, hparams={"seed": 1})
    for step in range(1, 5):
        w.write(step, {"loss": float(step)})
    # Killed after step 4, resumed from 2.
    w = trainer.MetricWriter(work, 2, config={"seed": 1}, hparams={"seed": 1})
    w.write(3, {"loss": 30.0})
    w.close()
    local = tmp_path / "copy"
    os.makedirs(local / "tensorboard")
    for name in storage.listdir(f"{work}/tensorboard"):
        storage.copy_file(f"{work}/tensorboard/{name}", str(local / "tensorboard" / name))
    storage.copy_file(f"{work}/metrics.jsonl", str(local / "metrics.jsonl"))
    acc = _check_matches_jsonl(str(local))
    assert [e.value for e in acc.Scalars("train/loss")] == [1.0, 2.0, 30.0]
    assert _config_text(acc) == [(0, {"seed": 1})] and _hparams(acc)[0] == {"seed": 1}


# --- The loops ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretraining_killed_and_resumed(data_dirs, tmp_path, monkeypatch):  # noqa: F811
    c = _config(data_dirs, **{"train.async_checkpointing": False})
    c.mesh.data = 1
    work = str(tmp_path / "run")
    train = functools.partial(pretrain.train, devices=jax.devices()[:1])
    # Checkpoints at steps 2 and 4; killed after logging step 5 (evaluated at step 3).
    _kill_after_write(monkeypatch, 5)
    with pytest.raises(Killed):
        train(c, work)
    monkeypatch.undo()
    assert (5, "train") in {(s, t.split("/")[0]) for t, s in _jsonl(work)}
    train(c, work)

    acc = _check_matches_jsonl(work)
    assert sorted({s for t, s in _jsonl(work) if t == "train/loss"}) == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("eval/mlm_accuracy")] == [3, 6]
    with open(os.path.join(work, "run_config.json"), encoding="utf-8") as f:
        assert _config_text(acc) == [(0, json.load(f))]
    hparams, metrics = _hparams(acc)
    expected = {
        "optim.learning_rate": c.optim.learning_rate,
        "train.batch_size": 8,
        "train.num_steps": 6,
        "model_size": "custom",
        "model.hidden_size": 32,
        "model.num_layers": 2,
        "data.seq_len": 32,
    }
    assert {k: hparams[k] for k in expected} == pytest.approx(expected)
    assert {"train/loss", "eval/mlm_accuracy"} <= set(metrics)
    assert set(metrics) <= set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_finetuning_killed_and_resumed(divisible_dir, tmp_path, monkeypatch):  # noqa: F811
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=24, n_dev=20, n_test=6)
    c = tiny_config(divisible_dir, data, "sst2", batch_size=8, num_epochs=2.0, log_every=1)
    c.train.checkpoint_every = 2
    c.mesh.data = 1
    finetune = functools.partial(tasks.finetune, devices=jax.devices()[:1])
    work = str(tmp_path / "run")
    # Three steps an epoch; checkpoint at step 2; killed after evaluating epoch 1 (step 3).
    _kill_after_write(monkeypatch, 3, "eval")
    with pytest.raises(Killed):
        finetune(c, work)
    monkeypatch.undo()
    r = finetune(c, work)

    acc = _check_matches_jsonl(work)
    assert [e.step for e in acc.Scalars("eval/score")] == [3, 6]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert _config_text(acc) == [(0, r["config"])]
    hparams, metrics = _hparams(acc)
    assert hparams["task.name"] == "sst2" and hparams["train.num_steps"] == 6
    assert hparams["optim.learning_rate"] == pytest.approx(c.optim.learning_rate)
    assert hparams["model.hidden_size"] > 0 and hparams["train.batch_size"] == 8
    assert set(metrics) == {"train/loss", "eval/score"} <= set(acc.Tags()["scalars"])
