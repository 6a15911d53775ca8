"""QNLI (104,743 train / 5,463 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 9,822 steps:
    bertjax finetune --config experiments/glue/qnli.py --workdir runs/qnli --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime about 8 minutes on one A100/H100 in bfloat16 (estimated), hours on CPU; metric accuracy ~90.7 dev; paper test 90.5 (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("qnli", arg)  # arg: another peak learning rate (default 2e-5)
