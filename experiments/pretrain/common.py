"""Defaults shared by every pre-training experiment; each experiment file edits a copy.

Each group holds every field of its dataclass at the dataclass's default
(`bertjax.config.config_dict_from`): the defaults and their one-line comments are declared
once, on the dataclass fields (ModelConfig, DataConfig, OptimConfig, TrainConfig, MeshConfig);
this file comments only what it changes.

Fields that scripts and docs rely on keep their names: seed, model.size, train.num_steps,
train.batch_size (global), train.log_every, train.eval_every, train.checkpoint_every,
mesh.data, mesh.fsdp, mesh.tensor, init_checkpoint.
"""

from __future__ import annotations

import ml_collections

from bertjax.config import ModelConfig, config_dict_from, field_defaults
from bertjax.optim import OptimConfig
from bertjax.pretrain_config import DataConfig, PretrainConfig, TrainConfig
from bertjax.sharding import MeshConfig


def mesh_config() -> ml_collections.ConfigDict:
    """The `mesh` group every experiment (pre-training, GLUE, SQuAD, NER) shares: the axis
    sizes and logical-axis rules of `bertjax.sharding.MeshConfig`."""
    return config_dict_from(MeshConfig)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    top = field_defaults(PretrainConfig)
    c.seed = top["seed"]  # drives initialisation, dropout and data order
    c.init_checkpoint = top["init_checkpoint"]  # bertjax checkpoint dir to start from

    # The fields of bertjax.config.ModelConfig; the shape comes from the size table.
    c.model = config_dict_from(
        ModelConfig,
        vocab_size=None,  # None: from the prepared data's vocab (or the init checkpoint's)
        num_layers=None,  # None: from the size table (L)
        hidden_size=None,  # None: from the size table (H)
        num_heads=None,  # None: from the size table (A)
        intermediate_size=None,  # None: from the size table (4H)
    )
    c.model.size = "base"  # tiny | mini | small | medium | base | large | custom

    c.data = config_dict_from(DataConfig)  # bertjax.pretrain_config.DataConfig
    c.optim = config_dict_from(OptimConfig)  # bertjax.optim.OptimConfig
    c.train = config_dict_from(TrainConfig)  # bertjax.pretrain_config.TrainConfig

    c.eval = ml_collections.ConfigDict()
    c.eval.fill_mask_examples = 0  # held-out sentences whose fill-mask top 5 ends the run

    c.mesh = mesh_config()  # bertjax.sharding.MeshConfig
    return c
