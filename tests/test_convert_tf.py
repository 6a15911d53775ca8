"""Original Google TF1 checkpoints (bertjax.convert_tf): import against the reference
implementation (transformers, PyTorch CPU) and export in google-research/bert's layout."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
from conftest import GOOGLE_BERT_CONFIG_KEYS
from test_convert import _assert_parity, _batch, _torch_outputs
from test_export import _model_dir, _read_json

from bertjax import checkpoint as ckpt
from bertjax import convert, convert_tf, glue_task
from bertjax.model import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
)
from data_pipelines import features as F
from data_pipelines import glue as glue_data

# --- Import -----------------------------------------------------------------------------------


def _write_tf1_checkpoint(model, config_json: dict, out_dir: str) -> None:
    """Writes the torch weights under the original Google variable names with TF1's Saver.

    The naming rule here is written independently of bertjax.convert on purpose.
    """
    import tensorflow as tf

    values = {}
    for name, tensor in model.state_dict().items():
        arr = tensor.numpy()
        if name.endswith("position_ids") or name.startswith("cls.predictions.decoder"):
            continue
        if name == "cls.predictions.bias":
            values["cls/predictions/output_bias"] = arr
            continue
        if name.startswith("cls.seq_relationship"):
            leaf = "output_weights" if name.endswith("weight") else "output_bias"
            values[f"cls/seq_relationship/{leaf}"] = arr
            continue
        tf_name = re.sub(r"\.layer\.(\d+)\.", r"/layer_\1/", name).replace(".", "/")
        if "LayerNorm" in tf_name:
            tf_name = tf_name.replace("/weight", "/gamma").replace("/bias", "/beta")
        elif "_embeddings/weight" in tf_name:
            tf_name = tf_name[: -len("/weight")]
        elif tf_name.endswith("/weight"):
            tf_name, arr = tf_name[: -len("/weight")] + "/kernel", arr.T
        values[tf_name] = arr
    values["global_step"] = np.int64(1000)
    values["bert/embeddings/word_embeddings/adam_m"] = np.zeros_like(
        values["bert/embeddings/word_embeddings"]
    )
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=n) for n, v in values.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(
                sess,
                os.path.join(out_dir, "bert_model.ckpt"),
                write_meta_graph=False,
                write_state=False,
            )
    with open(os.path.join(out_dir, "bert_config.json"), "w") as f:
        json.dump(config_json, f)


def test_tf1_checkpoint_import_matches_transformers(hf_dir, tmp_path):
    src, model = hf_dir
    hf_cfg = json.load(open(os.path.join(src, "config.json")))
    bert_cfg = {k: hf_cfg[k] for k in GOOGLE_BERT_CONFIG_KEYS}
    _write_tf1_checkpoint(model, bert_cfg, str(tmp_path))
    config, params = convert_tf.import_tf(str(tmp_path))
    batch = _batch(config.vocab_size, seed=2)
    ours = BertForPreTraining(config).apply({"params": params}, batch, train=False)
    _assert_parity(ours, _torch_outputs(model, batch), batch[F.INPUT_MASK])
    # and the TF export reads back bit for bit
    out = str(tmp_path / "tf_export")
    convert_tf.export_tf(params, config, out)
    config2, params2 = convert_tf.import_tf(out)
    assert config2 == config
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# --- Export ----------------------------------------------------------------------------------


GOOGLE_KEYS = set(GOOGLE_BERT_CONFIG_KEYS)


def test_tf_export_bert_config_of_a_pretraining_checkpoint(bertjax_dir, tmp_path):
    out = convert.convert_from_bertjax("tf", bertjax_dir, str(tmp_path / "tf"))
    bert_config = _read_json(os.path.join(out, "bert_config.json"))
    config, _, _ = ckpt.load_model_dir(bertjax_dir)
    assert bert_config == {
        "vocab_size": config.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
    }
    assert GOOGLE_KEYS <= set(bert_config)


def test_tf_export_of_a_classifier_uses_the_original_names(tmp_path):
    import tensorflow as tf

    task = glue_task.task_metadata(glue_data.get_task("mnli"))
    model_dir = _model_dir(tmp_path, BertForSequenceClassification, task, num_labels=3)
    out = convert.convert_from_bertjax("tf", model_dir, str(tmp_path / "tf"))
    bert_config = _read_json(os.path.join(out, "bert_config.json"))
    assert GOOGLE_KEYS <= set(bert_config)
    assert bert_config["num_labels"] == 3
    assert bert_config["architectures"] == ["BertForSequenceClassification"]
    assert bert_config["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert bert_config["problem_type"] == "single_label_classification"
    assert bert_config["finetuning_task"] == "mnli"
    assert bert_config["initializer_range"] == 0.02 and bert_config["type_vocab_size"] == 2

    _, params, _ = ckpt.load_model_dir(model_dir)
    reader = tf.train.load_checkpoint(os.path.join(out, "bert_model.ckpt"))
    np.testing.assert_array_equal(
        reader.get_tensor("output_weights"), params["classifier"]["kernel"].T
    )
    np.testing.assert_array_equal(reader.get_tensor("output_bias"), params["classifier"]["bias"])
    assert "classifier/kernel" not in reader.get_variable_to_shape_map()

    again = convert.convert_to_bertjax("tf", out, str(tmp_path / "again"))
    config2, params2, meta = ckpt.load_model_dir(again)
    assert meta["task"] == task
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_tf_export_of_a_span_head_uses_run_squad_names(tmp_path):
    import tensorflow as tf

    task = {"name": "squad_v2.0", "kind": "span", "labels": None}
    model_dir = _model_dir(tmp_path, BertForQuestionAnswering, task)
    out = convert.convert_from_bertjax("tf", model_dir, str(tmp_path / "tf"))
    shapes = tf.train.load_checkpoint(
        os.path.join(out, "bert_model.ckpt")
    ).get_variable_to_shape_map()
    assert shapes["cls/squad/output_weights"] == [2, 32] and shapes["cls/squad/output_bias"] == [2]
    bert_config = _read_json(os.path.join(out, "bert_config.json"))
    assert bert_config["architectures"] == ["BertForQuestionAnswering"]
    assert bert_config["num_labels"] == 2
    # Without the architecture (google-research/bert's configs), the tensors give the task.
    del bert_config["architectures"], bert_config["finetuning_task"]
    with open(os.path.join(out, "bert_config.json"), "w") as f:
        json.dump(bert_config, f)
    _, _, imported = convert_tf.read_tf(out)
    assert imported == {"name": "", "kind": "span", "labels": None}
