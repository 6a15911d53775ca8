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


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a BERT encoder (names follow the original bert_config.json).

    `scan_layers` describes the layout of the parameters that go with the config: False is
    the canonical layer_0, layer_1, ..., True one encoder/layers sub-module whose arrays
    carry a leading [num_layers] axis (faster compiles for deep models). It changes no
    shape of the model, so it is not a SHAPE_FIELD; model directories always hold the
    canonical layout (model.stack_layers / unstack_layers convert at the boundaries).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"  # gelu = exact erf form, as the original BERT
    hidden_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype of matmuls and activations
    param_dtype: str = "float32"  # storage dtype of parameters (master weights)
    remat: bool = False  # rematerialise each layer in the backward pass to save memory
    remat_policy: str = "nothing_saveable"  # with remat: what to keep (REMAT_POLICIES)
    scan_layers: bool = False  # nn.scan over the layers (parameter layout: see above)

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


# --- Pre-training run configuration ----------------------------------------------------------


def from_group(cls, group: Any, where: str):
    """A frozen dataclass from a ConfigDict group; unknown keys are an error naming them."""
    values = dict(group.to_dict() if hasattr(group, "to_dict") else group)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where pre-training examples come from (see experiments/pretrain/common.py)."""

    train_dir: str = ""
    eval_dir: str = ""
    corpus: str = ""
    vocab: str = ""
    vocab_size: int = 8192
    do_lower_case: bool = True
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    dupe_factor: int = 5
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False
    dynamic_masking: bool = False
    eval_fraction: float = 0.02
    num_workers: int = 0
    packing: bool = False
    max_sequences_per_pack: int = 3

    def __post_init__(self):
        if not self.train_dir and not self.corpus:
            raise ValueError(
                "config.data: set train_dir (prepared shards) or corpus (text to prepare)"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"config.data.eval_fraction={self.eval_fraction}: must be in [0, 1)")
        if self.max_sequences_per_pack < 1:
            raise ValueError(
                f"config.data.max_sequences_per_pack={self.max_sequences_per_pack}: must be >= 1"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop lengths and periods (in optimizer steps)."""

    num_steps: int = 1000
    batch_size: int = 256
    log_every: int = 100
    eval_every: int = 1000
    eval_steps: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    nan_policy: str = "skip"
    max_nonfinite_steps: int = 100
    prng_impl: str = "threefry2x32"
    profile_start: int = 10
    profile_steps: int = 0

    def __post_init__(self):
        for name in (
            "num_steps",
            "batch_size",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"config.train.{name}={getattr(self, name)}: must be > 0")
        if self.profile_start < 0 or self.profile_steps < 0:
            raise ValueError(
                f"config.train.profile_start={self.profile_start} / profile_steps="
                f"{self.profile_steps}: must be >= 0"
            )
        if self.prng_impl not in ("threefry2x32", "rbg", "unsafe_rbg"):
            raise ValueError(
                f"config.train.prng_impl={self.prng_impl!r}: use threefry2x32, rbg or unsafe_rbg"
            )
        if self.nan_policy not in ("skip", "stop"):
            raise ValueError(f"config.train.nan_policy={self.nan_policy!r}: use 'skip' or 'stop'")


@dataclasses.dataclass(frozen=True)
class PretrainEvalConfig:
    """What a pre-training run shows at its end, besides the summary every run prints."""

    fill_mask_examples: int = 0

    def __post_init__(self):
        if self.fill_mask_examples < 0:
            raise ValueError(
                f"config.eval.fill_mask_examples={self.fill_mask_examples}: must be >= 0"
            )


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The resolved pre-training experiment: what library code receives."""

    model: ModelConfig
    model_size: str
    data: DataConfig
    optim: Any  # bertjax.optim.OptimConfig
    train: TrainConfig
    mesh: Any  # bertjax.sharding.MeshConfig
    seed: int = 0
    init_checkpoint: str = ""
    eval: PretrainEvalConfig = PretrainEvalConfig()

    @classmethod
    def from_config_dict(cls, config: Any, *, vocab_size: int | None = None) -> PretrainConfig:
        """Validates a ConfigDict; unknown or misspelt keys are errors naming them."""
        from bertjax.optim import OptimConfig
        from bertjax.sharding import MeshConfig

        top = {"model", "data", "optim", "train", "mesh", "eval", "seed", "init_checkpoint"}
        unknown = sorted(set(config.keys()) - top)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known: {sorted(top)}")
        model = dict(config.model.to_dict())
        size = model.get("size", "custom")
        if vocab_size is not None and model.get("vocab_size") is None:
            model["vocab_size"] = vocab_size
        return cls(
            model=model_config_from_config_dict(model),
            model_size=size,
            data=from_group(DataConfig, config.data, "config.data"),
            optim=OptimConfig.from_config_dict(config.optim),
            train=from_group(TrainConfig, config.train, "config.train"),
            mesh=MeshConfig.from_config_dict(config.mesh),
            seed=int(config.seed),
            init_checkpoint=str(config.init_checkpoint or ""),
            eval=from_group(PretrainEvalConfig, config.get("eval", {}), "config.eval"),
        )
