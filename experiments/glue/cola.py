"""CoLA (8,551 train / 1,043 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 804 steps:
    bertjax finetune --config experiments/glue/cola.py --workdir runs/cola --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime about 1 minute on one A100/H100 in bfloat16 (estimated), hours on CPU; metric Matthews correlation ~56.5 dev; paper test 52.1 (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("cola", arg)  # arg: another peak learning rate (default 2e-5)
