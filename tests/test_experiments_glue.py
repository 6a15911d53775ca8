"""Every GLUE experiment config (experiments/glue/*.py) builds, resolves and documents itself."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os

import pytest
from absl import flags
from ml_collections import config_flags

from bertjax import glue_task
from bertjax.finetune_task import ModelOverrides
from bertjax.optim import OptimConfig
from bertjax.sharding import MeshConfig
from data_pipelines import glue as glue_data
from experiments.glue import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_DIR = os.path.join(ROOT, "experiments", "glue")
TASK_FILES = sorted(
    f[:-3]
    for f in os.listdir(GLUE_DIR)
    if f.endswith(".py") and f not in ("__init__.py", "common.py")
)


def test_one_file_per_glue_task():
    assert TASK_FILES == sorted(t for t in glue_data.TASKS if t != "ax")


@pytest.mark.parametrize("name", TASK_FILES)
def test_config_builds_and_resolves(name):
    module = importlib.import_module(f"experiments.glue.{name}")
    c = module.get_config()
    assert c.task.name == name
    c.init_checkpoint = "/ckpt"
    c.task.data_dir = "/glue_data"
    cfg = glue_task.GlueConfig.from_config_dict(c)
    assert cfg.task.spec.name == name
    assert cfg.optim.learning_rate in (5e-5, 4e-5, 3e-5, 2e-5)  # the paper's grid
    assert (cfg.train.batch_size, cfg.train.num_epochs, cfg.warmup_fraction) == (32, 3.0, 0.1)
    assert cfg.optim.name == "adamw" and cfg.optim.weight_decay == 0.01
    assert cfg.optim_for(1000).warmup_steps == 100
    assert cfg.task.max_seq_length == 128
    assert module.get_config("5e-5").optim.learning_rate == 5e-5
    doc = module.__doc__
    assert f"bertjax finetune --config experiments/glue/{name}.py --workdir runs/{name}" in doc
    assert "--config.init_checkpoint=CKPT --config.task.data_dir=glue_data" in doc
    assert "runtime" in doc and "metric" in doc


def test_common_fields_documented_and_complete():
    """Every field has a one-line comment on its dataclass (the one place its default is
    declared); the config's groups hold exactly the fields the dataclasses know (so nothing
    resolves silently to a default)."""
    from bertjax.finetune_task import DataConfig

    groups = (glue_task.GlueTaskConfig, ModelOverrides, glue_task.GlueTrainConfig, DataConfig)
    for cls in (*groups, OptimConfig, MeshConfig):
        lines = [x.strip() for k in cls.__mro__[:-1] for x in inspect.getsource(k).splitlines()]
        for f in dataclasses.fields(cls):
            assert any(x.startswith(f"{f.name}:") and "  # " in x for x in lines), f.name
    c = common.get_config()
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}
    assert set(c.task) == fields(glue_task.GlueTaskConfig)
    assert set(c.model) == fields(ModelOverrides)
    assert set(c.train) == fields(glue_task.GlueTrainConfig)
    assert set(c.optim) == fields(OptimConfig) - {"warmup_steps"} | {"warmup_fraction"}
    assert set(c.mesh) == fields(MeshConfig)


def test_config_file_flag_and_overrides():
    """The CLI path: --config FILE:ARG plus --config.* overrides (placeholders included)."""
    argv = [
        "bertjax",
        f"--config={os.path.join(GLUE_DIR, 'mrpc.py')}:3e-5",
        "--config.init_checkpoint=/ckpt",
        "--config.task.data_dir=tfds",
        "--config.model.dtype=bfloat16",
        "--config.train.num_epochs=2",
    ]
    fv = flags.FlagValues()
    # Override flags are registered from the argv at definition time.
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    cfg = glue_task.GlueConfig.from_config_dict(fv.config)
    assert cfg.optim.learning_rate == 3e-5 and cfg.model.dtype == "bfloat16"
    assert cfg.task.data_dir == "tfds" and cfg.train.num_epochs == 2.0
    with pytest.raises(ValueError, match="use warmup_fraction"):
        c = common.task_config("mrpc", None)
        c.optim.warmup_steps = 10
        c.init_checkpoint, c.task.data_dir = "/ckpt", "/d"
        glue_task.GlueConfig.from_config_dict(c)
