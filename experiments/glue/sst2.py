"""SST-2 (67,349 train / 872 dev examples), BERT-base, lr 2e-5, batch 32, 3 epochs = 6,315 steps:
    bertjax finetune --config experiments/glue/sst2.py --workdir runs/sst2 --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
runtime about 6 minutes on one A100/H100 in bfloat16 (estimated), hours on CPU; metric accuracy ~92.3 dev; paper test 93.5 (sources, other learning rates, bfloat16, TFDS: common.py).
"""

from __future__ import annotations

from experiments.glue import common


def get_config(arg: str | None = None):
    return common.task_config("sst2", arg)  # arg: another peak learning rate (default 2e-5)
