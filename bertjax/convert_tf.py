"""Original Google TF1 checkpoints: import and export (google-research/bert's layout).

A directory holds bert_config.json, the TF1 Saver files bert_model.ckpt.* (index and data)
and vocab.txt. Variable names and layouts are those of `bertjax.convert`'s table; optimizer
slots and training counters (Adam, LAMB and momentum slots, global_step, loss-scale state)
are skipped on import. A fine-tuned head keeps google-research/bert's names (output_weights /
output_bias, cls/squad/*), and bert_config.json carries its task under config.json's keys
plus `num_labels`.

TensorFlow is the [tf] extra: it is imported (`storage.require_extra`) only when a checkpoint
is read or written, so the rest of bertjax runs without it.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from bertjax import checkpoint as ckpt
from bertjax import storage
from bertjax.config import (
    ModelConfig,
    model_config_from_bert_json,
    model_config_to_bert_json,
    read_json,
)
from bertjax.convert_names import (
    ConversionError,
    export_task,
    hf_architecture,
    label_config,
    params_and_task,
    params_to_tf_named,
)

TF1_READ = "reading a Google TF1 checkpoint (convert --from tf)"
# Variables that are not parameters: optimizer slots and training counters.
_TF_IGNORED = re.compile(
    r"(^global_step$|/adam_[mv]$|/Momentum$|^bad_steps$|^loss_scale$|"
    r"^good_steps$|/LAMB(_1)?$)"
)


def _tf_checkpoint_prefix(src: str) -> str:
    if os.path.isdir(src):
        state = os.path.join(src, "checkpoint")
        if os.path.isfile(state):
            tf = storage.require_extra("tensorflow", TF1_READ)
            latest = tf.train.latest_checkpoint(src)
            if latest:
                return latest
        indexes = sorted(glob.glob(os.path.join(src, "*.ckpt*.index")))
        if not indexes:
            raise ConversionError(f"{src}: no TF checkpoint (*.ckpt*.index) found")
        if len(indexes) > 1:
            raise ConversionError(
                f"{src}: several checkpoints {[os.path.basename(i) for i in indexes]}; "
                "pass the prefix of one, e.g. DIR/bert_model.ckpt"
            )
        return indexes[0][: -len(".index")]
    if os.path.isfile(src + ".index"):
        return src
    raise ConversionError(f"{src}: neither a directory nor a TF checkpoint prefix")


def read_tf(
    src: str, *, skip_unknown: bool = False
) -> tuple[ModelConfig, dict[str, Any], dict[str, Any] | None]:
    """Reads an original Google BERT checkpoint (bert_config.json + bert_model.ckpt.*):
    (ModelConfig, bertjax params as numpy, task of a downstream head or None).

    A fine-tuned head under google-research/bert's names (output_weights / output_bias,
    cls/squad/*) is kept; its task comes from bert_config.json's keys as in `convert_hf.read_hf`, or
    from the tensors when it has none. Raises ConversionError naming the file or tensor.
    """
    tf = storage.require_extra("tensorflow", TF1_READ)

    prefix = _tf_checkpoint_prefix(src)
    directory = src if os.path.isdir(src) else os.path.dirname(prefix)
    cfg_path = os.path.join(directory, "bert_config.json")
    values = read_json(cfg_path)
    config = model_config_from_bert_json(values, source=cfg_path)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:
        raise ConversionError(f"{prefix}: cannot read TF checkpoint ({e})") from e
    names = [n for n in reader.get_variable_to_shape_map() if not _TF_IGNORED.search(n)]
    try:
        tensors = {n: reader.get_tensor(n) for n in names}
    except Exception as e:  # a truncated or damaged data file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(f"{prefix}: cannot read the TF checkpoint's tensors ({first})") from e
    return (config, *params_and_task(tensors, values, config, prefix, cfg_path, skip_unknown))


def import_tf(src: str, *, skip_unknown: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads an original Google BERT checkpoint: (ModelConfig, bertjax params as numpy);
    see `read_tf`, which also gives the task of a downstream head."""
    config, params, _ = read_tf(src, skip_unknown=skip_unknown)
    return config, params


def tf_bert_config(
    params: dict[str, Any], config: ModelConfig, task: dict[str, Any] | None
) -> dict[str, Any]:
    """The bert_config.json of a TF1 export: google-research/bert's keys (vocab_size,
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
    hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings,
    type_vocab_size, initializer_range) and layer_norm_eps; with a downstream head also
    architectures, num_labels and the label keys of config.json (`convert_names.label_config`)."""
    bert_json = model_config_to_bert_json(config)
    for k in ("architectures", "model_type", "pad_token_id", "position_embedding_type"):
        bert_json.pop(k)
    if task is not None:
        outputs = ckpt.head_outputs(params, ckpt.TASK_KINDS[task["kind"]])
        bert_json["architectures"] = [hf_architecture(params, task)]
        bert_json["num_labels"] = outputs
        bert_json.update(label_config(task, outputs))
    return bert_json


def export_tf(
    params: dict[str, Any],
    config: ModelConfig,
    out_dir: str,
    *,
    tokenizer: Any | None = None,
    task: dict[str, Any] | None = None,
    overwrite: bool = False,
    where: str = "the task metadata",
) -> str:
    """Writes an original-format BERT directory atomically: bert_config.json
    (`tf_bert_config`), bert_model.ckpt.* (TF1 Saver, the table's names and layouts) and
    the tokenizer (vocab.txt + bertjax's tokenizer_config.json with its options). `task` is
    checked or inferred as in `convert_hf.export_hf` (ConversionError naming `where`)."""
    tf = storage.require_extra("tensorflow", "writing a Google TF1 checkpoint (convert --to tf)")

    task = export_task(params, task, where=where)
    tensors = params_to_tf_named(params)

    def write(tmp: str) -> None:
        graph = tf.Graph()
        with graph.as_default():
            variables = [tf.compat.v1.Variable(v, name=n) for n, v in sorted(tensors.items())]
            saver = tf.compat.v1.train.Saver(variables)
            with tf.compat.v1.Session(graph=graph) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                saver.save(
                    sess,
                    os.path.join(tmp, "bert_model.ckpt"),
                    write_meta_graph=False,
                    write_state=False,
                )
        storage.write_json(
            os.path.join(tmp, "bert_config.json"), tf_bert_config(params, config, task)
        )
        if tokenizer is not None:
            tokenizer.save(tmp)

    return ckpt.write_atomically(out_dir, write, overwrite=overwrite)
