"""QQP (363,846 train / 40,430 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 34,113 steps:
    bertjax finetune --config experiments/glue/qqp.py --workdir runs/qqp --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime about 30 minutes on one A100/H100 in bfloat16 (estimated), hours on CPU; metric accuracy ~90.7 / F1 ~87.5 dev; paper test F1 71.2 (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("qqp", arg)  # arg: another peak learning rate (default 2e-5)
