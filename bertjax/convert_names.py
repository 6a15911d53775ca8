"""The BERT checkpoint name table, which import and export of Hugging Face and original
Google TF1 checkpoints are built on.

Every bertjax parameter has exactly one original TF1 variable name; the Hugging Face
name follows from the TF1 name by a fixed spelling rule. So conversion is a table:

| bertjax parameter (params/...)                               | TF1 variable (shape)               | Hugging Face tensor (shape)                        |
|--------------------------------------------------------------|------------------------------------|----------------------------------------------------|
| bert/embeddings/word_embeddings/embedding [V, D]             | bert/embeddings/word_embeddings    | bert.embeddings.word_embeddings.weight             |
| bert/embeddings/position_embeddings/embedding [512, D]       | bert/embeddings/position_embeddings| bert.embeddings.position_embeddings.weight         |
| bert/embeddings/token_type_embeddings/embedding [2, D]       | bert/embeddings/token_type_embeddings | bert.embeddings.token_type_embeddings.weight    |
| .../LayerNorm/{scale, bias} [D]                              | .../LayerNorm/{gamma, beta}        | .../LayerNorm.{weight, bias}                       |
| bert/encoder/layer_N/attention/self/{query,key,value}/kernel [D, H, K] | .../kernel [D, D]        | bert.encoder.layer.N.attention.self.query.weight [D, D]ᵀ |
| bert/encoder/layer_N/attention/self/{query,key,value}/bias [H, K] | .../bias [D]                  | ....bias [D]                                       |
| bert/encoder/layer_N/attention/output/dense/kernel [H, K, D] | .../kernel [D, D]                  | ....attention.output.dense.weight [D, D]ᵀ          |
| bert/encoder/layer_N/intermediate/dense/kernel [D, F]        | .../kernel [D, F]                  | ....intermediate.dense.weight [F, D]               |
| bert/encoder/layer_N/output/dense/kernel [F, D]              | .../kernel [F, D]                  | ....output.dense.weight [D, F]                     |
| bert/pooler/dense/{kernel, bias}                             | bert/pooler/dense/{kernel, bias}   | bert.pooler.dense.{weight, bias}                   |
| cls/predictions/transform/dense/{kernel, bias}               | same                               | cls.predictions.transform.dense.{weight, bias}     |
| cls/predictions/output_bias [V]                              | cls/predictions/output_bias        | cls.predictions.bias                               |
| cls/seq_relationship/output_weights [2, D]                   | cls/seq_relationship/output_weights| cls.seq_relationship.weight [2, D] (no transpose)  |
| cls/seq_relationship/output_bias [2]                         | cls/seq_relationship/output_bias   | cls.seq_relationship.bias                          |
| classifier/kernel [D, L]                                     | output_weights [L, D]              | classifier.weight [L, D]                           |
| classifier/bias [L]                                          | output_bias [L]                    | classifier.bias [L]                                |
| qa_outputs/kernel [D, 2]                                     | cls/squad/output_weights [2, D]    | qa_outputs.weight [2, D]                           |
| qa_outputs/bias [2]                                          | cls/squad/output_bias [2]          | qa_outputs.bias [2]                                |

Kernels are [in, out] in bertjax and TF1 and [out, in] in PyTorch, except the downstream
heads, which TF1 stores [out, in] as well (the names and layout of google-research/bert's
run_classifier.py and run_squad.py; token classification uses the classifier's names). The
MLM decoder is tied to the word embeddings in all three. Attention kernels are stored per
head in bertjax ([D, H, K]) so tensor parallelism can split heads; a reshape converts them.

What a downstream head means travels with it (checkpoint.check_task: kind and class names).
Exports write it where each format keeps it: config.json's `architectures`
(BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering; else
BertForPreTraining, BertForMaskedLM, BertForNextSentencePrediction or BertModel after the
heads present), `id2label`, `label2id`, `problem_type` and `finetuning_task`; bert_config.json
gets the same keys plus `num_labels`. Imports read them back; a checkpoint without an
architecture (google-research/bert's fine-tuned ones) gets its task from the tensors present.
Class ids keep bertjax's order, which id2label states (for MNLI it is not the order of
google-research/bert's MnliProcessor; see data_pipelines/glue.py).

The formats have a module each, both built on this table: `bertjax.convert_hf` (Hugging Face
directories: safetensors or pytorch_model.bin, config.json, the tokenizer files; Hub model
ids) and `bertjax.convert_tf` (TF1 checkpoints and bert_config.json; TensorFlow, the [tf]
extra, is imported only when one is read or written). A reader turns a checkpoint's tensors
into TF1-named ones and hands them to `params_and_task`; a writer takes `params_to_tf_named`
and spells the names its own way (`tf_to_hf_name`, `hf_to_tf_name`). The command,
`bertjax.convert`, sits above both: it adds the tokenizer beside the checkpoint and picks the
format.

Checkpoints are untrusted input: tensors are read without running code (convert_hf: safetensors
first, a pytorch_model.bin only with `torch.load(weights_only=True)`); configs are parsed as
JSON, never evaluated.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import jax
import numpy as np

from bertjax import checkpoint as ckpt
from bertjax.config import ModelConfig

log = logging.getLogger(__name__)


# Downstream heads: bertjax path -> TF1 name (TF1 keeps these kernels [out, in]).
_HEAD_TF_NAMES = {
    "classifier/kernel": "output_weights",
    "classifier/bias": "output_bias",
    "qa_outputs/kernel": "cls/squad/output_weights",
    "qa_outputs/bias": "cls/squad/output_bias",
}
_TF_HEAD_PATHS = {tf: path for path, tf in _HEAD_TF_NAMES.items()}
# TF1 names whose Hugging Face name does not follow the spelling rule (never transposed).
_TF_TO_HF_SPECIAL = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "output_weights": "classifier.weight",
    "output_bias": "classifier.bias",
    "cls/squad/output_weights": "qa_outputs.weight",
    "cls/squad/output_bias": "qa_outputs.bias",
}
_HF_TO_TF_SPECIAL = {hf: tf for tf, hf in _TF_TO_HF_SPECIAL.items()}

# transformers classes with a downstream head -> the bertjax head they hold.
_HEAD_ARCHITECTURES = {
    "BertForSequenceClassification": "classifier",
    "BertForTokenClassification": "classifier",
    "BertForQuestionAnswering": "qa_outputs",
}
# Task kinds of a sequence classifier -> transformers' problem_type.
_PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "multi_label_classification": "multi_label_classification",
    "regression": "regression",
}


class ConversionError(ValueError):
    """A checkpoint that does not match the BERT layout; the message says how."""


# --- The name table -------------------------------------------------------------------------


def _group_of(tf_name: str) -> str:
    if tf_name in _TF_HEAD_PATHS:
        return _TF_HEAD_PATHS[tf_name].split("/")[0]
    if tf_name.startswith("bert/pooler/"):
        return "pooler"
    if tf_name.startswith("cls/predictions/"):
        return "mlm"
    if tf_name.startswith("cls/seq_relationship/"):
        return "nsp"
    if tf_name.startswith("bert/"):
        return "encoder"
    return "head"


def flax_to_tf_name(path: str) -> str:
    """bert/embeddings/word_embeddings/embedding -> bert/embeddings/word_embeddings, etc."""
    if path in _HEAD_TF_NAMES:
        return _HEAD_TF_NAMES[path]
    name = re.sub(r"/embedding$", "", path)
    name = re.sub(r"LayerNorm/scale$", "LayerNorm/gamma", name)
    return re.sub(r"LayerNorm/bias$", "LayerNorm/beta", name)


def tf_to_hf_name(tf_name: str) -> tuple[str, bool]:
    """(Hugging Face name, whether the tensor is transposed) for a TF1 variable name."""
    if tf_name in _TF_TO_HF_SPECIAL:
        return _TF_TO_HF_SPECIAL[tf_name], False
    name = re.sub(r"layer_(\d+)", r"layer.\1", tf_name).replace("/", ".")
    if name.endswith("_embeddings"):
        return name + ".weight", False
    for suffix, hf in ((".gamma", ".weight"), (".beta", ".bias"), (".bias", ".bias")):
        if name.endswith(suffix):
            return name[: -len(suffix)] + hf, False
    if name.endswith(".kernel"):
        return name[: -len(".kernel")] + ".weight", True
    raise ConversionError(f"no Hugging Face name for variable {tf_name!r}")


def hf_to_tf_name(hf_name: str) -> str:
    """The TF1 variable name of a Hugging Face tensor name (the inverse of `tf_to_hf_name`)."""
    if hf_name in _HF_TO_TF_SPECIAL:
        return _HF_TO_TF_SPECIAL[hf_name]
    name = re.sub(r"layer\.(\d+)", r"layer_\1", hf_name).replace(".", "/")
    if re.search(r"_embeddings/weight$", name):
        return name[: -len("/weight")]
    if "LayerNorm/" in name:
        return name.replace("LayerNorm/weight", "LayerNorm/gamma").replace(
            "LayerNorm/bias", "LayerNorm/beta"
        )
    if name.endswith("/weight"):
        return name[: -len("/weight")] + "/kernel"
    return name


def _tf_shape(flax_shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    """The TF1 shape of a bertjax parameter: attention parameters stored per head are
    flattened, downstream head kernels transposed."""
    if path in _HEAD_TF_NAMES:
        return tuple(reversed(flax_shape))
    if len(flax_shape) == 3:  # [D, H, K] (q/k/v) or [H, K, D] (attention output)
        if "/self/" in path:
            return (flax_shape[0], flax_shape[1] * flax_shape[2])
        return (flax_shape[0] * flax_shape[1], flax_shape[2])
    if len(flax_shape) == 2 and "/self/" in path and path.endswith("/bias"):
        return (flax_shape[0] * flax_shape[1],)
    return tuple(flax_shape)


def expected_params(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of BertForPreTraining with this config: flax path -> shape, in the
    canonical layout (layer_N, whatever `config.scan_layers`)."""
    from bertjax.model import BertForPreTraining, dummy_batch

    canonical = config.replace(dtype="float32", param_dtype="float32", scan_layers=False)
    model = BertForPreTraining(canonical)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(config), train=False))
    import flax.linen as nn

    flat = ckpt.flatten_params(nn.meta.unbox(shapes["params"]))
    return {k: tuple(v.shape) for k, v in flat.items()}


def tf_table(
    config: ModelConfig, head: tuple[str, int] | None = None
) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """tf_name -> (flax path, flax shape, tf shape) for the full pre-training model, plus a
    downstream head (name, outputs), e.g. ("classifier", 3) or ("qa_outputs", 2)."""
    shapes = expected_params(config)
    if head is not None:
        name, outputs = head
        shapes[f"{name}/kernel"] = (config.hidden_size, outputs)
        shapes[f"{name}/bias"] = (outputs,)
    return {flax_to_tf_name(p): (p, shape, _tf_shape(shape, p)) for p, shape in shapes.items()}


# --- TF-named tensors <-> bertjax parameters ------------------------------------------------


def params_from_tf_named(
    tensors: dict[str, np.ndarray],
    config: ModelConfig,
    *,
    source: str,
    skip_unknown: bool = False,
    head: tuple[str, int] | None = None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Validates TF1-named tensors against the table and builds the bertjax tree.

    The encoder is required; the pooler, MLM head and NSP head are optional groups, each
    present entirely or not at all. `head` (name, outputs) adds a downstream head, which is
    then required; without it, head tensors are unknown like any other. Unknown tensors
    are named as `names` (TF1 name -> the checkpoint's own name) spells them.
    """
    table = tf_table(config, head)
    names = names or {}
    unknown = sorted(names.get(n, n) for n in set(tensors) - set(table))
    if unknown and not skip_unknown:
        raise ConversionError(
            f"{source}: {len(unknown)} tensors are not part of BERT: {unknown[:8]}"
            + (" ..." if len(unknown) > 8 else "")
            + " (pass --skip_unknown to drop them)"
        )
    for name in unknown:
        log.warning("%s: dropping tensor %s", source, name)
    present_groups = {_group_of(n) for n in tensors if n in table}
    required = present_groups | {"encoder"} | ({head[0]} if head else set())
    missing = [n for n in table if _group_of(n) in required and n not in tensors]
    if missing:
        raise ConversionError(
            f"{source}: {len(missing)} tensors missing: {missing[:8]}"
            + (" ..." if len(missing) > 8 else "")
        )
    bad = [
        f"{n}: got {tuple(tensors[n].shape)}, expected {table[n][2]}"
        for n in table
        if n in tensors and tuple(tensors[n].shape) != table[n][2]
    ]
    if bad:
        raise ConversionError(f"{source}: mis-shaped tensors: {bad[:8]}")
    flat = {}
    for name, (path, shape, _) in table.items():
        if name in tensors:
            value = np.asarray(tensors[name])
            if not np.issubdtype(value.dtype, np.floating):
                raise ConversionError(f"{source}: tensor {name} has dtype {value.dtype}")
            value = value.T if path in _HEAD_TF_NAMES else value.reshape(shape)
            flat[path] = value.astype(np.dtype(config.param_dtype))
    return ckpt.unflatten_params(flat)


def params_to_tf_named(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """bertjax parameter tree -> {TF1 name: float32 array in the TF1 layout}."""
    out = {}
    for path, value in ckpt.flatten_params(params).items():
        value = np.asarray(value, dtype=np.float32)
        tf_shape = _tf_shape(value.shape, path)
        out[flax_to_tf_name(path)] = value.T if path in _HEAD_TF_NAMES else value.reshape(tf_shape)
    return out


# --- Downstream heads: task metadata <-> config keys ------------------------------------------


def params_and_task(
    tensors: dict[str, np.ndarray],
    values: dict[str, Any],
    config: ModelConfig,
    source: str,
    cfg_path: str,
    skip_unknown: bool,
    names: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(params, task) of TF1-named tensors and the config.json / bert_config.json values, as
    a reader of either format gives them; `names` gives the checkpoint's own tensor names for
    the messages."""
    task, outputs = _task_from_config(values, tensors, cfg_path)
    head = None if task is None else (ckpt.TASK_KINDS[task["kind"]], outputs)
    params = params_from_tf_named(
        tensors, config, source=source, skip_unknown=skip_unknown, head=head, names=names
    )
    if task is not None:
        try:
            task = ckpt.check_task(task, params, where=cfg_path)
        except ckpt.CheckpointError as e:
            raise ConversionError(str(e)) from None
    return params, task


def _task_from_config(
    values: dict[str, Any], tensors: dict[str, np.ndarray], cfg_path: str
) -> tuple[dict[str, Any] | None, int]:
    """(task, head outputs) from a config's architectures, problem_type, id2label /
    num_labels and finetuning_task; (None, 0) when it names no downstream head. Without
    architectures (google-research/bert's own configs) the head comes from the tensors:
    cls/squad/* -> span, output_weights -> sequence classification (token classification
    when there is no pooler)."""
    archs = values.get("architectures") or []
    if archs:
        heads = [a for a in archs if a in _HEAD_ARCHITECTURES]
        if not heads:
            return None, 0
        arch = heads[0]
    elif any(_group_of(n) == "qa_outputs" for n in tensors):
        arch = "BertForQuestionAnswering"
    elif any(_group_of(n) == "classifier" for n in tensors):
        has_pooler = any(_group_of(n) == "pooler" for n in tensors)
        arch = "BertForSequenceClassification" if has_pooler else "BertForTokenClassification"
    else:
        return None, 0
    name = values.get("finetuning_task") or ""
    if not isinstance(name, str):
        raise ConversionError(f"{cfg_path}: finetuning_task={name!r} must be a string")
    head = _HEAD_ARCHITECTURES[arch]
    bias = tensors.get(_HEAD_TF_NAMES[f"{head}/bias"])
    rows = None if bias is None else int(np.shape(bias)[-1])
    labels = _labels_from_config(values, cfg_path)
    if labels is not None:
        outputs = len(labels)
        if labels == [f"LABEL_{i}" for i in range(outputs)]:
            labels = None  # transformers' default names: the outputs have no names
    elif "num_labels" in values:
        outputs = values["num_labels"]
        if not isinstance(outputs, int) or isinstance(outputs, bool) or outputs < 1:
            raise ConversionError(f"{cfg_path}: num_labels={outputs!r} must be a positive integer")
    else:
        outputs = rows if rows is not None else 2  # transformers' default: two labels
    if rows is not None and rows != outputs:
        raise ConversionError(
            f"{cfg_path}: id2label/num_labels give {outputs} labels but the {head} head has "
            f"{rows} outputs"
        )
    if arch == "BertForQuestionAnswering":
        kind = "span"
    elif arch == "BertForTokenClassification":
        kind = "token_classification"
    else:
        problem_type = values.get("problem_type")
        kinds = {p: k for k, p in _PROBLEM_TYPES.items()}
        if problem_type is None:  # transformers' rule: one output is a regression
            kind = "regression" if outputs == 1 else "classification"
        elif problem_type in kinds:
            kind = kinds[problem_type]
        else:
            raise ConversionError(
                f"{cfg_path}: problem_type={problem_type!r} is not one of {sorted(kinds)}"
            )
    return {"name": name, "kind": kind, "labels": labels}, outputs


def _labels_from_config(values: dict[str, Any], cfg_path: str) -> list[str] | None:
    """The names of `id2label` ({"0": name, ...}, keys 0..N-1) in id order, or None."""
    id2label = values.get("id2label")
    if id2label is None:
        return None
    try:
        pairs = sorted((int(k), v) for k, v in id2label.items())
    except (AttributeError, TypeError, ValueError):
        pairs = None
    if (
        not pairs
        or [i for i, _ in pairs] != list(range(len(pairs)))
        or not all(isinstance(v, str) and v for _, v in pairs)
    ):
        raise ConversionError(
            f"{cfg_path}: id2label={id2label!r} must map the ids 0..N-1 to non-empty names"
        )
    return [v for _, v in pairs]


def label_config(task: dict[str, Any], outputs: int) -> dict[str, Any]:
    """The config.json keys that describe a head's outputs, as transformers writes them."""
    labels = task["labels"] or [f"LABEL_{i}" for i in range(outputs)]
    out: dict[str, Any] = {
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if task["kind"] in _PROBLEM_TYPES:
        out["problem_type"] = _PROBLEM_TYPES[task["kind"]]
    if task["name"]:
        out["finetuning_task"] = task["name"]
    return out


def export_task(
    params: dict[str, Any], task: dict[str, Any] | None, *, where: str
) -> dict[str, Any] | None:
    """The task an export describes: `task` checked against the parameters (ConversionError
    naming `where` when it does not fit), or the one the parameters imply."""
    if task is None:
        return ckpt.infer_task(params)
    try:
        return ckpt.check_task(task, params, where=where)
    except ckpt.CheckpointError as e:
        raise ConversionError(str(e)) from None


def hf_architecture(params: dict[str, Any], task: dict[str, Any] | None) -> str:
    """The transformers class that loads these parameters: the task's head class, else the
    pre-training heads present (BertForPreTraining, BertForMaskedLM,
    BertForNextSentencePrediction), else BertModel."""
    if task is not None:
        return {
            "span": "BertForQuestionAnswering",
            "token_classification": "BertForTokenClassification",
        }.get(task["kind"], "BertForSequenceClassification")
    groups = set(ckpt.head_groups(params))
    if {"mlm", "nsp"} <= groups:
        return "BertForPreTraining"
    if "mlm" in groups:
        return "BertForMaskedLM"
    if "nsp" in groups:
        return "BertForNextSentencePrediction"
    return "BertModel"
