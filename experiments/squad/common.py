"""Defaults shared by the SQuAD fine-tuning experiments; v1.py and v2.py edit a copy.

The BERT paper's recipe (Devlin et al., 2019, section 4.2-4.3): AdamW with peak learning rate
5e-5, linear warmup over the first 10% of steps then linear decay to 0, weight decay 0.01,
dropout 0.1; windows of 384 tokens every 128 context tokens, questions cut to 64 tokens; answers
of at most 30 tokens chosen from the 20 best start and end positions. v1.1: batch 32, 3 epochs;
v2.0: batch 48, 2 epochs.

    bertjax finetune --config experiments/squad/v1.py --workdir runs/squad1 \
      --config.init_checkpoint=CKPT --config.task.data_dir=DIR

Each group holds every field of its dataclass at the dataclass's default
(`bertjax.config.config_dict_from`; the layout is `experiments.glue.common.fine_tuning_config`):
the defaults and their one-line comments are declared once, on the dataclass fields; this file
comments only what it changes.

`config.task.name` (squad_v1 | squad_v2) tells a SQuAD config from a GLUE one
(`bertjax.squad.is_squad_config`).
"""

from __future__ import annotations

import ml_collections

from bertjax.config import config_dict_from
from bertjax.finetune_task import DataConfig
from bertjax.squad import SquadEvalConfig, SquadTaskConfig, SquadTrainConfig
from experiments.glue.common import fine_tuning_config


def get_config() -> ml_collections.ConfigDict:
    return fine_tuning_config(
        task=config_dict_from(SquadTaskConfig),
        train=config_dict_from(SquadTrainConfig),
        data=config_dict_from(DataConfig),  # no packing: it is for one prediction per example
        learning_rate=5e-5,  # the paper's, both versions
        eval=config_dict_from(SquadEvalConfig),
    )


def task_config(
    task: str, arg: str | None, *, batch_size: int, num_epochs: float
) -> ml_collections.ConfigDict:
    """The defaults with task.name, batch and epochs set; `arg` (the text after ':' in
    --config) is a peak learning rate, e.g. `experiments/squad/v1.py:3e-5`."""
    c = get_config()
    c.task.name = task
    c.train.batch_size = batch_size
    c.train.num_epochs = num_epochs
    if arg:
        c.optim.learning_rate = float(arg)
    return c
