"""Defaults shared by every GLUE fine-tuning experiment; each task file edits a copy.

The BERT paper's recipe: AdamW with peak learning rate in {5e-5, 4e-5, 3e-5, 2e-5} (best on
dev), linear warmup over the first 10% of steps then linear decay to 0, weight decay 0.01,
batch 32, 3 epochs, dropout 0.1, sequences of 128 tokens.

Each group holds every field of its dataclass at the dataclass's default
(`bertjax.config.config_dict_from`): the defaults and their one-line comments are declared
once, on the dataclass fields (GlueTaskConfig, ModelOverrides, OptimConfig, GlueTrainConfig,
DataConfig, MeshConfig); this file comments only what it changes.

The task files (cola.py ... wnli.py) hold each task's launch command and expected metric:

    CPU / one GPU:
      bertjax finetune --config experiments/glue/mrpc.py --workdir runs/mrpc \
        --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
    one GPU, faster:  add --config.model.dtype=bfloat16
    another lr:       --config experiments/glue/mrpc.py:3e-5 (paper grid: 5e-5 4e-5 3e-5 2e-5)
    TFDS instead of the GLUE files: --config.task.data_dir=tfds
    TPU slice / several GPUs: the same command; the batch is split over mesh.data (all devices).

CKPT is a bertjax model dir (`bertjax convert --from hf|tf ...`) or a pre-training workdir.

The expected figures in the task files: dev numbers from the Hugging Face run_glue reference
(bert-base-cased), paper test numbers from Devlin et al. (2019), Table 1; runtimes are
estimates at ~20 steps/s plus evaluation on one A100/H100 in bfloat16, not measured here.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from bertjax.config import config_dict_from
from bertjax.finetune_task import WARMUP_FRACTION, DataConfig, ModelOverrides
from bertjax.glue_task import GlueTaskConfig, GlueTrainConfig
from bertjax.optim import OptimConfig
from experiments.pretrain.common import mesh_config


def fine_tuning_optim(*, learning_rate: float) -> ml_collections.ConfigDict:
    """The `optim` group of every fine-tuning config: `bertjax.optim.OptimConfig` at its
    defaults (AdamW, linear decay, weight decay 0.01, clipping at 1.0) with its peak
    `learning_rate`, and warmup as a share of the steps (`optim.warmup_fraction`) in place of
    `warmup_steps`."""
    optim = config_dict_from(OptimConfig, learning_rate=learning_rate)
    del optim["warmup_steps"]
    optim.warmup_fraction = WARMUP_FRACTION
    return optim


def fine_tuning_config(
    *, task: Any, train: Any, data: Any, learning_rate: float, model: Any = None, **groups: Any
) -> ml_collections.ConfigDict:
    """The layout every fine-tuning family (GLUE, SQuAD, NER) shares: seed, init_checkpoint,
    the family's `task`, `model` (default: `bertjax.finetune_task.ModelOverrides`), `optim`
    (`fine_tuning_optim`), the family's `train` and `data`, its other `groups` (e.g. eval),
    and `mesh` (`bertjax.sharding.MeshConfig`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives the task head's initialisation, dropout and example order
    c.init_checkpoint = ""  # required: bertjax model dir or pre-training workdir
    c.task = task
    c.model = config_dict_from(ModelOverrides) if model is None else model
    c.optim = fine_tuning_optim(learning_rate=learning_rate)
    c.train = train
    c.data = data
    for name, group in groups.items():
        c[name] = group
    c.mesh = mesh_config()
    return c


def get_config() -> ml_collections.ConfigDict:
    return fine_tuning_config(
        task=config_dict_from(GlueTaskConfig),
        train=config_dict_from(GlueTrainConfig),
        data=config_dict_from(DataConfig, packing=True),  # sentence-level: rows packed
        learning_rate=2e-5,  # the paper's grid: 5e-5, 4e-5, 3e-5, 2e-5 (best on dev)
    )


def task_config(
    task: str, arg: str | None, *, learning_rate: float = 2e-5
) -> ml_collections.ConfigDict:
    """The defaults with task.name set; `arg` (the text after ':' in --config) is a learning
    rate, e.g. `experiments/glue/rte.py:3e-5`."""
    c = get_config()
    c.task.name = task
    c.optim.learning_rate = float(arg) if arg else learning_rate
    return c
