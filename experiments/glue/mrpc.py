"""MRPC (3,668 train / 408 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 345 steps:
    bertjax finetune --config experiments/glue/mrpc.py --workdir runs/mrpc --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime under 1 minute on one A100/H100 in bfloat16 (estimated), hours on CPU; metric F1 ~88.9 / accuracy ~84.1 dev; paper test F1 88.9 (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("mrpc", arg)  # arg: another peak learning rate (default 2e-5)
