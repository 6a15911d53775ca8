"""Frozen, typed configuration for library code, and the model-size table.

Experiment files describe a run with an `ml_collections.ConfigDict`; library code never
sees that dict. It is turned once into the frozen dataclasses below, which are hashable
(so they can be static arguments of jitted functions) and serialisable to JSON (so every
checkpoint carries the exact model it holds).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bertjax import storage

CONFIG_FILE = "bertjax_config.json"  # a model directory's ModelConfig (bertjax.checkpoint)


def check_config_kind(config: Any, *, fine_tuning: bool) -> None:
    """ValueError when a pre-training config goes where a fine-tuning one belongs, or the
    reverse: fine-tuning configs (GLUE, SQuAD, NER) have a `task` group, pre-training
    ones do not. The message names the command that runs the config."""
    if fine_tuning and "task" not in config:
        raise ValueError(
            "config: a pre-training config (it has no task group), not a fine-tuning one; "
            "run it with `bertjax train --config ...`"
        )
    if not fine_tuning and "task" in config:
        raise ValueError(
            "config: a fine-tuning config (it has a task group), not a pre-training one; "
            "run it with `bertjax finetune --config ...`"
        )


# name: (num_layers, hidden_size, num_heads, intermediate_size)
# The small sizes are the "well-read students" BERT miniatures (Turc et al., 2019).
MODEL_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
DTYPES = ("float32", "bfloat16", "float16")
# jax.checkpoint_policies by name: what a rematerialised layer keeps from its forward pass.
REMAT_POLICIES = (
    "nothing_saveable",  # keep nothing: recompute the whole layer (least memory)
    "dots_saveable",  # keep every matmul output
    "dots_with_no_batch_dims_saveable",  # keep matmuls without batch dims (not attention's)
    "everything_saveable",  # keep everything (no memory saved; for comparison)
)


# The scanned sub-module of the encoder (model.scan_layers), and the logical name of its
# stacked [num_layers] axis; the optimizer (LAMB's per-layer trust ratio) looks for it too.
SCANNED = "layers"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a BERT encoder (names follow the original bert_config.json).

    `scan_layers` describes the layout of the parameters that go with the config: False is
    the canonical layer_0, layer_1, ..., True one encoder/layers sub-module whose arrays
    carry a leading [num_layers] axis (faster compiles for deep models). It changes no
    shape of the model, so it is not a SHAPE_FIELD; model directories always hold the
    canonical layout (model.stack_layers / unstack_layers convert at the boundaries).
    """

    vocab_size: int = 30522  # rows of the token embedding table (V)
    hidden_size: int = 768  # model width (D)
    num_layers: int = 12  # encoder layers (L)
    num_heads: int = 12  # attention heads (H)
    intermediate_size: int = 3072  # feed-forward width (F)
    max_position_embeddings: int = 512  # learned positions; phase 2 uses all 512
    type_vocab_size: int = 2  # segment ids (sentence A / B)
    hidden_act: str = "gelu"  # gelu = exact erf form, as the original BERT (ACTIVATIONS)
    hidden_dropout_rate: float = 0.1  # dropout on embeddings and sub-layer outputs
    attention_dropout_rate: float = 0.1  # dropout on attention probabilities (as BERT)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT's)
    initializer_range: float = 0.02  # stddev of the truncated-normal initialiser
    dtype: str = "float32"  # compute dtype of matmuls and activations; bfloat16 on GPU/TPU
    param_dtype: str = "float32"  # storage dtype of parameters (master weights)
    remat: bool = False  # rematerialise each layer in the backward pass to save memory
    remat_policy: str = "nothing_saveable"  # with remat: what to keep (REMAT_POLICIES)
    scan_layers: bool = False  # nn.scan over the layers: one compiled body, faster compiles

    def __post_init__(self):
        errors = []
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                errors.append(f"{name}={value!r} must be a positive integer")
        if not errors and self.hidden_size % self.num_heads:
            errors.append(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            errors.append(f"hidden_act={self.hidden_act!r} is not one of {ACTIVATIONS}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                errors.append(f"{name}={getattr(self, name)!r} is not one of {DTYPES}")
        for name in ("hidden_dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                errors.append(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.remat_policy not in REMAT_POLICIES:
            errors.append(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if errors:
            raise ValueError("invalid model config: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    SHAPE_FIELDS = (
        "vocab_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
    )

    def shape_differences(self, other: ModelConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (self's, other's)} for the fields that decide parameter shapes."""
        return {
            f: (getattr(self, f), getattr(other, f))
            for f in self.SHAPE_FIELDS
            if getattr(self, f) != getattr(other, f)
        }

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "model config") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown model config keys {unknown}; known: {sorted(known)}"
            )
        return cls(**values)

    def num_params(self, *, with_heads: bool = True) -> int:
        """Parameter count of the encoder (+ pooler, + MLM/NSP heads when with_heads)."""
        d, f, v, n_layers = (
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.num_layers,
        )
        emb = (v + self.max_position_embeddings + self.type_vocab_size) * d + 2 * d
        layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
        pooler = d * d + d
        heads = (d * d + d + 2 * d + v) + (2 * d + 2) if with_heads else 0
        return emb + n_layers * layer + pooler + heads


def model_config_for_size(size: str, **overrides: Any) -> ModelConfig:
    """A ModelConfig from the size table ("base", "large", ...) with field overrides."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(MODEL_SIZES)} or 'custom'")
    layers, hidden, heads, mlp = MODEL_SIZES[size]
    shape = dict(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=mlp)
    shape.update(overrides)
    return ModelConfig(**shape)


def model_config_from_config_dict(model: Any) -> ModelConfig:
    """Resolves the `model` group of an experiment ConfigDict (`size` + overrides)."""
    values = dict(model.to_dict() if hasattr(model, "to_dict") else model)
    size = values.pop("size", "custom")
    values = {k: v for k, v in values.items() if v is not None}
    if size == "custom":
        return ModelConfig.from_dict(values, source="config.model")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config.model: unknown keys {unknown}; known: {sorted(known)}")
    return model_config_for_size(size, **values)


# --- The original bert_config.json / Hugging Face config.json spellings -------------------

_BERT_JSON_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout_rate",
    "attention_probs_dropout_prob": "attention_dropout_rate",
    "initializer_range": "initializer_range",
    "layer_norm_eps": "layer_norm_eps",
}
_ACT_FROM_BERT = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
    "relu": "relu",
}
_ACT_TO_BERT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def model_config_from_bert_json(values: dict[str, Any], *, source: str) -> ModelConfig:
    """Reads a Google bert_config.json or a Hugging Face BERT config.json."""
    model_type = values.get("model_type", "bert")
    archs = values.get("architectures") or []
    if model_type != "bert" or any(not a.startswith("Bert") for a in archs):
        raise ValueError(
            f"{source}: unsupported architecture (model_type={model_type!r}, "
            f"architectures={archs}); only BERT checkpoints can be imported"
        )
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{source}: position_embedding_type={values['position_embedding_type']!r} "
            "is not supported (only 'absolute')"
        )
    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        if k not in values
    ]
    if missing:
        raise ValueError(f"{source}: missing keys {missing}")
    kwargs = {}
    for src_key, dst_key in _BERT_JSON_KEYS.items():
        if src_key in values:
            kwargs[dst_key] = values[src_key]
    act = kwargs.get("hidden_act", "gelu")
    if act not in _ACT_FROM_BERT:
        raise ValueError(
            f"{source}: hidden_act={act!r} is not supported; known {sorted(_ACT_FROM_BERT)}"
        )
    kwargs["hidden_act"] = _ACT_FROM_BERT[act]
    if "layer_norm_eps" not in values:
        kwargs["layer_norm_eps"] = 1e-12
    return ModelConfig(**kwargs)


def model_config_to_bert_json(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json fields of a BertForPreTraining with this shape."""
    out: dict[str, Any] = {"architectures": ["BertForPreTraining"], "model_type": "bert"}
    for src_key, dst_key in _BERT_JSON_KEYS.items():
        out[src_key] = getattr(config, dst_key)
    out["hidden_act"] = _ACT_TO_BERT[config.hidden_act]
    out["pad_token_id"] = 0
    out["position_embedding_type"] = "absolute"
    return out


def read_json(path: str) -> dict[str, Any]:
    """Loads a JSON object from `path` with an error that names the file."""
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    try:
        value = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


# --- ConfigDict groups and the dataclasses they resolve to ------------------------------------


def from_group(cls, group: Any, where: str):
    """A frozen dataclass from a ConfigDict group; unknown keys are an error naming them."""
    values = dict(group.to_dict() if hasattr(group, "to_dict") else group)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def field_defaults(cls: type) -> dict[str, Any]:
    """{field: default} of a dataclass, in declaration order (fields without one left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def config_dict_from(cls: type, /, **overrides: Any) -> Any:
    """An experiment's ConfigDict group: every field of dataclass `cls` at its default (the
    one place each default and its one-line comment are declared), then `overrides`.

    A None value becomes a typed placeholder (`config_dict.placeholder`) of the field's type,
    so `--config.group.field=VALUE` can still set it from the command line. An override that
    is not a field is an error naming it.
    """
    import typing

    from ml_collections import config_dict

    values = field_defaults(cls)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(values)}")
    values.update(overrides)
    hints = typing.get_type_hints(cls)
    group = config_dict.ConfigDict()
    for name, value in values.items():
        if value is None:
            kinds = [
                t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None)
            ]
            value = config_dict.placeholder(kinds[0] if len(kinds) == 1 else object)
        group[name] = value
    return group


# --- Pre-training: the `eval` group ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainEvalConfig:
    """What a pre-training run shows at its end, besides the summary every run prints."""

    fill_mask_examples: int = 0

    def __post_init__(self):
        if self.fill_mask_examples < 0:
            raise ValueError(
                f"config.eval.fill_mask_examples={self.fill_mask_examples}: must be >= 0"
            )
