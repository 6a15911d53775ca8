"""STS-B (5,749 train / 1,500 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 540 steps:
    bertjax finetune --config experiments/glue/stsb.py --workdir runs/stsb --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime under 1 minute on one A100/H100 in bfloat16 (estimated), hours on CPU; metric Pearson ~88.6 / Spearman ~88.5 dev; paper test Spearman 85.8 (sources, other learning rates, bfloat16, TFDS: common.py).

STS-B is a regression: one output trained with mean squared error on the 0-5 score.
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("stsb", arg)  # arg: another peak learning rate (default 2e-5)
