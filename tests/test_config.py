"""Model configuration: size table, validation, and the original JSON spellings."""

from __future__ import annotations

import pytest

from bertjax.config import (
    MODEL_SIZES,
    ModelConfig,
    model_config_for_size,
    model_config_from_bert_json,
    model_config_from_config_dict,
    model_config_to_bert_json,
)


def test_size_table_matches_the_paper():
    base, large = model_config_for_size("base"), model_config_for_size("large")
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (
        12,
        768,
        12,
        3072,
    )
    assert (large.num_layers, large.hidden_size, large.num_heads, large.intermediate_size) == (
        24,
        1024,
        16,
        4096,
    )
    assert {"tiny", "mini", "small", "medium", "base", "large"} <= set(MODEL_SIZES)
    assert base.vocab_size == 30522 and base.layer_norm_eps == 1e-12 and base.hidden_act == "gelu"
    assert model_config_for_size("tiny").hidden_size == 128


def test_custom_shapes_and_overrides():
    import ml_collections

    cfg = model_config_from_config_dict(
        ml_collections.ConfigDict(
            {
                "size": "custom",
                "num_layers": 3,
                "hidden_size": 96,
                "num_heads": 3,
                "intermediate_size": 200,
                "vocab_size": 1000,
            }
        )
    )
    assert cfg.head_dim == 32
    over = model_config_from_config_dict({"size": "base", "dtype": "bfloat16"})
    assert over.dtype == "bfloat16" and over.num_layers == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 100, "num_heads": 3}, "not divisible by num_heads=3"),
        ({"hidden_act": "swish"}, "hidden_act='swish'"),
        ({"dtype": "float8"}, "dtype='float8'"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"hidden_dropout_rate": 1.5}, "hidden_dropout_rate=1.5"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown keys \['hiden_size'\]"):
        model_config_from_config_dict({"size": "base", "hiden_size": 3})
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model_config_for_size("huge")


def test_bert_json_round_trip():
    cfg = model_config_for_size("mini", hidden_act="gelu_tanh", vocab_size=5000)
    back = model_config_from_bert_json(model_config_to_bert_json(cfg), source="x")
    assert back == cfg
    original = {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
    }
    assert model_config_from_bert_json(original, source="bert_config.json") == (
        model_config_for_size("base")
    )
    with pytest.raises(ValueError, match=r"bert_config.json: missing keys \['vocab_size'\]"):
        model_config_from_bert_json(
            {k: v for k, v in original.items() if k != "vocab_size"}, source="bert_config.json"
        )
