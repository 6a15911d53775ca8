"""Defaults shared by the NER fine-tuning experiments; conll2003.py and msra_zh.py edit a copy.

The BERT paper's recipe for CoNLL-2003 (Devlin et al., 2019, section 5.3): the label of each
word on its first WordPiece, a dense layer on every token, AdamW with peak learning rate in
{5e-5, 3e-5, 2e-5}, linear warmup over the first 10% of steps then linear decay to 0, weight
decay 0.01, dropout 0.1, batch 32, 3-4 epochs, 128 tokens per row (longer sentences are cut
into overlapping windows, each word predicted once).

    bertjax finetune --config experiments/ner/conll2003.py --workdir runs/conll \
      --config.init_checkpoint=CKPT --config.task.data_dir=DIR

Feature-based (the paper's Table 7: frozen encoder, the last four layers concatenated, a
two-layer BiLSTM tagger): add
    --config.train.freeze_encoder=True --config.model.feature_layers=-1,-2,-3,-4
(`--config.model.feature_combine=sum` sums them; `--config.model.tagger=dense` puts a dense
layer on them instead of the BiLSTM).

Each group holds every field of its dataclass at the dataclass's default
(`bertjax.config.config_dict_from`; the layout is `experiments.glue.common.fine_tuning_config`):
the defaults and their one-line comments are declared once, on the dataclass fields; this file
comments only what it changes.

`config.task.name` (conll2003, msra_zh, ner or ner_<name>) tells an NER config from a GLUE one
(`bertjax.ner.is_ner_config`).
"""

from __future__ import annotations

import ml_collections

from bertjax.config import config_dict_from
from bertjax.finetune_task import DataConfig
from bertjax.ner import NerModelOverrides, NerTaskConfig, NerTrainConfig
from experiments.glue.common import fine_tuning_config


def get_config() -> ml_collections.ConfigDict:
    return fine_tuning_config(
        task=config_dict_from(NerTaskConfig, name="ner"),  # conll2003 | msra_zh | ner_<name>
        model=config_dict_from(NerModelOverrides),
        train=config_dict_from(NerTrainConfig),
        data=config_dict_from(DataConfig),  # no packing: it is for one prediction per example
        learning_rate=5e-5,  # the paper's grid: 5e-5, 3e-5, 2e-5
    )


def task_config(
    task: str, arg: str | None, *, num_epochs: float, learning_rate: float
) -> ml_collections.ConfigDict:
    """The defaults with task.name, epochs and learning rate set; `arg` (the text after ':'
    in --config) is another peak learning rate, e.g. `experiments/ner/conll2003.py:3e-5`."""
    c = get_config()
    c.task.name = task
    c.train.num_epochs = num_epochs
    c.optim.learning_rate = float(arg) if arg else learning_rate
    return c
