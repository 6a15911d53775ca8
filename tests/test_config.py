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


# --- Experiment configs and the dataclasses they resolve to -------------------------------------


def _experiment_groups():
    """(family, common module, {group: dataclass}, {group: {field: the experiment's value}},
    {group: keys the group adds or drops}) of every experiment family."""
    from bertjax import finetune_task, glue_task, ner, pretrain_config, squad
    from bertjax.config import PretrainEvalConfig
    from bertjax.optim import OptimConfig
    from bertjax.sharding import MeshConfig
    from experiments.glue import common as glue_common
    from experiments.ner import common as ner_common
    from experiments.pretrain import common as pretrain_common
    from experiments.squad import common as squad_common

    # Fine-tuning sets the warmup as a share of the steps, not a step count.
    ft_optim = ({"warmup_fraction"}, {"warmup_steps"})
    shape_from_size = dict.fromkeys(
        ("vocab_size", "num_layers", "hidden_size", "num_heads", "intermediate_size")
    )
    return [
        (
            "pretrain",
            pretrain_common,
            dict(
                model=ModelConfig,
                data=pretrain_config.DataConfig,
                optim=OptimConfig,
                train=pretrain_config.TrainConfig,
                eval=PretrainEvalConfig,
                mesh=MeshConfig,
            ),
            dict(model=shape_from_size),
            dict(model=({"size"}, set())),
        ),
        (
            "glue",
            glue_common,
            dict(
                task=glue_task.GlueTaskConfig,
                model=finetune_task.ModelOverrides,
                optim=OptimConfig,
                train=glue_task.GlueTrainConfig,
                data=finetune_task.DataConfig,
                mesh=MeshConfig,
            ),
            dict(optim={"learning_rate": 2e-5}, data={"packing": True}),
            dict(optim=ft_optim),
        ),
        (
            "squad",
            squad_common,
            dict(
                task=squad.SquadTaskConfig,
                model=finetune_task.ModelOverrides,
                optim=OptimConfig,
                train=squad.SquadTrainConfig,
                data=finetune_task.DataConfig,
                eval=squad.SquadEvalConfig,
                mesh=MeshConfig,
            ),
            dict(optim={"learning_rate": 5e-5}),
            dict(optim=ft_optim),
        ),
        (
            "ner",
            ner_common,
            dict(
                task=ner.NerTaskConfig,
                model=ner.NerModelOverrides,
                optim=OptimConfig,
                train=ner.NerTrainConfig,
                data=finetune_task.DataConfig,
                mesh=MeshConfig,
            ),
            dict(task={"name": "ner"}, optim={"learning_rate": 5e-5}),
            dict(optim=ft_optim),
        ),
    ]


@pytest.mark.parametrize("family", ["pretrain", "glue", "squad", "ner"])
def test_experiment_groups_agree_with_the_dataclasses(family):
    """Every group of an experiment family's common config holds exactly its dataclass's
    fields, and each value the family does not deliberately change is the dataclass default:
    a default is declared once, and a new field cannot go missing from the configs."""
    import dataclasses

    from bertjax.config import field_defaults

    ((_, module, groups, changed, reshaped),) = [f for f in _experiment_groups() if f[0] == family]
    c = module.get_config()
    assert {k for k in c.keys() if hasattr(c[k], "keys")} == set(groups)
    for group, cls in groups.items():
        added, dropped = reshaped.get(group, (set(), set()))
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(c[group].keys()) == fields - dropped | added, f"{family}: config.{group}"
        defaults = field_defaults(cls)
        expected = {**defaults, **changed.get(group, {})}
        for name in fields - dropped:
            value = c[group][name]
            if isinstance(value, list):
                value = tuple(value)
            assert value == expected[name], f"{family}: config.{group}.{name}"
        for name, value in changed.get(group, {}).items():
            assert value != defaults[name], f"{family}: config.{group}.{name} is the default"


def test_mesh_rules_come_from_sharding():
    from bertjax.sharding import DEFAULT_RULES
    from experiments.pretrain.common import mesh_config

    assert tuple(tuple(r) for r in mesh_config().rules) == DEFAULT_RULES


def test_config_dict_from_fills_defaults_placeholders_and_names_bad_fields():
    from ml_collections import config_flags

    from bertjax.config import config_dict_from

    group = config_dict_from(ModelConfig, num_layers=None, dtype="bfloat16")
    assert group.dtype == "bfloat16" and group.hidden_size == 768 and group.num_layers is None
    group.num_layers = 4  # a typed placeholder: settable, and only with its type
    with pytest.raises(TypeError):
        group.num_heads = "four"
    with pytest.raises(ValueError, match=r"unknown fields \['num_layer'\]"):
        config_dict_from(ModelConfig, num_layer=2)
    del config_flags


def test_dataclass_fields_of_experiment_groups_have_one_line_comments():
    """The defaults of the experiment groups (pre-training and fine-tuning) are declared on
    the dataclass fields, each with its one-line comment (experiments/*/common.py comment
    only their changes)."""
    import dataclasses
    import inspect

    from bertjax import finetune_task, glue_task, ner, pretrain_config, squad
    from bertjax.optim import OptimConfig
    from bertjax.sharding import MeshConfig

    for cls in (
        ModelConfig,
        pretrain_config.DataConfig,
        pretrain_config.TrainConfig,
        OptimConfig,
        MeshConfig,
        finetune_task.ModelOverrides,
        finetune_task.DataConfig,
        glue_task.GlueTaskConfig,
        glue_task.GlueTrainConfig,
        squad.SquadTaskConfig,
        squad.SquadTrainConfig,
        squad.SquadEvalConfig,
        ner.NerTaskConfig,
        ner.NerModelOverrides,
        ner.NerTrainConfig,
    ):
        source = "\n".join(inspect.getsource(k) for k in cls.__mro__[:-1])
        for f in dataclasses.fields(cls):
            line = next(x for x in source.splitlines() if x.strip().startswith(f"{f.name}:"))
            assert "  # " in line, f"{cls.__name__}.{f.name} has no comment"


def test_a_config_of_the_other_kind_is_refused_by_the_library_naming_the_command():
    import ml_collections

    from bertjax import tasks
    from bertjax.pretrain_config import PretrainConfig

    fine_tuning = ml_collections.ConfigDict({"task": {"name": "mrpc"}, "model": {}})
    with pytest.raises(ValueError, match=r"a fine-tuning config .* `bertjax finetune"):
        PretrainConfig.from_config_dict(fine_tuning)
    with pytest.raises(ValueError, match=r"a pre-training config .* `bertjax train"):
        tasks.task_family(ml_collections.ConfigDict({"model": {}, "train": {}}))
