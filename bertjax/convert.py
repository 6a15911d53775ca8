"""Import and export of BERT checkpoints: Hugging Face and the original Google TF1 format.

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

Kernels are [in, out] in bertjax and TF1 and [out, in] in PyTorch. The MLM decoder is tied
to the word embeddings in all three. Attention kernels are stored per head in bertjax
([D, H, K]) so tensor parallelism can split heads; a reshape converts them.

Checkpoints are untrusted input: safetensors is read first; a pytorch_model.bin is only
read with `torch.load(weights_only=True)`; configs are parsed as JSON, never evaluated.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Any

import jax
import numpy as np

from bertjax import checkpoint as ckpt
from bertjax.config import (
    ModelConfig,
    model_config_from_bert_json,
    model_config_to_bert_json,
    read_json,
)

log = logging.getLogger(__name__)

# Tensors that are not parameters of their own: buffers and tied copies.
_HF_BUFFERS = ("bert.embeddings.position_ids",)
_TF_IGNORED = re.compile(
    r"(^global_step$|/adam_[mv]$|/Momentum$|^bad_steps$|^loss_scale$|"
    r"^good_steps$|/LAMB(_1)?$)"
)


class ConversionError(ValueError):
    """A checkpoint that does not match the BERT layout; the message says how."""


# --- The name table -------------------------------------------------------------------------


def _group_of(tf_name: str) -> str:
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
    name = re.sub(r"/embedding$", "", path)
    name = re.sub(r"LayerNorm/scale$", "LayerNorm/gamma", name)
    return re.sub(r"LayerNorm/bias$", "LayerNorm/beta", name)


def tf_to_hf_name(tf_name: str) -> tuple[str, bool]:
    """(Hugging Face name, whether the tensor is transposed) for a TF1 variable name."""
    special = {
        "cls/predictions/output_bias": "cls.predictions.bias",
        "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
        "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    }
    if tf_name in special:
        return special[tf_name], False
    name = re.sub(r"layer_(\d+)", r"layer.\1", tf_name).replace("/", ".")
    if name.endswith("_embeddings"):
        return name + ".weight", False
    for suffix, hf in ((".gamma", ".weight"), (".beta", ".bias"), (".bias", ".bias")):
        if name.endswith(suffix):
            return name[: -len(suffix)] + hf, False
    if name.endswith(".kernel"):
        return name[: -len(".kernel")] + ".weight", True
    raise ConversionError(f"no Hugging Face name for variable {tf_name!r}")


def _tf_shape(flax_shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    """The 2-D (or 1-D) TF1 shape of a bertjax parameter stored per head."""
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


def tf_table(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """tf_name -> (flax path, flax shape, tf shape) for the full pre-training model."""
    table = {}
    for path, shape in expected_params(config).items():
        table[flax_to_tf_name(path)] = (path, shape, _tf_shape(shape, path))
    return table


# --- TF-named tensors <-> bertjax parameters ------------------------------------------------


def params_from_tf_named(
    tensors: dict[str, np.ndarray],
    config: ModelConfig,
    *,
    source: str,
    skip_unknown: bool = False,
) -> dict[str, Any]:
    """Validates TF1-named tensors against the table and builds the bertjax tree.

    The encoder is required; the pooler, MLM head and NSP head are optional groups, each
    present entirely or not at all.
    """
    table = tf_table(config)
    unknown = sorted(set(tensors) - set(table))
    if unknown and not skip_unknown:
        raise ConversionError(
            f"{source}: {len(unknown)} tensors are not part of BERT: {unknown[:8]}"
            + (" ..." if len(unknown) > 8 else "")
            + " (pass --skip_unknown to drop them)"
        )
    for name in unknown:
        log.warning("%s: dropping tensor %s", source, name)
    present_groups = {_group_of(n) for n in tensors if n in table}
    missing = [
        n for n in table if _group_of(n) in present_groups | {"encoder"} and n not in tensors
    ]
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
            flat[path] = value.astype(np.dtype(config.param_dtype)).reshape(shape)
    return ckpt.unflatten_params(flat)


def params_to_tf_named(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """bertjax parameter tree -> {TF1 name: float32 array in the TF1 layout}."""
    out = {}
    for path, value in ckpt.flatten_params(params).items():
        value = np.asarray(value, dtype=np.float32)
        out[flax_to_tf_name(path)] = value.reshape(_tf_shape(value.shape, path))
    return out


# --- Hugging Face -----------------------------------------------------------------------------


def _read_hf_tensors(src: str) -> dict[str, np.ndarray]:
    single = os.path.join(src, "model.safetensors")
    index = os.path.join(src, "model.safetensors.index.json")
    binary = os.path.join(src, "pytorch_model.bin")
    if os.path.isfile(single) or os.path.isfile(index):
        from safetensors.numpy import load_file

        files = (
            [single]
            if os.path.isfile(single)
            else sorted(
                {os.path.join(src, f) for f in read_json(index).get("weight_map", {}).values()}
            )
        )
        tensors = {}
        for f in files:
            try:
                tensors.update(load_file(f))
            except Exception as e:  # safetensors raises its own error types
                raise ConversionError(f"{f}: cannot read safetensors file ({e})") from e
        return tensors
    if os.path.isfile(binary):
        try:
            import torch
        except ImportError as e:
            raise ConversionError(
                f"{binary}: reading a PyTorch .bin needs torch (pip install 'bertjax[dev]'); "
                "or convert it to model.safetensors"
            ) from e
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConversionError(f"{binary}: cannot load with weights_only=True ({e})") from e
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise ConversionError(
        f"{src}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _hf_to_tf_named(hf: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    hf = dict(hf)
    if not any(k.startswith("bert.") for k in hf) and any(k.startswith("embeddings.") for k in hf):
        hf = {("bert." + k if not k.startswith("cls.") else k): v for k, v in hf.items()}
    # Old checkpoints spell LayerNorm parameters gamma/beta.
    hf = {
        re.sub(
            r"LayerNorm\.gamma$",
            "LayerNorm.weight",
            re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k),
        ): v
        for k, v in hf.items()
    }
    for k in _HF_BUFFERS:
        hf.pop(k, None)
    decoder_w = hf.pop("cls.predictions.decoder.weight", None)
    if decoder_w is not None and "bert.embeddings.word_embeddings.weight" in hf:
        if not np.array_equal(decoder_w, hf["bert.embeddings.word_embeddings.weight"]):
            raise ConversionError(
                f"{source}: cls.predictions.decoder.weight differs from the word embeddings; "
                "untied MLM decoders are not supported"
            )
    decoder_b = hf.pop("cls.predictions.decoder.bias", None)
    if decoder_b is not None and "cls.predictions.bias" not in hf:
        hf["cls.predictions.bias"] = decoder_b

    out = {}
    for hf_name, value in hf.items():
        tf_name = _hf_to_tf_name(hf_name)
        value = np.asarray(value)
        out[tf_name] = value.T if tf_name.endswith("/kernel") and value.ndim == 2 else value
    return out


def _hf_to_tf_name(hf_name: str) -> str:
    special = {
        "cls.predictions.bias": "cls/predictions/output_bias",
        "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
        "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
    }
    if hf_name in special:
        return special[hf_name]
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


def import_hf(src: str, *, skip_unknown: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads a Hugging Face BERT directory: (ModelConfig, bertjax params as numpy)."""
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: not a directory")
    cfg_path = os.path.join(src, "config.json")
    config = model_config_from_bert_json(read_json(cfg_path), source=cfg_path)
    tf_named = _hf_to_tf_named(_read_hf_tensors(src), src)
    return config, params_from_tf_named(tf_named, config, source=src, skip_unknown=skip_unknown)


def export_hf(
    params: dict[str, Any],
    config: ModelConfig,
    out_dir: str,
    *,
    tokenizer: Any | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a Hugging Face directory (model.safetensors, config.json, vocab) atomically."""
    from safetensors.numpy import save_file

    groups = ckpt.head_groups(params)
    if "mlm" in groups and "nsp" in groups:
        arch = "BertForPreTraining"
    elif "mlm" in groups:
        arch = "BertForMaskedLM"
    else:
        arch = "BertModel"
    tensors = {}
    for tf_name, value in params_to_tf_named(params).items():
        hf_name, transposed = tf_to_hf_name(tf_name)
        tensors[hf_name] = np.ascontiguousarray(value.T if transposed else value)

    def write(tmp: str) -> None:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        hf_config = model_config_to_bert_json(config)
        hf_config["architectures"] = [arch]
        _write_json(os.path.join(tmp, "config.json"), hf_config)
        if tokenizer is not None:
            _write_hf_tokenizer(tokenizer, tmp)

    return ckpt.write_atomically(out_dir, write, overwrite=overwrite)


def _write_hf_tokenizer(tokenizer: Any, out_dir: str) -> None:
    tokenizer.save(out_dir)
    if getattr(tokenizer, "kind", "wordpiece") != "wordpiece":
        log.warning(
            "a %s tokenizer has no Hugging Face BertTokenizer equivalent; "
            "its files are copied as they are",
            tokenizer.kind,
        )
        return
    lower = bool(getattr(tokenizer, "do_lower_case", True))
    _write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": lower,
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "model_max_length": 512,
        },
    )


def _write_json(path: str, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


# --- Google TF1 -------------------------------------------------------------------------------


def _tf_checkpoint_prefix(src: str) -> str:
    if os.path.isdir(src):
        state = os.path.join(src, "checkpoint")
        if os.path.isfile(state):
            import tensorflow as tf

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


def import_tf(src: str, *, skip_unknown: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads an original Google BERT checkpoint (bert_config.json + bert_model.ckpt.*)."""
    import tensorflow as tf

    prefix = _tf_checkpoint_prefix(src)
    directory = src if os.path.isdir(src) else os.path.dirname(prefix)
    cfg_path = os.path.join(directory, "bert_config.json")
    config = model_config_from_bert_json(read_json(cfg_path), source=cfg_path)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:
        raise ConversionError(f"{prefix}: cannot read TF checkpoint ({e})") from e
    names = [n for n in reader.get_variable_to_shape_map() if not _TF_IGNORED.search(n)]
    tensors = {n: reader.get_tensor(n) for n in names}
    return config, params_from_tf_named(tensors, config, source=prefix, skip_unknown=skip_unknown)


def export_tf(
    params: dict[str, Any],
    config: ModelConfig,
    out_dir: str,
    *,
    tokenizer: Any | None = None,
    overwrite: bool = False,
) -> str:
    """Writes an original-format BERT directory: bert_config.json, bert_model.ckpt.*, vocab."""
    import tensorflow as tf

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
        bert_json = model_config_to_bert_json(config)
        for k in (
            "architectures",
            "model_type",
            "pad_token_id",
            "position_embedding_type",
            "layer_norm_eps",
        ):
            bert_json.pop(k)
        _write_json(os.path.join(tmp, "bert_config.json"), bert_json)
        if tokenizer is not None:
            tokenizer.save(tmp)

    return ckpt.write_atomically(out_dir, write, overwrite=overwrite)


# --- Command entry points ---------------------------------------------------------------------


_TOKENIZER_FILES = ("vocab.txt", "spm.model", "sentencepiece.model", "tokenizer_config.json")


def _tokenizer_or_none(src: str):
    """The tokenizer beside a checkpoint; None (with a warning) when there is none.

    A tokenizer file that is present but unreadable is an error, not a silent omission.
    """
    from data_pipelines.tokenizers import load_tokenizer

    if not any(os.path.isfile(os.path.join(src, f)) for f in _TOKENIZER_FILES):
        log.warning(
            "%s: no tokenizer files (%s); the checkpoint will have no vocab and "
            "commands that tokenize text will need one",
            src,
            ", ".join(_TOKENIZER_FILES),
        )
        return None
    return load_tokenizer(src)


def convert_to_bertjax(
    kind: str, src: str, out: str, *, overwrite: bool = False, skip_unknown: bool = False
) -> str:
    """`bertjax convert --from hf|tf --src DIR --out DIR`."""
    if ckpt.holds_checkpoint(out) and not overwrite:
        raise ConversionError(f"{out}: output directory is not empty; pass --overwrite")
    if kind == "hf":
        config, params = import_hf(src, skip_unknown=skip_unknown)
    elif kind == "tf":
        config, params = import_tf(src, skip_unknown=skip_unknown)
    else:
        raise ConversionError(f"unknown source format {kind!r}; use hf or tf")
    tok_dir = src if os.path.isdir(src) else os.path.dirname(src)
    return ckpt.save_model_dir(
        out,
        params,
        config,
        tokenizer=_tokenizer_or_none(tok_dir),
        source=f"{kind}:{os.path.abspath(src)}",
        overwrite=overwrite,
    )


def convert_from_bertjax(kind: str, src: str, out: str, *, overwrite: bool = False) -> str:
    """`bertjax convert --to hf|tf --src CKPT --out DIR`."""
    if ckpt.holds_checkpoint(out) and not overwrite:
        raise ConversionError(f"{out}: output directory is not empty; pass --overwrite")
    config, params, _ = ckpt.load_model_dir(src)
    tokenizer = _tokenizer_or_none(src)
    if kind == "hf":
        return export_hf(params, config, out, tokenizer=tokenizer, overwrite=overwrite)
    if kind == "tf":
        return export_tf(params, config, out, tokenizer=tokenizer, overwrite=overwrite)
    raise ConversionError(f"unknown target format {kind!r}; use hf or tf")
