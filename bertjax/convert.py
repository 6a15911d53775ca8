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
An export's tokenizer is what transformers' `save_pretrained` writes for a BERT tokenizer
(vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json) with the
checkpoint's own options, so transformers tokenizes every string as bertjax does. A
SentencePiece (unigram) tokenizer is exported as spm.model plus a tokenizer.json that rebuilds it
for the Rust library, loaded by PreTrainedTokenizerFast; `_sentencepiece_backend` names the
corners where its ids differ. An import
reads vocab.txt, or, where only tokenizer.json is there (transformers 5 writes no
vocab.txt), the WordPiece vocabulary and options of tokenizer.json.

Checkpoints are untrusted input: safetensors is read first; a pytorch_model.bin is only
read with `torch.load(weights_only=True)`; configs are parsed as JSON, never evaluated.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
from typing import Any

import jax
import numpy as np

from bertjax import checkpoint as ckpt
from bertjax import storage
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
# The parameter groups (checkpoint.head_groups) each exported architecture loads.
_ARCHITECTURE_GROUPS = {
    "BertForPreTraining": {"pooler", "mlm", "nsp"},
    "BertForMaskedLM": {"mlm"},
    "BertForNextSentencePrediction": {"pooler", "nsp"},
    "BertModel": {"pooler"},
    "BertForSequenceClassification": {"pooler", "classifier"},
    "BertForTokenClassification": {"classifier"},
    "BertForQuestionAnswering": {"qa_outputs"},
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


# --- Hugging Face -----------------------------------------------------------------------------


# --- Hugging Face Hub names -------------------------------------------------------------------
#
# `convert --from hf --src` and `bertjax.load` take a Hub model id ("bert-base-uncased",
# "org/name") where no such path exists: `resolve_hf_source` is the one place that turns either
# into a local checkpoint directory.

# huggingface_hub's rule for a repository id: "name" or "org/name" of letters, digits and "-_.",
# no "--" or "..", no part starting or ending with "-" or ".", at most 96 characters.
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+", re.ASCII)
# What `read_hf` and `tokenizer_or_none` read; a repository's other files (TF, Flax, ONNX
# weights...) are not downloaded. pytorch_model.bin only where there is no safetensors file.
_HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "*.model",
]
_HUB_BIN = ["pytorch_model.bin"]


def is_hub_id(name: str) -> bool:
    """Whether `name` is spelt as a Hugging Face Hub repository id."""
    parts = name.split("/")
    return (
        len(name) <= 96
        and _HUB_ID.fullmatch(name) is not None
        and "--" not in name
        and ".." not in name
        and not any(p[0] in "-." or p[-1] in "-." for p in parts)
    )


def resolve_hf_source(src: str) -> str:
    """The local (or gs://) directory of the Hugging Face checkpoint `src` names.

    A path that exists always wins: a checkpoint directory as it is; a Hub cache repository
    directory (.../models--org--name) gives its snapshot at refs/main (the only snapshot
    without refs/main). Otherwise `src` is read as a Hub model id and fetched with
    huggingface_hub's `snapshot_download`: from the local cache (HF_HUB_CACHE, HF_HOME) when it
    holds it, downloaded when the network allows (HF_HUB_OFFLINE=1: the cache only). Only the
    files a BERT import reads are fetched (config, safetensors weights, else
    pytorch_model.bin, tokenizer files).

    Raises FileNotFoundError (one line) when `src` is neither an existing path nor a Hub model
    that can be had, ConversionError for a Hub model that refuses access.
    """
    if storage.is_remote(src) or os.path.exists(src):
        return _hub_cache_snapshot(src)
    if not is_hub_id(src):
        raise FileNotFoundError(
            f"{src}: no such file or directory (nor a Hugging Face Hub model id, org/name)"
        )
    return _hub_snapshot(src)


def _hub_cache_snapshot(path: str) -> str:
    """`path`, or for a Hub cache repository directory the snapshot its refs/main names."""
    if storage.isfile(storage.join(path, "config.json")):
        return path
    snapshots = storage.join(path, "snapshots")
    if not storage.isdir(snapshots):
        return path
    ref = storage.join(path, "refs", "main")
    if storage.isfile(ref):
        return storage.join(snapshots, storage.read_text(ref).strip())
    revisions = storage.listdir(snapshots)
    if len(revisions) == 1:
        return storage.join(snapshots, revisions[0])
    raise FileNotFoundError(
        f"{path}: a Hub cache directory with several snapshots {revisions} and no refs/main; "
        "pass the snapshot directory itself"
    )


def _hub_snapshot(repo_id: str) -> str:
    try:
        import huggingface_hub
        from huggingface_hub.utils import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise FileNotFoundError(
            f"{repo_id}: no such file or directory; to read it as a Hugging Face Hub model id, "
            "pip install huggingface_hub"
        ) from None
    from huggingface_hub import constants

    def fetch(patterns: list[str]) -> str:
        try:
            return huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns)
        except LocalEntryNotFoundError as e:
            # Newer huggingface_hub, the Hub out of reach: a cached snapshot that lacks some
            # of the files asked for (IncompleteSnapshotError). What the import needs may
            # still be there; read_hf names anything missing.
            partial = getattr(e, "snapshot_path", None)
            if partial and os.path.isfile(os.path.join(partial, "config.json")):
                return partial
            raise

    try:
        local = fetch(_HUB_FILES)
        if not glob.glob(os.path.join(local, "model*.safetensors*")):
            local = fetch(_HUB_BIN)
    except GatedRepoError:
        raise ConversionError(
            f"{repo_id}: a gated Hugging Face Hub model; accept its terms on the Hub and log "
            "in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}: no such file or directory, nor a Hugging Face Hub model (or it is "
            "private: log in with hf auth login)"
        ) from None
    except LocalEntryNotFoundError:
        why = (
            "downloads are off (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "the Hub cannot be reached"
        )
        raise FileNotFoundError(
            f"{repo_id}: no such file or directory, and the Hugging Face Hub model {repo_id} is "
            f"not in the cache ({constants.HF_HUB_CACHE}) while {why}"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConversionError(
            f"{repo_id}: cannot fetch the Hugging Face Hub model ({type(e).__name__}: {first})"
        ) from None
    return local


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


def _hf_to_tf_named(
    hf: dict[str, np.ndarray], source: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(TF1-named tensors, TF1 name -> the checkpoint's own name) of Hugging Face tensors."""
    hf = dict(hf)
    if not any(k.startswith("bert.") for k in hf) and any(k.startswith("embeddings.") for k in hf):
        top = ("cls.", "classifier.", "qa_outputs.")
        hf = {(k if k.startswith(top) else "bert." + k): v for k, v in hf.items()}
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

    out, names = {}, {}
    for hf_name, value in hf.items():
        tf_name = _hf_to_tf_name(hf_name)
        value = np.asarray(value)
        out[tf_name] = value.T if tf_name.endswith("/kernel") and value.ndim == 2 else value
        names[tf_name] = hf_name
    return out, names


def _hf_to_tf_name(hf_name: str) -> str:
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


def read_hf(
    src: str, *, skip_unknown: bool = False
) -> tuple[ModelConfig, dict[str, Any], dict[str, Any] | None]:
    """Reads a Hugging Face BERT directory: (ModelConfig, bertjax params as numpy, task).

    A downstream head (BertForSequenceClassification, BertForTokenClassification,
    BertForQuestionAnswering) is kept, and `task` says what it means (checkpoint.check_task:
    kind from the architecture and `problem_type`, labels from `id2label`, name from
    `finetuning_task`); task is None without one. Raises ConversionError (a ValueError)
    naming the directory, config file or tensor that does not fit.
    """
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: not a directory")
    cfg_path = os.path.join(src, "config.json")
    values = read_json(cfg_path)
    config = model_config_from_bert_json(values, source=cfg_path)
    tf_named, names = _hf_to_tf_named(_read_hf_tensors(src), src)
    task_params = _params_and_task(tf_named, values, config, src, cfg_path, skip_unknown, names)
    return (config, *task_params)


def import_hf(src: str, *, skip_unknown: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads a Hugging Face BERT directory: (ModelConfig, bertjax params as numpy); see
    `read_hf`, which also gives the task of a downstream head."""
    config, params, _ = read_hf(src, skip_unknown=skip_unknown)
    return config, params


# --- Downstream heads: task metadata <-> config keys ------------------------------------------


def _params_and_task(
    tensors: dict[str, np.ndarray],
    values: dict[str, Any],
    config: ModelConfig,
    source: str,
    cfg_path: str,
    skip_unknown: bool,
    names: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(params, task) of TF1-named tensors and the config.json / bert_config.json values;
    `names` gives the checkpoint's own tensor names for the messages."""
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


def _label_config(task: dict[str, Any], outputs: int) -> dict[str, Any]:
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


# --- Export -----------------------------------------------------------------------------------


def export_hf(
    params: dict[str, Any],
    config: ModelConfig,
    out_dir: str,
    *,
    tokenizer: Any | None = None,
    task: dict[str, Any] | None = None,
    overwrite: bool = False,
    where: str = "the task metadata",
) -> str:
    """Writes a Hugging Face directory atomically: model.safetensors, config.json and, with
    a tokenizer, the files transformers' `save_pretrained` writes for a BERT tokenizer.

    config.json is complete for `hf_architecture(params, task)`, with the head's labels
    (`_label_config`) when there is a downstream head; `task` (checkpoint.check_task) is
    inferred from the parameters when None. Raises ConversionError naming `where` when the
    task does not fit the parameters.
    """
    from safetensors.numpy import save_file

    task = export_task(params, task, where=where)
    if task is not None and task.get("tagger"):
        raise ConversionError(
            f"{where}: a feature-based tagger (frozen encoder, {task['tagger']}) has no "
            "transformers class; export a fine-tuned NER model (freeze_encoder=False)"
        )
    arch = hf_architecture(params, task)
    unused = sorted(set(ckpt.head_groups(params)) - _ARCHITECTURE_GROUPS[arch])
    if unused:
        log.warning(
            "%s: %s does not use the %s parameters; they are written anyway", out_dir, arch, unused
        )
    tensors = {}
    for tf_name, value in params_to_tf_named(params).items():
        hf_name, transposed = tf_to_hf_name(tf_name)
        tensors[hf_name] = np.ascontiguousarray(value.T if transposed else value)

    def write(tmp: str) -> None:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        hf_config = model_config_to_bert_json(config)
        hf_config["architectures"] = [arch]
        if task is not None:
            hf_config.update(
                _label_config(task, ckpt.head_outputs(params, ckpt.TASK_KINDS[task["kind"]]))
            )
        _write_json(os.path.join(tmp, "config.json"), hf_config)
        if tokenizer is not None:
            _write_hf_tokenizer(tokenizer, tmp, config)

    return ckpt.write_atomically(out_dir, write, overwrite=overwrite)


HF_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def _write_hf_tokenizer(tokenizer: Any, out_dir: str, config: ModelConfig) -> None:
    """vocab.txt or spm.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json.

    WordPiece: tokenizer.json is the Rust tokenizer bertjax tokenizes with (normalizer with the
    checkpoint's lowercasing, accent and CJK options, pre-tokenizer, WordPiece model,
    decoder, special tokens) plus BERT's post-processor ([CLS] A [SEP], [CLS] A [SEP] B [SEP]
    with segment ids 0 and 1), without padding or truncation (transformers sets those per
    call); tokenizer_config.json gives the same options to transformers' BertTokenizer.

    SentencePiece (unigram): tokenizer.json rebuilds the model for the Rust library
    (`_sentencepiece_backend`) with the same post-processor; tokenizer_config.json names
    PreTrainedTokenizerFast, which loads tokenizer.json as it is, and keeps bertjax's own keys
    (kind, do_lower_case, model_file) so that the export also loads back into bertjax.
    """
    tokenizer.save(out_dir)
    kind = getattr(tokenizer, "kind", "wordpiece")
    if kind == "wordpiece":
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend.to_str())  # a copy: the original is shared
        special_tokens = HF_SPECIAL_TOKENS
        tokenizer_config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": bool(tokenizer.do_lower_case),
            "strip_accents": tokenizer.strip_accents,
            "tokenize_chinese_chars": bool(tokenizer.tokenize_chinese_chars),
            "do_basic_tokenize": True,
            "never_split": None,
            "clean_up_tokenization_spaces": True,
        }
    else:
        backend = _sentencepiece_backend(tokenizer, out_dir) if kind == "sentencepiece" else None
        if backend is None:
            log.warning(
                "a %s tokenizer has no Hugging Face tokenizer equivalent here; "
                "its files are copied as they are",
                kind,
            )
            return
        roles = ("unk", "sep", "pad", "cls", "mask")
        pieces = tokenizer.convert_ids_to_tokens([getattr(tokenizer, f"{r}_id") for r in roles])
        special_tokens = {f"{r}_token": p for r, p in zip(roles, pieces, strict=True)}
        tokenizer_config = {
            **tokenizer.config(),
            "model_file": _spm_file(),
            "tokenizer_class": "PreTrainedTokenizerFast",
            # BERT's inputs; PreTrainedTokenizerFast returns no token_type_ids unless told.
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
            "clean_up_tokenization_spaces": False,
        }
    from tokenizers import processors

    cls, sep = special_tokens["cls_token"], special_tokens["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)],
    )
    backend.no_padding()
    backend.no_truncation()
    backend.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special_tokens)
    _write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            **tokenizer_config,
            "model_max_length": config.max_position_embeddings,
            **special_tokens,
        },
    )


def _spm_file() -> str:
    from data_pipelines.tokenizers import SPM_FILE

    return SPM_FILE


def _sentencepiece_backend(tokenizer: Any, out_dir: str):
    """The Rust `tokenizers` equivalent of a SentencePiece unigram model (None for one it
    cannot express: BPE, or whitespace as a suffix).

    Read from the ModelProto bytes (`sentencepiece_model_pb2`): a Unigram model with the
    same pieces, scores and unknown id; SentencePiece's normalizer as a sequence: Lowercase
    where bertjax lowercases the text before encoding, the model's `precompiled_charsmap`
    (NFKC, control characters removed, other spaces made " "), then the whitespace rules
    SentencePiece applies to the normalized text (remove_extra_whitespaces: spaces stripped
    at both ends and runs of them collapsed; add_dummy_prefix: "▁" before non-empty text;
    escape_whitespaces: " " -> "▁", trailing "▁" dropped as SentencePiece drops them);
    Metaspace to split before each "▁" and to decode (splitting changes nothing when no piece
    holds "▁" past its start, as with SentencePiece's default split_by_whitespace); control
    and unknown pieces as special added tokens, user-defined ones as added tokens.

    Tested for models `train_vocab` writes (cased and lowercased): the ids of
    `SentencePieceTokenizer.encode` on mixed-script text and on every Basic Multilingual
    Plane character. Known differences:

    * a special token's string in the text ("[MASK]", "[unused3]", or a form that normalizes
      to one, such as "［MASK］" in a cased model): transformers matches special tokens in the
      text (and the Unigram model may produce one), and the text after one is normalized as
      a string of its own, so its first piece starts a word; SentencePiece never produces
      control symbols from text.
    * a grapheme cluster shorter than 6 UTF-8 bytes that goes on past the shortest charsmap
      entry matching its start (e + U+0301 + U+0327, a full-width letter + U+0301):
      tokenizers' Precompiled replaces the whole cluster by that entry's output, dropping
      the rest; SentencePiece takes the longest entry and goes on after it.
    * do_lower_case with a model that does not case-fold itself (not `train_vocab`'s, whose
      nmt_nfkc_cf folds): Python's `str.lower` gives a word-final "ς" for "Σ", the Rust
      Lowercase "σ".

    Byte fallback and user-defined pieces are carried over but not tested.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    with open(os.path.join(out_dir, _spm_file()), "rb") as f:
        proto.ParseFromString(f.read())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != trainer.UNIGRAM or trainer.treat_whitespace_as_suffix:
        return None
    piece_types = proto.SentencePiece
    backend = Tokenizer(
        Unigram(
            [(p.piece, p.score) for p in proto.pieces],
            unk_id=tokenizer.unk_id,
            byte_fallback=trainer.byte_fallback,
        )
    )
    steps = [normalizers.Lowercase()] if tokenizer.do_lower_case else []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))  # Prepend leaves an empty string empty
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
        if norm.remove_extra_whitespaces:
            steps.append(normalizers.Replace(Regex(r"▁+\z"), ""))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    special = (piece_types.CONTROL, piece_types.UNKNOWN)
    backend.add_special_tokens(
        [
            AddedToken(p.piece, special=True, normalized=False)
            for p in proto.pieces
            if p.type in special
        ]
    )
    user = [p.piece for p in proto.pieces if p.type == piece_types.USER_DEFINED]
    if user:
        backend.add_tokens([AddedToken(p, special=False, normalized=False) for p in user])
    return backend


def _write_json(path: str, value: dict[str, Any]) -> None:
    storage.write_json(path, value)


# --- Google TF1 -------------------------------------------------------------------------------

TF1_READ = "reading a Google TF1 checkpoint (convert --from tf)"


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
    cls/squad/*) is kept; its task comes from bert_config.json's keys as in `read_hf`, or
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
    return (config, *_params_and_task(tensors, values, config, prefix, cfg_path, skip_unknown))


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
    architectures, num_labels and the label keys of config.json (`_label_config`)."""
    bert_json = model_config_to_bert_json(config)
    for k in ("architectures", "model_type", "pad_token_id", "position_embedding_type"):
        bert_json.pop(k)
    if task is not None:
        outputs = ckpt.head_outputs(params, ckpt.TASK_KINDS[task["kind"]])
        bert_json["architectures"] = [hf_architecture(params, task)]
        bert_json["num_labels"] = outputs
        bert_json.update(_label_config(task, outputs))
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
    checked or inferred as in `export_hf` (ConversionError naming `where`)."""
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
        _write_json(os.path.join(tmp, "bert_config.json"), tf_bert_config(params, config, task))
        if tokenizer is not None:
            tokenizer.save(tmp)

    return ckpt.write_atomically(out_dir, write, overwrite=overwrite)


# --- Command entry points ---------------------------------------------------------------------


_TOKENIZER_FILES = ("vocab.txt", "spm.model", "sentencepiece.model", "tokenizer_config.json")
_MODEL_FILES = ("vocab.txt", "spm.model", "sentencepiece.model")


def tokenizer_or_none(src: str, scratch: str | None = None):
    """The tokenizer beside a checkpoint; None (with a warning) when there is none.

    With `scratch` (a directory for a vocab.txt), a transformers directory that holds a
    tokenizer.json but no vocab.txt (what transformers 5 writes) is read through
    `_tokenizer_from_tokenizer_json`. A tokenizer file that is present but unreadable is an
    error, not a silent omission.
    """
    from data_pipelines.tokenizers import load_tokenizer

    has_model_file = any(storage.isfile(storage.join(src, f)) for f in _MODEL_FILES) or any(
        f.endswith(".model") for f in storage.listdir(src)
    )
    if scratch and not has_model_file and storage.isfile(storage.join(src, "tokenizer.json")):
        return _tokenizer_from_tokenizer_json(src, scratch)
    if not any(storage.isfile(storage.join(src, f)) for f in _TOKENIZER_FILES):
        log.warning(
            "%s: no tokenizer files (%s); the checkpoint will have no vocab and "
            "commands that tokenize text will need one",
            src,
            ", ".join(_TOKENIZER_FILES),
        )
        return None
    return load_tokenizer(src)


def _tokenizer_from_tokenizer_json(src: str, scratch: str):
    """A WordPiece tokenizer from a transformers tokenizer.json: its WordPiece vocabulary in
    id order (written to scratch/vocab.txt) and the options tokenizer_config.json gives,
    else those of its BertNormalizer, as transformers' BertTokenizer reads them. Raises
    ConversionError naming the file when the model is not WordPiece or its ids are not
    0..V-1."""
    from data_pipelines.tokenizers import WordPieceTokenizer

    path = os.path.join(src, "tokenizer.json")
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ConversionError(
            f"{path}: model type {model.get('type')!r} is not WordPiece; only BERT WordPiece "
            "tokenizers can be imported"
        )
    vocab = model["vocab"]
    ids = sorted(i for i in vocab.values() if isinstance(i, int) and not isinstance(i, bool))
    tokens = sorted(vocab, key=vocab.get) if ids == list(range(len(vocab))) else []
    if not tokens or any(not t or "\n" in t or "\r" in t for t in tokens):
        raise ConversionError(f"{path}: the WordPiece vocab is not one token per id 0..V-1")
    normalizer = data.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        normalizer = {}
    cfg_path = os.path.join(src, "tokenizer_config.json")
    options = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    chosen = {}
    for key, normalizer_key, default in (
        ("do_lower_case", "lowercase", None),
        ("strip_accents", "strip_accents", None),
        ("tokenize_chinese_chars", "handle_chinese_chars", True),
    ):
        if key in options:
            where, value = cfg_path, options[key]
        else:
            where, value = path, normalizer.get(normalizer_key, default)
        if value is not None and not isinstance(value, bool):
            raise ConversionError(f"{where}: {key}={value!r} must be true, false or null")
        chosen[key] = value
    vocab_file = os.path.join(scratch, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in tokens))
    return WordPieceTokenizer(
        vocab_file,
        do_lower_case=chosen["do_lower_case"],
        strip_accents=chosen["strip_accents"],
        tokenize_chinese_chars=chosen["tokenize_chinese_chars"] is not False,
    )


def convert_to_bertjax(
    kind: str, src: str, out: str, *, overwrite: bool = False, skip_unknown: bool = False
) -> str:
    """`bertjax convert --from hf|tf --src DIR --out DIR`: parameters, config, the task of a
    downstream head (`read_hf` / `read_tf`) and the tokenizer beside the checkpoint. An hf
    `src` may also be a Hub model id (`resolve_hf_source`)."""
    if kind == "hf":
        src = resolve_hf_source(src)
    ckpt.check_output_spares(out, src)
    if ckpt.holds_checkpoint(out) and not overwrite:
        raise ConversionError(f"{out}: output directory is not empty; pass --overwrite")
    if kind not in ("hf", "tf"):
        raise ConversionError(f"unknown source format {kind!r}; use hf or tf")
    # safetensors, torch and TF's checkpoint reader open local files: a bucket source is
    # read from a temporary local copy.
    with storage.local_copy(src) as local_src:
        return _convert_to_bertjax(
            kind, local_src, out, storage.abspath(src), overwrite, skip_unknown
        )


def _convert_to_bertjax(
    kind: str, src: str, out: str, source: str, overwrite: bool, skip_unknown: bool
) -> str:
    if kind == "hf":
        config, params, task = read_hf(src, skip_unknown=skip_unknown)
    else:
        config, params, task = read_tf(src, skip_unknown=skip_unknown)
    tok_dir = src if os.path.isdir(src) else (os.path.dirname(src) or ".")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tokenizer_or_none(tok_dir, scratch)
        if tokenizer is not None:
            vocab_file = ckpt.tokenizer_file(tokenizer)
            if vocab_file.startswith(scratch):  # read from tokenizer.json
                vocab_file = os.path.join(tok_dir, "tokenizer.json")
            config_name = "config.json" if kind == "hf" else "bert_config.json"
            ckpt.check_vocab_fits(
                tokenizer.vocab_size,
                config.vocab_size,
                vocab_source=vocab_file,
                model_source=os.path.join(tok_dir, config_name),
            )
        return ckpt.save_model_dir(
            out,
            params,
            config,
            tokenizer=tokenizer,
            source=f"{kind}:{source}",
            task=task,
            overwrite=overwrite,
        )


def convert_from_bertjax(kind: str, src: str, out: str, *, overwrite: bool = False) -> str:
    """`bertjax convert --to hf|tf --src CKPT --out DIR`: the parameters, the config, the
    task metadata of a downstream head (bertjax_config.json's "task") and the tokenizer."""
    ckpt.check_output_spares(out, src)
    if ckpt.holds_checkpoint(out) and not overwrite:
        raise ConversionError(f"{out}: output directory is not empty; pass --overwrite")
    config, params, meta = ckpt.load_model_dir(src)
    tokenizer = tokenizer_or_none(src)
    if tokenizer is not None:
        ckpt.check_tokenizer_fits(
            tokenizer, config, model_source=os.path.join(src, ckpt.CONFIG_FILE)
        )
    options = dict(
        tokenizer=tokenizer,
        task=meta.get("task"),
        overwrite=overwrite,
        where=os.path.join(src, ckpt.CONFIG_FILE),
    )
    if kind == "hf":
        return export_hf(params, config, out, **options)
    if kind == "tf":
        return export_tf(params, config, out, **options)
    raise ConversionError(f"unknown target format {kind!r}; use hf or tf")
