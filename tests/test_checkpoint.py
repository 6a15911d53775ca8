"""Model directories: atomic writes, refusal to overwrite, validation, parameter merging."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from _data_helpers import tiny_model_config

from bertjax import checkpoint as ckpt
from bertjax.model import BertForPreTraining, BertForSequenceClassification, dummy_batch
from data_pipelines import features as F

CONFIG = tiny_model_config(
    hidden_size=16, num_heads=2, intermediate_size=32, max_position_embeddings=16
)


@pytest.fixture(scope="module")
def params():
    return BertForPreTraining(CONFIG).init(jax.random.key(0), dummy_batch(CONFIG), train=False)[
        "params"
    ]


def test_save_and_load_round_trip(params, tmp_path):
    out = ckpt.save_model_dir(str(tmp_path / "m"), params, CONFIG, source="test")
    config, loaded, meta = ckpt.load_model_dir(out)
    assert config == CONFIG and meta["heads"] == ["pooler", "mlm", "nsp"]
    flat_a = ckpt.flatten_params(jax.tree_util.tree_map(np.asarray, ckpt._unbox(params)))
    flat_b = ckpt.flatten_params(loaded)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k])


def test_refuses_to_overwrite_and_leaves_no_temporaries(params, tmp_path):
    out = str(tmp_path / "m")
    ckpt.save_model_dir(out, params, CONFIG)
    with pytest.raises(ckpt.CheckpointError, match="not empty; pass --overwrite"):
        ckpt.save_model_dir(out, params, CONFIG)
    assert os.listdir(tmp_path) == ["m"]


def test_failed_write_keeps_the_old_checkpoint(params, tmp_path):
    out = str(tmp_path / "m")
    ckpt.save_model_dir(out, params, CONFIG, source="first")

    def boom(tmp):
        open(os.path.join(tmp, "partial"), "w").close()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.write_atomically(out, boom, overwrite=True)
    assert ckpt.load_model_config(out)[1]["source"] == "first"
    assert os.listdir(tmp_path) == ["m"]


def test_bad_metadata_is_named(params, tmp_path):
    out = ckpt.save_model_dir(str(tmp_path / "m"), params, CONFIG)
    path = os.path.join(out, ckpt.CONFIG_FILE)
    meta = json.load(open(path))
    meta["model"]["hidden_sise"] = 3
    json.dump(meta, open(path, "w"))
    with pytest.raises(ValueError, match=r"bertjax_config.json: model: unknown model config keys"):
        ckpt.load_model_config(out)
    open(path, "w").write("{not json")
    with pytest.raises(ValueError, match="bertjax_config.json: not valid JSON"):
        ckpt.load_model_config(out)
    with pytest.raises(ckpt.CheckpointError, match="not a bertjax checkpoint"):
        ckpt.load_model_config(str(tmp_path))


def test_merge_keeps_fresh_head_and_checks_shapes(params):
    cls = BertForSequenceClassification(CONFIG, num_labels=3)
    batch = dummy_batch(CONFIG)
    batch.pop(F.MASKED_LM_POSITIONS)
    fresh = cls.init(jax.random.key(1), batch, train=False)["params"]
    loaded = {"bert": ckpt._unbox(params)["bert"]}
    merged, fresh_only = ckpt.merge_params(fresh, loaded, source="ckpt")
    assert fresh_only == ["classifier/bias", "classifier/kernel"]
    np.testing.assert_array_equal(
        merged["bert"]["pooler"]["dense"]["kernel"],
        ckpt._unbox(params)["bert"]["pooler"]["dense"]["kernel"],
    )
    bad = {"bert": {"pooler": {"dense": {"bias": np.zeros(5)}}}}
    with pytest.raises(ckpt.CheckpointError, match=r"bert/pooler/dense/bias: checkpoint \(5,\)"):
        ckpt.merge_params(fresh, bad, source="ckpt")
    with pytest.raises(ckpt.CheckpointError, match="not in the model"):
        ckpt.merge_params(fresh, {"cls": {"x": np.zeros(1)}}, source="ckpt")
